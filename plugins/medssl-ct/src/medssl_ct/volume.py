"""``ct_volume``: CT and MR volumes (NIfTI, NRRD, DICOM series) as 2D slices, 2.5D slabs or
3D patches.

Volumes are read with torchio (nibabel for NIfTI, SimpleITK for NRRD and DICOM series,
which applies the DICOM rescale slope/intercept, so CT voxels are Hounsfield units),
turned to RAS+ orientation and optionally resampled to a common ``spacing``. Only headers
are read when the dataset is built; voxels are decoded on first use and a few decoded
volumes are cached per worker process.

Intensities. A sample must be float32 in [0, 1] (:class:`medssl.types.Sample`), yet CT
windowing needs Hounsfield units. With ``intensity: hu`` (the default) the full CT range
``hu_range`` (-1024..3071, the 12-bit range scanners store) maps linearly to [0, 1], so
``HU = lo + x * (hi - lo)`` is exact up to float precision and the ``ct_window`` policy
draws its windows on the training device. ``intensity: window`` applies one fixed window
in the loader (for policies that do not know HU); ``intensity: percentile`` scales by the
0.5/99.5 percentiles of each volume, for MR whose units are arbitrary.

Shapes: ``mode: slice`` gives ``[1, S, S]`` with ``S = image_size`` (the slice padded to a
square with air, then resized); ``mode: slab`` stacks ``slab_slices`` neighbouring slices
as channels, ``[k, S, S]`` (2.5D, as in Yu et al. 2018 and many CT segmentation models);
``mode: patch`` gives 3D patches ``[1, P, P, P]`` (depth, height, width) with
``P = patch_voxels``, at positions that are a pure function of ``(seed, index)``. Masks
come along resampled with nearest neighbours, ``[S, S]`` or ``[P, P, P]`` long.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medssl.data import LoadFailure, VolumeReadError, describe_error
from medssl.data.keys import data_key, dataset_secret, printable_path, show_paths

if TYPE_CHECKING:
    from torch import Tensor

    from medssl.types import OfficialSplits

__all__ = ["CTVolume", "HU_RANGE", "VolumeEntry", "decode_hu", "encode_hu"]

log = logging.getLogger(__name__)

#: The 12-bit range CT scanners store (HU = stored value - 1024).
HU_RANGE: tuple[float, float] = (-1024.0, 3071.0)
_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def encode_hu(hu: Tensor, hu_range: tuple[float, float] = HU_RANGE) -> Tensor:
    """Hounsfield units -> [0, 1] (clipped), the ``intensity: hu`` sample encoding."""
    lo, hi = hu_range
    return ((hu - lo) / (hi - lo)).clamp_(0.0, 1.0)


def decode_hu(x: Tensor, hu_range: tuple[float, float] = HU_RANGE) -> Tensor:
    """The inverse of :func:`encode_hu` on [0, 1] values."""
    lo, hi = hu_range
    return x * (hi - lo) + lo


class VolumeEntry(BaseModel):
    """One volume: an image file or DICOM-series folder, and an optional label map."""

    model_config = ConfigDict(extra="forbid")

    image: str
    mask: str | None = None


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(
        p.suffix.lower() == ".dcm" or p.suffix == "" for p in path.iterdir() if p.is_file()
    )


def _scan(root: Path) -> list[VolumeEntry]:
    """Volumes under ``root``; ``<stem>_mask.<ext>`` / ``<stem>_label.<ext>`` pair as masks."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        name = path.name.lower()
        if path.is_file() and name.endswith(_SUFFIXES) or _is_dicom_dir(path):
            found[str(path.relative_to(root))] = path
    entries = []
    for rel in found:
        stem, ext = _split_suffix(rel)
        if stem.endswith(("_mask", "_label")):
            continue
        mask = next(
            (f"{stem}{tag}{ext}" for tag in ("_mask", "_label") if f"{stem}{tag}{ext}" in found),
            None,
        )
        entries.append(VolumeEntry(image=rel, mask=mask))
    return entries


def _split_suffix(name: str) -> tuple[str, str]:
    lower = name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def _canonical_header(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Voxel shape and spacing in RAS+ axis order, from the header alone."""
    import nibabel as nib
    import torchio as tio

    image = tio.ScalarImage(path)
    shape = tuple(int(s) for s in image.shape[1:])
    spacing = tuple(float(s) for s in image.spacing)
    world_axis = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)
    out_shape, out_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for voxel_axis, axis in enumerate(world_axis):
        out_shape[axis] = shape[voxel_axis]
        out_spacing[axis] = spacing[voxel_axis]
    return (out_shape[0], out_shape[1], out_shape[2]), (
        out_spacing[0],
        out_spacing[1],
        out_spacing[2],
    )


@functools.lru_cache(maxsize=4)
def _load(
    image: str, mask: str | None, spacing: tuple[float, float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Voxels ``[X, Y, Z]`` (RAS+) as float32, and the label map as int64 (cached)."""
    import torchio as tio

    subject: dict[str, Any] = {"image": tio.ScalarImage(image)}
    if mask is not None:
        subject["mask"] = tio.LabelMap(mask)
    transforms: list[Any] = [tio.ToCanonical()]
    if spacing is not None:
        transforms.append(tio.Resample(spacing))
    loaded = tio.Compose(transforms)(tio.Subject(**subject))
    data = loaded["image"].data
    if data.shape[0] != 1:
        raise VolumeReadError(
            f"{image}: expected one channel (a scalar volume), got {data.shape[0]}"
        )
    voxels = data[0].numpy().astype(np.float32)
    labels = None
    if mask is not None:
        labels = loaded["mask"].data[0].numpy().astype(np.int64)
        if labels.shape != voxels.shape:
            raise VolumeReadError(
                f"{mask}: label map shape {labels.shape} does not match image {voxels.shape}"
            )
    return voxels, labels


def _display_plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A slice of a RAS+ ``[X, Y, Z]`` array, anterior / superior up, patient right on the left."""
    plane = np.take(volume, index, axis=axis)  # the two remaining axes, in order
    return np.ascontiguousarray(plane.T[::-1, ::-1])


class CTVolume:
    """CT / MR volumes as 2D slices, 2.5D slabs or 3D patches (module docstring).

    A map-style dataset that imports torch when a sample is loaded, not with the plugin.
    """

    task = None
    has_text = False
    group_kind = "volume"  # probes split by volume (one patient's scan) with split: patient

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        root: str | None = Field(None, description="folder; relative volume paths start here")
        volumes: list[VolumeEntry] = Field(
            default_factory=list,
            description="[{image, mask}]; empty: every volume under root (<stem>_mask pairs)",
        )
        mode: Literal["slice", "slab", "patch"] = "slice"
        axis: Literal[0, 1, 2] = Field(2, description="RAS+ axis to slice: 2 axial, 1 coronal")
        image_size: int = Field(64, ge=8, description="slice / slab side after resizing")
        slab_slices: int = Field(3, ge=1, description="slices per 2.5D slab (odd)")
        patch_voxels: int = Field(32, ge=4, description="3D patch side in voxels")
        patches_per_volume: int = Field(8, ge=1)
        slice_stride: int = Field(1, ge=1, description="use every k-th slice")
        spacing: tuple[float, float, float] | None = Field(
            None, description="resample to this voxel spacing (mm, RAS+ order) first"
        )
        intensity: Literal["hu", "window", "percentile"] = "hu"
        hu_range: tuple[float, float] = HU_RANGE
        window: tuple[float, float] = Field(
            (-1000.0, 400.0), description="HU range mapped to [0, 1] with intensity: window"
        )
        mask_classes: dict[str, list[int]] | None = Field(
            None, description="class name -> label values; class i becomes i + 1, rest 0"
        )
        with_mask: bool = Field(False, description="yield 'mask' (every volume needs one)")
        split: Literal["all", "train", "val"] = Field(
            "all", description="blocks of split_block slices (or patches) held out for 'val'"
        )
        val_fraction: float = Field(0.2, gt=0, lt=1)
        split_block: int = Field(8, ge=1, description="neighbouring slices stay on one side")
        seed: int = 0

        @field_validator("slab_slices")
        @classmethod
        def _odd(cls, value: int) -> int:
            if value % 2 == 0:
                raise ValueError(f"slab_slices must be odd (a centre slice), got {value}")
            return value

        @model_validator(mode="after")
        def _check(self) -> CTVolume.Options:
            for name in ("hu_range", "window"):
                lo, hi = getattr(self, name)
                if not hi > lo:
                    raise ValueError(f"{name} must be (low, high) with high > low, got {lo, hi}")
            if self.spacing is not None and min(self.spacing) <= 0:
                raise ValueError(f"spacing must be positive, got {self.spacing}")
            if not self.volumes and self.root is None:
                raise ValueError("set root (a folder of volumes) or list volumes")
            return self

    def __init__(self, **options: Any) -> None:
        self.options = o = self.Options(**options)
        root = Path(o.root).expanduser() if o.root is not None else None
        if root is not None and not root.is_dir():
            raise FileNotFoundError(f"ct_volume: root {str(root)!r} is not a folder")
        entries = list(o.volumes) or _scan(root)  # type: ignore[arg-type]
        if not entries:
            raise ValueError(f"ct_volume: no volumes found under {str(root)!r}")
        self.channels = o.slab_slices if o.mode == "slab" else 1
        self.image_size = o.image_size if o.mode != "patch" else o.patch_voxels
        self.has_mask = o.with_mask
        self.mask_names = ["background", *o.mask_classes] if o.mask_classes is not None else None
        self._lut = self._label_lut(o.mask_classes)
        self._percentiles: dict[str, tuple[float, float]] = {}
        self.volumes: list[tuple[str, str | None, list[int]]] = []  # image, mask, positions
        self.skipped: list[tuple[str, str]] = []
        for entry in entries:
            image = self._resolve(root, entry.image, "image")
            mask = self._resolve(root, entry.mask, "mask") if entry.mask else None
            if o.with_mask and mask is None:
                raise ValueError(
                    f"ct_volume: with_mask is set but volume {entry.image!r} has no mask"
                )
            try:
                shape, spacing = _canonical_header(Path(image))
            except Exception as exc:  # one unreadable header must not hide the others
                reason = describe_error(exc)
                log.warning("ct_volume: skipping %s: %s", self._failure_key(image), reason)
                self.skipped.append((entry.image, reason))
                continue
            if o.spacing is not None:  # torchio keeps the field of view when resampling
                shape = tuple(
                    max(1, round(n * s / t))
                    for n, s, t in zip(shape, spacing, o.spacing, strict=True)
                )
            if o.mode == "patch":
                count, step = o.patches_per_volume, 1
            else:
                count, step = math.ceil(shape[o.axis] / o.slice_stride), o.slice_stride
            positions = [p for p in range(count) if self._in_split(p * step)]
            if positions:
                self.volumes.append((image, mask if o.with_mask else None, positions))
        if not self.volumes:
            raise ValueError("ct_volume: no readable volume (see the warnings above)")
        self._starts = np.cumsum([0] + [len(p) for _, _, p in self.volumes])

    def _in_split(self, position: int) -> bool:
        """Blocks of ``split_block`` slices: one block in ``1 / val_fraction`` is validation."""
        o = self.options
        if o.split == "all":
            return True
        period = max(2, round(1 / o.val_fraction))
        is_val = (position // o.split_block) % period == period - 1
        return is_val == (o.split == "val")

    @staticmethod
    def _resolve(root: Path | None, name: str, what: str) -> str:
        path = Path(name).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        if not path.exists():
            raise FileNotFoundError(f"ct_volume: {what} {str(path)!r} does not exist")
        return str(path)

    @staticmethod
    def _label_lut(classes: dict[str, list[int]] | None) -> dict[int, int] | None:
        if classes is None:
            return None
        lut: dict[int, int] = {}
        for index, (name, labels) in enumerate(classes.items(), start=1):
            for label in labels:
                if label in lut:
                    raise ValueError(
                        f"ct_volume: mask_classes: label {label} is in two classes "
                        f"({list(classes)[lut[label] - 1]!r} and {name!r})"
                    )
                lut[label] = index
        return lut

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {"has_text": False, "has_mask": bool(options.get("with_mask", False))}

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        # Blocks of slices of every volume on each side: a volume sits on both sides.
        from medssl.types import OfficialSplits  # medssl.types imports torch

        return OfficialSplits(train="train", val="val", disjoint=False)

    def groups(self) -> list[str | None]:
        """The volume of every sample, by its position in the list (never its path)."""
        return [str(v) for v, (_, _, p) in enumerate(self.volumes) for _ in p]

    @property
    def num_mask_classes(self) -> int | None:
        if not self.has_mask:
            return None
        return len(self.mask_names) if self.mask_names else None

    @property
    def num_classes(self) -> int | None:
        return None

    def __len__(self) -> int:
        return int(self._starts[-1])

    # -- loading -------------------------------------------------------------------------
    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"ct_volume: index {index} out of range for {len(self)} samples")
        volume = int(np.searchsorted(self._starts, index, side="right") - 1)
        return volume, self.volumes[volume][2][index - int(self._starts[volume])]

    def _range(self, image_path: str, voxels: np.ndarray) -> tuple[float, float]:
        o = self.options
        if o.intensity == "hu":
            return o.hu_range
        if o.intensity == "window":
            return o.window
        if image_path not in self._percentiles:  # once per volume and worker
            lo, hi = (float(v) for v in np.percentile(voxels, [0.5, 99.5]))
            self._percentiles[image_path] = (lo, hi if hi > lo else lo + 1.0)
        return self._percentiles[image_path]

    def _labels(self, labels: np.ndarray) -> np.ndarray:
        if self._lut is None:
            return labels
        table = np.zeros(max(self._lut) + 2, dtype=np.int64)  # the last entry: unlisted
        for label, cls in self._lut.items():
            table[label] = cls
        return table[np.clip(labels, 0, len(table) - 1)]

    def _square(self, planes: Tensor, fill: float, mode: str) -> Tensor:
        import torch.nn.functional as F  # noqa: N812  (torch loads with a sample)

        """Pad ``[C, H, W]`` to a square (centred) with ``fill``, resize to ``image_size``."""
        _, h, w = planes.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        padded = F.pad(planes, (left, side - w - left, top, side - h - top), value=fill)
        size = self.options.image_size
        if side == size:
            return padded
        if mode == "nearest":
            return F.interpolate(padded[None], size=(size, size), mode="nearest-exact")[0]
        return F.interpolate(padded[None], size=(size, size), mode="bilinear", antialias=True)[0]

    def load(self, index: int) -> dict[str, Any]:
        """The sample at ``index``; raises on a bad volume (``__getitem__`` does not)."""
        import torch  # with a sample, not with the plugin: table checks stay light

        o = self.options
        volume, position = self._locate(index)
        image_path, mask_path, _ = self.volumes[volume]
        voxels, labels = _load(image_path, mask_path, o.spacing)
        lo, hi = self._range(image_path, voxels)
        if o.mode == "patch":
            return self._patch(voxels, labels, volume, position, lo, hi)
        n = voxels.shape[o.axis]
        centre = min(position * o.slice_stride, n - 1)
        half = o.slab_slices // 2 if o.mode == "slab" else 0
        picks = [min(max(centre + k, 0), n - 1) for k in range(-half, half + 1)]
        planes = torch.from_numpy(np.stack([_display_plane(voxels, o.axis, i) for i in picks]))
        planes = ((planes - lo) / (hi - lo)).clamp_(0.0, 1.0)
        sample: dict[str, Any] = {
            "image": self._square(planes, 0.0, "bilinear").clamp_(0.0, 1.0).contiguous(),
            "meta": {"age": None, "sex": None, "view": None},
        }
        if labels is not None:
            plane = self._labels(_display_plane(labels, o.axis, centre))
            plane = torch.from_numpy(plane.astype(np.float32))
            sample["mask"] = self._square(plane[None], 0.0, "nearest")[0].long()
        return sample

    def _patch(
        self,
        voxels: np.ndarray,
        labels: np.ndarray | None,
        volume: int,
        position: int,
        lo: float,
        hi: float,
    ) -> dict[str, Any]:
        import torch
        import torch.nn.functional as F  # noqa: N812

        o = self.options
        p = o.patch_voxels
        # [X, Y, Z] -> [Z, Y, X]: depth, height, width
        image = torch.from_numpy(voxels.transpose(2, 1, 0))
        rng = np.random.default_rng([o.seed, volume, position])
        starts = [int(rng.integers(0, max(n - p, 0) + 1)) for n in image.shape]
        crop = tuple(slice(s, s + p) for s in starts)

        def cut(x: Tensor, fill: float) -> Tensor:
            x = x[crop]
            pad = [(0, p - n) for n in reversed(x.shape)]  # too small a volume: pad at the end
            return F.pad(x, [v for pair in pad for v in pair], value=fill)

        sample: dict[str, Any] = {
            "image": ((cut(image, lo) - lo) / (hi - lo)).clamp_(0.0, 1.0)[None].contiguous(),
            "meta": {"age": None, "sex": None, "view": None},
        }
        if labels is not None:
            lab = torch.from_numpy(labels.transpose(2, 1, 0))
            sample["mask"] = torch.from_numpy(self._labels(cut(lab, 0).numpy())).contiguous()
        return sample

    def __getitem__(self, index: int) -> dict[str, Any] | LoadFailure:
        self._locate(index)  # an index out of range is a bug, not a bad file
        try:
            return self.load(index)
        except MemoryError:
            raise
        except Exception as exc:  # a bad volume is counted by the engine, never fatal
            volume, _ = self._locate(index)
            return LoadFailure(self._failure_key(self.volumes[volume][0]), describe_error(exc))

    def _failure_key(self, image: str) -> str:
        """A volume as failure reports name it: its keyed hash, or with --show-paths its path."""
        if show_paths():
            return printable_path(image)
        root = self.options.root
        root = os.path.dirname(image) if root is None else os.path.expanduser(root)
        return data_key(dataset_secret(root, ephemeral_ok=True), os.path.relpath(image, root))
