"""Masked-autoencoder objectives on 2D images or 3D volumes (He et al. 2022, "Masked
Autoencoders Are Scalable Vision Learners").

The encoder (the shared backbone) sees only the visible patches
(``backbone.forward_visible``); a light transformer decoder, lightly's
:class:`~lightly.models.modules.MaskedVisionTransformerDecoderTIMM` (mask token, fixed
sine-cosine position embedding, timm blocks), fills the masked positions with the mask
token and predicts their pixels. The loss is the mean squared error over the masked
patches only, against per-patch normalised pixels when ``norm_pix_loss`` (MAE's default
for its best results; ``facebookresearch/mae`` ``models_mae.py::forward_loss``).

:class:`MaskedAutoencoder` reads ``views.single_view`` when the policy made one, else
global crop 0, with ``views.mae_masks`` (True = hidden) for that image. ``spatial_dims``
chooses the grid: squares of ``p²·C`` pixels with lightly's 2D position embedding, or
cubes of ``p³·C`` voxels with a fixed 3D sine-cosine embedding (:func:`sincos_3d`, one
third of the channels per axis, as in the 3D MAEs of Chen et al. 2023, "Masked Image
Modeling Advances 3D Medical Image Analysis").
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from medssl.objectives.configured import ConfiguredObjective, check_divisible
from medssl.types import (
    LearningSignals,
    ObjectiveContext,
    ObjectiveResult,
    StepOutputs,
    ViewRequest,
)

__all__ = ["MAEOptions", "MaskedAutoencoder", "patchify", "sincos_3d"]


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """``[N, C, *S]`` -> ``[N, prod(S / p), p^len(S) * C]`` for 2D or 3D ``S``: row-major
    patches, pixels in patch order then channel (``p q c``, ``p q r c``)."""
    n, c, *sizes = images.shape
    p = patch_size
    grid = [s // p for s in sizes]
    split = [d for g in grid for d in (g, p)]
    x = images.reshape(n, c, *split)
    dims = len(sizes)
    order = [0, *(2 + 2 * i for i in range(dims)), *(3 + 2 * i for i in range(dims)), 1]
    return x.permute(*order).reshape(n, math.prod(grid), p**dims * c)


def sincos_3d(dim: int, grid: int) -> Tensor:
    """Fixed sine-cosine embedding ``[grid³, dim]``: a third of the channels per axis."""
    per_axis = dim // 6 * 2  # an even count per axis
    if per_axis == 0:
        raise ValueError(f"decoder_dim {dim} is too small for a 3D sine-cosine embedding (>= 6)")
    omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis // 2))
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(grid, dtype=torch.float64),) * 3, indexing="ij"), dim=-1
    ).reshape(-1, 3)
    parts = []
    for axis in range(3):
        angles = coords[:, axis : axis + 1] * omega
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    pad = dim - emb.shape[1]
    return torch.cat([emb, emb.new_zeros(emb.shape[0], pad)], dim=1).float()


class MAEOptions(BaseModel):
    """The recipe options of a masked autoencoder."""

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


class MaskedAutoencoder(ConfiguredObjective):
    """Masked-autoencoder reconstruction loss with a light decoder (module docstring).

    Subclasses set ``name`` (the recipe word, used in errors) and ``spatial_dims`` (2 or
    3), and may override :meth:`learning_signals`.
    """

    Options = MAEOptions
    name: ClassVar[str] = "mae"
    spatial_dims: ClassVar[int] = 2

    @property
    def _what(self) -> str:
        return "image" if self.spatial_dims == 2 else "volume"

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        o = self.options
        if ctx.image_size % ctx.patch_size:
            raise ValueError(
                f"objective {self.name!r}: image size {ctx.image_size} is not a multiple of the "
                f"patch size {ctx.patch_size}"
            )
        # lightly is imported here, not at module import: it is slow to import.
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM

        self.grid = ctx.image_size // ctx.patch_size
        self.decoder_embed = nn.Linear(ctx.embed_dim, o.decoder_dim)
        flat = self.spatial_dims == 2
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.grid**self.spatial_dims,
            embed_dim=o.decoder_dim,
            depth=o.decoder_depth,
            num_heads=o.decoder_heads,
            mlp_ratio=o.mlp_ratio,
            initialize_weights=flat,  # its own embedding is 2D: it needs a square count
        )
        if not flat:
            with torch.no_grad():
                self.decoder.pos_embed[0, 1:] = sincos_3d(o.decoder_dim, self.grid)
                self.decoder.pos_embed[0, :1] = 0.0
                nn.init.normal_(self.decoder.mask_token, std=0.02)
        self.decoder_pred = nn.Linear(
            o.decoder_dim, ctx.patch_size**self.spatial_dims * ctx.in_chans
        )

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
        raise ValueError(
            f"objective {self.name!r}: views have neither single_view nor global_crops"
        )

    def _check_shape(self, x: Tensor) -> None:
        if x.ndim == 2 + self.spatial_dims:
            return
        if self.spatial_dims == 2:
            raise ValueError(
                f"objective {self.name!r} reconstructs 2D images [N, C, H, W], got shape "
                f"{tuple(x.shape)}; for volumes use a 3D MAE (e.g. medssl-ct's 'mae3d')"
            )
        raise ValueError(
            f"objective {self.name!r}: views must be volumes [N, C, D, H, W], got "
            f"{tuple(x.shape)}; use the built-in 'mae' for 2D images"
        )

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        x = self._image(out)
        self._check_shape(x)
        masks = out.views.mae_masks
        p = self.ctx.patch_size
        n, sizes = x.shape[0], tuple(x.shape[2:])
        n_patches = math.prod(s // p for s in sizes)
        if masks is None:
            raise ValueError(
                f"objective {self.name!r}: views.mae_masks is None; the augmentation policy "
                "must honour ViewRequest.mae_mask_ratio"
            )
        if masks.dtype != torch.bool or masks.shape != (n, n_patches):
            raise ValueError(
                f"objective {self.name!r}: views.mae_masks must be bool [{n}, {n_patches}] for "
                f"{self._what}s {tuple(x.shape)}, got {masks.dtype} {tuple(masks.shape)}"
            )
        if n_patches != self.grid**self.spatial_dims:
            built = "x".join([str(self.grid)] * self.spatial_dims)
            raise ValueError(
                f"objective {self.name!r}: {self._what}s {'x'.join(map(str, sizes))} give "
                f"{n_patches} patches but the decoder was built for {built} "
                "(ObjectiveContext.image_size)"
            )
        n_masked = masks.sum(dim=1)
        if n_masked.numel() and not bool((n_masked == n_masked[0]).all()):
            raise ValueError(
                f"objective {self.name!r}: every {self._what} must hide the same number of "
                f"patches, got {sorted(set(n_masked.tolist()))}"
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
        signals = self.learning_signals(target, m, visible) if out.diagnose else None
        return ObjectiveResult(loss=loss, signals=signals)

    def learning_signals(
        self, target: Tensor, m: Tensor, visible: Tensor
    ) -> LearningSignals | None:
        """What tells whether this objective learns (``docs/diagnostics.md``); ``None``:
        the run reports it unjudged. ``target`` ``[N, P, pixels]``, ``m`` the hidden
        patches as 0/1 ``[N, P]``, ``visible`` the encoder's tokens."""
        del target, m, visible
        return None
