"""``mimic_cxr_jpg``: MIMIC-CXR-JPG v2.0.0 (Johnson et al., 2019) in its published layout.

Tables (``.csv`` or ``.csv.gz`` under ``root``): ``mimic-cxr-2.0.0-split.csv``
(``dicom_id, study_id, subject_id, split`` with train/validate/test),
``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id, ..., ViewPosition, ...``) and
``mimic-cxr-2.0.0-chexpert.csv`` (``subject_id, study_id`` + 14 CheXpert labels, same
1/0/-1/blank convention). Images: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``.
Reports (MIMIC-CXR ``files/p10/p10000032/s50414267.txt``) are read when ``reports_root``
is given. Subject and study IDs only locate files; they never reach a sample. MIMIC-CXR-JPG
carries no age or sex (those live in MIMIC-IV), so ``meta`` has the view only. The
official split is ``train`` / ``validate`` (``test`` is left for final reporting), disjoint
by subject; the subject groups samples for probe splits and never reaches a sample.
"""

from __future__ import annotations

import array
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.data.base import CommonOptions, FileDataset, normalise_view, resolve_root
from medssl.data.chexpert import CHEXPERT_OBSERVATIONS, UncertainPolicy, chexpert_value
from medssl.data.large import ColumnRecords, check_files
from medssl.data.tables import find_table, iter_rows, require_columns
from medssl.official_splits import OfficialSplits

__all__ = ["MimicCxrJpg", "report_text"]

log = logging.getLogger(__name__)

_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:", re.IGNORECASE | re.MULTILINE)
_ANY_SECTION = re.compile(r"^\s*[A-Z][A-Z /&]+:", re.MULTILINE)


def report_text(raw: str, sections_only: bool = True) -> str:
    """The FINDINGS and IMPRESSION sections of a report (all of it when it has neither)."""
    if sections_only:
        parts = []
        for match in _SECTION.finditer(raw):
            start = match.end()
            nxt = _ANY_SECTION.search(raw, start)
            parts.append(raw[start : nxt.start() if nxt else len(raw)])
        if parts:
            raw = "\n".join(parts)
    return " ".join(raw.split())


class MimicCxrJpg(FileDataset):
    """MIMIC-CXR-JPG: 14 CheXpert labels, the view, and the report when present."""

    task = "multilabel"
    group_kind = "patient"

    class Options(CommonOptions):
        root: str
        split: Literal["train", "validate", "test"] | None = "train"
        uncertain: UncertainPolicy = "zeros"
        views: list[str] | None = Field(None, description="keep these ViewPosition values only")
        reports_root: str | None = Field(
            None, description="folder holding files/pXX/pSUBJECT/sSTUDY.txt; text when set"
        )
        report_sections_only: bool = True
        skip_missing: bool = True

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {"has_text": options.get("reports_root") is not None, "has_mask": False}

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        return OfficialSplits(train="train", val="validate")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        root = resolve_root(opts.root, "mimic_cxr_jpg")
        self.has_text = opts.reports_root is not None  # type: ignore[misc]
        self.label_names = list(CHEXPERT_OBSERVATIONS)
        split_t = find_table(root, "mimic-cxr-2.0.0-split.csv")
        meta_t = find_table(root, "mimic-cxr-2.0.0-metadata.csv")
        label_t = find_table(root, "mimic-cxr-2.0.0-chexpert.csv")
        # Streamed, keeping only what the chosen split needs (the tables have 377,110 rows).
        h, rows = iter_rows(split_t)
        where = f"mimic table {split_t}"
        require_columns(h, ["dicom_id", "study_id", "subject_id", "split"], where)
        i_d, i_st, i_su, i_sp = (
            h.index(c) for c in ("dicom_id", "study_id", "subject_id", "split")
        )
        wanted: list[tuple[str, str, str]] = []
        for row in rows:
            if opts.split is not None and row[i_sp].strip() != opts.split:
                continue
            dicom_id, subject, study = row[i_d].strip(), row[i_su].strip(), row[i_st].strip()
            if not (dicom_id.replace("-", "").isalnum() and subject.isdigit() and study.isdigit()):
                raise ValueError(f"{where}: malformed identifiers in a row")
            wanted.append((dicom_id, subject, study))
        h, rows = iter_rows(meta_t)
        require_columns(h, ["dicom_id", "ViewPosition"], f"mimic table {meta_t}")
        i_d, i_v = h.index("dicom_id"), h.index("ViewPosition")
        need = {d for d, _, _ in wanted}
        views = {row[i_d].strip(): row[i_v] for row in rows if row[i_d].strip() in need}
        h, rows = iter_rows(label_t)
        where = f"mimic table {label_t}"
        require_columns(h, ["subject_id", "study_id", *CHEXPERT_OBSERVATIONS], where)
        i_su, i_st = h.index("subject_id"), h.index("study_id")
        i_labels = [h.index(c) for c in CHEXPERT_OBSERVATIONS]
        studies = {(su, st) for _, su, st in wanted}
        labels: dict[tuple[str, str], list[float]] = {}
        for line, row in enumerate(rows, start=2):
            key = (row[i_su].strip(), row[i_st].strip())
            if key not in studies:
                continue
            try:
                labels[key] = [chexpert_value(row[i], opts.uncertain) for i in i_labels]
            except ValueError as exc:
                raise ValueError(f"{where} line {line}: {exc}") from None
        blank = [chexpert_value("", opts.uncertain)] * len(CHEXPERT_OBSERVATIONS)
        rel_col: list[str] = []
        label_buf = array.array("f")
        view_col: list[str | None] = []
        subjects: list[str | None] = []
        for dicom_id, subject, study in wanted:
            view = normalise_view(views.get(dicom_id))
            if opts.views is not None and view not in opts.views:
                continue
            rel_col.append(f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg")
            label_buf.extend(labels.get((subject, study), blank))
            view_col.append(view)
            subjects.append(subject)
        root_s = os.path.normpath(os.path.abspath(root))
        records = ColumnRecords(
            root_s,
            rel_col,
            np.frombuffer(label_buf, dtype=np.float32).reshape(-1, len(CHEXPERT_OBSERVATIONS)),
            {"view": view_col},
            subjects,
        )
        if opts.skip_missing:
            keep, self.check_note = check_files(root_s, rel_col, "mimic_cxr_jpg")
            if not keep.all():
                log.warning("mimic_cxr_jpg: %d image(s) not found (skipped)", (~keep).sum())
                records = records.take(keep)
        if opts.reports_root is not None:
            reports_root = Path(opts.reports_root)
            if not reports_root.is_absolute():
                reports_root = root / reports_root
            texts: list[str | None] = []
            for rel in records.rel:  # files/pXX/pSUBJECT/sSTUDY/<dicom>.jpg -> sSTUDY.txt
                report = reports_root / f"{rel.rsplit('/', 1)[0]}.txt"
                texts.append(
                    report_text(report.read_text(errors="replace"), opts.report_sections_only)
                    if report.is_file()
                    else None
                )
            has = np.array([t is not None for t in texts], bool)
            if not has.all():
                log.warning(
                    "mimic_cxr_jpg: %d image(s) without a report file (skipped)", (~has).sum()
                )
            records.text = texts
            records = records.take(has)
        self.records = records
