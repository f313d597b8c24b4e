"""`medssl prepare`: include/exclude patterns, label and mask files skipped, an empty
selection is an error, and burned-in text (ultrasound) is warned about."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from data_helpers import gradient, write_png
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medssl.cli_data import prepare as prepare_command
from medssl.data.source_filter import SourceFilter, burned_in_text, is_label_path


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("case_0001_label.nrrd", True),
        ("case_0001/image.nrrd", False),
        ("Task01/labelsTr/liver_3.nii.gz", True),
        ("Task01/imagesTr/liver_3.nii.gz", False),
        ("lits/segmentation-0.nii", True),
        ("lits/volume-0.nii", False),
        ("cxr/p1_lungMask.png", True),
        ("study/SEG/1.dcm", True),
        ("kits/case_00000/gt.nii.gz", True),
        ("chest/PA_view/0001.dcm", False),
        ("labels.png", True),
    ],
)
def test_label_and_mask_paths(path: str, label: bool) -> None:
    assert is_label_path(path) is label


def test_include_exclude_and_labels_counted() -> None:
    sources = ["a/1.dcm", "a/1_mask.png", "b/2.png", "b/scout/3.dcm", "c/4.nii"]
    pick = SourceFilter(include=["*.dcm", "*.png"], exclude=["*/scout/*"])
    assert pick(sources) == ["a/1.dcm", "b/2.png"]
    assert (pick.excluded, pick.labels) == (2, 1)
    assert "1 label/mask files skipped" in (pick.summary() or "")
    assert SourceFilter(keep_labels=True)(sources) == sources


def _images(root: Path) -> None:
    for rel in ("p1/view.png", "p1/view_mask.png", "p2/view.png", "p2/scout.png"):
        write_png(root / rel, gradient(40, 48))


def _manifest_rows(out: Path) -> int:
    with (out / "manifest.csv").open() as fh:
        return len(list(csv.DictReader(fh)))


def test_prepare_cli_filters(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _images(src)
    result = CliRunner().invoke(
        prepare_command,
        [str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1", "--exclude", "*scout*"],
    )
    assert result.exit_code == 0, result.output
    assert "2 source files: 2 written" in result.output
    assert "1 label/mask files skipped" in result.output and "1 files left out" in result.output
    assert _manifest_rows(tmp_path / "out") == 2
    kept = CliRunner().invoke(
        prepare_command,
        [str(src), str(tmp_path / "all"), "--size", "16", "--workers", "1", "--keep-labels"],
    )
    assert kept.exit_code == 0 and _manifest_rows(tmp_path / "all") == 4


@pytest.mark.parametrize("how", ["empty", "only labels", "nothing included"])
def test_prepare_cli_empty_source_warns_and_exits_1(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    args = [str(src), str(tmp_path / "out"), "--workers", "1"]
    if how == "only labels":
        write_png(src / "x_label.png", gradient(20, 20))
    if how == "nothing included":
        _images(src)
        args += ["--include", "*.dcm"]
    result = CliRunner().invoke(prepare_command, args)
    assert result.exit_code == 1
    assert "0 source files" in result.output
    assert "warning: no source file to prepare" in result.output
    if how == "only labels":
        assert "--keep-labels" in result.output


def _dicom(path: Path, modality: str, burned: str | None) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = modality
    if burned is not None:
        ds.BurnedInAnnotation = burned
    ds.Rows, ds.Columns = 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(256, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_burned_in_text_is_warned_about(tmp_path: Path) -> None:
    src = tmp_path / "src"
    us = _dicom(src / "us.dcm", "US", None)
    declared = _dicom(src / "xa.dcm", "XA", "YES")
    clean_us = _dicom(src / "us_clean.dcm", "US", "NO")
    cr = _dicom(src / "cr.dcm", "CR", None)
    assert [burned_in_text(str(p)) for p in (us, declared, clean_us, cr)] == [
        True,
        True,
        False,
        False,
    ]
    assert not burned_in_text(str(write_png(src / "frame.png", gradient(16, 16))))
    result = CliRunner().invoke(
        prepare_command, [str(src), str(tmp_path / "out"), "--size", "16", "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "warning: 2 DICOM files declare text burned into their pixels" in result.output
