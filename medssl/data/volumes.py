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


class VolumeReadError(ValueError):
    """A volume that cannot be read or sliced; the message says why."""


def is_volume(path: str | Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def volume_shape(path: str | Path) -> tuple[int, ...]:
    """The voxel-array shape, from the header only."""
    path = str(path)
    try:
        if _is_nifti(path):
            import nibabel as nib

            return tuple(int(s) for s in nib.load(path).shape)
        import nrrd

        return tuple(int(s) for s in nrrd.read_header(path)["sizes"])
    except Exception as exc:
        raise VolumeReadError(f"cannot read volume header: {type(exc).__name__}: {exc}") from exc


def count_slices(path: str | Path, axis: int) -> int:
    shape = volume_shape(path)
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
        raise VolumeReadError(f"cannot decode volume: {type(exc).__name__}: {exc}") from exc
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(f"volume has shape {data.shape}; need 3 dimensions")
    return data


def load_volume(path: str | Path) -> np.ndarray:
    """The whole voxel array (cached per process)."""
    path = str(path)
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
) -> np.ndarray:
    """One slice as ``[1, H, W]`` float32 in [0, 1]; ``index=None`` takes the middle one.

    The slice is transposed so that the first remaining voxel axis runs along the
    columns, which shows an axial slice of an LPS/RAS volume the usual way up to a flip.
    """
    vol = load_volume(path)
    n = vol.shape[axis]
    index = n // 2 if index is None else index
    if not -n <= index < n:
        raise VolumeReadError(f"slice {index} out of range for {n} slices along axis {axis}")
    plane = np.take(vol, index % n, axis=axis).T
    return scale_intensity(plane, window)[None]
