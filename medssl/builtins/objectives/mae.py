"""Masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022).

The encoder (the shared backbone) sees only the visible patches
(``backbone.forward_visible``); a light transformer decoder, lightly's
:class:`~lightly.models.modules.MaskedVisionTransformerDecoderTIMM` (mask token, fixed 2D
sine-cosine position embedding, timm blocks), fills the masked positions with the mask
token and predicts their pixels. The loss is the mean squared error over the masked
patches only, against per-patch normalised pixels when ``norm_pix_loss`` (MAE's default
for its best results; ``facebookresearch/mae`` ``models_mae.py::forward_loss``).

MAE reads ``views.single_view`` when the policy made one, else global crop 0, with
``views.mae_masks`` (True = hidden) for that image, so it mixes with DINO / iBOT on the same
backbone (no teacher). ``view: global`` asks for no extra view and uses global crop 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from medssl.builtins.objectives.base import ConfiguredObjective, check_divisible
from medssl.types import (
    LearningSignals,
    ObjectiveContext,
    ObjectiveResult,
    StepOutputs,
    ViewRequest,
)

__all__ = ["MAE", "patchify"]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[N, C, H, W]`` -> ``[N, H/p * W/p, p * p * C]`` (row-major patches, pixels ``p q c``)."""
    n, c, h, w = images.shape
    hp, wp = h // patch_size, w // patch_size
    x = images.reshape(n, c, hp, patch_size, wp, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, hp * wp, patch_size * patch_size * c)


class MAE(ConfiguredObjective):
    """Masked-autoencoder reconstruction loss with a light decoder (module docstring)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        mask_ratio: float = Field(0.75, gt=0, lt=1, description="share of patches hidden")
        norm_pix_loss: bool = Field(True, description="targets: per-patch normalised pixels")
        decoder_dim: int = Field(512, ge=1)
        decoder_depth: int = Field(8, ge=1)
        decoder_heads: int = Field(16, ge=1)
        mlp_ratio: float = Field(4.0, gt=0)
        view: Literal["single", "global"] = Field(
            "single", description="ask for a single view, or reuse global crop 0"
        )

        @model_validator(mode="after")
        def _check(self) -> Self:
            check_divisible(self.decoder_dim, self.decoder_heads, "decoder_dim", "decoder_heads")
            return self

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        o = self.options
        if ctx.image_size % ctx.patch_size:
            raise ValueError(
                f"objective 'mae': image size {ctx.image_size} is not a multiple of the patch "
                f"size {ctx.patch_size}"
            )
        # lightly is imported here, not at module import: it is slow to import.
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM

        self.grid = ctx.image_size // ctx.patch_size
        self.decoder_embed = nn.Linear(ctx.embed_dim, o.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.grid * self.grid,
            embed_dim=o.decoder_dim,
            depth=o.decoder_depth,
            num_heads=o.decoder_heads,
            mlp_ratio=o.mlp_ratio,
        )
        self.decoder_pred = nn.Linear(o.decoder_dim, ctx.patch_size**2 * ctx.in_chans)

    def request(self, patch_size: int) -> ViewRequest:
        single = self.options.view == "single"
        return ViewRequest(
            single_view=single,
            global_crops=not single,
            mae_mask_ratio=self.options.mask_ratio,
            patch_size=patch_size,
        )

    def _image(self, out: StepOutputs) -> Tensor:
        v = out.views
        if v.single_view is not None:
            return v.single_view
        if v.global_crops is not None:
            return v.global_crops[: v.batch_size]
        raise ValueError("objective 'mae': views have neither single_view nor global_crops")

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        x = self._image(out)
        if x.ndim != 4:
            raise ValueError(
                f"objective 'mae' reconstructs 2D images [N, C, H, W], got shape "
                f"{tuple(x.shape)}; for volumes use a 3D MAE (e.g. medssl-ct's 'mae3d')"
            )
        masks = out.views.mae_masks
        p = self.ctx.patch_size
        n, _, h, w = x.shape
        n_patches = (h // p) * (w // p)
        if masks is None:
            raise ValueError(
                "objective 'mae': views.mae_masks is None; the augmentation policy must "
                "honour ViewRequest.mae_mask_ratio"
            )
        if masks.dtype != torch.bool or masks.shape != (n, n_patches):
            raise ValueError(
                f"objective 'mae': views.mae_masks must be bool [{n}, {n_patches}] for images "
                f"{tuple(x.shape)}, got {masks.dtype} {tuple(masks.shape)}"
            )
        if n_patches != self.grid * self.grid:
            raise ValueError(
                f"objective 'mae': images {h}x{w} give {n_patches} patches but the decoder was "
                f"built for {self.grid}x{self.grid} (ObjectiveContext.image_size)"
            )
        n_masked = masks.sum(dim=1)
        if n_masked.numel() and not bool((n_masked == n_masked[0]).all()):
            raise ValueError(
                "objective 'mae': every image must hide the same number of patches, got "
                f"{sorted(set(n_masked.tolist()))}"
            )
        n_keep = n_patches - int(n_masked[0]) if n else n_patches
        # Visible patches first (stable sort keeps their order), then the hidden ones.
        order = torch.argsort(masks.to(torch.int8), dim=1, stable=True)
        keep = order[:, :n_keep]

        visible = out.student.forward_visible(x, keep)  # [N, 1 + n_keep, D]
        tokens = self.decoder_embed(visible)
        d = tokens.shape[-1]
        full = self.decoder.mask_token.to(tokens.dtype).expand(n, 1 + n_patches, d)
        index = torch.cat([keep.new_zeros(n, 1), keep + 1], dim=1)
        full = full.scatter(1, index.unsqueeze(-1).expand(-1, -1, d), tokens)
        decoded = self.decoder.decode(self.decoder.add_pos_embed(full))
        # The loss in fp32 at least (bf16 autocast upstream), fp64 kept for reference checks.
        acc = torch.promote_types(x.dtype, torch.float32)
        pred = self.decoder_pred(decoded[:, 1:]).to(acc)
        target = patchify(x.to(acc), p)
        if self.options.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = (pred - target).pow(2).mean(dim=-1)
        m = masks.to(per_patch.dtype)
        loss = (per_patch * m).sum() / m.sum().clamp_min(1.0)
        signals = _signals(target, m, visible) if out.diagnose else None
        return ObjectiveResult(loss=loss, signals=signals)


@torch.no_grad()
def _signals(target: Tensor, m: Tensor, visible: Tensor) -> LearningSignals:
    """Chance: the loss of predicting, for every hidden patch, the mean of that image's
    hidden target patches (the best prediction that ignores where a patch is and what is
    visible), in the loss's own normalisation (``norm_pix_loss`` or not)."""
    weights = m.unsqueeze(-1)
    mean = (target * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(
        1.0
    )
    per_patch = (target - mean).pow(2).mean(dim=-1)
    chance = (per_patch * m).sum() / m.sum().clamp_min(1.0)
    return LearningSignals(
        chance=chance,
        backbone_tokens=(visible,),
        hint="objectives.mae.mask_ratio (lower), objectives.mae.decoder_depth, train.lr",
    )
