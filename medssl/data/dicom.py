"""DICOM pixel pipeline: stored values -> display values in [0, 1].

Follows DICOM PS3.3 C.11 (the grayscale pipeline) with pydicom's own operators:
stored values -> Modality LUT or rescale slope/intercept
(:func:`pydicom.pixels.apply_modality_lut`) -> VOI LUT or window centre/width
(:func:`pydicom.pixels.apply_voi_lut`) -> scaled to [0, 1] -> MONOCHROME1 inverted so
that dense tissue is always bright. Colour images (RGB, YBR, palette colour) come out
as RGB in [0, 1]. Everything that cannot give an image raises :class:`DicomReadError`
whose text names the cause and the tag (never a tag value, which could be PHI); the
library's message, which may quote values, is kept only in ``detail``.

Byte damage is caught where DICOM makes it visible: a header that no longer parses,
pixel data shorter than Rows × Columns × frames needs, a compressed frame the decoder
rejects, or a decoder warning while the pixels are decoded. Flipped bytes inside
uncompressed pixel data decode to plausible values and cannot be detected (DICOM has
no pixel checksum).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from medssl.data.files import DataFileError, check_image_size, open_regular

__all__ = ["DicomReadError", "count_dicom_frames", "dicom_to_float", "read_dicom"]

FrameSpec = int | Literal["middle", "first"] | None

_SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation Storage
}
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}
_MONOCHROME = {"MONOCHROME1", "MONOCHROME2"}
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}


#: pydicom's warnings about quirks it corrects (excess padding, a Photometric
#: Interpretation the codestream contradicts, more frames than NumberOfFrames says,
#: an inconsistent offset table, a change of decoding plugin).
_BENIGN_DECODE_WARNING = re.compile(
    r"excess padding|Photometric Interpretation|frames|Offset Table|decoding plugin"
)


class DicomReadError(DataFileError):
    """A DICOM file that cannot be turned into an image; the message says why."""


def _frame_index(n_frames: int, frame: FrameSpec) -> int:
    if frame is None or frame == "middle":
        return n_frames // 2
    if frame == "first":
        return 0
    if not isinstance(frame, int) or not -n_frames <= frame < n_frames:
        raise DicomReadError(f"frame {frame!r} out of range for {n_frames} frame(s)")
    return frame % n_frames


def _read_dataset(path: str | Path, stop_before_pixels: bool = False, max_bytes: int | None = None):  # noqa: ANN202
    import pydicom
    from pydicom.errors import InvalidDicomError

    with open_regular(path, max_bytes) as fh:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError as exc:
            raise DicomReadError("not a DICOM file", str(exc)) from None


def count_dicom_frames(path: str | Path, max_bytes: int | None = None) -> int:
    """Number of frames, read from the header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read_dataset(path, stop_before_pixels=True, max_bytes=max_bytes)
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise DicomReadError("invalid NumberOfFrames (0028,0008)", str(exc)) from None


def _decode(ds) -> np.ndarray:  # noqa: ANN001
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if ts is not None and getattr(ts, "is_compressed", False):
            # Only a transfer syntax pydicom knows is named: an unknown UID is file content.
            name = ts.name if getattr(ts, "is_transfer_syntax", False) else "unknown"
            raise DicomReadError(
                f"no installed decoder for transfer syntax {name!r}; install one "
                "(pip install 'medssl[dicom]', or pylibjpeg-openjpeg, or python-gdcm)",
                str(exc),
            ) from None
        raise DicomReadError("pixel data cannot be decoded", str(exc)) from None
    except ValueError as exc:  # pydicom: fewer bytes than Rows x Columns x frames need
        raise DicomReadError(
            "pixel data cannot be decoded (truncated, or the header's sizes do not match)",
            str(exc),
        ) from None
    # A warning while decoding pixels may mean damaged data (a wrong transfer syntax, a
    # corrupt compressed stream); header warnings were raised, and ignored, earlier.
    # pydicom's fix-ups of common, harmless encoder quirks are not damage.
    damage = [
        w
        for w in caught
        if not issubclass(
            w.category, DeprecationWarning | PendingDeprecationWarning | FutureWarning
        )
        and not _BENIGN_DECODE_WARNING.search(str(w.message))
    ]
    if damage:
        raise DicomReadError(
            "pixel data decoded with a warning (truncated or damaged data)",
            str(damage[0].message),
        )
    return arr


def _output_range(arr_voi: np.ndarray, ds) -> tuple[float, float] | None:  # noqa: ANN001
    """Output range of the VOI transform, probed with extreme inputs (it is monotonic)."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    probe: np.ndarray = np.array([-1e12, 1e12], dtype=np.float64)
    if "VOILUTSequence" in ds:
        # A LUT maps stored indices; probe with the LUT's own first and last entry.
        item = ds.VOILUTSequence[0]
        first = float(item.LUTDescriptor[1])
        n_entries = int(item.LUTDescriptor[0]) or 65536
        probe = np.array([first, first + n_entries - 1], dtype=np.int64)
    out = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    lo, hi = float(out.min()), float(out.max())
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        return None
    return lo, hi


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def dicom_to_float(
    ds,  # noqa: ANN001
    frame: FrameSpec = "middle",
    voi: bool = True,
    limits: tuple[int | None, float | None] = (None, None),
) -> np.ndarray:
    """The display image of a pydicom dataset: ``[1, H, W]`` or ``[3, H, W]`` float32 in [0, 1].

    ``frame`` picks one frame of a multi-frame object (an index, ``"first"`` or
    ``"middle"``). ``voi=False`` skips the file's VOI LUT / window and min-max scales the
    modality values instead (what RAD-DINO's preprocessing did). ``limits`` is
    ``(max_pixels, max_aspect)``, checked from Rows and Columns before decoding.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    sop = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if modality in _NON_IMAGE_MODALITIES:  # one of our constants, safe to name
        raise DicomReadError(f"modality {modality} object is not an image")
    if sop in _SEG_SOP_CLASSES:
        raise DicomReadError("segmentation object (SOP class) is not an image")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomReadError("no pixel data element")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME | _COLOUR | {"PALETTE COLOR"}:
        # Name the tag, never its value: a hostile or mis-filled file may hold a name there.
        raise DicomReadError("unsupported Photometric Interpretation (0028,0004)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise DicomReadError("missing or invalid Rows (0028,0010) / Columns (0028,0011)") from None
    max_pixels, max_aspect = limits
    check_image_size(rows, columns, max_pixels, max_aspect)

    arr = _decode(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        arr = arr[_frame_index(n_frames, frame)]
    elif frame not in (None, "middle", "first", 0, -1):
        _frame_index(1, frame)  # raises a clear out-of-range error

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        # Palette entries are 8 or 16 bit (PS3.3 C.7.6.3.1.5); scale by the stored depth.
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        scale = float(2**depth - 1)
        return np.ascontiguousarray(np.moveaxis(rgb.astype(np.float32) / scale, -1, 0))
    if samples == 3 or photometric in _COLOUR:
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise DicomReadError(f"colour image with unexpected pixel shape {arr.shape}")
        # pydicom converts YBR to RGB when decoding (as_rgb=True by default).
        scale = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        rgb = np.clip(arr.astype(np.float32) / scale, 0.0, 1.0)
        return np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    if arr.ndim != 2:
        raise DicomReadError(f"grayscale image with unexpected pixel shape {arr.shape}")

    # Integer modality output stays integer: a VOI LUT indexes with it.
    values = apply_modality_lut(arr, ds)
    out = None
    if voi:
        out_range = _output_range(values, ds)
        if out_range is not None:
            windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
            lo, hi = out_range
            out = np.clip((windowed - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if out is None:
        out = _minmax(values.astype(np.float64))
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out[None]


def _check_decoded_size(ds, max_bytes: int | None) -> None:  # noqa: ANN001
    """Compressed frames may expand far beyond the file: bound the decoded array too."""
    if max_bytes is None:
        return
    try:
        n_values = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames", 1) or 1)
        n_values *= int(ds.get("SamplesPerPixel", 1) or 1)
        itemsize = max(1, (int(ds.get("BitsAllocated", 8) or 8) + 7) // 8)
    except (AttributeError, TypeError, ValueError):
        return  # dicom_to_float reports missing or invalid sizes
    if n_values * itemsize > max_bytes:
        raise DicomReadError(
            f"pixel data decodes to {n_values * itemsize} bytes, more than the "
            f"{max_bytes}-byte limit (data.max_file_bytes)"
        )


def read_dicom(
    path: str | Path,
    frame: FrameSpec = "middle",
    voi: bool = True,
    limits: tuple[int | None, int | None, float | None] = (None, None, None),
) -> np.ndarray:
    """Read a DICOM file into ``[C, H, W]`` float32 in [0, 1] (see :func:`dicom_to_float`).

    ``limits`` is ``(max_file_bytes, max_pixels, max_aspect)``. pydicom's warnings about
    invalid header elements are silenced (they quote tag values) and any other error
    becomes a :class:`DicomReadError` whose text holds no value from the file.
    """
    max_bytes, max_pixels, max_aspect = limits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = _read_dataset(path, max_bytes=max_bytes)
            _check_decoded_size(ds, max_bytes)
            return dicom_to_float(ds, frame=frame, voi=voi, limits=(max_pixels, max_aspect))
        except (DataFileError, MemoryError, OSError):
            raise
        except Exception as exc:
            raise DicomReadError(f"unreadable DICOM ({type(exc).__name__})", str(exc)) from None
