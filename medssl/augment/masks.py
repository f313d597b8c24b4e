"""Patch masks: iBOT block masks and MAE random masks.

Block masks follow DINOv2's ``MaskingGenerator`` and ``collate_data_and_cast``
(facebookresearch/dinov2, ``dinov2/data/masking.py`` and ``collate.py``): a share of the
global crops gets a mask whose ratio is spread linearly over ``[ratio_min, ratio_max]``;
each mask is built from rectangular blocks of at least ``min_patches`` patches with an
aspect in ``[aspect_min, 1 / aspect_min]``; the masked rows are then shuffled among the
others. Two changes make small grids (4×4, 8×8) work, where lightly's
``random_block_mask`` and DINOv2's generator fail or stall: block sides are clamped to
the grid instead of rejected, and a mask the blocks could not fill to its target is
topped up with single random patches, so every mask holds exactly its target count.

Block masks on 3D patch grids (CT and MR volumes) use cuboids with the same conventions:
:func:`block_masks_nd` takes a 2D or a 3D grid.

MAE masks (He et al., 2022) hide exactly ``round(ratio * P)`` random patches per row.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from medssl.augment.params import generator_device
from medssl.types import BlockMaskSpec

__all__ = [
    "block_mask",
    "block_mask_3d",
    "block_masks",
    "block_masks_nd",
    "python_rng",
    "random_masks",
]


def python_rng(generator: torch.Generator | None) -> random.Random:
    """A Python RNG seeded from ``generator`` (scalar draws are far cheaper there)."""
    seed = torch.randint(
        0, 2**62, (1,), generator=generator, device=generator_device(generator)
    ).item()
    return random.Random(seed)


def block_mask(
    grid_h: int,
    grid_w: int,
    n_masked: int,
    rng: random.Random,
    min_patches: int = 4,
    aspect_min: float = 0.3,
    attempts: int = 10,
) -> np.ndarray:
    """One bool ``[grid_h, grid_w]`` mask with exactly ``n_masked`` True patches, in blocks."""
    if not 0 <= n_masked <= grid_h * grid_w:
        raise ValueError(f"cannot mask {n_masked} patches of a {grid_h}×{grid_w} grid")
    log_aspect = (math.log(aspect_min), -math.log(aspect_min))

    def sides(remaining: int) -> list[int]:
        area = rng.uniform(min(min_patches, remaining), remaining)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = min(max(round(math.sqrt(area * aspect)), 1), grid_h)
        w = min(max(round(math.sqrt(area / aspect)), 1), grid_w)
        return [h, w]

    return _fill_blocks((grid_h, grid_w), n_masked, rng, sides, attempts)


def block_mask_3d(
    grid: tuple[int, int, int],
    n_masked: int,
    rng: random.Random,
    min_patches: int = 4,
    aspect_min: float = 0.3,
    attempts: int = 10,
) -> np.ndarray:
    """One bool ``grid``-shaped mask (depth, height, width) with exactly ``n_masked`` True
    patches, in cuboids: :func:`block_mask`'s conventions, with two random side ratios."""
    if not 0 <= n_masked <= math.prod(grid):
        raise ValueError(f"cannot mask {n_masked} patches of a {'×'.join(map(str, grid))} grid")
    log_aspect = (math.log(aspect_min), -math.log(aspect_min))

    def sides(remaining: int) -> list[int]:
        volume = rng.uniform(min(min_patches, remaining), remaining)
        a, b = rng.uniform(*log_aspect), rng.uniform(*log_aspect)
        # Three sides whose product is ~volume and whose pairwise ratios follow a, b.
        return [
            min(max(round(volume ** (1 / 3) * math.exp(e / 3)), 1), n)
            for e, n in zip((a, b - a, -b), grid, strict=True)
        ]

    return _fill_blocks(grid, n_masked, rng, sides, attempts)


def _fill_blocks(
    grid: tuple[int, ...],
    n_masked: int,
    rng: random.Random,
    sides: Callable[[int], list[int]],
    attempts: int,
) -> np.ndarray:
    """Blocks of ``sides(remaining)`` at random places until ``n_masked`` patches are
    masked; a block adding nothing or too much is redrawn (``attempts`` times), then the
    rest is topped up with single random patches."""
    mask = np.zeros(grid, dtype=bool)
    count = 0
    while count < n_masked:
        remaining = n_masked - count
        added = 0
        for _ in range(attempts):
            size = sides(remaining)
            start = [rng.randint(0, n - s) for n, s in zip(grid, size, strict=True)]
            block = mask[tuple(slice(o, o + s) for o, s in zip(start, size, strict=True))]
            new = math.prod(size) - int(block.sum())
            if 0 < new <= remaining:
                block[...] = True
                added = new
                break
        if added == 0:
            break
        count += added
    if count < n_masked:
        free = np.flatnonzero(~mask)
        mask.flat[rng.sample(free.tolist(), n_masked - count)] = True
    return mask


def block_masks_nd(
    n_rows: int,
    grid: tuple[int, ...],
    spec: BlockMaskSpec,
    generator: torch.Generator | None = None,
) -> Tensor:
    """iBOT masks ``bool [n_rows, prod(grid)]`` for a 2D or 3D patch grid, row-major.

    Rectangles (:func:`block_mask`) on a 2D grid, cuboids (:func:`block_mask_3d`) on a
    ``depth × height × width`` grid; the rows follow :func:`block_masks`'s convention.
    """
    if len(grid) not in (2, 3):
        raise ValueError(f"block masks need a 2D or 3D patch grid, got {grid}")
    _check_spec(spec)
    rng = python_rng(generator)
    if len(grid) == 2:
        gh, gw = grid

        def draw(target: int) -> np.ndarray:
            return block_mask(gh, gw, target, rng, spec.min_patches, spec.aspect_min)

    else:
        cube = (grid[0], grid[1], grid[2])

        def draw(target: int) -> np.ndarray:
            return block_mask_3d(cube, target, rng, spec.min_patches, spec.aspect_min)

    return _masked_rows(n_rows, math.prod(grid), spec, rng, draw)


def block_masks(
    n_rows: int,
    grid_h: int,
    grid_w: int,
    spec: BlockMaskSpec,
    generator: torch.Generator | None = None,
) -> Tensor:
    """iBOT masks ``bool [n_rows, grid_h * grid_w]`` (DINOv2's collate convention).

    ``int(n_rows * masked_share)`` rows get a mask, row ``i`` of those with a ratio drawn
    uniformly in the ``i``-th of as many equal slices of ``[ratio_min, ratio_max]``; the
    rest stay all False; rows are shuffled so crop order carries no signal.
    """
    return block_masks_nd(n_rows, (grid_h, grid_w), spec, generator)


def _check_spec(spec: BlockMaskSpec) -> None:
    if not 0.0 <= spec.ratio_min <= spec.ratio_max <= 1.0:
        raise ValueError(
            f"block mask ratios must satisfy 0 <= ratio_min <= ratio_max <= 1, got "
            f"[{spec.ratio_min}, {spec.ratio_max}]"
        )
    if not 0.0 < spec.aspect_min <= 1.0:
        raise ValueError(f"block mask aspect_min must be in (0, 1], got {spec.aspect_min}")


def _masked_rows(
    n_rows: int,
    n_patches: int,
    spec: BlockMaskSpec,
    rng: random.Random,
    draw: Callable[[int], np.ndarray],
) -> Tensor:
    """``int(n_rows * masked_share)`` masks of spread ratios (``draw(target count)``), the
    other rows empty, rows shuffled."""
    n_masked = int(n_rows * spec.masked_share)
    bounds = np.linspace(spec.ratio_min, spec.ratio_max, n_masked + 1)
    rows = np.zeros((n_rows, n_patches), dtype=bool)
    for i in range(n_masked):
        target = int(n_patches * rng.uniform(bounds[i], bounds[i + 1]))
        rows[i] = draw(target).reshape(-1)
    order = list(range(n_rows))
    rng.shuffle(order)
    return torch.from_numpy(rows[order])


def random_masks(
    n_rows: int, n_patches: int, ratio: float, generator: torch.Generator | None = None
) -> Tensor:
    """MAE masks ``bool [n_rows, n_patches]`` with exactly ``round(ratio * n_patches)`` True."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"MAE mask ratio must be in [0, 1), got {ratio}")
    n_masked = round(ratio * n_patches)
    noise = torch.rand((n_rows, n_patches), generator=generator, device=generator_device(generator))
    masked = noise.argsort(dim=1)[:, :n_masked]
    mask = torch.zeros(n_rows, n_patches, dtype=torch.bool, device=noise.device)
    return mask.scatter_(1, masked, True)
