"""The DICOM pixel pipeline against pydicom's own operators.

Two sets of files: the small DICOMs inside pydicom's wheel (always there: every check of
the pipeline runs on them, MONOCHROME1 and a modality LUT written from them), and every
file of pydicom-data 1.0.0 (real radiographs and the rarer encodings; skipped when those
scans are not beside the repository, see ``MEDSSL_SHARED_DATA``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from data_helpers import pydicom_test_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from medssl.data import DicomReadError, read_dicom
from medssl.data.dicom import count_dicom_frames
from medssl.data.readers import ReadSettings, read_image

# What each file of pydicom-data 1.0.0 must give: "ok" or the words of a specific error.
DECODER_ERROR = "no installed decoder for transfer syntax"
EXPECTED = {
    "693_UNCR.dcm": "ok",
    "MR2_UNCR.dcm": "ok",
    "OBXXXX1A_2frame.dcm": "ok",
    "RG1_UNCR.dcm": "ok",
    "RG3_UNCR.dcm": "ok",
    "SC_rgb_16bit.dcm": "ok",
    "US1_UNCR.dcm": "ok",
    "emri_small.dcm": "ok",
    "mlut_18.dcm": "ok",
    "vlut_04.dcm": "ok",
    "liver.dcm": "modality SEG object is not an image",
    "RG1_J2KR.dcm": "ok-or-decoder",
    "JPEG-LL.dcm": "ok-or-decoder",
    "bad_sequence.dcm": "ok-or-decoder",
}


def _decoder_available(ds: pydicom.Dataset) -> bool:
    try:
        ds.pixel_array  # noqa: B018
    except (RuntimeError, NotImplementedError):
        return False
    return True


def test_every_file_is_listed(pydicom_data: Path) -> None:
    assert sorted(p.name for p in pydicom_data.glob("*.dcm")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_file_reads_or_fails_clearly(pydicom_data: Path, name: str) -> None:
    _reads_or_fails_clearly(pydicom_data / name, EXPECTED[name])


def _reads_or_fails_clearly(path: Path, expected: str) -> None:
    """``expected``: "ok", "ok-or-decoder" (ok where a decoder is installed) or the words
    of the one-line error."""
    if expected == "ok-or-decoder":
        expected = "ok" if _decoder_available(pydicom.dcmread(path)) else DECODER_ERROR
    if expected == "ok":
        image = read_dicom(path)
        assert image.dtype == np.float32 and image.ndim == 3 and image.shape[0] in (1, 3)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert image.max() > image.min()
    else:
        with pytest.raises(DicomReadError, match=expected):
            read_dicom(path)


def _affine_fit(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Slope of ours ~ a * reference + b (fit on a subsample) and the worst residual."""
    x, y = reference.ravel(), ours.ravel().astype(np.float64)
    a, b = np.polyfit(x[::7], y[::7], 1)
    residual = np.abs(y - (a * x + b)).max()
    return float(a), float(residual)


@pytest.mark.parametrize(
    "name",
    ["693_UNCR.dcm", "MR2_UNCR.dcm", "mlut_18.dcm", "vlut_04.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm"],
)
def test_grayscale_matches_pydicom_pipeline(pydicom_data: Path, name: str) -> None:
    """Ours is pydicom's modality LUT + VOI LUT / window output, affinely scaled, inverted
    for MONOCHROME1 (slope < 0), and clipped exactly where pydicom's output saturates."""
    ds = pydicom.dcmread(pydicom_data / name)
    reference = np.asarray(
        apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), dtype=np.float64
    )
    ours = read_dicom(pydicom_data / name)[0]
    inner = (ours > 1e-6) & (ours < 1 - 1e-6)
    slope, residual = _affine_fit(ours[inner], reference[inner])
    assert residual < 1e-4
    if ds.PhotometricInterpretation == "MONOCHROME1":
        assert slope < 0
    else:
        assert slope > 0
    modality = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    _, voi_nonlinear = _affine_fit(reference / np.ptp(reference), modality)
    if voi_nonlinear > 1e-3:
        # The VOI transform changes the picture here (a window that clips, a curved LUT):
        # reading without it must differ, so the comparison above is not vacuous.
        assert not np.allclose(read_dicom(pydicom_data / name, voi=False)[0], ours, atol=1e-3)


def test_modality_lut_is_applied(pydicom_data: Path) -> None:
    ds = pydicom.dcmread(pydicom_data / "mlut_18.dcm")
    assert "ModalityLUTSequence" in ds
    lut = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    ours = read_dicom(pydicom_data / "mlut_18.dcm", voi=False)[0]
    # min-max of the LUT output, not of the stored values
    expected = (lut - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_monochrome1_chest_has_bright_mediastinum(pydicom_data: Path) -> None:
    """RG1 is a PA chest stored MONOCHROME1: after inversion the spine is brighter than the lungs."""
    image = read_dicom(pydicom_data / "RG1_UNCR.dcm")[0]
    h, w = image.shape
    band = image[int(0.35 * h) : int(0.6 * h)]
    centre = band[:, int(0.45 * w) : int(0.55 * w)].mean()
    lungs = np.concatenate(
        [band[:, int(0.2 * w) : int(0.3 * w)], band[:, int(0.7 * w) : int(0.8 * w)]], axis=1
    ).mean()
    assert centre > lungs + 0.1


def test_jpeg2000_equals_uncompressed(pydicom_data: Path) -> None:
    ds = pydicom.dcmread(pydicom_data / "RG1_J2KR.dcm")
    if not _decoder_available(ds):
        with pytest.raises(DicomReadError, match=DECODER_ERROR):
            read_dicom(pydicom_data / "RG1_J2KR.dcm")
        return
    np.testing.assert_array_equal(
        read_dicom(pydicom_data / "RG1_J2KR.dcm"), read_dicom(pydicom_data / "RG1_UNCR.dcm")
    )


def test_colour_images(pydicom_data: Path) -> None:
    ds = pydicom.dcmread(pydicom_data / "US1_UNCR.dcm")
    rgb = read_dicom(pydicom_data / "US1_UNCR.dcm")
    np.testing.assert_allclose(rgb, np.moveaxis(ds.pixel_array, -1, 0) / 255.0, atol=1e-6)
    ds16 = pydicom.dcmread(pydicom_data / "SC_rgb_16bit.dcm")
    rgb16 = read_dicom(pydicom_data / "SC_rgb_16bit.dcm")
    np.testing.assert_allclose(rgb16, np.moveaxis(ds16.pixel_array, -1, 0) / 65535.0, atol=1e-6)
    # as one channel: luma
    grey = read_image(pydicom_data / "US1_UNCR.dcm", ReadSettings(channels=1))
    np.testing.assert_allclose(grey[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-5)


def test_palette_colour_multiframe(pydicom_data: Path) -> None:
    ds = pydicom.dcmread(pydicom_data / "OBXXXX1A_2frame.dcm")
    assert count_dicom_frames(pydicom_data / "OBXXXX1A_2frame.dcm") == 2
    depth = int(ds.RedPaletteColorLookupTableDescriptor[2])  # bits per palette entry
    expected = apply_color_lut(ds.pixel_array[0], ds) / (2**depth - 1)
    ours = read_dicom(pydicom_data / "OBXXXX1A_2frame.dcm", frame=0)
    np.testing.assert_allclose(ours, np.moveaxis(expected, -1, 0), atol=1e-6)
    assert not np.array_equal(ours, read_dicom(pydicom_data / "OBXXXX1A_2frame.dcm", frame=1))


def test_multiframe_selection(pydicom_data: Path) -> None:
    path = pydicom_data / "emri_small.dcm"
    ds = pydicom.dcmread(path)
    assert count_dicom_frames(path) == 10
    frames = ds.pixel_array.astype(np.float64)
    middle = read_dicom(path)  # default: the middle frame
    for index in (0, 5, 9):
        ours = read_dicom(path, frame=index)[0]
        a, residual = _affine_fit(ours, frames[index])
        assert a > 0 and residual < 1e-4
    np.testing.assert_array_equal(middle, read_dicom(path, frame=5))
    np.testing.assert_array_equal(read_dicom(path, frame="first"), read_dicom(path, frame=0))
    with pytest.raises(DicomReadError, match="out of range"):
        read_dicom(path, frame=10)


def test_not_dicom(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(DicomReadError, match="not a DICOM file"):
        read_dicom(bad)


def test_errors_do_not_quote_tag_values(tmp_path: Path, pydicom_data: Path) -> None:
    info = _truncated_read_error(tmp_path, pydicom_data / "emri_small.dcm")
    from medssl.data.robust import describe_error

    reason = describe_error(info.value, paths=False)
    assert reason.startswith("DicomReadError: ") and "DOE" not in reason


# --------------------------------------------------------------- pydicom's wheel files

WHEEL_EXPECTED = {
    "CT_small.dcm": "ok",
    "MR_small.dcm": "ok",
    "MR_small_RLE.dcm": "ok",
    "MR_small_jp2klossless.dcm": "ok-or-decoder",
    "JPEG2000.dcm": "ok-or-decoder",
    "examples_rgb_color.dcm": "ok",
    "examples_palette.dcm": "ok",
    "examples_ybr_color.dcm": "ok-or-decoder",
    "SC_rgb_rle_16bit.dcm": "ok",
    "liver_1frame.dcm": "modality SEG object is not an image",
    "rtdose.dcm": "modality RTDOSE object is not an image",
}


@pytest.mark.parametrize("name", sorted(WHEEL_EXPECTED))
def test_wheel_files_read_or_fail_clearly(name: str) -> None:
    _reads_or_fails_clearly(pydicom_test_file(name), WHEEL_EXPECTED[name])


def _pipeline_reference(ds: pydicom.Dataset) -> np.ndarray:
    return np.asarray(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds), np.float64)


def _monochrome1_copy(tmp_path: Path) -> Path:
    """MR_small stored as MONOCHROME1 (bright = low values), as many radiographs are."""
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    return tmp_path / "mono1.dcm"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "monochrome1"])
def test_wheel_grayscale_matches_pydicom_pipeline(tmp_path: Path, name: str) -> None:
    """As on the real scans: pydicom's modality + VOI output, affinely scaled (inverted
    for MONOCHROME1), clipped where pydicom's output saturates."""
    path = _monochrome1_copy(tmp_path) if name == "monochrome1" else pydicom_test_file(name)
    ds = pydicom.dcmread(path)
    reference = _pipeline_reference(ds)
    ours = read_dicom(path)[0]
    inner = (ours > 1e-6) & (ours < 1 - 1e-6)
    slope, residual = _affine_fit(ours[inner], reference[inner])
    assert residual < 1e-4
    assert (slope < 0) == (ds.PhotometricInterpretation == "MONOCHROME1")
    if "WindowCenter" in ds:  # MR_small's window clips: reading without it must differ
        assert not np.allclose(read_dicom(path, voi=False)[0], ours, atol=1e-3)


def test_wheel_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    """A Modality LUT Sequence (a curved LUT here) replaces the rescale: ours is the
    min-max of pydicom's LUT output, not of the stored values."""
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    n = int(ds.pixel_array.max()) + 1
    item = pydicom.Dataset()
    item.LUTDescriptor = [n, 0, 16]
    item.ModalityLUTType = "US"
    curve = np.round(np.sqrt(np.arange(n) / (n - 1)) * 65535).astype("<u2")
    item.add_new(0x00283006, "OW", curve.tobytes())  # LUT Data
    ds.ModalityLUTSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "mlut.dcm")
    ds = pydicom.dcmread(tmp_path / "mlut.dcm")
    lut = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    stored = ds.pixel_array.astype(np.float64)
    assert not np.allclose(
        (lut - lut.min()) / np.ptp(lut), (stored - stored.min()) / np.ptp(stored)
    )
    ours = read_dicom(tmp_path / "mlut.dcm", voi=False)[0]
    np.testing.assert_allclose(ours, (lut - lut.min()) / np.ptp(lut), atol=1e-6)


def test_wheel_compressed_equals_uncompressed() -> None:
    plain = read_dicom(pydicom_test_file("MR_small.dcm"))
    np.testing.assert_array_equal(read_dicom(pydicom_test_file("MR_small_RLE.dcm")), plain)
    j2k = pydicom_test_file("MR_small_jp2klossless.dcm")
    if not _decoder_available(pydicom.dcmread(j2k)):
        with pytest.raises(DicomReadError, match=DECODER_ERROR):
            read_dicom(j2k)
        return
    np.testing.assert_array_equal(read_dicom(j2k), plain)


def test_wheel_colour_images() -> None:
    path = pydicom_test_file("examples_rgb_color.dcm")
    rgb = read_dicom(path)
    expected = np.moveaxis(pydicom.dcmread(path).pixel_array, -1, 0) / 255.0
    np.testing.assert_allclose(rgb, expected, atol=1e-6)
    path16 = pydicom_test_file("SC_rgb_rle_16bit.dcm")
    expected16 = np.moveaxis(pydicom.dcmread(path16).pixel_array, -1, 0) / 65535.0
    np.testing.assert_allclose(read_dicom(path16), expected16, atol=1e-6)
    grey = read_image(path, ReadSettings(channels=1))
    np.testing.assert_allclose(grey[0], 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2], atol=1e-5)


def test_wheel_palette_colour() -> None:
    path = pydicom_test_file("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
    expected = apply_color_lut(ds.pixel_array, ds) / (2**depth - 1)
    np.testing.assert_allclose(read_dicom(path), np.moveaxis(expected, -1, 0), atol=1e-6)


def test_wheel_multiframe_selection() -> None:
    path = pydicom_test_file("SC_rgb_rle_2frame.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert count_dicom_frames(path) == 2
    for index in (0, 1):
        expected = np.moveaxis(frames[index], -1, 0) / 255.0
        np.testing.assert_allclose(read_dicom(path, frame=index), expected, atol=1e-6)
    assert not np.array_equal(read_dicom(path, frame=0), read_dicom(path, frame=1))
    np.testing.assert_array_equal(read_dicom(path, frame="first"), read_dicom(path, frame=0))
    with pytest.raises(DicomReadError, match="out of range"):
        read_dicom(path, frame=2)


def test_wheel_errors_do_not_quote_tag_values(tmp_path: Path) -> None:
    _truncated_read_error(tmp_path, pydicom_test_file("MR_small.dcm"))


def _truncated_read_error(tmp_path: Path, source: Path) -> pytest.ExceptionInfo[DicomReadError]:
    """The error of reading ``source`` with a name and ID set, its pixel data cut short:
    it must quote neither."""
    ds = pydicom.dcmread(source)
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID12345"
    ds.save_as(tmp_path / "x.dcm")
    data = (tmp_path / "x.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 3])  # truncated pixel data
    with pytest.raises(DicomReadError) as info:
        read_dicom(tmp_path / "cut.dcm")
    assert "DOE" not in str(info.value) and "PID12345" not in str(info.value)
    return info
