"""Every built-in adapter passes the dataset contract of :mod:`medssl.testing.dataset`."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from data_helpers import FIXTURES, REPO, gradient, write_png
from PIL import Image

from medssl.data import (
    CheXpert,
    CsvManifest,
    DemoCXR,
    ImageFolder,
    MimicCxrJpg,
    NIHChestXray14,
    SyntheticImages,
)
from medssl.testing.dataset import DatasetContractTests


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16), 90, np.uint8)).save(path)


class TestSynthetic(DatasetContractTests):
    factory = SyntheticImages
    options = {"n_images": 6, "image_size": 16, "with_mask": True, "with_text": True}
    bad_options = [{"n_images": 0}, {"channels": 2}]


class TestImageFolder(DatasetContractTests):
    factory = ImageFolder
    bad_options = [{"root": "/no/such/folder"}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        write_png(tmp_path / "a" / "x.png", gradient(10, 14))
        write_png(tmp_path / "b" / "y.png", gradient(12, 9, np.uint16))
        return {"root": str(tmp_path), "image_size": 8, "labels_from_folders": True}


class TestCsvManifest(DatasetContractTests):
    factory = CsvManifest
    bad_options = [{"root": "/no/such/folder"}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        with open(tmp_path / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "y", "mask", "report"])
            for i in range(3):
                write_png(tmp_path / f"{i}.png", gradient(10, 10))
                write_png(tmp_path / f"m{i}.png", np.eye(10, dtype=np.uint8))
                writer.writerow([f"{i}.png", i % 2, f"m{i}.png", f"report {i}"])
        return {
            "root": str(tmp_path),
            "image_size": 8,
            "label_columns": ["y"],
            "mask_column": "mask",
            "mask_names": ["bg", "diag"],
            "text_column": "report",
        }


class TestNIH(DatasetContractTests):
    factory = NIHChestXray14
    bad_options = [{"root": "/no/such/folder"}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        shutil.copytree(FIXTURES / "nih", tmp_path, dirs_exist_ok=True)
        for name in ("90000001_000.png", "90000003_000.png"):
            write_png(tmp_path / "images" / name, gradient(16, 16))
        return {"root": str(tmp_path), "image_size": 8}


class TestCheXpert(DatasetContractTests):
    factory = CheXpert
    bad_options = [{"root": "/no/such/folder"}, {"root": ".", "uncertain": "maybe"}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        shutil.copytree(FIXTURES / "chexpert", tmp_path, dirs_exist_ok=True)
        with open(tmp_path / "train.csv") as fh:
            for row in csv.DictReader(fh):
                _jpg(tmp_path / row["Path"].split("/", 1)[1])
        return {"root": str(tmp_path), "image_size": 8, "uncertain": "ignore"}


class TestMimic(DatasetContractTests):
    factory = MimicCxrJpg
    bad_options = [{"root": "/no/such/folder"}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        shutil.copytree(FIXTURES / "mimic", tmp_path, dirs_exist_ok=True)
        with open(tmp_path / "mimic-cxr-2.0.0-split.csv") as fh:
            for r in csv.DictReader(fh):
                s, st = r["subject_id"], r["study_id"]
                _jpg(tmp_path / f"files/p{s[:2]}/p{s}/s{st}/{r['dicom_id']}.jpg")
        return {"root": str(tmp_path), "image_size": 8, "split": None}


class TestDemoCXR(DatasetContractTests):
    factory = DemoCXR
    options = {"image_size": 32, "masks": True, "split": "val"}
    bad_options = [{"root": str(REPO / "tests")}, {"subset": "ct"}]
