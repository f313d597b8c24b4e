"""Hostile data folders: PHI in names and tags, FIFOs, bombs, NaN pixels, odd file names.

Each case is one item of issue #15 (data side): the behaviour asserted is a counted,
PHI-free failure or a clear one-line error, never a hang, a traceback or a silent
success.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import signal
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from data_helpers import write_png
from PIL import Image
from pydantic import BaseModel, ConfigDict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medssl import hookimpl
from medssl.cli import main
from medssl.cli_data import prepare as prepare_command
from medssl.config import load_recipe
from medssl.data import ImageFolder, LoadFailure, keys
from medssl.data.base import read_mask
from medssl.data.dicom import _decode
from medssl.data.files import DataFileError, NonFiniteError, scan_folder
from medssl.data.keys import KEY_FILE_NAME, data_key, dataset_secret
from medssl.data.prepare import TooManyPrepareFailures, prepare
from medssl.data.readers import ReadSettings, is_supported, read_image
from medssl.data.robust import TooManyLoadFailures, describe_error
from medssl.engine.trainer import train
from medssl.plugins import load_registry
from medssl.testing.pytest_plugin import TINY_RECIPE

PHI = ("Doe", "DOE", "John", "JOHN", "8675309", "QUINCY")


@pytest.fixture(autouse=True)
def _deadline() -> Iterator[None]:
    """A hang (a FIFO opened for reading) fails the test instead of blocking the suite."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def write_dicom(path: Path, pixels: np.ndarray, **tags: object) -> Path:
    """A minimal secondary-capture DICOM; float32 pixels go to FloatPixelData."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if pixels.dtype == np.float32:
        ds.BitsAllocated = 32
        ds.FloatPixelData = pixels.tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` but holds a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _noise(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def _phi_folder(root: Path) -> Path:
    """Identifiers in folder names, file names and DICOM tags, good files and bad."""
    patient = root / "Doe^John_PID-8675309"
    write_png(patient / "DOE_JOHN_QUINCY_scan.png", _noise(0))
    write_dicom(
        patient / "DOE_JOHN_QUINCY_ct.dcm",
        np.arange(40 * 48, dtype=np.uint16).reshape(40, 48),
        PatientName="DOE^JOHN^QUINCY",
        PatientID="PID-8675309",
    )
    write_dicom(
        patient / "DOE_JOHN_bad_photometric.dcm",
        np.zeros((40, 48), np.uint16),
        PhotometricInterpretation="DOEJOHN",
        PatientName="DOE^JOHN",
    )
    (patient / "DOE_JOHN_QUINCY_empty.png").write_bytes(b"")
    (patient / "DOE_JOHN_QUINCY_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 Doe John 8675309")
    for i in range(5):
        write_png(root / f"img{i}.png", _noise(10 + i))
    return patient


def _phi_found(texts: list[str], folder: Path) -> list[str]:
    hits = [f"text: {word}" for text in texts for word in PHI if word in text]
    for path in folder.rglob("*"):
        hits += [f"name: {path}" for word in PHI if word in str(path.relative_to(folder))]
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path.name}: {word}" for word in PHI if word.encode() in data]
    return hits


def _recipe(tmp_path: Path, root: Path, name: str = "r.yaml", batch_size: int = 3) -> Path:
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["output_dir"] = str(tmp_path / "run")
    recipe["data"] = {"name": "image_folder", "root": str(root), "image_size": 64, "channels": 1}
    recipe["train"].update(batch_size=batch_size, steps=3)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_prepare_and_run_write_no_phi(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    _phi_folder(src)
    out = tmp_path / "out"
    runner = CliRunner()
    prepared = runner.invoke(
        prepare_command,
        [str(src), str(out), "--size", "16", "--workers", "1", "--max-failure-share", "0.5"],
    )
    assert prepared.exit_code == 0, prepared.output
    assert "10 source files: 7 written, 0 already done, 3 failed" in prepared.output
    with open(out / "failures.csv") as fh:
        reasons = {row["reason"] for row in csv.DictReader(fh)}
    assert reasons == {
        "DicomReadError: unsupported Photometric Interpretation (0028,0004)",
        "DataFileError: empty file",
        "DataFileError: corrupt image header",
    }
    caplog.set_level(logging.INFO)
    trained = runner.invoke(
        main, ["run", str(_recipe(tmp_path, src)), "train.max_failure_share=0.5"]
    )
    assert trained.exit_code == 0, trained.output
    logs = [r.getMessage() for r in caplog.records]
    assert any("failed to load" in m for m in logs)
    texts = [prepared.output, trained.output, *logs]
    assert _phi_found(texts, out) == []
    assert _phi_found(texts, tmp_path / "run") == []
    assert not list(src.rglob(KEY_FILE_NAME))  # nothing written into the data folder

    # The same check finds the identifiers once the user asks for paths: it can fail.
    shown = runner.invoke(
        prepare_command, [str(src), str(tmp_path / "o2"), "--workers", "1", "--show-paths"]
    )
    assert shown.exit_code == 1  # 3 of 10 failed, above the default 5 %
    assert "Doe^John_PID-8675309/DOE_JOHN_QUINCY_empty.png: DataFileError" in shown.output
    assert _phi_found([], tmp_path / "o2")


def test_keys_are_keyed_per_dataset_and_stable(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_png(root / "Doe^John" / "x.png", _noise(1))
    secret_a = dataset_secret(a)
    assert secret_a == dataset_secret(a)  # stable: a rerun skips finished outputs
    assert data_key(secret_a, "Doe^John/x.png") != data_key(dataset_secret(b), "Doe^John/x.png")
    # a secret placed beside the source wins (shared between users); OUT may not hold it
    (b / KEY_FILE_NAME).write_text(secret_a.hex())
    keys._secret_for.cache_clear()
    assert dataset_secret(b) == secret_a
    (b / "Doe^John" / "x.png").write_bytes(b"")
    ds = ImageFolder(root=str(b), image_size=16)
    assert ds[0].path == data_key(secret_a, "Doe^John/x.png")
    os.environ["MEDSSL_SHOW_PATHS"] = "1"  # what `medssl run --show-paths` sets
    try:
        assert ds[0] == LoadFailure("Doe^John/x.png", "DataFileError: empty file")
    finally:
        del os.environ["MEDSSL_SHOW_PATHS"]
    with pytest.raises(ValueError, match="must not lie inside OUT"):
        prepare(a, tmp_path / "out", key_file=tmp_path / "out" / "k")


def test_fifo_and_devices_are_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for i in range(4):
        write_png(root / f"{i}.png", _noise(i))
    os.mkfifo(root / "scan.png")
    os.mkfifo(root / "SCAN0001")  # extension-less: would be sniffed for DICM
    assert not is_supported(root / "SCAN0001")
    with pytest.raises(DataFileError, match="not a regular file"):
        read_image(root / "scan.png")
    with pytest.raises(DataFileError, match="not a regular file"):
        read_mask(str(root / "scan.png"), None, ReadSettings())  # masks too
    report = prepare(root, tmp_path / "out", size=16, workers=1)
    assert (report.total, report.written, report.not_regular) == (4, 4, 2)
    assert "2 non-regular file(s)" in str(report)
    ds = ImageFolder(root=str(root), image_size=16)
    assert len(ds) == 4 and all(isinstance(ds[i], dict) for i in range(4))


def test_unreadable_folder_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "d"
    write_png(root / "a.png", _noise(0))
    write_png(root / "locked" / "b.png", _noise(1))
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if str(path).endswith("locked"):  # what root cannot be refused by chmod
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    scan = scan_folder(root, is_supported)
    assert (len(scan.files), scan.unreadable) == (1, 1)
    report = prepare(root, tmp_path / "out", size=16, workers=1)
    assert report.unreadable_folders == 1 and "1 unreadable folder(s)" in str(report)


def test_sizes_are_checked_from_the_header(tmp_path: Path) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 13000, 13000)
    with pytest.raises(DataFileError, match="larger than the 40000000-pixel limit"):
        read_image(bomb)  # refused before decoding: the file holds no such pixel data
    strip = write_png(tmp_path / "strip.png", np.zeros((1, 40000), np.uint8))
    with pytest.raises(DataFileError, match=r"1x40000 pixels has an aspect ratio beyond 20:1"):
        read_image(strip)
    assert read_image(strip, ReadSettings(max_aspect=None)).shape == (1, 1, 40000)
    with pytest.raises(DataFileError, match="larger than the 100-byte limit"):
        read_image(write_png(tmp_path / "x.png", _noise(0)), ReadSettings(max_file_bytes=100))
    big = write_dicom(tmp_path / "big.dcm", np.zeros((8, 400), np.uint16))
    with pytest.raises(DataFileError, match="aspect ratio"):
        read_image(big)
    with pytest.raises(DataFileError, match="8x400 pixels is larger than the 3000-pixel limit"):
        read_image(
            big,
            ReadSettings(max_pixels=3200 - 1 + 1, max_aspect=None)
            if False
            else ReadSettings(max_pixels=3000, max_aspect=None),
        )
    claims = write_dicom(tmp_path / "claims.dcm", np.zeros((8, 40), np.uint16), NumberOfFrames=1000)
    with pytest.raises(DataFileError, match="pixel data decodes to 640000 bytes"):
        read_image(claims, ReadSettings(max_file_bytes=100_000))  # a 1 kB file
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)), str(vol))
    with pytest.raises(DataFileError, match="decodes to 1048576 bytes"):
        read_image(vol, ReadSettings(max_file_bytes=100_000))


def test_non_finite_pixels_are_counted_failures(tmp_path: Path) -> None:
    root = tmp_path / "d"
    nan = np.full((32, 32), np.nan, np.float32)
    some_inf = np.ones((32, 32), np.float32)
    some_inf[3, 4] = np.inf
    root.mkdir()
    Image.fromarray(nan).save(root / "nan.tif")
    Image.fromarray(some_inf).save(root / "inf.tif")
    write_dicom(root / "nan.dcm", nan)
    nib.save(
        nib.Nifti1Image(np.full((8, 8, 4), np.nan, np.float32), np.eye(4)), str(root / "nan.nii")
    )
    partly = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    partly[0] = np.nan  # a NaN background, as some processed MR volumes have
    nib.save(nib.Nifti1Image(partly, np.eye(4)), str(root / "partly.nii"))
    write_png(root / "ok.png", _noise(0))
    for name in ("nan.tif", "inf.tif", "nan.dcm", "nan.nii", "partly.nii"):
        with pytest.raises(NonFiniteError, match="NaN or infinite"):
            read_image(root / name)
    with pytest.raises(NonFiniteError):  # all-NaN is never a black image
        read_image(root / "nan.nii", ReadSettings(non_finite="fill"))
    filled = read_image(root / "partly.nii", ReadSettings(non_finite="fill"))
    assert np.isfinite(filled).all()
    ds = ImageFolder(root=str(root), image_size=16)
    items = [ds[i] for i in range(len(ds))]
    failures = [item for item in items if isinstance(item, LoadFailure)]
    secret = dataset_secret(root)
    assert {f.path for f in failures} == {
        data_key(secret, n) for n in ("inf.tif", "nan.dcm", "nan.nii", "nan.tif", "partly.nii")
    }
    assert all(f.reason.startswith("NonFiniteError: ") for f in failures)


def test_non_utf8_file_name(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    name = os.fsencode(root) + b"/caf\xe9_\xff.png"
    Image.fromarray(_noise(0)).save(name.decode("utf-8", "surrogateescape"))
    (root / "empty\udce9.png").write_bytes(b"")
    write_png(root / "ok.png", _noise(1))
    report = prepare(root, tmp_path / "out", size=16, workers=1, max_failure_share=0.5)
    assert (report.total, report.written, len(report.failures)) == (3, 2, 1)
    shown = prepare(
        root, tmp_path / "o2", size=16, workers=1, with_source_paths=True, max_failure_share=0.5
    )
    assert shown.failures[0][0] == "empty\\xe9.png"
    with open(tmp_path / "o2" / "manifest.csv", encoding="utf-8") as fh:
        assert "caf\\xe9_\\xff.png" in {row["source"] for row in csv.DictReader(fh)}
    ds = ImageFolder(root=str(root), image_size=16)
    items = [ds[i] for i in range(len(ds))]
    assert sum(isinstance(i, dict) for i in items) == 2


def test_damaged_files_are_reported_where_detectable(tmp_path: Path) -> None:
    pixels = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48)
    data = write_dicom(tmp_path / "a.dcm", pixels, PatientName="DOE^JOHN").read_bytes()
    (tmp_path / "short.dcm").write_bytes(data[:-100])  # pixel data cut short
    with pytest.raises(DataFileError, match="pixel data cannot be decoded") as info:
        read_image(tmp_path / "short.dcm")
    assert "DOE" not in describe_error(info.value, paths=False)

    class Warns:  # a dataset whose pixel decoder warns
        file_meta: dict[str, str] = {}

        def __init__(self, message: str) -> None:
            self.message = message

        @property
        def pixel_array(self) -> np.ndarray:
            warnings.warn(self.message, UserWarning, stacklevel=2)
            return np.zeros((2, 2))

    with pytest.raises(DataFileError, match="decoded with a warning"):
        _decode(Warns("corrupt JPEG stream"))
    assert _decode(Warns("1 bytes of excess padding to be removed")).shape == (2, 2)
    png = write_png(tmp_path / "a.png", _noise(0)).read_bytes()
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF  # inside the zlib stream of IDAT
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    with pytest.raises(DataFileError, match="truncated or corrupt image data"):
        read_image(tmp_path / "flipped.png")


def test_prepare_checks_max_failure_share(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for i in range(11):
        write_png(root / f"{i}.png", _noise(i))
    for i in range(9):
        (root / f"bad{i}.png").write_bytes(b"not a png")
    with pytest.raises(TooManyPrepareFailures, match=r"9 of 20 files \(45.00%\) failed") as info:
        prepare(root, tmp_path / "out", size=16, workers=1, max_failure_share=0.4)
    assert (tmp_path / "out" / "manifest.csv").is_file() and info.value.report.written == 11
    result = CliRunner().invoke(prepare_command, [str(root), str(tmp_path / "o2"), "--size", "16"])
    assert result.exit_code == 1 and "more than max_failure_share=5.00%" in result.output
    assert "Traceback" not in result.output


def test_validate_when_the_first_file_is_empty(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "a_empty.png").write_bytes(b"")
    write_png(root / "b.png", _noise(0, (64, 64)))
    runner = CliRunner()
    result = runner.invoke(main, ["validate", str(_recipe(tmp_path, root, batch_size=2))])
    assert result.exit_code == 0, result.output
    assert "1 of the first items failed to load" in result.output
    assert "DataFileError: empty file" in result.output and "a_empty" not in result.output
    (root / "b.png").write_bytes(b"")
    result = runner.invoke(main, ["validate", str(_recipe(tmp_path, root, batch_size=2))])
    assert (
        result.exit_code == 1
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    assert "none of the first 2 items of the dataset could be read" in result.output


class _HalfBroken(torch.utils.data.Dataset):
    """20 grey images of which 9 (45 %) fail to load like corrupt files."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __len__(self) -> int:
        return 20

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | LoadFailure:
        if index % 2 == 0 and index < 18:
            return LoadFailure(f"key{index}", "DataFileError: empty file")
        return {"image": torch.full((1, 64, 64), index / 20.0)}


class _HalfBrokenPlugin:
    @hookimpl
    def medssl_register_datasets(self, register: object) -> None:
        register("half_broken", _HalfBroken)  # type: ignore[operator]


def test_max_failure_share_is_checked_on_the_last_epoch(tiny_recipe: Path) -> None:
    # One step of one batch of all 20 images: the run never starts a second epoch, so
    # only the end-of-run check sees the 45 % of failures (before, this exited 0).
    registry = load_registry([_HalfBrokenPlugin()])
    overrides = [
        "data.name=half_broken",
        "train.steps=1",
        "train.batch_size=20",
        "train.max_failure_share=0.4",
    ]
    recipe = load_recipe(tiny_recipe, overrides, registry)
    with pytest.raises(
        TooManyLoadFailures,
        match=r"45.00% of samples failed to load, more than max_failure_share=40.00%",
    ):
        train(recipe, registry)
    assert (Path(recipe.recipe.output_dir) / "backbone.safetensors").is_file()  # work kept


def test_no_writable_key_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "not_a_dir").write_text("x")
    monkeypatch.setenv("MEDSSL_KEY_DIR", str(tmp_path / "not_a_dir" / "keys"))
    root = tmp_path / "d"
    write_png(root / "ok.png", _noise(0))
    (root / "DOE_empty.png").write_bytes(b"")
    result = CliRunner().invoke(prepare_command, [str(root), str(tmp_path / "out")])
    assert result.exit_code == 1 and "no key secret for the data folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    ds = ImageFolder(root=str(root), image_size=16)  # a run still names failures by key
    failure = ds[0]
    assert isinstance(failure, LoadFailure) and len(failure.path) == 24
    assert "DOE" not in failure.path
