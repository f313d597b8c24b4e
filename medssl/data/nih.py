"""``nih_chestxray14``: NIH ChestX-ray14 (Wang et al., CVPR 2017) in its published layout.

``Data_Entry_2017_v2020.csv`` (or the original ``Data_Entry_2017.csv``, whichever is
there) columns: ``Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age,
Patient Sex`` (``Patient Gender`` in 2017), ``View Position, OriginalImage[Width, Height],
OriginalImagePixelSpacing[x, y]``; ``Finding Labels`` is pipe-separated
(``"Effusion|Mass"``) or ``"No Finding"``. Images sit in ``images/`` or in the
``images_001/images/ ...`` folders of the download (symbolic links followed); the official
split is ``train_val_list.txt`` / ``test_list.txt``, patient-disjoint. Patient IDs group
samples for probe splits only; they and follow-up numbers never reach a sample.
"""

from __future__ import annotations

import array
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.data.base import (
    CommonOptions,
    FileDataset,
    normalise_age,
    normalise_sex,
    normalise_view,
    resolve_root,
)
from medssl.data.files import scan_folder
from medssl.data.large import ColumnRecords
from medssl.data.tables import find_column, find_table, iter_rows
from medssl.official_splits import OfficialSplits

__all__ = ["NIH_FINDINGS", "NIH_TABLES", "NIHChestXray14"]

log = logging.getLogger(__name__)

NIH_FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]


#: The table's names, newest first: the 2020 re-release fixed labels of the 2017 file.
NIH_TABLES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")


def index_files(root: str, suffixes: tuple[str, ...], follow_links: bool = True) -> dict[str, str]:
    """File name -> full path for every file under ``root`` (names are unique in NIH/MIMIC)."""
    found: dict[str, str] = {}
    for full in scan_folder(root, follow_links=follow_links).files:
        name = os.path.basename(full)
        if name.lower().endswith(suffixes):
            found.setdefault(name, full)
    return found


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14: 14 multi-hot findings, age, sex and view (PA / AP)."""

    task = "multilabel"
    label_names = NIH_FINDINGS
    group_kind = "patient"

    class Options(CommonOptions):
        root: str
        table: str | None = Field(None, description=f"default: the first of {list(NIH_TABLES)}")
        split: Literal["all", "train_val", "test"] = "all"
        skip_missing: bool = Field(True, description="drop rows whose image file is absent")
        follow_links: bool = Field(True, description="descend into linked folders (loops cut)")

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        return OfficialSplits(train="train_val", val="test")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        root = resolve_root(opts.root, "nih_chestxray14")
        table = _nih_table(root, opts.table)
        where = f"nih_chestxray14 table {str(table)!r}"
        header, rows = iter_rows(table)  # streamed: 112,120 rows
        col = {
            key: header.index(find_column(header, names, where))
            for key, names in (
                ("image", ["Image Index"]),
                ("labels", ["Finding Labels"]),
                ("age", ["Patient Age"]),
                ("sex", ["Patient Sex", "Patient Gender"]),
                ("view", ["View Position"]),
            )
        }
        try:
            patient: int | None = header.index(find_column(header, ["Patient ID"], where))
        except ValueError:
            patient = None  # taken from the image name below
        keep = None
        if opts.split != "all":
            keep = set(find_table(root, f"{opts.split}_list.txt").read_text().split())
        root_s = os.path.normpath(os.path.abspath(root))
        files = index_files(root_s, (".png",), opts.follow_links)
        # Few distinct cells: parse each once.
        parsed: dict[str, list[float]] = {}
        ages: dict[str, float | None] = {}
        sexes: dict[str, str | None] = {}
        views: dict[str, str | None] = {}
        rel_col: list[str] = []
        labels = array.array("f")
        age_col: list[float | None] = []
        sex_col: list[str | None] = []
        view_col: list[str | None] = []
        group_col: list[str | None] = []
        missing = 0
        for line, row in enumerate(rows, start=2):
            name = row[col["image"]].strip()
            if keep is not None and name not in keep:
                continue
            if os.sep in name or "/" in name or name in ("", ".", ".."):
                raise ValueError(f"{where} line {line}: bad image name {name!r}")
            path = files.get(name)
            if path is None:
                missing += 1
                if opts.skip_missing:
                    continue
                path = os.path.join(root_s, "images", name)
            cell = row[col["labels"]]
            if cell not in parsed:
                parsed[cell] = _findings(cell, f"{where} line {line}")
            labels.extend(parsed[cell])
            for column, cache, parse, out in (
                ("age", ages, normalise_age, age_col),
                ("sex", sexes, normalise_sex, sex_col),
                ("view", views, normalise_view, view_col),
            ):
                cell = row[col[column]]
                if cell not in cache:
                    cache[cell] = parse(cell)  # type: ignore[operator]
                out.append(cache[cell])
            # The image name starts with the patient ID (00000001_000.png): the fallback.
            group_col.append(row[patient].strip() if patient is not None else name.split("_")[0])
            rel_col.append(os.path.relpath(path, root_s))
        if missing:
            log.warning(
                "nih_chestxray14: %d listed image(s) not found under %s%s",
                missing,
                root,
                " (skipped)" if opts.skip_missing else "",
            )
        self.records = ColumnRecords(
            root_s,
            rel_col,
            np.frombuffer(labels, dtype=np.float32).reshape(-1, len(NIH_FINDINGS)),
            {"age": age_col, "sex": sex_col, "view": view_col},
            group_col,
        )


_POSITION = {name: i for i, name in enumerate(NIH_FINDINGS)}


def _findings(cell: str, where: str) -> list[float]:
    """``"Effusion|Mass"`` -> multi-hot over :data:`NIH_FINDINGS`; ``"No Finding"`` -> zeros."""
    label = [0.0] * len(NIH_FINDINGS)
    for finding in cell.split("|"):
        finding = finding.strip()
        if finding in ("", "No Finding"):
            continue
        if finding not in _POSITION:
            raise ValueError(f"{where}: unknown finding {finding!r}")
        label[_POSITION[finding]] = 1.0
    return label


def _nih_table(root: Path, name: str | None) -> Path:
    if name is not None:
        return find_table(root, name)
    for candidate in NIH_TABLES:
        try:
            return find_table(root, candidate)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(
        f"nih_chestxray14: none of {list(NIH_TABLES)} (or .gz) in {str(root)!r}; set 'table'"
    )
