"""The DICOM pixel pipeline against pydicom's own operators, on every real file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
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
    path = pydicom_data / name
    expected = EXPECTED[name]
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
    ds = pydicom.dcmread(pydicom_data / "emri_small.dcm")
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID12345"
    ds.save_as(tmp_path / "x.dcm")
    data = (tmp_path / "x.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 3])  # truncated pixel data
    with pytest.raises(DicomReadError) as info:
        read_dicom(tmp_path / "cut.dcm")
    assert "DOE" not in str(info.value) and "PID12345" not in str(info.value)
    from medssl.data.robust import describe_error

    reason = describe_error(info.value, paths=False)
    assert reason.startswith("DicomReadError: ") and "DOE" not in reason
