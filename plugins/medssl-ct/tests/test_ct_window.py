"""ct_window: views for 2D slices and 3D patches, windows in HU, masks, errors."""

from __future__ import annotations

import pytest
import torch
from medssl_ct.volume import encode_hu
from medssl_ct.window import WINDOW_PRESETS, CTWindow

from medssl.augment import block_mask_3d, block_masks_nd
from medssl.types import BlockMaskSpec, ViewRequest

DINO_IBOT = ViewRequest(
    global_crops=True, local_crops=True, block_masks=BlockMaskSpec(), patch_size=4
)
SMALL = {"global_crop_size": 16, "local_crop_size": 8, "n_local_crops": 3}


def hu_batch(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return encode_hu(torch.rand(shape, generator=g) * 2000 - 1000)


@pytest.mark.parametrize("spatial", [(24, 24), (20, 24, 24)])
def test_views_for_slices_and_patches(spatial):
    policy = CTWindow(**SMALL)
    b = 3
    views = policy(hu_batch((b, 1, *spatial)), DINO_IBOT, torch.Generator().manual_seed(0))
    dims = len(spatial)
    assert views.global_crops.shape == (2 * b, 1, *(16,) * dims)
    assert views.local_crops.shape == (3 * b, 1, *(8,) * dims)
    assert views.n_global == 2 and views.n_local == 3
    assert views.block_masks.shape == (2 * b, 4**dims) and views.block_masks.dtype == torch.bool
    assert int(views.block_masks.any(dim=1).sum()) == int(2 * b * 0.5)  # masked_share
    assert torch.isfinite(views.global_crops).all()


def test_window_maps_presets_exactly_without_jitter():
    """A uniform 50 HU image in the mediastinum window (50 / 350) is mid-grey: 0.5."""
    policy = CTWindow(
        **SMALL,
        presets=["mediastinum"],
        level_jitter=0,
        width_jitter=0,
        noise_prob=0,
        mean=[0.0],
        std=[1.0],
    )
    image = encode_hu(torch.full((2, 1, 24, 24), 50.0))
    views = policy(image, ViewRequest(global_crops=True, patch_size=4))
    torch.testing.assert_close(
        views.global_crops, torch.full_like(views.global_crops, 0.5), atol=1e-4, rtol=0
    )


def test_random_windows_stay_near_their_presets():
    policy = CTWindow(**SMALL, presets=["lung", "bone"], level_jitter=0.1, width_jitter=0.25)
    windows = policy._windows(2000, 1, torch.Generator().manual_seed(0))
    centres = windows.mean(-1).squeeze(1)
    widths = (windows[..., 1] - windows[..., 0]).squeeze(1)
    for name in ("lung", "bone"):
        level, width = WINDOW_PRESETS[name]
        near = (centres - level).abs() <= 0.1 * width + 1e-3
        assert near.any()
        assert (widths[near] >= width / 1.25 - 1e-3).all()
        assert (widths[near] <= width * 1.25 + 1e-3).all()


def test_multi_window_gives_one_preset_per_channel():
    policy = CTWindow(
        **SMALL,
        channels=3,
        multi_window=True,
        level_jitter=0,
        width_jitter=0,
        noise_prob=0,
        mean=[0.0],
        std=[1.0],
    )
    image = encode_hu(torch.full((1, 1, 16, 16), -600.0))  # the lung window's level
    crops = policy(image, ViewRequest(global_crops=True, patch_size=4)).global_crops
    assert crops.shape[1] == 3
    means = crops.mean(dim=(0, 2, 3))
    assert abs(float(means[0]) - 0.5) < 1e-4  # lung
    assert float(means[1]) == 0.0 and float(means[2]) == 0.0  # mediastinum, bone: below


def test_slab_channels_pass_through():
    policy = CTWindow(**SMALL, channels=3)
    views = policy(hu_batch((2, 3, 20, 20)), ViewRequest(global_crops=True, patch_size=4))
    assert views.global_crops.shape == (4, 3, 16, 16)


def test_single_view_and_mae_masks_3d():
    policy = CTWindow(**SMALL)
    request = ViewRequest(single_view=True, mae_mask_ratio=0.75, patch_size=4)
    views = policy(hu_batch((2, 1, 16, 16, 16)), request)
    assert views.single_view.shape == (2, 1, 16, 16, 16)
    assert views.mae_masks.shape == (2, 64)
    assert views.mae_masks.sum(dim=1).tolist() == [48, 48]
    assert views.global_crops is None and views.local_crops is None


def test_determinism_with_a_generator():
    policy = CTWindow(**SMALL)
    images = hu_batch((2, 1, 20, 20))
    a = policy(images, DINO_IBOT, torch.Generator().manual_seed(5))
    b = policy(images, DINO_IBOT, torch.Generator().manual_seed(5))
    c = policy(images, DINO_IBOT, torch.Generator().manual_seed(6))
    assert torch.equal(a.global_crops, b.global_crops) and torch.equal(a.block_masks, b.block_masks)
    assert not torch.equal(a.global_crops, c.global_crops)


@pytest.mark.parametrize(
    ("images", "request_", "match"),
    [
        (torch.rand(2, 24, 24), DINO_IBOT, "slices"),
        (torch.rand(2, 1, 24, 24, dtype=torch.float64), DINO_IBOT, "float32"),
        (torch.rand(2, 2, 24, 24), DINO_IBOT, "channels"),
        (torch.rand(2, 1, 24, 24), ViewRequest(global_crops=True, patch_size=5), "multiple"),
        (torch.rand(2, 1, 24, 24), ViewRequest(global_crops=True, text=True, patch_size=4), "text"),
        (torch.rand(2, 1, 24, 24), "not a request", "ViewRequest"),
    ],
)
def test_bad_input_is_named(images, request_, match):
    with pytest.raises(ValueError, match=match):
        CTWindow(**SMALL)(images, request_)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"presets": ["lungs"]}, "choose from"),
        ({"multi_window": True}, "channels: 3"),
        ({"custom_presets": {"x": [0, -5]}}, "width"),
        ({"global_scale": [0.5, 1.5]}, "at most 1"),
        ({"std": [0.0]}, "positive"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        CTWindow(**options)


def test_block_mask_3d_exact_count_in_cuboids():
    import random

    rng = random.Random(0)
    for target in (0, 1, 7, 30, 64):
        mask = block_mask_3d((4, 4, 4), target, rng)
        assert mask.shape == (4, 4, 4) and int(mask.sum()) == target
    with pytest.raises(ValueError, match="cannot mask"):
        block_mask_3d((2, 2, 2), 9, rng)
    with pytest.raises(ValueError, match="2D or 3D"):
        block_masks_nd(2, (2, 2, 2, 2), BlockMaskSpec())


def test_block_masks_nd_ratios_spread():
    spec = BlockMaskSpec(ratio_min=0.1, ratio_max=0.5, masked_share=1.0)
    masks = block_masks_nd(8, (4, 4, 4), spec, torch.Generator().manual_seed(0))
    shares = sorted((masks.sum(dim=1) / 64).tolist())
    assert all(0.09 <= s <= 0.51 for s in shares)
    assert shares[-1] - shares[0] > 0.2  # spread over the range, not one ratio
