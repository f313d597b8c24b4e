"""``csv_manifest``: images listed in a CSV, with labels, metadata, text and masks.

Paths are relative to ``root`` and may not leave it. Labels come from one or more
columns as multi-hot (``multilabel``), a class index (``multiclass``, one column,
numbers or names) or float targets (``regression``). Metadata columns are mapped onto
the whitelisted keys only (age, sex, view); every other column is ignored. With a
``split_column`` the manifest has an official split (``probe_splits`` names its train and
held-out values); a ``group_column`` (patient or study ID) keeps a group on one side of a
probe's split and never reaches a sample.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.data.base import (
    CommonOptions,
    FileDataset,
    Record,
    expand_frames,
    normalise_age,
    normalise_sex,
    normalise_view,
    resolve_root,
)
from medssl.data.robust import resolve_under_root
from medssl.data.tables import find_table, read_table, require_columns
from medssl.official_splits import OfficialSplits

__all__ = ["CsvManifest", "parse_float"]


def parse_float(value: Any, missing: float = math.nan) -> float:
    text = str(value if value is not None else "").strip()
    if not text:
        return missing
    return float(text)


class CsvManifest(FileDataset):
    """Images listed in a CSV manifest (see the module docstring)."""

    class Options(CommonOptions):
        root: str
        manifest: str = Field("manifest.csv", description="relative to root, or absolute")
        delimiter: str = ","
        path_column: str = "path"
        label_columns: list[str] = Field(default_factory=list)
        label_kind: Literal["multilabel", "multiclass", "regression"] = "multilabel"
        missing_label: float = Field(
            math.nan, description="value of a blank label cell (NaN: ignored by probes)"
        )
        meta_columns: dict[Literal["age", "sex", "view"], str] = Field(default_factory=dict)
        text_column: str | None = None
        mask_column: str | None = None
        mask_names: list[str] | None = None
        split_column: str | None = None
        split: str | list[str] | None = None
        probe_splits: tuple[str, str] = Field(
            ("train", "val"), description="split_column values probes train / test on"
        )
        group_column: str | None = Field(
            None, description="patient or study ID column: probes keep a group on one side"
        )
        where: dict[str, str | list[str]] = Field(
            default_factory=dict, description="keep rows whose column has (one of) these values"
        )

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {
            "has_text": options.get("text_column") is not None,
            "has_mask": options.get("mask_column") is not None,
        }

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits | None:
        if options.get("split_column") is None:
            return None
        train, val = options.get("probe_splits") or ("train", "val")
        return OfficialSplits(train=train, val=val)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._index(self.options)

    def _index(self, opts: Any) -> None:
        self.root = resolve_root(opts.root, type(self).__name__)
        table = find_table(self.root, opts.manifest)
        where = f"{type(self).__name__} manifest {str(table)!r}"
        header, rows = read_table(table, opts.delimiter)
        require_columns(
            header,
            [
                opts.path_column,
                *opts.label_columns,
                *opts.meta_columns.values(),
                opts.text_column,
                opts.mask_column,
                opts.split_column if opts.split is not None else None,
                opts.group_column,
                *opts.where,
            ],
            where,
        )
        if opts.split is not None and opts.split_column is None:
            raise ValueError(f"{where}: 'split' needs 'split_column'")
        if opts.label_kind == "multiclass" and len(opts.label_columns) > 1:
            raise ValueError(f"{where}: multiclass labels come from exactly one column")
        splits = {opts.split} if isinstance(opts.split, str) else set(opts.split or [])
        if splits:
            rows = [r for r in rows if r[opts.split_column].strip() in splits]
        for column, wanted in opts.where.items():
            allowed = {wanted} if isinstance(wanted, str) else set(wanted)
            rows = [r for r in rows if r[column].strip() in allowed]
        if not rows:
            raise ValueError(f"{where}: no row left after the split / where filters")
        self.has_text = opts.text_column is not None  # type: ignore[misc]
        self.has_mask = opts.mask_column is not None  # type: ignore[misc]
        self.mask_names = opts.mask_names
        self.task = opts.label_kind if opts.label_columns else None
        self.group_kind = opts.group_column
        if self.task == "multiclass":
            self.target_name = opts.label_columns[0]
        classes: dict[str, int] = {}
        if self.task == "multiclass":
            values = sorted({r[opts.label_columns[0]].strip() for r in rows})
            if all(_is_int(v) for v in values):
                self.label_names = [str(v) for v in sorted({int(v) for v in values})]
                classes = {v: int(v) for v in values}
            else:
                self.label_names = values
                classes = {v: i for i, v in enumerate(values)}
        elif opts.label_columns:
            self.label_names = list(opts.label_columns)
        records = []
        for line, row in enumerate(rows, start=2):
            row_where = f"{where} line {line}"
            rel = row[opts.path_column]
            path = resolve_under_root(self.root, rel, row_where)
            label = self._row_label(opts, row, classes, row_where)
            meta = {
                "age": normalise_age(row[opts.meta_columns["age"]])
                if "age" in opts.meta_columns
                else None,
                "sex": normalise_sex(row[opts.meta_columns["sex"]])
                if "sex" in opts.meta_columns
                else None,
                "view": normalise_view(row[opts.meta_columns["view"]])
                if "view" in opts.meta_columns
                else None,
            }
            mask_path = None
            if opts.mask_column is not None and row[opts.mask_column].strip():
                mask_path = resolve_under_root(self.root, row[opts.mask_column], row_where)
            text = row[opts.text_column] if opts.text_column is not None else None
            group = row[opts.group_column].strip() or None if opts.group_column else None
            records.append(Record(path, None, label, meta, text, mask_path, rel, group))
        if self.has_mask and any(r.mask_path is None for r in records):
            missing = sum(r.mask_path is None for r in records)
            raise ValueError(
                f"{where}: {missing} row(s) have no mask in column {opts.mask_column!r}; "
                "filter them with split/split_column or give every row a mask"
            )
        if opts.frame == "all":
            records = expand_frames(records, self.read_settings)
        self.records = records

    def _row_label(
        self, opts: Any, row: dict[str, str], classes: dict[str, int], where: str
    ) -> Any:
        if not opts.label_columns:
            return None
        try:
            if self.task == "multiclass":
                return classes[row[opts.label_columns[0]].strip()]
            return np.array(
                [parse_float(row[c], opts.missing_label) for c in opts.label_columns],
                dtype=np.float32,
            )
        except ValueError as exc:
            raise ValueError(f"{where}: bad label value ({exc})") from None


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
