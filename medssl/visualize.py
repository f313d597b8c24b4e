"""Attention maps: the CLS token's self-attention in the last layer, per head.

As the DINO papers show them (Caron et al. 2021, ``visualize_attention.py``): the
attention weights from the CLS token to every patch in the last block, one map per head,
upsampled to the image and drawn over it, with their mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.eval.encoder import Encoder

__all__ = ["cls_attention", "draw_attention", "visualize_image"]


@torch.no_grad()
def cls_attention(encoder: Encoder, image: Tensor, size: int | None = None) -> Tensor:
    """``[heads, size, size]`` CLS -> patch attention of the last block for one image."""
    size = size or encoder.image_size
    p = encoder.patch_size
    if size % p:
        raise ValueError(f"--size {size} is not a multiple of the patch size {p}")
    x = encoder.prepare(image[None] if image.ndim == 3 else image, size)
    attn = encoder.backbone.get_last_self_attention(x)  # type: ignore[attr-defined]
    grid = size // p
    maps = attn[0, :, 0, 1:].reshape(-1, 1, grid, grid)
    return F.interpolate(maps, size=(size, size), mode="nearest")[:, 0]


def draw_attention(image: np.ndarray, maps: np.ndarray, out: str | Path, title: str = "") -> Path:
    """The image, the mean map and one map per head, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = maps.shape[0]
    cols = min(heads + 2, 6)
    rows = int(np.ceil((heads + 2) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    panels = [("image", None), ("mean of heads", maps.mean(0))]
    panels += [(f"head {h}", maps[h]) for h in range(heads)]
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, amap) in zip(axes.flat, panels, strict=False):
        ax.imshow(image, cmap="gray")
        if amap is not None:
            ax.imshow(amap, cmap="inferno", alpha=0.6)
        ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def visualize_image(
    encoder: Encoder, image_path: str | Path, out: str | Path, size: int | None = None
) -> Path:
    """Read ``image_path`` (PNG/JPEG/DICOM/volume slice) and draw its attention maps."""
    from medssl.data.readers import ReadSettings, read_image

    arr = read_image(image_path, ReadSettings(channels=1))
    image = torch.from_numpy(np.ascontiguousarray(arr)).float()
    size = size or encoder.image_size
    maps = cls_attention(encoder, image, size)
    shown = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0, 0]
    return draw_attention(
        shown.numpy(), maps.numpy(), out, f"{Path(image_path).name}: last-layer CLS attention"
    )
