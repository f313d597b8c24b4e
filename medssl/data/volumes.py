"""2D slices of NIfTI (nibabel) and NRRD (pynrrd) volumes.

A volume is addressed as ``(path, axis, index)``; intensities are scaled to [0, 1]
either with a fixed window (``[-1000, 400]`` HU for lung CT, say) or with robust
per-slice percentiles (0.5 / 99.5), which suits MR whose units are arbitrary.
A small per-process cache keeps the last volumes decoded, since a gzip NRRD has no
random access and consecutive samples often come from one volume.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from medssl.data.files import DataFileError, NonFiniteError, check_image_size, check_regular

__all__ = [
    "VOLUME_SUFFIXES",
    "VolumeReadError",
    "count_slices",
    "is_volume",
    "load_volume",
    "read_volume_slice",
    "scale_intensity",
]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")


class VolumeReadError(DataFileError):
    """A volume that cannot be read or sliced; the message says why."""


def is_volume(path: str | Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def _header(path: str) -> tuple[tuple[int, ...], int]:
    """Shape and bytes per voxel, from the header only."""
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(path)
            return tuple(int(s) for s in img.shape), img.header.get_data_dtype().itemsize
        import nrrd

        header = nrrd.read_header(path)
        dtype = nrrd.reader._determine_datatype(header)
        return tuple(int(s) for s in header["sizes"]), np.dtype(dtype).itemsize
    except Exception as exc:
        raise VolumeReadError(
            f"cannot read volume header ({type(exc).__name__})", str(exc)
        ) from None


def volume_shape(path: str | Path, max_bytes: int | None = None) -> tuple[int, ...]:
    """The voxel-array shape, from the header only; refuses non-regular or huge files."""
    path = str(path)
    check_regular(path, max_bytes)
    shape, itemsize = _header(path)
    decoded = int(np.prod(shape, dtype=np.float64)) * itemsize
    if max_bytes is not None and decoded > max_bytes:
        raise VolumeReadError(
            f"volume of shape {shape} decodes to {decoded} bytes, more than the "
            f"{max_bytes}-byte limit (data.max_file_bytes)"
        )
    return shape


def count_slices(path: str | Path, axis: int, max_bytes: int | None = None) -> int:
    shape = volume_shape(path, max_bytes)
    if len(shape) < 3:
        raise VolumeReadError(f"volume has {len(shape)} dimension(s); need 3 to slice")
    return shape[axis]


@functools.lru_cache(maxsize=2)
def _cached_volume(path: str, mtime_ns: int) -> np.ndarray:
    del mtime_ns  # part of the key so an edited file is re-read
    try:
        if _is_nifti(path):
            import nibabel as nib

            data = np.asanyarray(nib.load(path).dataobj)
        else:
            import nrrd

            data, _ = nrrd.read(path)
    except Exception as exc:
        raise VolumeReadError(f"cannot decode volume ({type(exc).__name__})", str(exc)) from None
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(f"volume has shape {data.shape}; need 3 dimensions")
    return data


def load_volume(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """The whole voxel array (cached per process), after the header passed the limits."""
    path = str(path)
    volume_shape(path, max_bytes)
    return _cached_volume(path, os.stat(path).st_mtime_ns)


def scale_intensity(arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Scale to float32 [0, 1] with a fixed window or robust percentiles."""
    arr = arr.astype(np.float32, copy=False)
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, np.float32)
        lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    out = np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return out.astype(np.float32)


def read_volume_slice(
    path: str | Path,
    index: int | None = None,
    axis: int = 2,
    window: tuple[float, float] | None = None,
    limits: tuple[int | None, int | None, float | None] = (None, None, None),
    non_finite: str = "fail",
) -> np.ndarray:
    """One slice as ``[1, H, W]`` float32 in [0, 1]; ``index=None`` takes the middle one.

    The slice is transposed so that the first remaining voxel axis runs along the
    columns, which shows an axial slice of an LPS/RAS volume the usual way up to a flip.
    ``limits`` is ``(max_file_bytes, max_pixels, max_aspect)``. NaN/Inf voxels in the
    slice fail it (``non_finite="fail"``) or are filled (``"fill"``); a slice without a
    single finite voxel fails either way, rather than becoming a black image.
    """
    max_bytes, max_pixels, max_aspect = limits
    vol = load_volume(path, max_bytes)
    n = vol.shape[axis]
    index = n // 2 if index is None else index
    if not -n <= index < n:
        raise VolumeReadError(f"slice {index} out of range for {n} slices along axis {axis}")
    plane = np.take(vol, index % n, axis=axis).T
    check_image_size(plane.shape[0], plane.shape[1], max_pixels, max_aspect)
    if plane.dtype.kind in "fc":
        finite = int(np.count_nonzero(np.isfinite(plane)))
        if finite == 0 or (non_finite == "fail" and finite < plane.size):
            raise NonFiniteError(
                f"{plane.size - finite} of {plane.size} voxel values of the slice are NaN "
                "or infinite"
            )
    return scale_intensity(plane, window)[None]
