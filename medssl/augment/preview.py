"""A picture of what a policy does: the views of a few images in one PNG grid.

One row per image: the source, then every global crop (iBOT block masks shaded), local
crop and single view (MAE masks shaded). Views are de-normalised with the policy's
mean/std, so what is shown is what the backbone sees, before normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medssl.types import ViewRequest, Views

__all__ = ["write_preview"]

_MASK_RGB = np.array([1.0, 0.25, 0.1])


def _to_picture(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``[C, H, W]`` normalised -> ``[H, W, 3]`` in [0, 1]."""
    m = torch.tensor(mean[: x.shape[0]]).view(-1, 1, 1)
    s = torch.tensor(std[: x.shape[0]]).view(-1, 1, 1)
    pixels = (x.detach().float().cpu() * s + m).clamp(0, 1)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return pixels.permute(1, 2, 0).numpy()


def _source_picture(image: Tensor) -> np.ndarray:
    x = image.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif x.dtype == torch.uint16:
        x = x.to(torch.int32).float() / 65535
    return _to_picture(x.float(), (0.0,) * 3, (1.0,) * 3)


def _shade(picture: np.ndarray, mask: Tensor | None, patch_size: int) -> np.ndarray:
    if mask is None or not bool(mask.any()):
        return picture
    height, width = picture.shape[:2]
    grid_h, grid_w = height // patch_size, width // patch_size
    cells = mask.detach().cpu().view(grid_h, grid_w).numpy()
    full = np.kron(cells, np.ones((patch_size, patch_size)))[..., None].astype(bool)
    return np.clip(np.where(full, 0.55 * picture + 0.45 * _MASK_RGB, picture), 0.0, 1.0)


def _columns(views: Views, index: int) -> list[tuple[str, Tensor, Any]]:
    batch = views.batch_size
    columns: list[tuple[str, Tensor, Any]] = []
    for i in range(views.n_global):
        row = i * batch + index
        title = f"global {i + 1}"
        mask = views.block_masks[row] if views.block_masks is not None else None
        if i == 0 and views.single_view is None and views.mae_masks is not None:
            mask, title = views.mae_masks[index], "global 1, MAE mask"
        columns.append((title, views.global_crops[row], mask))
    for i in range(views.n_local):
        columns.append((f"local {i + 1}", views.local_crops[i * batch + index], None))
    if views.single_view is not None:
        mask = views.mae_masks[index] if views.mae_masks is not None else None
        columns.append(("view", views.single_view[index], mask))
    return columns


def write_preview(
    policy: Any,
    images: Tensor,
    out_path: str | Path,
    request: ViewRequest,
    seed: int = 0,
    text: list[str] | None = None,
) -> Path:
    """Run ``policy`` on ``images`` (``[B, C, H, W]``) and write a PNG grid of the views.

    Returns the path written. Masked patches (iBOT block masks on the global crops, MAE
    masks on the single view or global crop 1) are shaded orange.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    generator = torch.Generator(device=images.device).manual_seed(seed)
    kwargs = {"text": text} if text is not None else {}
    views = policy(images, request, generator, **kwargs)
    mean = getattr(policy, "mean", (0.0,))
    std = getattr(policy, "std", (1.0,))
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    rows = [_columns(views, b) for b in range(views.batch_size)]
    n_cols = 1 + max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.6 * n_cols, 1.7 * len(rows)), squeeze=False
    )
    for b, columns in enumerate(rows):
        axes[b, 0].imshow(_source_picture(images[b]), interpolation="nearest")
        axes[b, 0].set_title("source", fontsize=7)
        for c, (title, view, mask) in enumerate(columns, start=1):
            picture = _shade(_to_picture(view, mean, std), mask, request.patch_size)
            axes[b, c].imshow(picture, interpolation="nearest")
            axes[b, c].set_title(f"{title}, {view.shape[-1]} px", fontsize=7)
        for ax in axes[b]:
            ax.axis("off")
    name = getattr(policy, "name", type(policy).__name__)
    fig.suptitle(f"{name} (seed {seed}); orange: masked patches", fontsize=9)
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
