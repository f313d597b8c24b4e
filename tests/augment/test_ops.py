"""Batched ops against torchvision's per-image definitions (which DINOv2 uses)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from medssl.augment import ops


def _rgb(n: int = 6, size: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def _boxes(n: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    top = torch.randint(0, 10, (n, batch), generator=g)
    left = torch.randint(0, 10, (n, batch), generator=g)
    height = torch.randint(5, 30, (n, batch), generator=g)
    width = torch.randint(5, 30, (n, batch), generator=g)
    flips = torch.rand((n, batch), generator=g) < 0.5
    return torch.stack([top, left, height, width], -1).float(), flips


def test_loop_crops_match_torchvision_resized_crop() -> None:
    source = torch.rand((3, 1, 40, 40), generator=torch.Generator().manual_seed(0))
    boxes, flips = _boxes(2, 3)
    out = ops.resized_crops(source, boxes, flips, 12, backend="loop")
    assert out.shape == (6, 1, 12, 12) and out.is_contiguous()
    for i in range(2):
        for b in range(3):
            top, left, h, w = boxes[i, b].int().tolist()
            want = TF.resized_crop(source[b], top, left, h, w, [12, 12], antialias=False)
            if flips[i, b]:
                want = want.flip(-1)
            torch.testing.assert_close(out[i * 3 + b], want)  # crop-major


def test_grid_crops_match_the_loop_inside_the_box() -> None:
    source = torch.rand((3, 3, 40, 40), generator=torch.Generator().manual_seed(0))
    boxes, flips = _boxes(2, 3)
    grid = ops.resized_crops(source, boxes, flips, 12, backend="grid")
    loop = ops.resized_crops(source, boxes, flips, 12, backend="loop")
    assert grid.shape == loop.shape and grid.is_contiguous()
    # The backends differ only where a sample point falls within half a pixel of the box edge.
    torch.testing.assert_close(grid[..., 2:-2, 2:-2], loop[..., 2:-2, 2:-2])
    with pytest.raises(ValueError, match="backend"):
        ops.resized_crops(source, boxes, flips, 12, backend="nearest")


def test_identity_crop_is_exact() -> None:
    source = torch.rand((2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([0.0, 0.0, 16.0, 16.0]).expand(1, 2, 4)
    flips = torch.tensor([[False, True]])
    for backend in ("grid", "loop"):
        out = ops.resized_crops(source, boxes, flips, 16, backend=backend)
        torch.testing.assert_close(out[0], source[0])
        torch.testing.assert_close(out[1], source[1].flip(-1))


def test_colour_ops_match_torchvision() -> None:
    x = _rgb()
    factors = torch.linspace(0.6, 1.4, 6)
    hues = torch.linspace(-0.1, 0.1, 6)
    bright = ops.adjust_brightness_(x.clone(), factors)
    contrast = ops.adjust_contrast_(x.clone(), factors)
    saturation = ops.adjust_saturation(x, factors)
    hue = ops.adjust_hue(x, hues)
    for i in range(len(x)):
        f = float(factors[i])
        torch.testing.assert_close(bright[i], TF.adjust_brightness(x[i], f))
        # torchvision's luma weights are 0.2989/0.587/0.114; ours (PIL's) sum to 1.
        torch.testing.assert_close(contrast[i], TF.adjust_contrast(x[i], f), atol=1e-4, rtol=0)
        torch.testing.assert_close(saturation[i], TF.adjust_saturation(x[i], f), atol=1e-4, rtol=0)
        torch.testing.assert_close(hue[i], TF.adjust_hue(x[i], float(hues[i])), atol=2e-3, rtol=0)


def test_grey_images_ignore_colour_ops() -> None:
    grey = _rgb()[:, :1]
    assert ops.adjust_saturation(grey, torch.full((6,), 0.5)) is grey
    assert ops.adjust_hue(grey, torch.full((6,), 0.1)) is grey
    rgb = grey.expand(-1, 3, -1, -1)
    torch.testing.assert_close(ops.rgb_to_grey(rgb), grey)
    torch.testing.assert_close(
        ops.adjust_contrast_(rgb.clone(), torch.full((6,), 1.3))[:, :1],
        ops.adjust_contrast_(grey.clone(), torch.full((6,), 1.3)),
    )


def test_gamma_and_solarize() -> None:
    x = _rgb()
    gamma = torch.linspace(0.7, 1.5, 6)
    out = ops.adjust_gamma_(x.clone(), gamma)
    for i in range(len(x)):
        torch.testing.assert_close(out[i], TF.adjust_gamma(x[i], float(gamma[i])))
    apply = torch.tensor([True, False, True, False, False, True])
    out = ops.solarize_(x.clone(), apply)
    for i in range(len(x)):
        want = TF.solarize(x[i], 0.5) if apply[i] else x[i]
        torch.testing.assert_close(out[i], want)


def test_blur_matches_torchvision_per_image() -> None:
    x = _rgb(size=24)
    sigma = torch.linspace(0.1, 2.0, 6)
    out = ops.gaussian_blur(x, sigma, kernel_size=9)
    for i in range(len(x)):
        want = TF.gaussian_blur(x[i], [9, 9], [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        ops.gaussian_blur(x, sigma, kernel_size=4)
    with pytest.raises(ValueError, match="larger than 4 px"):
        ops.gaussian_blur(x[..., :4, :4], sigma, kernel_size=9)


def test_normalize_into_broadcasts_grey_to_three_channels() -> None:
    grey = _rgb()[:, :1]
    mean, std = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 0.25, 0.2])
    out = ops.normalize_into(grey, mean, std, 3)
    want = TF.normalize(grey.expand(-1, 3, -1, -1), mean.tolist(), std.tolist())
    torch.testing.assert_close(out, want)


def test_antialiased_crops_match_torchvision() -> None:
    source = torch.rand((2, 1, 64, 64), generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[3.0, 5.0, 50.0, 40.0], [0.0, 0.0, 64.0, 64.0]]])
    flips = torch.tensor([[False, True]])
    out = ops.resized_crops(source, boxes, flips, 16, mode="bicubic", antialias=True)
    want = TF.resized_crop(source[0], 3, 5, 50, 40, [16, 16], TF.InterpolationMode.BICUBIC)
    torch.testing.assert_close(out[0], want)
    torch.testing.assert_close(
        out[1], TF.resize(source[1], [16, 16], TF.InterpolationMode.BICUBIC).flip(-1)
    )
    with pytest.raises(ValueError, match="loop"):
        ops.resized_crops(source, boxes, flips, 16, backend="grid", antialias=True)
