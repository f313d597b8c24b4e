"""The DINOv2 multi-crop policy: the shared contract plus DINOv2's specifics."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medssl.augment import DINOv2MultiCrop
from medssl.testing.augmentation import AugmentationPolicyContractTests
from medssl.types import BlockMaskSpec, ViewRequest


class TestDINOv2MultiCrop(AugmentationPolicyContractTests):
    def make_policy(self, **overrides: Any) -> DINOv2MultiCrop:
        options = {"global_crop_size": 16, "local_crop_size": 12, "n_local_crops": 3}
        return DINOv2MultiCrop(**{**options, **overrides})

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


def _plain(**overrides: Any) -> DINOv2MultiCrop:
    """Tiny grey crops in [0, 1] (identity normalisation), every random op off unless set."""
    options: dict[str, Any] = dict(
        global_crop_size=16,
        local_crop_size=8,
        channels=1,
        mean=(0.0,),
        std=(1.0,),
        jitter_prob=0.0,
        solarize_prob=0.0,
        blur_probs=(0.0, 0.0, 0.0),
    )
    return DINOv2MultiCrop(**{**options, **overrides})


def _images(batch: int = 8, channels: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)


def test_defaults_follow_dinov2() -> None:
    o = DINOv2MultiCrop().options
    assert (o.global_crop_size, o.local_crop_size, o.n_local_crops) == (224, 98, 8)
    assert o.global_scale == (0.32, 1.0) and o.local_scale == (0.05, 0.32)
    assert (o.brightness, o.contrast, o.saturation, o.hue) == (0.4, 0.4, 0.2, 0.1)
    assert (o.jitter_prob, o.grayscale_prob, o.hflip_prob, o.solarize_prob) == (0.8, 0.2, 0.5, 0.2)
    assert o.blur_probs == (1.0, 0.1, 0.5)  # the paper's convention (dinov2 PR #411)


def test_only_requested_views_are_made() -> None:
    policy = DINOv2MultiCrop(global_crop_size=16, local_crop_size=8)
    views = policy(_images(), ViewRequest(local_crops=True, patch_size=4))
    assert views.global_crops is None and views.block_masks is None
    assert views.local_crops is not None and views.n_local == 8 and views.n_global == 0
    views = policy(_images(), ViewRequest(single_view=True, patch_size=4))
    assert views.single_view is not None and views.single_view.shape == (8, 3, 16, 16)


def test_crops_are_crop_major() -> None:
    """Crop i of every image sits in rows [i * B, (i + 1) * B): a constant image's crops
    keep its value, so the row order shows which image each crop came from."""
    batch = 4
    levels = torch.tensor([0, 60, 120, 250], dtype=torch.uint8)
    images = levels.view(batch, 1, 1, 1).expand(batch, 1, 32, 32).contiguous()
    policy = _plain(blur_probs=(1.0, 0.1, 0.5))
    views = policy(images, ViewRequest(global_crops=True, local_crops=True, patch_size=4))
    for crops, n in ((views.global_crops, 2), (views.local_crops, 8)):
        per_crop = crops.view(n, batch, -1).mean(-1)
        torch.testing.assert_close(
            per_crop, (levels.float() / 255).expand(n, batch), atol=1e-5, rtol=0
        )


def test_probabilities_show_in_the_views() -> None:
    """Solarisation only on global crop 2, about its probability; blur smooths."""
    batch = 400
    images = _images(batch, channels=1, size=24)
    plain = _plain(n_local_crops=1)
    solar = _plain(n_local_crops=1, solarize_prob=0.5)
    request = ViewRequest(global_crops=True, patch_size=4)
    a = plain(images, request, torch.Generator().manual_seed(0)).global_crops.view(2, batch, -1)
    b = solar(images, request, torch.Generator().manual_seed(0)).global_crops.view(2, batch, -1)
    torch.testing.assert_close(a[0], b[0])
    changed = (a[1] != b[1]).any(dim=1).float().mean().item()
    assert 0.4 < changed < 0.6


def test_blur_always_on_global_one() -> None:
    images = _images(16, channels=1, size=64)
    request = ViewRequest(global_crops=True, patch_size=4)
    sharp = _plain(global_crop_size=32)(images, request, torch.Generator().manual_seed(0))
    blurred = _plain(global_crop_size=32, blur_sigma=(2.0, 2.0), blur_probs=(1.0, 0.1, 0.5))(
        images, request, torch.Generator().manual_seed(0)
    )

    def roughness(x: torch.Tensor) -> torch.Tensor:
        return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))

    assert (roughness(blurred.global_crops[:16]) < 0.7 * roughness(sharp.global_crops[:16])).all()


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="mean has 3 values but channels=1"):
        DINOv2MultiCrop(channels=1)
    with pytest.raises(ValueError, match="extra"):
        DINOv2MultiCrop(global_crops_size=224)
    with pytest.raises(ValueError, match="odd"):
        DINOv2MultiCrop(blur_kernel_size=8)
    with pytest.raises(ValueError, match="local_scale must satisfy"):
        DINOv2MultiCrop(local_scale=(0.32, 0.05))
    with pytest.raises(ValueError, match="upper end"):
        DINOv2MultiCrop(global_scale=(0.32, 1.5))
    with pytest.raises(ValueError, match="blur_probs"):
        DINOv2MultiCrop(blur_probs=(1.0, 0.1, 1.5))
    with pytest.raises(ValueError, match="too large for 4-px crops"):
        DINOv2MultiCrop(local_crop_size=4)
    DINOv2MultiCrop(local_crop_size=4, blur_probs=(0.0, 0.0, 0.0))  # no blur: any size


def test_single_view_policy_request_is_refused_by_views() -> None:
    policy = DINOv2MultiCrop(global_crop_size=16, local_crop_size=8)
    with pytest.raises(ValueError, match="ViewRequest"):
        policy(_images(), {"global_crops": True})


def test_host_generator() -> None:
    from medssl.augment.params import host_generator

    cpu = torch.Generator().manual_seed(0)
    assert host_generator(cpu) is cpu and host_generator(None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_are_reproducible() -> None:
    """On CUDA: a CUDA generator gives reproducible views and masks on the device."""
    policy = DINOv2MultiCrop(global_crop_size=16, local_crop_size=8, blur_probs=(0, 0, 0))
    request = ViewRequest(
        global_crops=True, local_crops=True, block_masks=BlockMaskSpec(), patch_size=4
    )
    images = _images().cuda()
    a = policy(images, request, torch.Generator(device="cuda").manual_seed(0))
    b = policy(images, request, torch.Generator(device="cuda").manual_seed(0))
    torch.testing.assert_close(a.global_crops, b.global_crops)
    assert torch.equal(a.block_masks, b.block_masks) and a.block_masks.is_cuda
    cpu = policy(images.cpu(), request, torch.Generator().manual_seed(0))
    assert cpu.global_crops.shape == a.global_crops.shape


def test_antialias_option_smooths_downscaled_crops() -> None:
    stripes = (torch.arange(64) % 2 * 255).to(torch.uint8).expand(4, 1, 64, 64).contiguous()
    request = ViewRequest(global_crops=True, patch_size=4)
    aliased = _plain(global_scale=(0.9, 1.0))(stripes, request, torch.Generator().manual_seed(0))
    smooth = _plain(global_scale=(0.9, 1.0), antialias=True)(
        stripes, request, torch.Generator().manual_seed(0)
    )
    # 1-px stripes shrunk ~4×: antialiasing averages them to mid-grey.
    assert (smooth.global_crops - 0.5).abs().mean() < 0.1
    assert (aliased.global_crops - 0.5).abs().mean() > (smooth.global_crops - 0.5).abs().mean()
