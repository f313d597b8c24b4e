"""ct_volume through medssl's dataset contract, plus HU fidelity and DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from medssl_ct.volume import CTVolume, decode_hu, encode_hu

from medssl.data import data_key, dataset_secret
from medssl.testing.dataset import DatasetContractTests

VOLUMES = Path(__file__).parent / "fixtures" / "volumes"
CHEST = {"image": "chest_ct.nii.gz", "mask": "chest_ct_mask.nii.gz"}
LUNG1 = {"image": "lung1_ct.nrrd", "mask": "lung1_ct_mask.nrrd"}
BAD = [
    {"root": "/no/such/folder"},
    {"volumes": [{"image": "/no/such/file.nii.gz"}]},
    {"root": str(VOLUMES), "slab_slices": 2},
    {"root": str(VOLUMES), "window": [400, -1000]},
    {"root": str(VOLUMES), "volumes": [{"image": "brain1_mr.nrrd"}], "with_mask": True},
]


class TestSlices(DatasetContractTests):
    factory = CTVolume
    options = {"root": str(VOLUMES), "image_size": 32, "slice_stride": 8}
    bad_options = BAD


class TestSlabsWithMasks(DatasetContractTests):
    factory = CTVolume
    options = {
        "root": str(VOLUMES),
        "volumes": [CHEST, LUNG1],
        "mode": "slab",
        "slab_slices": 3,
        "image_size": 32,
        "slice_stride": 6,
        "with_mask": True,
        "mask_classes": {"lung": [10, 11, 12, 13, 14], "heart": [51]},
    }


class TestPatches3D(DatasetContractTests):
    factory = CTVolume
    options = {
        "root": str(VOLUMES),
        "volumes": [CHEST],
        "mode": "patch",
        "patch_voxels": 16,
        "patches_per_volume": 3,
        "with_mask": True,
    }
    image_ndim = 4


class TestMRPercentile(DatasetContractTests):
    factory = CTVolume
    options = {
        "root": str(VOLUMES),
        "volumes": [{"image": "brain1_mr.nrrd", "mask": "brain1_mr_mask.nrrd"}],
        "intensity": "percentile",
        "spacing": [4.0, 4.0, 6.5],
        "image_size": 16,
        "with_mask": True,
    }


def test_hu_encoding_round_trips():
    hu = torch.tensor([-1024.0, -600.0, 0.0, 40.0, 1000.0, 3071.0])
    torch.testing.assert_close(decode_hu(encode_hu(hu.clone())), hu, atol=1e-3, rtol=0)


def test_slices_carry_hounsfield_units():
    """Lung parenchyma is ~-850 HU; this CT is contrast-enhanced, its blood pool ~150-400 HU."""
    ds = CTVolume(
        root=str(VOLUMES),
        volumes=[CHEST],
        image_size=128,
        with_mask=True,
        mask_classes={"lung": [10, 11, 12, 13, 14], "heart": [51]},
    )
    sample = ds[40]
    hu = decode_hu(sample["image"][0])
    lung = hu[sample["mask"] == 1]
    heart = hu[sample["mask"] == 2]
    assert lung.numel() > 100 and heart.numel() > 20
    assert -950 < float(lung.median()) < -650
    assert 100 < float(heart.median()) < 450


def test_window_mode_and_mask_classes():
    ds = CTVolume(
        root=str(VOLUMES),
        volumes=[CHEST],
        intensity="window",
        window=[-1000, 400],
        image_size=32,
        with_mask=True,
        mask_classes={"heart": [51]},
    )
    assert ds.mask_names == ["background", "heart"] and ds.num_mask_classes == 2
    sample = ds[40]
    assert set(sample["mask"].unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="label 51 is in two classes"):
        CTVolume(root=str(VOLUMES), mask_classes={"a": [51], "b": [51]})


def test_slabs_are_neighbouring_slices():
    common = {"root": str(VOLUMES), "volumes": [{"image": "lung1_ct.nrrd"}], "image_size": 32}
    slab = CTVolume(mode="slab", slab_slices=3, **common)[20]["image"]
    slices = CTVolume(**common)
    for k in range(3):
        torch.testing.assert_close(slab[k], slices[19 + k]["image"][0])


def test_scan_pairs_masks_by_name():
    ds = CTVolume(root=str(VOLUMES), with_mask=True)
    images = sorted(Path(p).name for p, _, _ in ds.volumes)
    masks = sorted(Path(m).name for _, m, _ in ds.volumes)
    assert images == ["brain1_mr.nrrd", "chest_ct.nii.gz", "lung1_ct.nrrd", "lung2_ct.nrrd"]
    assert masks == [name.replace(".", "_mask.", 1) for name in images]


def test_unreadable_volume_is_skipped_and_named_by_key(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MEDSSL_KEY_DIR", str(tmp_path / "keys"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    (tmp_path / "good.nrrd").symlink_to(VOLUMES / "lung1_ct.nrrd")
    ds = CTVolume(root=str(tmp_path))
    assert [name for name, _ in ds.skipped] == ["broken.nii.gz"]
    key = data_key(dataset_secret(tmp_path), "broken.nii.gz")  # logs name no file
    assert any(key in r.getMessage() for r in caplog.records)
    assert not any("broken" in r.getMessage() for r in caplog.records)
    assert len(ds) == 48


def _write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """``hu`` [z, y, x] as a CT series (stored unsigned, rescale intercept -1024), no PHI."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for z, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{z:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z * spacing[2])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (plane + 1024).astype(np.uint16).tobytes()
        ds.save_as(folder / f"{z:03d}.dcm", enforce_file_format=True)


def test_dicom_series_reads_in_hounsfield_units(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(5, 24, 24)).astype(np.int16)
    series = tmp_path / "series"
    series.mkdir()
    _write_dicom_series(series, hu, (1.0, 1.0, 2.0))
    ds = CTVolume(volumes=[{"image": str(series)}], image_size=24)
    assert len(ds) == 5
    got = decode_hu(ds[2]["image"][0]).flatten().sort().values
    want = torch.from_numpy(hu[2].astype(np.float32)).flatten().sort().values
    torch.testing.assert_close(got, want, atol=0.5, rtol=0)


def test_split_keeps_neighbouring_slices_together():
    common = {"root": str(VOLUMES), "volumes": [CHEST], "image_size": 16, "split_block": 8}
    everything = CTVolume(**common)
    train = CTVolume(split="train", **common)
    val = CTVolume(split="val", **common)
    assert len(train) + len(val) == len(everything) == 66
    assert 0.1 < len(val) / len(everything) < 0.3
    val_slices = [val._locate(i)[1] for i in range(len(val))]
    train_slices = {train._locate(i)[1] for i in range(len(train))}
    assert not train_slices & set(val_slices)
    assert all(b - a == 1 for a, b in zip(val_slices[:8], val_slices[1:8], strict=False))
