"""Loader-side geometry: shorter side to N pixels, then a centre square crop.

The image is resized with antialiasing (area-correct when shrinking, as PIL's
``reduce`` + bilinear would), masks with nearest neighbour so class indices survive.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_shorter_side", "resize_and_crop", "centre_crop", "resized_shape"]


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The shape whose shorter side is ``size``, aspect ratio kept (rounded)."""
    if height <= width:
        return size, max(size, round(width * size / height))
    return max(size, round(height * size / width)), size


def resize_shorter_side(image: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """``[C, H, W]`` -> shorter side ``size`` (antialiased for images, nearest for masks)."""
    h, w = image.shape[-2:]
    new_h, new_w = resized_shape(h, w, size)
    if (new_h, new_w) == (h, w):
        return image
    x = image[None] if image.ndim == 3 else image[None, None]
    if mode == "nearest":
        out = F.interpolate(x.float(), size=(new_h, new_w), mode="nearest-exact")
        out = out.to(image.dtype)
    else:
        out = F.interpolate(
            x.float(), size=(new_h, new_w), mode=mode, antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    return out[0] if image.ndim == 3 else out[0, 0]


def centre_crop(image: Tensor, size: int) -> Tensor:
    h, w = image.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def resize_and_crop(
    image: np.ndarray | Tensor, size: int, mask: np.ndarray | Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Resize so the shorter side is ``size`` and centre-crop to ``size x size``.

    ``mask`` (``[H, W]``, same geometry as the image) goes through the same steps.
    """
    img = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    img = centre_crop(resize_shorter_side(img.float(), size), size).contiguous()
    if mask is None:
        return img, None
    m = torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask)
    if m.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"mask shape {tuple(m.shape[-2:])} differs from image shape {tuple(image.shape[-2:])}"
        )
    m = centre_crop(resize_shorter_side(m.long(), size, mode="nearest"), size).contiguous()
    return img, m
