"""Dataset adapters: folders, CSV manifests, NIH / CheXpert / MIMIC layouts, synthetic."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import nrrd
import numpy as np
import pytest
import torch
from data_helpers import FIXTURES, gradient, pydicom_test_file, write_png
from PIL import Image

from medssl.builtins.datasets import DATASETS
from medssl.data import (
    CHEXPERT_OBSERVATIONS,
    NIH_FINDINGS,
    CheXpert,
    CsvManifest,
    ImageFolder,
    LoadFailure,
    ManifestPathError,
    MimicCxrJpg,
    NIHChestXray14,
    SyntheticImages,
    collate,
)
from medssl.data.keys import data_key, dataset_secret

IDENTIFIERS = ("9000000", "patient9", "1900000", "5900000")


def _no_identifiers(sample: dict) -> None:
    assert set(sample["meta"]) == {"age", "sex", "view"}
    blob = repr({k: v for k, v in sample.items() if k != "image"})
    for ident in IDENTIFIERS:
        assert ident not in blob


def _jpg(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16), value, np.uint8)).save(path)


def test_registered_names() -> None:
    # The DATASETS dict is what the built-in hook registers (building the whole registry
    # would import every other component kind too).
    assert set(DATASETS) == {
        "image_folder",
        "csv_manifest",
        "nih_chestxray14",
        "chexpert",
        "mimic_cxr_jpg",
        "synthetic",
        "demo_cxr",
        "streaming",
    }
    for factory in DATASETS.values():
        assert set(factory.capabilities()) == {"has_text", "has_mask"}
        with pytest.raises(Exception, match="bogus"):
            factory.Options(root=".", bogus=1)


def test_image_folder_mixed_formats(tmp_path: Path) -> None:
    write_png(tmp_path / "cats" / "a.png", gradient(20, 30))
    write_png(tmp_path / "cats" / "deep" / "b.png", gradient(20, 30, np.uint16))
    _jpg(tmp_path / "dogs" / "c.jpg")
    shutil.copy(pydicom_test_file("SC_rgb_rle_2frame.dcm"), tmp_path / "dogs" / "d.dcm")
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    ds = ImageFolder(root=str(tmp_path), image_size=8, channels=3)
    assert len(ds) == 4 and ds.label_names is None and not ds.has_text
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (4, 3, 8, 8) and batch["failures"] == []
    labelled = ImageFolder(root=str(tmp_path), image_size=8, labels_from_folders=True)
    assert labelled.label_names == ["cats", "dogs"] and labelled.task == "multiclass"
    assert [int(labelled[i]["label"]) for i in range(4)] == [0, 0, 1, 1]
    frames = ImageFolder(root=str(tmp_path), image_size=8, frame="all")
    assert len(frames) == 3 + 2  # every frame of the 2-frame DICOM
    assert not torch.equal(frames[3]["image"], frames[4]["image"])
    nrrd.write(
        str(tmp_path / "dogs" / "v.nrrd"), np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    )
    slices = ImageFolder(root=str(tmp_path), image_size=8, frame="all", slice_axis=0)
    assert len(slices) == 5 + 4  # plus every slice of the volume along axis 0
    assert {r.frame for r in slices.records if r.path.endswith(".nrrd")} == {0, 1, 2, 3}
    with pytest.raises(FileNotFoundError, match="no readable image"):
        ImageFolder(root=str(FIXTURES / "chexpert"))


def _manifest(tmp_path: Path, rows: list[dict], name: str = "m.csv") -> Path:
    with open(tmp_path / name, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / name


def test_csv_manifest(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "img" / f"{i}.png", gradient(10, 10))
        write_png(tmp_path / "msk" / f"{i}.png", np.full((10, 10), i, np.uint8))
    rows = [
        {
            "file": f"img/{i}.png",
            "a": str(i % 2),
            "b": "" if i == 2 else "1",
            "cls": "xyz"[i],
            "Age": ["34", "058Y", ""][i],
            "Sex": ["M", "Female", "other"][i],
            "View": "PA",
            "report": f"text {i}",
            "seg": f"msk/{i}.png",
            "fold": ["train", "train", "val"][i],
            "Name": "DOE^JOHN",
        }
        for i in range(3)
    ]
    _manifest(tmp_path, rows)
    common = dict(root=str(tmp_path), manifest="m.csv", path_column="file", image_size=8)
    ds = CsvManifest(
        **common,
        label_columns=["a", "b"],
        meta_columns={"age": "Age", "sex": "Sex", "view": "View"},
        text_column="report",
        mask_column="seg",
        mask_names=["bg", "one", "two"],
    )
    assert ds.has_text and ds.has_mask and ds.label_names == ["a", "b"] and ds.num_classes == 2
    s2 = ds[2]
    assert s2["label"].dtype == torch.float32 and s2["label"][0] == 0 and math.isnan(s2["label"][1])
    assert s2["mask"].shape == (8, 8) and (s2["mask"] == 2).all() and s2["text"] == "text 2"
    assert [ds[i]["meta"]["age"] for i in range(3)] == [34.0, 58.0, None]
    assert [ds[i]["meta"]["sex"] for i in range(3)] == ["M", "F", None]
    assert "DOE" not in repr(ds[0])  # unlisted columns never reach a sample
    multiclass = CsvManifest(**common, label_columns=["cls"], label_kind="multiclass")
    assert multiclass.label_names == ["x", "y", "z"]
    assert multiclass[1]["label"].dtype == torch.long and int(multiclass[1]["label"]) == 1
    train = CsvManifest(**common, split_column="fold", split="train")
    assert len(train) == 2 and "label" not in train[0]
    assert CsvManifest.capabilities(text_column="report") == {"has_text": True, "has_mask": False}
    with pytest.raises(ValueError, match=r"column\(s\) \['nope'\] not found"):
        CsvManifest(**common, label_columns=["nope"])
    with pytest.raises(Exception, match="meta_columns"):
        CsvManifest(**common, meta_columns={"name": "Name"})
    _manifest(tmp_path, [{"path": "../outside.png"}], "bad.csv")
    with pytest.raises(ManifestPathError, match=r"bad.csv' line 2: path '../outside.png' escapes"):
        CsvManifest(root=str(tmp_path), manifest="bad.csv")


def test_csv_manifest_missing_file_is_a_counted_failure(tmp_path: Path) -> None:
    _manifest(tmp_path, [{"path": "gone.png"}])
    ds = CsvManifest(root=str(tmp_path), manifest="m.csv")
    item = ds[0]
    assert isinstance(item, LoadFailure) and item.path == data_key(
        dataset_secret(tmp_path), "gone.png"
    )
    assert item.reason == "FileNotFoundError: No such file or directory"


def test_nih_chestxray14(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "nih", tmp_path, dirs_exist_ok=True)
    with open(FIXTURES / "nih" / "Data_Entry_2017.csv") as fh:
        names = [row["Image Index"] for row in csv.DictReader(fh)]
    for i, name in enumerate(names):  # the download's images_00N/images/ layout
        write_png(tmp_path / f"images_00{1 + i % 2}" / "images" / name, gradient(16, 16))
    ds = NIHChestXray14(root=str(tmp_path), image_size=8)
    assert len(ds) == 6 and ds.label_names == NIH_FINDINGS and ds.task == "multilabel"
    by_name = {Path(r.path).name: i for i, r in enumerate(ds.records)}
    s = ds[by_name["90000003_000.png"]]
    on = {NIH_FINDINGS[j] for j in torch.nonzero(s["label"]).ravel().tolist()}
    assert on == {"Effusion", "Mass", "Pleural_Thickening"}
    assert s["meta"] == {"age": 74.0, "sex": "F", "view": "PA"}
    assert ds[by_name["90000002_000.png"]]["label"].sum() == 0  # No Finding
    assert ds[by_name["90000001_001.png"]]["meta"]["age"] == 58.0
    for i in range(len(ds)):
        _no_identifiers(ds[i])
    assert len(NIHChestXray14(root=str(tmp_path), split="test")) == 2
    (tmp_path / "images_001" / "images" / "90000001_000.png").unlink()
    assert len(NIHChestXray14(root=str(tmp_path))) == 5  # missing files are skipped


@pytest.mark.parametrize("policy,expected", [("ones", 1.0), ("zeros", 0.0), ("ignore", math.nan)])
def test_chexpert_uncertain_policies(tmp_path: Path, policy: str, expected: float) -> None:
    root = tmp_path / "CheXpert-v1.0-small"
    shutil.copytree(FIXTURES / "chexpert", root)
    for split in ("train", "valid"):
        with open(root / f"{split}.csv") as fh:
            for row in csv.DictReader(fh):
                _jpg(root / row["Path"].split("/", 1)[1])
    ds = CheXpert(root=str(root), uncertain=policy, image_size=8)
    assert len(ds) == 6 and ds.label_names == CHEXPERT_OBSERVATIONS
    col = {c: i for i, c in enumerate(CHEXPERT_OBSERVATIONS)}
    second = ds[1]  # patient90002 study2: Cardiomegaly -1.0, Lung Opacity 1.0, blank No Finding
    value = float(second["label"][col["Cardiomegaly"]])
    assert (math.isnan(value) and math.isnan(expected)) or value == expected
    assert float(second["label"][col["Lung Opacity"]]) == 1.0
    assert float(second["label"][col["No Finding"]]) == 0.0  # blank = not mentioned
    assert second["meta"] == {"age": 87.0, "sex": "F", "view": "AP"}
    assert ds[3]["meta"]["view"] == "LATERAL"
    assert ds[5]["meta"]["sex"] is None  # "Unknown"
    assert len(CheXpert(root=str(root), frontal_only=True)) == 5
    valid = CheXpert(root=str(root), split="valid")
    assert len(valid) == 2 and not torch.isnan(valid[0]["label"]).any()
    for i in range(len(ds)):
        _no_identifiers(ds[i])
    # also when root is the folder above CheXpert-v1.0-small (paths used as written)
    shutil.copy(root / "train.csv", tmp_path / "train.csv")
    assert len(CheXpert(root=str(tmp_path))) == 6


def test_mimic_cxr_jpg(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "mimic", tmp_path, dirs_exist_ok=True)
    with open(tmp_path / "mimic-cxr-2.0.0-split.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        sub, study = r["subject_id"], r["study_id"]
        _jpg(tmp_path / f"files/p{sub[:2]}/p{sub}/s{study}/{r['dicom_id']}.jpg")
    reports = tmp_path / "reports"
    report = reports / "files/p19/p19000001/s59000001.txt"
    report.parent.mkdir(parents=True)
    report.write_text(
        "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: Clear lungs.\n\n"
        " IMPRESSION: No acute process.\n"
    )
    ds = MimicCxrJpg(root=str(tmp_path), image_size=8)
    assert len(ds) == 3 and not ds.has_text  # the train split
    assert {r.meta["view"] for r in ds.records} == {"PA", "LATERAL"}
    col = {c: i for i, c in enumerate(CHEXPERT_OBSERVATIONS)}
    pa_19000002 = ds[2]["label"]
    assert pa_19000002[col["Cardiomegaly"]] == 1 and pa_19000002[col["Pleural Effusion"]] == 0
    val = MimicCxrJpg(root=str(tmp_path), split="validate", uncertain="ones")
    assert len(val) == 1 and val[0]["label"][col["Pneumonia"]] == 1.0
    assert len(MimicCxrJpg(root=str(tmp_path), views=["PA"])) == 2
    texts = MimicCxrJpg(root=str(tmp_path), reports_root="reports", image_size=8)
    assert texts.has_text and len(texts) == 2  # studies without a report file are skipped
    assert texts[0]["text"] == "Clear lungs. No acute process."
    assert MimicCxrJpg.capabilities(root="x", reports_root="r")["has_text"]
    for d in (ds, texts):
        for i in range(len(d)):
            _no_identifiers(d[i])
            assert d[i]["meta"]["age"] is None and d[i]["meta"]["sex"] is None


def test_synthetic_is_deterministic() -> None:
    a = SyntheticImages(
        n_images=8, image_size=16, num_classes=3, seed=1, with_mask=True, with_text=True
    )
    b = SyntheticImages(n_images=8, image_size=16, num_classes=3, seed=1)
    c = SyntheticImages(n_images=8, image_size=16, num_classes=3, seed=2)
    assert torch.equal(a[5]["image"], b[5]["image"]) and not torch.equal(
        a[5]["image"], c[5]["image"]
    )
    assert [int(a[i]["label"]) for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert a[0]["mask"].shape == (16, 16) and a.has_mask and a.has_text and not b.has_text
    assert "text" in a[0] and "text" not in b[0] and a.num_classes == 3
    batch = collate([a[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].dtype == torch.long
    assert SyntheticImages(channels=3, image_size=8)[0]["image"].shape == (3, 8, 8)
    with pytest.raises(IndexError):
        a[8]
