"""``nih_chestxray14``: NIH ChestX-ray14 (Wang et al., CVPR 2017) in its published layout.

``Data_Entry_2017.csv`` columns: ``Image Index, Finding Labels, Follow-up #,
Patient ID, Patient Age, Patient Gender, View Position, OriginalImage[Width, Height],
OriginalImagePixelSpacing[x, y]``; ``Finding Labels`` is pipe-separated
(``"Effusion|Mass"``) or ``"No Finding"``. Images sit in ``images/`` or in the
``images_001/images/ ...`` folders of the download; splits in ``train_val_list.txt``
and ``test_list.txt``. Patient IDs and follow-up numbers are never read into samples.
"""

from __future__ import annotations

import logging
import os
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
from medssl.data.tables import find_table, read_table, require_columns

__all__ = ["NIH_FINDINGS", "NIHChestXray14"]

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


def index_files(root: str, suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name -> full path for every file under ``root`` (names are unique in NIH/MIMIC)."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.lower().endswith(suffixes):
                found.setdefault(name, os.path.join(dirpath, name))
    return found


class NIHChestXray14(FileDataset):
    """NIH ChestX-ray14: 14 multi-hot findings, age, sex and view (PA / AP)."""

    task = "multilabel"
    label_names = NIH_FINDINGS

    class Options(CommonOptions):
        root: str
        table: str = "Data_Entry_2017.csv"
        split: Literal["all", "train_val", "test"] = "all"
        skip_missing: bool = Field(True, description="drop rows whose image file is absent")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        root = resolve_root(opts.root, "nih_chestxray14")
        table = find_table(root, opts.table)
        where = f"nih_chestxray14 table {str(table)!r}"
        header, rows = read_table(table)
        require_columns(
            header,
            ["Image Index", "Finding Labels", "Patient Age", "Patient Gender", "View Position"],
            where,
        )
        if opts.split != "all":
            listed = find_table(root, f"{opts.split}_list.txt").read_text().split()
            keep = set(listed)
            rows = [r for r in rows if r["Image Index"].strip() in keep]
        files = index_files(str(root), (".png",))
        position = {name: i for i, name in enumerate(NIH_FINDINGS)}
        records, missing = [], 0
        for line, row in enumerate(rows, start=2):
            name = row["Image Index"].strip()
            if os.sep in name or "/" in name or name in ("", ".", ".."):
                raise ValueError(f"{where} line {line}: bad image name {name!r}")
            path = files.get(name)
            if path is None:
                missing += 1
                if opts.skip_missing:
                    continue
                path = os.path.join(root, "images", name)
            label = np.zeros(len(NIH_FINDINGS), dtype=np.float32)
            for finding in row["Finding Labels"].split("|"):
                finding = finding.strip()
                if finding in ("", "No Finding"):
                    continue
                if finding not in position:
                    raise ValueError(f"{where} line {line}: unknown finding {finding!r}")
                label[position[finding]] = 1.0
            meta = {
                "age": normalise_age(row["Patient Age"]),
                "sex": normalise_sex(row["Patient Gender"]),
                "view": normalise_view(row["View Position"]),
            }
            records.append(Record(path, None, label, meta, None, None, os.path.relpath(path, root)))
        if missing:
            log.warning(
                "nih_chestxray14: %d listed image(s) not found under %s%s",
                missing,
                root,
                " (skipped)" if opts.skip_missing else "",
            )
        self.records = records
