"""iBOT block masks and MAE random masks, including small grids."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from medssl.augment.masks import block_mask, block_masks, random_masks
from medssl.types import BlockMaskSpec


@pytest.mark.parametrize("grid", [(2, 2), (4, 4), (8, 8), (16, 16), (5, 9)])
def test_block_masks_follow_dinov2_convention(grid: tuple[int, int]) -> None:
    spec = BlockMaskSpec()
    rows = 64
    masks = block_masks(rows, *grid, spec, torch.Generator().manual_seed(0))
    n_patches = grid[0] * grid[1]
    assert masks.shape == (rows, n_patches) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    masked = counts > 0
    # Half the rows get a mask (a tiny ratio on a tiny grid may round to 0 patches).
    assert masked.sum() <= rows // 2
    assert masked.sum() >= rows // 2 - (rows // 2) * (n_patches * spec.ratio_min < 1)
    ratios = counts[masked].float() / n_patches
    assert ratios.max() <= spec.ratio_max + 1e-6
    # Ratios spread over the range: the masked rows' sorted targets are linear.
    expected = torch.linspace(spec.ratio_min, spec.ratio_max, rows // 2)
    assert (ratios.sort().values - expected[-len(ratios) :]).abs().max() <= 1 / n_patches + 0.02


def test_masked_rows_are_shuffled() -> None:
    masks = block_masks(64, 8, 8, BlockMaskSpec(), torch.Generator().manual_seed(0))
    masked = masks.any(dim=1)
    assert masked[:32].any() and masked[32:].any()


def test_block_mask_exact_count_and_blocks() -> None:
    rng = random.Random(0)
    for target in range(0, 65):
        mask = block_mask(8, 8, target, rng)
        assert mask.sum() == target
    # Large targets on a large grid come in few blocks, not scattered patches.
    components = [ndimage.label(block_mask(16, 16, 100, rng))[1] for _ in range(20)]
    assert np.mean(components) < 8
    with pytest.raises(ValueError, match="cannot mask 17"):
        block_mask(4, 4, 17, rng)


def test_block_masks_are_reproducible() -> None:
    a = block_masks(8, 4, 4, BlockMaskSpec(), torch.Generator().manual_seed(1))
    b = block_masks(8, 4, 4, BlockMaskSpec(), torch.Generator().manual_seed(1))
    c = block_masks(8, 4, 4, BlockMaskSpec(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_block_mask_spec_is_checked() -> None:
    with pytest.raises(ValueError, match="ratio_min <= ratio_max"):
        block_masks(4, 4, 4, BlockMaskSpec(ratio_min=0.6, ratio_max=0.5))
    with pytest.raises(ValueError, match="aspect_min"):
        block_masks(4, 4, 4, BlockMaskSpec(aspect_min=0.0))


def test_random_masks_hide_exactly_the_ratio() -> None:
    masks = random_masks(32, 49, 0.75, torch.Generator().manual_seed(0))
    assert masks.shape == (32, 49) and masks.dtype == torch.bool
    assert (masks.sum(dim=1) == round(0.75 * 49)).all()
    assert not torch.equal(masks[0], masks[1])
    # Every patch gets hidden sometimes: no positional bias.
    assert random_masks(400, 16, 0.5).float().mean(0).min() > 0.3
    with pytest.raises(ValueError, match="MAE mask ratio"):
        random_masks(2, 16, 1.0)
