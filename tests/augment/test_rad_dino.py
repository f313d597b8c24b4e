"""The RAD-DINO chest X-ray policy: the shared contract plus its grey-level choices."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medssl.augment import RadDinoCXR
from medssl.augment.rad_dino import RAD_DINO_MEAN, RAD_DINO_STD
from medssl.testing.augmentation import AugmentationPolicyContractTests
from medssl.types import BlockMaskSpec, ViewRequest


class TestRadDinoCXR(AugmentationPolicyContractTests):
    def make_policy(self, **overrides: Any) -> RadDinoCXR:
        options = {"global_crop_size": 16, "local_crop_size": 12, "n_local_crops": 2}
        return RadDinoCXR(**{**options, **overrides})

    def make_request(self, patch_size: int = 4) -> ViewRequest:
        return ViewRequest(
            global_crops=True, local_crops=True, block_masks=BlockMaskSpec(), patch_size=patch_size
        )

    def expected_shapes(self, policy: Any, request: ViewRequest, batch: int) -> dict[str, tuple]:
        o, c = policy.options, policy.channels
        grid = o.global_crop_size // request.patch_size
        return {
            "global_crops": (2 * batch, c, o.global_crop_size, o.global_crop_size),
            "local_crops": (o.n_local_crops * batch, c, o.local_crop_size, o.local_crop_size),
            "block_masks": (2 * batch, grid * grid),
        }


def test_defaults() -> None:
    policy = RadDinoCXR()
    o = policy.options
    assert policy.mean == (RAD_DINO_MEAN,) * 3 and policy.std == (RAD_DINO_STD,) * 3
    assert o.hflip_prob == 0.0  # laterality markers and situs
    assert policy.jitter_ops == ("brightness", "contrast", "gamma")
    assert o.global_crop_size % 14 == 0 and o.local_crop_size % 14 == 0


def test_views_are_grey_even_from_rgb() -> None:
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    policy = RadDinoCXR(global_crop_size=16, local_crop_size=8)
    views = policy(rgb, ViewRequest(global_crops=True, local_crops=True, patch_size=4))
    for crops in (views.global_crops, views.local_crops):
        assert crops.shape[1] == 3
        torch.testing.assert_close(crops[:, 1:], crops[:, :1].expand(-1, 2, -1, -1))


def test_no_flip_by_default_and_flip_on_request() -> None:
    """A left-right gradient keeps its direction unless flips are switched on."""
    ramp = torch.linspace(0, 255, 48).round().to(torch.uint8).expand(64, 1, 48, 48).contiguous()
    request = ViewRequest(global_crops=True, patch_size=4)
    kwargs = dict(global_crop_size=16, local_crop_size=8, jitter_prob=0.0, solarize_prob=0.0)

    def rising(policy: RadDinoCXR) -> torch.Tensor:
        crops = policy(ramp, request, torch.Generator().manual_seed(0)).global_crops
        return crops[..., -1].mean(dim=(1, 2)) > crops[..., 0].mean(dim=(1, 2))

    assert rising(RadDinoCXR(**kwargs)).all()
    flipped = (~rising(RadDinoCXR(**kwargs, hflip_prob=0.5))).float().mean()
    assert 0.3 < flipped < 0.7


def test_gamma_range_is_checked() -> None:
    with pytest.raises(ValueError, match="gamma must satisfy"):
        RadDinoCXR(gamma=(1.5, 0.7))


def test_gamma_is_applied() -> None:
    flat = torch.full((8, 1, 32, 32), 128, dtype=torch.uint8)
    request = ViewRequest(global_crops=True, patch_size=4)
    kwargs = dict(
        global_crop_size=16,
        local_crop_size=8,
        brightness=0.0,
        contrast=0.0,
        solarize_prob=0.0,
        jitter_prob=1.0,
        channels=1,
        mean=(0.0,),
        std=(1.0,),
    )
    views = RadDinoCXR(**kwargs, gamma=(2.0, 2.0))(flat, request)
    torch.testing.assert_close(
        views.global_crops, torch.full_like(views.global_crops, (128 / 255) ** 2)
    )
