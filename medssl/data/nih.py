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

import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.data.base import (
    CommonOptions,
    FileDataset,
    Record,
    normalise_age,
    normalise_sex,
    normalise_view,
    resolve_root,
)
from medssl.data.tables import find_column, find_table, read_table
from medssl.data.walk import walk_files
from medssl.types import OfficialSplits

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
    for full in walk_files(root, follow_links=follow_links):
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
        header, rows = read_table(table)
        col = {
            key: find_column(header, names, where)
            for key, names in (
                ("image", ["Image Index"]),
                ("labels", ["Finding Labels"]),
                ("age", ["Patient Age"]),
                ("sex", ["Patient Sex", "Patient Gender"]),
                ("view", ["View Position"]),
            )
        }
        patient = next((h for h in header if h.strip().lower() == "patient id"), None)
        if opts.split != "all":
            listed = find_table(root, f"{opts.split}_list.txt").read_text().split()
            keep = set(listed)
            rows = [r for r in rows if r[col["image"]].strip() in keep]
        files = index_files(str(root), (".png",), opts.follow_links)
        position = {name: i for i, name in enumerate(NIH_FINDINGS)}
        records, missing = [], 0
        for line, row in enumerate(rows, start=2):
            name = row[col["image"]].strip()
            if os.sep in name or "/" in name or name in ("", ".", ".."):
                raise ValueError(f"{where} line {line}: bad image name {name!r}")
            path = files.get(name)
            if path is None:
                missing += 1
                if opts.skip_missing:
                    continue
                path = os.path.join(root, "images", name)
            label = np.zeros(len(NIH_FINDINGS), dtype=np.float32)
            for finding in row[col["labels"]].split("|"):
                finding = finding.strip()
                if finding in ("", "No Finding"):
                    continue
                if finding not in position:
                    raise ValueError(f"{where} line {line}: unknown finding {finding!r}")
                label[position[finding]] = 1.0
            meta = {
                "age": normalise_age(row[col["age"]]),
                "sex": normalise_sex(row[col["sex"]]),
                "view": normalise_view(row[col["view"]]),
            }
            # The image name starts with the patient ID (00000001_000.png): the fallback.
            group = row[patient].strip() if patient else name.split("_", 1)[0]
            display = os.path.relpath(path, root)
            records.append(Record(path, None, label, meta, None, None, display, group))
        if missing:
            log.warning(
                "nih_chestxray14: %d listed image(s) not found under %s%s",
                missing,
                root,
                " (skipped)" if opts.skip_missing else "",
            )
        self.records = records


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
