"""A Vision Transformer on 3D patches (cubes of voxels), written with einops.

Dosovitskiy et al. 2021 (ViT) with cubic patches as in UNETR (Hatamizadeh et al. 2022)
and the 3D ViTs of MONAI; the block layout is DINOv2's (pre-norm, LayerScale, a CLS
token, learned absolute position embeddings interpolated — here trilinearly — to the
crop's patch grid), so DINO, iBOT and KoLeo see the same interface as with the 2D ViT:
``forward(x, masks) -> BackboneOutput`` with patch tokens in row-major (depth, height,
width) order, ``forward_visible(x, keep)`` for MAE.

Input ``[N, C, D, H, W]`` with every spatial side a multiple of ``patch_size``.

Why keep it beside MONAI's ``ViT`` (which the ``monai_vit`` backbone wraps, adding the
mask token, ``forward_visible`` and resampled position embeddings that MONAI's lacks):
LayerScale (DINOv2's; it keeps deep blocks near the identity early in training),
stochastic depth (``drop_path_rate``; MONAI's blocks have dropout only), a CLS token
with its own position embedding, named sizes, and no dependency beyond torch and einops. UNETR needs MONAI's layout: :mod:`medssl_ct.monai_vit`
converts this ViT's weights into it (exporter ``monai_unetr``) when depth is 12 and
patches are 16 voxels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from medssl.types import BackboneOutput

__all__ = ["VisionTransformer3D", "BACKBONES"]


class PatchEmbed3D(nn.Module):
    """Cubes of ``patch_size`` voxels -> tokens ``[N, gd, gh, gw, D]`` (one linear map)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size**3 * in_chans, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        cubes = rearrange(x, "n c (d pd) (h ph) (w pw) -> n d h w (pd ph pw c)", pd=p, ph=p, pw=p)
        return self.proj(cubes)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016), identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float | None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init)) if init is not None else None

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma if self.gamma is not None else x


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(
            self.qkv(x), "n t (three h e) -> three n h t e", three=3, h=self.num_heads
        )
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "n h t e -> n t (h e)"))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale (DINOv2's ``NestedTensorBlock`` layout)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, ls_init: float | None, drop_path: float
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, ls_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ls2 = LayerScale(dim, ls_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer3D(nn.Module):
    """A ViT on 3D patches returning CLS and patch tokens (module docstring)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        embed_dim: int = Field(384, gt=0)
        depth: int = Field(12, gt=0)
        num_heads: int = Field(6, gt=0)
        patch_size: int = Field(16, gt=0, description="cube side in voxels")
        img_size: int = Field(96, gt=0, description="cube side the position embedding is made for")
        in_chans: int = Field(1, ge=1)
        mlp_ratio: float = Field(4.0, gt=0)
        layer_scale_init: float | None = Field(1e-5, description="LayerScale init; null disables")
        drop_path_rate: float = Field(0.0, ge=0, lt=1)

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        img_size: int = 96,
        in_chans: int = 1,
        mlp_ratio: float = 4.0,
        layer_scale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.img_size = img_size
        self.depth = depth
        self.num_heads = num_heads
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid**3, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # zeros, as DINOv2
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, layer_scale_init, r) for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(_init_weights)

    def patch_grid(self, depth: int, height: int, width: int) -> tuple[int, int, int]:
        p = self.patch_size
        return depth // p, height // p, width // p

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"vit3d expects volumes [N, C, D, H, W], got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"vit3d was built for {self.in_chans}-channel input (backbone.in_chans) but got "
                f"{x.shape[1]} channels"
            )
        if any(s % self.patch_size for s in x.shape[2:]) or min(x.shape[2:]) == 0:
            raise ValueError(
                f"volume size {tuple(x.shape[2:])} is not a multiple of the patch size "
                f"{self.patch_size}"
            )

    def _pos_embed(self, grid: tuple[int, int, int]) -> Tensor:
        base = round((self.pos_embed.shape[1] - 1) ** (1 / 3))
        patch_pos = self.pos_embed[:, 1:]
        if grid != (base, base, base):
            cube = rearrange(patch_pos, "one (d h w) e -> one e d h w", d=base, h=base, w=base)
            cube = F.interpolate(cube, size=grid, mode="trilinear", align_corners=False)
            patch_pos = rearrange(cube, "one e d h w -> one (d h w) e")
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def _embed(self, x: Tensor, masks: Tensor | None) -> Tensor:
        tokens = self.patch_embed(x)  # [N, gd, gh, gw, D]
        n, gd, gh, gw, d = tokens.shape
        tokens = tokens.reshape(n, gd * gh * gw, d)
        if masks is not None:
            if masks.shape != (n, gd * gh * gw):
                raise ValueError(
                    f"masks must have shape {(n, gd * gh * gw)} for {tuple(x.shape)} volumes, "
                    f"got {tuple(masks.shape)}"
                )
            mask = masks.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - mask) + self.mask_token.to(tokens.dtype) * mask
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), tokens], dim=1)
        return tokens + self._pos_embed((gd, gh, gw))

    def _encode(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        self._check_input(x)
        tokens = self._encode(self._embed(x, masks))
        return BackboneOutput(cls=tokens[:, 0], patch=tokens[:, 1:])

    def forward_visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Encode the CLS token and the patches at ``keep`` (long ``[N, P_keep]``)."""
        self._check_input(x)
        tokens = self._embed(x, None)
        if keep.ndim != 2 or keep.shape[0] != x.shape[0]:
            raise ValueError(f"keep must be long [N, P_keep], got {tuple(keep.shape)}")
        index = (keep + 1).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        visible = torch.cat([tokens[:, :1], torch.gather(tokens, 1, index)], dim=1)
        return self._encode(visible)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _preset(embed_dim: int, depth: int, num_heads: int, patch_size: int) -> Any:
    """A named size whose architecture defaults can still be overridden in the recipe."""
    defaults = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "patch_size": patch_size,
    }

    class Options(VisionTransformer3D.Options):
        pass

    for name, value in defaults.items():
        Options.model_fields[name].default = value
    Options.model_rebuild(force=True)

    def factory(**options: Any) -> VisionTransformer3D:
        return VisionTransformer3D(**{**defaults, **options})

    factory.Options = Options  # type: ignore[attr-defined]
    factory.__doc__ = (
        f"3D ViT, embed_dim={embed_dim}, depth={depth}, heads={num_heads}, "
        f"{patch_size}^3-voxel patches."
    )
    return factory


BACKBONES: dict[str, Any] = {
    "vit3d_patch16": VisionTransformer3D,  # every size option set in the recipe
    "vit3d_tiny_patch16": _preset(192, 12, 3, 16),
    "vit3d_small_patch16": _preset(384, 12, 6, 16),
}
