"""iBOT block masks on 3D patch grids.

The 2D masks of :func:`medssl.augment.block_masks` (DINOv2's ``MaskingGenerator``) draw
rectangles; here the blocks are cuboids over a ``depth × height × width`` grid, with the
same conventions: ``int(n_rows * masked_share)`` rows masked, their ratios spread
linearly over ``[ratio_min, ratio_max]``, blocks of at least ``min_patches`` patches with
each side ratio in ``[aspect_min, 1 / aspect_min]``, sides clamped to the grid, a mask
the blocks could not fill topped up with single patches (so every row holds exactly its
target), rows shuffled. Flattened row-major (depth, height, width), as
:class:`medssl_ct.vit3d.VisionTransformer3D` orders its patch tokens.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor

from medssl.augment import block_masks
from medssl.types import BlockMaskSpec

__all__ = ["block_mask_3d", "block_masks_nd"]


def block_mask_3d(
    grid: tuple[int, int, int],
    n_masked: int,
    rng: random.Random,
    min_patches: int = 4,
    aspect_min: float = 0.3,
    attempts: int = 10,
) -> np.ndarray:
    """One bool ``grid``-shaped mask with exactly ``n_masked`` True patches, in cuboids."""
    total = math.prod(grid)
    if not 0 <= n_masked <= total:
        raise ValueError(f"cannot mask {n_masked} patches of a {'×'.join(map(str, grid))} grid")
    mask = np.zeros(grid, dtype=bool)
    log_aspect = (math.log(aspect_min), -math.log(aspect_min))
    count = 0
    while count < n_masked:
        remaining = n_masked - count
        added = 0
        for _ in range(attempts):
            volume = rng.uniform(min(min_patches, remaining), remaining)
            a, b = rng.uniform(*log_aspect), rng.uniform(*log_aspect)
            # Three sides whose product is ~volume and whose pairwise ratios follow a, b.
            exps = (a, b - a, -b)
            sides = [
                min(max(round(volume ** (1 / 3) * math.exp(e / 3)), 1), n)
                for e, n in zip(exps, grid, strict=True)
            ]
            start = [rng.randint(0, n - s) for n, s in zip(grid, sides, strict=True)]
            block = mask[tuple(slice(o, o + s) for o, s in zip(start, sides, strict=True))]
            new = math.prod(sides) - int(block.sum())
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
    """iBOT masks ``bool [n_rows, prod(grid)]`` for a 2D or 3D patch grid."""
    if len(grid) == 2:
        return block_masks(n_rows, grid[0], grid[1], spec, generator)
    if len(grid) != 3:
        raise ValueError(f"block masks need a 2D or 3D patch grid, got {grid}")
    if not 0.0 <= spec.ratio_min <= spec.ratio_max <= 1.0:
        raise ValueError(
            f"block mask ratios must satisfy 0 <= ratio_min <= ratio_max <= 1, got "
            f"[{spec.ratio_min}, {spec.ratio_max}]"
        )
    if not 0.0 < spec.aspect_min <= 1.0:
        raise ValueError(f"block mask aspect_min must be in (0, 1], got {spec.aspect_min}")
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
    rng = random.Random(seed)
    total = math.prod(grid)
    n_masked = int(n_rows * spec.masked_share)
    bounds = np.linspace(spec.ratio_min, spec.ratio_max, n_masked + 1)
    rows = np.zeros((n_rows, total), dtype=bool)
    for i in range(n_masked):
        target = int(total * rng.uniform(bounds[i], bounds[i + 1]))
        rows[i] = block_mask_3d(
            (grid[0], grid[1], grid[2]), target, rng, spec.min_patches, spec.aspect_min
        ).reshape(-1)
    order = list(range(n_rows))
    rng.shuffle(order)
    return torch.from_numpy(rows[order])
