"""Small made-up datasets in the published layouts of NIH ChestX-ray14, CheXpert and
MIMIC-CXR-JPG, built from the column layouts only (no real patient appears).

Each patient has 1-3 images; one finding alternates between a patient's images and is
drawn into the image (a bright lower half), sex alternates by patient and is drawn too,
so every probe has both classes on both sides of the official split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from medssl.data.chexpert import CHEXPERT_OBSERVATIONS

NIH_HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
NIH_HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
MIMIC_LABELS = sorted(CHEXPERT_OBSERVATIONS)  # the chexpert table's column order


def _image(path: Path, finding: bool, female: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(40, 90, (24, 24)).astype(np.uint8)
    if finding:
        arr[12:] += 120
    arr[:, :6] = 220 if female else 20
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _patients(n: int) -> list[tuple[int, int, bool]]:
    """``(patient number, images, female)`` for ``n`` patients."""
    return [(p, 1 + p % 3, p % 2 == 1) for p in range(n)]


def write_nih(root: Path, n_patients: int = 12, n_test: int = 4, v2020: bool = False) -> dict:
    """``Data_Entry_2017[_v2020].csv``, the two list files and ``images/``; the counts."""
    rows, train_val, test = [], [], []
    for p, n, female in _patients(n_patients):
        pid = 90000000 + p
        for k in range(n):
            name = f"{pid:08d}_{k:03d}.png"
            finding = (p + k) % 2 == 0
            labels = "Effusion" if finding else "No Finding"
            sex = "F" if female else "M"
            rows.append(f"{name},{labels},{k},{pid},{30 + p},{sex},PA,2500,2048,0.143,0.143,")
            (test if p >= n_patients - n_test else train_val).append(name)
            _image(root / "images" / name, finding, female, pid + k)
    table = "Data_Entry_2017_v2020.csv" if v2020 else "Data_Entry_2017.csv"
    header = NIH_HEADER_2020 if v2020 else NIH_HEADER_2017
    (root / table).write_text("\n".join([header, *rows]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return {"train": len(train_val), "val": len(test), "patients": (n_patients - n_test, n_test)}


def write_chexpert(parent: Path, n_train: int = 10, n_valid: int = 5) -> dict:
    """``CheXpert-v1.0-small/{train,valid}.csv`` and their JPEGs under ``parent``."""
    root = parent / "CheXpert-v1.0-small"
    counts = {}
    for split, first, n_pat in (("train", 1, n_train), ("valid", 64541, n_valid)):
        rows = []
        for p, n, female in _patients(n_pat):
            for k in range(n):
                rel = f"{split}/patient{first + p:05d}/study{k + 1}/view1_frontal.jpg"
                finding = (p + k) % 2 == 0
                labels = {c: "" for c in CHEXPERT_OBSERVATIONS}
                labels["Pleural Effusion"] = "1.0" if finding else "0.0"
                labels["No Finding"] = "" if finding else "1.0"
                sex = "Female" if female else "Male"
                rows.append([f"CheXpert-v1.0-small/{rel}", sex, str(40 + p), "Frontal", "PA"])
                rows[-1] += [labels[c] for c in CHEXPERT_OBSERVATIONS]
                _image(root / rel, finding, female, first + p + k)
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CHEXPERT_HEADER)
            writer.writerows(rows)
        counts[split] = len(rows)
    return {"train": counts["train"], "val": counts["valid"], "patients": (n_train, n_valid)}


def write_mimic(root: Path, n_patients: int = 12) -> dict:
    """The split, metadata and chexpert tables of MIMIC-CXR-JPG 2.0.0 and ``files/``."""
    split_rows, meta_rows, label_rows = [], [], []
    counts = {"train": 0, "validate": 0, "test": 0}
    patients = {"train": 0, "validate": 0, "test": 0}
    for p, n, female in _patients(n_patients):
        subject = 10000000 + p
        split = ("train", "train", "validate", "test")[p % 4]
        patients[split] += 1
        for k in range(n):
            study, dicom = 50000000 + 10 * p + k, f"{p:08x}-{k:08x}-00000000-00000000-00000000"
            finding = (p + k) % 2 == 0
            split_rows.append(f"{dicom},{study},{subject},{split}")
            view = "PA" if k % 2 == 0 else "AP"
            meta_rows.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544")
            labels = {c: "" for c in MIMIC_LABELS}
            labels["Pleural Effusion"] = "1.0" if finding else "0.0"
            label_rows.append(",".join([str(subject), str(study), *labels.values()]))
            counts[split] += 1
            path = root / f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
            _image(path, finding, female, subject + k)
    (root / "mimic-cxr-2.0.0-split.csv").write_text(
        "\n".join(["dicom_id,study_id,subject_id,split", *split_rows]) + "\n"
    )
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "\n".join(
            [
                "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
                "ViewPosition,Rows,Columns",
                *meta_rows,
            ]
        )
        + "\n"
    )
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "\n".join([",".join(["subject_id", "study_id", *MIMIC_LABELS]), *label_rows]) + "\n"
    )
    return {
        "train": counts["train"],
        "val": counts["validate"],
        "patients": (patients["train"], patients["validate"]),
    }
