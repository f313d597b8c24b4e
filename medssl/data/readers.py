"""One entry point to read any supported file into ``[C, H, W]`` float32 in [0, 1].

Formats: DICOM (:mod:`medssl.data.dicom`), NIfTI / NRRD slices
(:mod:`medssl.data.volumes`), and PNG / JPEG / TIFF / BMP through Pillow, 8 or 16 bit.

16-bit images often hold fewer significant bits (12- or 15-bit radiographs stored
unscaled), which divided by 65535 would use a fraction of the grey levels.
``scale16="auto"`` divides by ``2**bits - 1`` with ``bits`` from the PNG ``sBIT`` chunk
when present (values already shifted up to 16 bits, as the PNG specification describes,
are divided by 65535), otherwise the smallest depth from 8 to 16 bits that holds the
image's largest value. ``"full"`` always divides by 65535; ``"minmax"`` scales each image
from its own minimum to its maximum.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from medssl.data.dicom import count_dicom_frames, read_dicom
from medssl.data.files import (
    DataFileError,
    NonFiniteError,
    check_image_size,
    open_regular,
)
from medssl.data.volumes import count_slices, is_volume, read_volume_slice

__all__ = [
    "IMAGE_SUFFIXES",
    "DICOM_SUFFIXES",
    "ReadSettings",
    "UnsupportedFormatError",
    "count_frames",
    "is_supported",
    "png_significant_bits",
    "read_image",
    "scale_16bit",
    "to_channels",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class UnsupportedFormatError(DataFileError):
    """A file whose format medssl does not read."""


@dataclass(frozen=True)
class ReadSettings:
    """How to turn a file into one 2D image (shared by every adapter).

    ``frame``: which frame of a multi-frame DICOM / which slice of a volume when the
    index does not say (``"middle"`` or ``"first"``). ``slice_axis``: the voxel axis
    volumes are sliced along. ``dicom_voi``: apply the file's VOI LUT / window (else
    min-max). ``volume_window``: fixed intensity window for volumes (else percentiles).

    Limits on hostile or accidental inputs: ``max_file_bytes`` (on disk, and decoded for
    volumes), ``max_pixels`` (height × width, read from the header before decoding; the
    default is well below Pillow's 89-megapixel bomb warning), ``max_aspect`` (longer
    over shorter side). ``non_finite``: NaN/Inf pixels make the file a counted failure
    (``"fail"``), or, for volumes with a NaN background, are filled (``"fill"``: NaN
    becomes the window's low end); a slice with no finite pixel always fails.
    """

    channels: int = 1
    frame: Literal["middle", "first"] = "middle"
    slice_axis: int = 2
    dicom_voi: bool = True
    volume_window: tuple[float, float] | None = None
    max_file_bytes: int | None = 2**31
    max_pixels: int | None = 40_000_000
    max_aspect: float | None = 20.0
    non_finite: Literal["fail", "fill"] = "fail"
    scale16: Literal["auto", "full", "minmax"] = "auto"


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open_regular(path) as fh:
            head = fh.read(132)
    except (OSError, DataFileError):
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_supported(path: str | Path) -> bool:
    """By name (and the DICM magic for extension-less files such as MIMIC's DICOMs)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES) or is_volume(name):
        return True
    return "." not in name and _looks_like_dicom(path)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    if is_volume(name):
        return "volume"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if _looks_like_dicom(path):
        return "dicom"
    raise UnsupportedFormatError("unsupported file type")


def count_frames(path: str | Path, settings: ReadSettings) -> int:
    """Frames (DICOM) or slices along ``settings.slice_axis`` (volumes); 1 otherwise."""
    path = Path(path)
    kind = _kind(path)
    if kind == "dicom":
        return count_dicom_frames(path, settings.max_file_bytes)
    if kind == "volume":
        return count_slices(path, settings.slice_axis, settings.max_file_bytes)
    return 1


def png_significant_bits(path: str | Path) -> int | None:
    """The largest channel value of a PNG's ``sBIT`` chunk, or ``None`` (no chunk, not a PNG)."""
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:  # sBIT must come before the first IDAT
            head = fh.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = fh.read(length)
                return max(data) if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            fh.seek(length + 4, 1)  # the data and its CRC


def scale_16bit(values: np.ndarray, significant_bits: int | None, how: str = "auto") -> np.ndarray:
    """16-bit sample values to float32 in [0, 1] (see the module docstring)."""
    arr = values.astype(np.float32)
    hi = float(arr.max()) if arr.size else 0.0
    if how == "minmax" or hi > 65535:
        lo = float(arr.min())
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if how == "full":
        return np.clip(arr / 65535.0, 0.0, 1.0)
    if significant_bits is not None and 1 <= significant_bits < 16 and hi < 2**significant_bits:
        bits = significant_bits
    elif significant_bits is not None:
        bits = 16  # the values were shifted up to 16 bits, as the PNG specification says
    else:
        bits = min(16, max(8, int(hi).bit_length()))
    return np.clip(arr / float(2**bits - 1), 0.0, 1.0)


def open_image(fh: object, settings: ReadSettings):  # noqa: ANN202
    """Open with Pillow (header only) and check the size before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Our own limit is lower; Pillow's bomb warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh)
    except UnidentifiedImageError as exc:
        raise DataFileError("not an image format Pillow recognises", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataFileError("corrupt image header", str(exc)) from None
    except Image.DecompressionBombError as exc:
        raise DataFileError(
            "image larger than Pillow's decompression-bomb limit", str(exc)
        ) from None
    try:
        check_image_size(img.height, img.width, settings.max_pixels, settings.max_aspect)
    except DataFileError:
        img.close()
        raise
    return img


def _read_pil(path: Path, settings: ReadSettings) -> np.ndarray:
    with open_regular(path, settings.max_file_bytes) as fh, open_image(fh, settings) as img:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # EXIF and metadata chatter
                img.load()  # decode now so that a truncated file fails here, not later
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataFileError("truncated or corrupt image data", str(exc)) from None
        mode = img.mode
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            dtype = np.uint16 if mode != "I" else np.int64
            sbit = png_significant_bits(path) if img.format == "PNG" else None
            arr = scale_16bit(np.asarray(img, dtype=dtype), sbit, settings.scale16)
        elif mode == "F":
            arr = np.asarray(img, dtype=np.float32)
            _check_finite(arr)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        elif mode in ("L", "1"):
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        elif mode == "LA":
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        else:  # RGB, RGBA, P, CMYK, YCbCr, ...
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if arr.ndim == 2:
        return arr[None]
    return np.ascontiguousarray(np.moveaxis(arr, -1, 0))


def _check_finite(arr: np.ndarray) -> None:
    bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise NonFiniteError(f"{bad} of {arr.size} pixel values are NaN or infinite")


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Grey -> repeated RGB, RGB -> luma (ITU-R BT.601), so every sample has ``channels``."""
    if arr.shape[0] == channels:
        return arr
    if channels == 3 and arr.shape[0] == 1:
        return np.repeat(arr, 3, axis=0)
    if channels == 1 and arr.shape[0] == 3:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
        return (arr * weights).sum(axis=0, keepdims=True).astype(np.float32)
    raise ValueError(f"cannot convert {arr.shape[0]} channel(s) to {channels}")


def read_image(
    path: str | Path, settings: ReadSettings | None = None, frame: int | None = None
) -> np.ndarray:
    """Read ``path`` into ``[settings.channels, H, W]`` float32 in [0, 1].

    ``frame`` is the frame (DICOM) or slice (volume) index; ``None`` applies
    ``settings.frame``.
    """
    settings = settings or ReadSettings()
    path = Path(path)
    kind = _kind(path)
    if kind == "dicom":
        arr = read_dicom(
            path,
            frame=settings.frame if frame is None else frame,
            voi=settings.dicom_voi,
            limits=(settings.max_file_bytes, settings.max_pixels, settings.max_aspect),
        )
    elif kind == "volume":
        index = frame
        if index is None and settings.frame == "first":
            index = 0
        arr = read_volume_slice(
            path,
            index,
            settings.slice_axis,
            settings.volume_window,
            limits=(settings.max_file_bytes, settings.max_pixels, settings.max_aspect),
            non_finite=settings.non_finite,
        )
    else:
        arr = _read_pil(path, settings)
    # The scaling above turns one NaN or Inf into a whole image of NaN: refuse it here,
    # in the loader, so that it is a counted failure and never reaches the loss.
    _check_finite(arr)
    return to_channels(arr, settings.channels)
