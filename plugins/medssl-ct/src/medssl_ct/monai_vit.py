"""MONAI interop: MONAI's 3D ViT as a medssl backbone, and exports that MONAI's UNETR loads.

UNETR (Hatamizadeh et al. 2022; ``monai.networks.nets.UNETR``) encodes a volume with
``monai.networks.nets.ViT`` (12 blocks, 16-voxel cubes, no CLS token) and decodes the
tokens of blocks 3, 6, 9 and 12 into a segmentation. Two ways to pre-train that encoder
with medssl:

* backbone ``monai_vit`` (:class:`MonaiViT3D`): MONAI's own ``ViT`` modules (patch
  embedding, blocks, final norm) inside the medssl backbone interface. medssl adds what
  its objectives need and MONAI's ViT lacks: a CLS token (DINO, KoLeo read it; MONAI's
  classification ViT adds one the same way, without a position embedding), a mask token
  (iBOT), ``forward_visible`` (MAE, ``mae3d``) and position embeddings resampled
  trilinearly for crops of other sizes (multi-crop). All of ``dino``, ``ibot``, ``koleo``
  and ``mae3d`` work with it. Its ``vit.*`` weights are UNETR's ``vit.*`` weights.
* backbone ``vit3d_*`` (:mod:`medssl_ct.vit3d`): converted by :func:`vit3d_to_monai_state`.
  The patch projection (a linear map of ``(pd ph pw c)``-ordered cubes) becomes MONAI's
  ``Conv3d`` kernel, LayerScale gains are folded into the attention output and second
  MLP layer, the CLS token's position embedding into the CLS token. Exact for MONAI's
  classification ``ViT`` up to LayerNorm's epsilon (MONAI 1e-5, vit3d 1e-6).

Exporter ``monai_unetr`` writes ``unetr_encoder.safetensors`` (``vit.*`` keys) and
``unetr.json`` (the ``UNETR`` arguments the weights fit):
``UNETR(**kwargs, out_channels=K).load_state_dict(weights, strict=False)`` then reports
only decoder keys missing and nothing unexpected.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from medssl.types import BackboneOutput

__all__ = ["MonaiViT3D", "UNETRExporter", "vit3d_to_monai_state", "monai_state_of"]

ENCODER_FILE = "unetr_encoder.safetensors"
UNETR_DEPTH, UNETR_PATCH = 12, 16  # fixed by monai.networks.nets.UNETR


class MonaiViT3D(nn.Module):
    """``monai.networks.nets.ViT`` (3D, conv patches) with medssl's backbone interface."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        embed_dim: int = Field(768, gt=0, description="MONAI hidden_size")
        depth: int = Field(UNETR_DEPTH, gt=0, description="MONAI num_layers (UNETR: 12)")
        num_heads: int = Field(12, gt=0)
        mlp_dim: int = Field(3072, gt=0)
        patch_size: int = Field(UNETR_PATCH, gt=0, description="cube side (UNETR: 16)")
        img_size: int = Field(96, gt=0, description="cube side of the position embedding")
        in_chans: int = Field(1, ge=1)
        qkv_bias: bool = Field(False, description="as UNETR's qkv_bias (default False)")

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = UNETR_DEPTH,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        patch_size: int = UNETR_PATCH,
        img_size: int = 96,
        in_chans: int = 1,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        from monai.networks.nets import ViT

        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.embed_dim, self.patch_size, self.in_chans = embed_dim, patch_size, in_chans
        self.img_size, self.depth, self.num_heads = img_size, depth, num_heads
        self.mlp_dim, self.qkv_bias = mlp_dim, qkv_bias
        self.vit = ViT(
            in_channels=in_chans,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=embed_dim,
            mlp_dim=mlp_dim,
            num_layers=depth,
            num_heads=num_heads,
            proj_type="conv",
            classification=False,
            spatial_dims=3,
            qkv_bias=qkv_bias,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        nn.init.normal_(self.cls_token, std=1e-6)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"monai_vit expects volumes [N, {self.in_chans}, D, H, W], got {tuple(x.shape)}"
            )
        if any(s % self.patch_size for s in x.shape[2:]):
            raise ValueError(
                f"volume size {tuple(x.shape[2:])} is not a multiple of the patch size "
                f"{self.patch_size}"
            )

    def _pos_embed(self, grid: tuple[int, int, int]) -> Tensor:
        pos = self.vit.patch_embedding.position_embeddings  # [1, P, D], patches only
        base = self.img_size // self.patch_size
        if grid == (base, base, base):
            return pos
        cube = pos.transpose(1, 2).reshape(1, -1, base, base, base)
        cube = F.interpolate(cube, size=grid, mode="trilinear", align_corners=False)
        return cube.flatten(2).transpose(1, 2)

    def _embed(self, x: Tensor, masks: Tensor | None) -> Tensor:
        self._check_input(x)
        tokens = self.vit.patch_embedding.patch_embeddings(x)  # Conv3d: [N, D, gd, gh, gw]
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks must have shape {tuple(tokens.shape[:2])}, got {tuple(masks.shape)}"
                )
            mask = masks.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - mask) + self.mask_token.to(tokens.dtype) * mask
        tokens = tokens + self._pos_embed(grid)  # type: ignore[arg-type]
        return torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)

    def _encode(self, tokens: Tensor) -> Tensor:
        for block in self.vit.blocks:
            tokens = block(tokens)
        return self.vit.norm(tokens)

    def forward(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        tokens = self._encode(self._embed(x, masks))
        return BackboneOutput(cls=tokens[:, 0], patch=tokens[:, 1:])

    def forward_visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Encode the CLS token and the patches at ``keep`` (long ``[N, P_keep]``)."""
        tokens = self._embed(x, None)
        index = (keep + 1).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        return self._encode(torch.cat([tokens[:, :1], torch.gather(tokens, 1, index)], dim=1))


# --------------------------------------------------------------------------- conversion


def vit3d_to_monai_state(
    state: Mapping[str, Tensor], depth: int, in_chans: int
) -> dict[str, Tensor]:
    """A :class:`medssl_ct.vit3d.VisionTransformer3D` state dict in ``monai...ViT`` names.

    Includes ``cls_token`` (with the CLS position folded in) for MONAI's classification
    ViT; UNETR's ViT has none and :func:`monai_state_of` leaves it out for UNETR.
    """
    s = {k.removeprefix("backbone."): v for k, v in state.items()}
    weight = s["patch_embed.proj.weight"]  # [D, p^3 C], input ordered (pd ph pw c)
    dim = weight.shape[0]
    p = round((weight.shape[1] // in_chans) ** (1 / 3))
    conv = weight.reshape(dim, p, p, p, in_chans).permute(0, 4, 1, 2, 3)
    pos = s["pos_embed"]
    out: dict[str, Tensor] = {
        "cls_token": s["cls_token"] + pos[:, :1],
        "patch_embedding.position_embeddings": pos[:, 1:],
        "patch_embedding.patch_embeddings.weight": conv,
        "patch_embedding.patch_embeddings.bias": s["patch_embed.proj.bias"],
        "norm.weight": s["norm.weight"],
        "norm.bias": s["norm.bias"],
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"blocks.{i}."
        ones = torch.ones(dim)
        gamma1 = s.get(f"{src}ls1.gamma", ones)
        gamma2 = s.get(f"{src}ls2.gamma", ones)
        out.update(
            {
                f"{dst}norm1.weight": s[f"{src}norm1.weight"],
                f"{dst}norm1.bias": s[f"{src}norm1.bias"],
                f"{dst}attn.qkv.weight": s[f"{src}attn.qkv.weight"],
                f"{dst}attn.qkv.bias": s[f"{src}attn.qkv.bias"],
                # gamma * (W x + b) = (gamma W) x + gamma b: LayerScale folded away.
                f"{dst}attn.out_proj.weight": gamma1[:, None] * s[f"{src}attn.proj.weight"],
                f"{dst}attn.out_proj.bias": gamma1 * s[f"{src}attn.proj.bias"],
                f"{dst}norm2.weight": s[f"{src}norm2.weight"],
                f"{dst}norm2.bias": s[f"{src}norm2.bias"],
                f"{dst}mlp.linear1.weight": s[f"{src}mlp.0.weight"],
                f"{dst}mlp.linear1.bias": s[f"{src}mlp.0.bias"],
                f"{dst}mlp.linear2.weight": gamma2[:, None] * s[f"{src}mlp.2.weight"],
                f"{dst}mlp.linear2.bias": gamma2 * s[f"{src}mlp.2.bias"],
                # MONAI's blocks carry an (unused without cross-attention) LayerNorm.
                f"{dst}norm_cross_attn.weight": torch.ones(dim),
                f"{dst}norm_cross_attn.bias": torch.zeros(dim),
            }
        )
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def monai_state_of(backbone: nn.Module) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(UNETR vit.* weights, UNETR kwargs)`` of a ``monai_vit`` or ``vit3d_*`` backbone."""
    from medssl_ct.vit3d import VisionTransformer3D

    if isinstance(backbone, MonaiViT3D):
        state = {f"vit.{k}": v for k, v in backbone.vit.state_dict().items()}
        hidden, qkv_bias = backbone.mlp_dim, backbone.qkv_bias
    elif isinstance(backbone, VisionTransformer3D):
        monai = vit3d_to_monai_state(backbone.state_dict(), backbone.depth, backbone.in_chans)
        monai.pop("cls_token")  # UNETR's ViT has no CLS token
        state = {f"vit.{k}": v for k, v in monai.items()}
        hidden, qkv_bias = backbone.blocks[0].mlp[0].out_features, True
    else:
        raise ValueError(
            f"monai_unetr exports monai_vit and vit3d_* backbones, not {type(backbone).__name__}"
        )
    bad = []
    if backbone.depth != UNETR_DEPTH:
        bad.append(f"backbone.depth={backbone.depth} (UNETR has {UNETR_DEPTH} blocks)")
    if backbone.patch_size != UNETR_PATCH:
        bad.append(f"backbone.patch_size={backbone.patch_size} (UNETR uses {UNETR_PATCH})")
    if bad:
        raise ValueError("monai_unetr: this encoder does not fit UNETR: " + "; ".join(bad))
    kwargs = {
        "in_channels": int(backbone.in_chans),
        "img_size": int(backbone.img_size),
        "hidden_size": int(backbone.embed_dim),
        "mlp_dim": int(hidden),
        "num_heads": int(backbone.num_heads),
        "proj_type": "conv",
        "qkv_bias": bool(qkv_bias),
    }
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, kwargs


class UNETRExporter:
    """``medssl export RUN --format monai_unetr``: UNETR encoder weights + arguments."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __call__(
        self, run_dir: str | Path, out_dir: str | Path, recipe: Any, registry: Any
    ) -> Path:
        from safetensors.torch import save_file

        from medssl.eval import load_encoder

        if recipe is None:
            raise ValueError(f"{run_dir}: monai_unetr needs the run's config.yaml")
        backbone = load_encoder(run_dir, recipe, registry).backbone
        state, kwargs = monai_state_of(backbone)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / ENCODER_FILE), metadata={"format": "pt"})
        (out / "unetr.json").write_text(json.dumps(kwargs, indent=2) + "\n")
        return out
