"""Datasets linked into place: symlinked folders are followed, loops cut, and can be turned off."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import FIXTURES, gradient, write_png
from PIL import Image

from medssl.data import CheXpert, ImageFolder, MimicCxrJpg, NIHChestXray14
from medssl.data.files import scan_folder
from medssl.data.prepare import prepare


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16), 128, np.uint8)).save(path)


def test_walk_follows_links_once_and_cuts_loops(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_png(store / "a.png", gradient(8, 8))
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    os.symlink(store, root / "linked")
    os.symlink(store, root / "sub" / "again")  # a second link to the same folder
    os.symlink(root, root / "sub" / "loop")  # a link back to an ancestor
    files = scan_folder(root).files
    assert [Path(f).name for f in files] == ["a.png"]
    assert scan_folder(root, follow_links=False).files == []


def test_nih_images_folder_as_a_link(tmp_path: Path) -> None:
    root, store = tmp_path / "nih", tmp_path / "store"
    shutil.copytree(FIXTURES / "nih", root)
    with open(FIXTURES / "nih" / "Data_Entry_2017.csv") as fh:
        for row in csv.DictReader(fh):
            write_png(store / row["Image Index"], gradient(16, 16))
    os.symlink(store, root / "images")
    os.symlink(root, store / "loop")
    assert len(NIHChestXray14(root=str(root), image_size=8)) == 6
    assert len(NIHChestXray14(root=str(root), image_size=8, follow_links=False)) == 0


def test_chexpert_linked_folders_and_parent_root(tmp_path: Path) -> None:
    parent = tmp_path / "datasets"
    root = parent / "CheXpert-v1.0-small"
    shutil.copytree(FIXTURES / "chexpert", root)
    store = tmp_path / "store"
    for split in ("train", "valid"):
        with open(root / f"{split}.csv") as fh:
            for row in csv.DictReader(fh):
                _jpg(store / row["Path"].split("/", 1)[1])
        os.symlink(store / split, root / split)
    assert len(CheXpert(root=str(root))) == 6
    # root may be the usual parent folder: the table is found in CheXpert-v1.0-small/
    assert len(CheXpert(root=str(parent))) == 6
    assert len(CheXpert(root=str(parent), split="valid")) == 2


def test_mimic_files_folder_as_a_link(tmp_path: Path) -> None:
    root, store = tmp_path / "mimic", tmp_path / "store"
    shutil.copytree(FIXTURES / "mimic", root)
    with open(root / "mimic-cxr-2.0.0-split.csv") as fh:
        for r in csv.DictReader(fh):
            sub, study = r["subject_id"], r["study_id"]
            _jpg(store / f"p{sub[:2]}/p{sub}/s{study}/{r['dicom_id']}.jpg")
    os.symlink(store, root / "files")
    assert len(MimicCxrJpg(root=str(root))) == 3


def test_image_folder_follows_links_by_default(tmp_path: Path) -> None:
    root, store = tmp_path / "root", tmp_path / "store"
    write_png(store / "x.png", gradient(8, 8))
    root.mkdir()
    os.symlink(store, root / "cls_a")
    os.symlink(root, store / "loop")
    ds = ImageFolder(root=str(root), labels_from_folders=True)
    assert len(ds) == 1 and ds.label_names == ["cls_a"]
    with pytest.raises(FileNotFoundError, match="follow_links"):
        ImageFolder(root=str(root), follow_links=False)


def test_prepare_follows_a_linked_source_folder(tmp_path: Path) -> None:
    source, store = tmp_path / "src", tmp_path / "store"
    write_png(store / "x.png", gradient(16, 16))
    source.mkdir()
    os.symlink(store, source / "linked")
    report = prepare(source, tmp_path / "out", size=8, workers=1)
    assert report.total == 1 and report.written == 1
    assert prepare(source, tmp_path / "out2", size=8, workers=1, follow_links=False).total == 0
