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

import array
import itertools
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
    normalise_age,
    normalise_sex,
    resolve_root,
)
from medssl.data.large import ColumnRecords, check_files
from medssl.data.robust import resolve_under_root
from medssl.data.tables import find_table, iter_rows, require_columns
from medssl.official_splits import OfficialSplits

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
        header, rows = iter_rows(table)
        require_columns(
            header, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *opts.observations], where
        )
        self.label_names = list(opts.observations)
        col = {name: header.index(name) for name in reversed(header)}  # first of a name
        i_path, i_sex, i_age = col["Path"], col["Sex"], col["Age"]
        i_frontal, i_appa = col["Frontal/Lateral"], col["AP/PA"]
        i_labels = [col[c] for c in opts.observations]
        head = list(itertools.islice(rows, 50))
        strip_first = _strip_first_component(root, [r[i_path] for r in head])
        root_s = os.path.normpath(os.path.abspath(root))
        # Few distinct cells: parse each once (a table has millions of label cells).
        values: dict[str, float] = {}
        ages: dict[str, float | None] = {}
        sexes: dict[str, str | None] = {}
        views: dict[str, str | None] = {"LATERAL": "LATERAL"}
        patients: dict[str, str | None] = {}
        rel_col: list[str] = []
        labels = array.array("f")
        age_col: list[float | None] = []
        sex_col: list[str | None] = []
        view_col: list[str | None] = []
        group_col: list[str | None] = []
        for line, row in enumerate(itertools.chain(head, rows), start=2):
            frontal = row[i_frontal].strip().lower() == "frontal"
            if opts.frontal_only and not frontal:
                continue
            rel = row[i_path].strip()
            if strip_first:
                rel = rel.split("/", 1)[1] if "/" in rel else rel
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                resolved = resolve_under_root(root_s, rel, f"{where} line {line}")
                rel = os.path.relpath(resolved, root_s)
            try:
                labels.extend([values[row[i]] for i in i_labels])
            except KeyError:
                for i in i_labels:
                    if row[i] not in values:
                        try:
                            values[row[i]] = chexpert_value(row[i], opts.uncertain)
                        except ValueError as exc:
                            raise ValueError(f"{where} line {line}: {exc}") from None
                labels.extend([values[row[i]] for i in i_labels])
            cell = row[i_age]
            if cell not in ages:
                ages[cell] = normalise_age(cell)
            age_col.append(ages[cell])
            cell = row[i_sex]
            if cell not in sexes:
                sexes[cell] = normalise_sex(cell)
            sex_col.append(sexes[cell])
            cell = row[i_appa].strip() if frontal else "LATERAL"
            if cell not in views:
                views[cell] = cell or None
            view_col.append(views[cell])
            parts = rel.rsplit("/", 3)  # .../patient00001/study1/view1_frontal.jpg
            patient = parts[-3] if len(parts) >= 3 else ""
            if patient not in patients:
                patients[patient] = patient if patient.startswith("patient") else None
            group_col.append(patients[patient])
            rel_col.append(rel)
        k = len(i_labels)
        records = ColumnRecords(
            root_s,
            rel_col,
            np.frombuffer(labels, dtype=np.float32).reshape(-1, k),
            {"age": age_col, "sex": sex_col, "view": view_col},
            group_col,
        )
        if opts.skip_missing:
            keep, self.check_note = check_files(root_s, rel_col, "chexpert")
            missing = int(len(keep) - keep.sum())
            if missing:
                records = records.take(keep)
                log.warning(
                    "chexpert: %d listed image(s) not found under %s (skipped)", missing, root
                )
        self.records = records


def _dataset_folder(root: Path, table: str) -> Path:
    """``root``, or its ``CheXpert-v1.0[-small]`` sub-folder when only that holds ``table``."""
    if (root / table).is_file() or (root / f"{table}.gz").is_file():
        return root
    for child in sorted(root.glob("CheXpert*")):
        if child.is_dir() and ((child / table).is_file() or (child / f"{table}.gz").is_file()):
            return child
    return root


def _strip_first_component(root: Path, paths: list[str]) -> bool:
    """CheXpert paths start with ``CheXpert-v1.0[-small]/``; drop it if root is that folder."""
    for rel in paths:
        rel = rel.strip()
        if "/" not in rel:
            return False
        if (root / rel).exists():
            return False
        if (root / rel.split("/", 1)[1]).exists():
            return True
    first = paths[0].strip().split("/", 1)[0] if paths else ""
    return first.lower().startswith("chexpert")
