"""``chexpert``: CheXpert (Irvin et al., AAAI 2019) in its published layout.

``train.csv`` / ``valid.csv`` columns: ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and 14
observations with ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank
(not mentioned, read as negative). ``uncertain`` picks the paper's policies: U-Ones,
U-Zeros, or ``ignore`` (NaN, for a masked loss). ``Path`` starts with the dataset folder
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); it is resolved
against ``root`` with or without that first component; ``root`` may be that folder or the
folder holding it. The official split is ``train`` / ``valid`` (patient-disjoint); the
group key is the ``patientNNNNN`` folder of the path.
"""

from __future__ import annotations

import logging
import math
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
    resolve_root,
)
from medssl.data.robust import resolve_under_root
from medssl.data.tables import find_table, read_table, require_columns
from medssl.types import OfficialSplits

__all__ = ["CHEXPERT_OBSERVATIONS", "CheXpert", "chexpert_value"]

log = logging.getLogger(__name__)

CHEXPERT_OBSERVATIONS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]

UncertainPolicy = Literal["ones", "zeros", "ignore"]


def chexpert_value(cell: str | None, uncertain: UncertainPolicy) -> float:
    """A CheXpert label cell as a float: blank -> 0, -1 -> the uncertain policy."""
    text = (cell or "").strip()
    if not text:
        return 0.0
    value = float(text)
    if value == -1.0:
        return {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[uncertain]
    if value not in (0.0, 1.0):
        raise ValueError(f"label value {text!r} is not one of 1.0, 0.0, -1.0 or blank")
    return value


class CheXpert(FileDataset):
    """CheXpert: 14 observations, age, sex and view (``PA``/``AP``/``LATERAL``)."""

    task = "multilabel"
    group_kind = "patient"

    class Options(CommonOptions):
        root: str
        split: Literal["train", "valid"] = "train"
        uncertain: UncertainPolicy = "zeros"
        observations: list[str] = Field(default_factory=lambda: list(CHEXPERT_OBSERVATIONS))
        frontal_only: bool = False
        skip_missing: bool = True

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        return OfficialSplits(train="train", val="valid")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        root = _dataset_folder(resolve_root(opts.root, "chexpert"), f"{opts.split}.csv")
        table = find_table(root, f"{opts.split}.csv")
        where = f"chexpert table {str(table)!r}"
        header, rows = read_table(table)
        require_columns(
            header, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *opts.observations], where
        )
        self.label_names = list(opts.observations)
        strip_first = _strip_first_component(root, rows)
        records, missing = [], 0
        for line, row in enumerate(rows, start=2):
            row_where = f"{where} line {line}"
            frontal = row["Frontal/Lateral"].strip().lower() == "frontal"
            if opts.frontal_only and not frontal:
                continue
            rel = row["Path"].strip()
            if strip_first:
                rel = rel.split("/", 1)[1] if "/" in rel else rel
            path = resolve_under_root(root, rel, row_where)
            if opts.skip_missing and not os.path.exists(path):
                missing += 1
                continue
            try:
                label = np.array(
                    [chexpert_value(row[c], opts.uncertain) for c in opts.observations],
                    dtype=np.float32,
                )
            except ValueError as exc:
                raise ValueError(f"{row_where}: {exc}") from None
            view = row["AP/PA"].strip() if frontal else "LATERAL"
            meta = {
                "age": normalise_age(row["Age"]),
                "sex": normalise_sex(row["Sex"]),
                "view": view or None,
            }
            group = next((p for p in rel.split("/") if p.startswith("patient")), None)
            records.append(Record(path, None, label, meta, None, None, rel, group))
        if missing:
            log.warning("chexpert: %d listed image(s) not found under %s (skipped)", missing, root)
        self.records = records


def _dataset_folder(root: Path, table: str) -> Path:
    """``root``, or its ``CheXpert-v1.0[-small]`` sub-folder when only that holds ``table``."""
    if (root / table).is_file() or (root / f"{table}.gz").is_file():
        return root
    for child in sorted(root.glob("CheXpert*")):
        if child.is_dir() and ((child / table).is_file() or (child / f"{table}.gz").is_file()):
            return child
    return root


def _strip_first_component(root: Path, rows: list[dict[str, str]]) -> bool:
    """CheXpert paths start with ``CheXpert-v1.0[-small]/``; drop it if root is that folder."""
    for row in rows[:50]:
        rel = row["Path"].strip()
        if "/" not in rel:
            return False
        if (root / rel).exists():
            return False
        if (root / rel.split("/", 1)[1]).exists():
            return True
    first = rows[0]["Path"].strip().split("/", 1)[0] if rows else ""
    return first.lower().startswith("chexpert")
