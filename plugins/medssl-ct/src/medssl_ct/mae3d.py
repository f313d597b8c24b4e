"""``mae3d``: the masked autoencoder on 3D patches.

medssl's built-in ``mae`` objective (He et al. 2022) patchifies ``[N, C, H, W]`` images and
gives its decoder a 2D sine-cosine position embedding over a square grid, so it cannot
read 3D views. This subclass keeps its options, decoder (lightly's
``MaskedVisionTransformerDecoderTIMM``) and loss (MSE on the hidden patches, per-patch
normalised targets), with a 3D grid: cubes of ``p³·C`` voxels as targets and a fixed 3D
sine-cosine position embedding (one third of the channels per axis, as in the 3D MAEs of
Chen et al. 2023, "Masked Image Modeling Advances 3D Medical Image Analysis").
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from medssl.builtins.objectives.mae import MAE
from medssl.types import Objective, ObjectiveContext, ObjectiveResult, StepOutputs

__all__ = ["MAE3D", "patchify_3d", "sincos_3d"]


def patchify_3d(volumes: Tensor, patch_size: int) -> Tensor:
    """``[N, C, D, H, W]`` -> ``[N, D/p * H/p * W/p, p³ * C]`` (row-major cubes)."""
    p = patch_size
    return rearrange(
        volumes, "n c (d pd) (h ph) (w pw) -> n (d h w) (pd ph pw c)", pd=p, ph=p, pw=p
    )


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


class MAE3D(MAE):
    """Masked-autoencoder loss on 3D patches (module docstring)."""

    def setup(self, ctx: ObjectiveContext) -> None:
        Objective.setup(self, ctx)
        o = self.options
        if ctx.image_size % ctx.patch_size:
            raise ValueError(
                f"objective 'mae3d': crop size {ctx.image_size} is not a multiple of the patch "
                f"size {ctx.patch_size}"
            )
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM

        self.grid = ctx.image_size // ctx.patch_size
        self.decoder_embed = nn.Linear(ctx.embed_dim, o.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.grid**3,
            embed_dim=o.decoder_dim,
            depth=o.decoder_depth,
            num_heads=o.decoder_heads,
            mlp_ratio=o.mlp_ratio,
            initialize_weights=False,  # its 2D embedding needs a square patch count
        )
        with torch.no_grad():
            self.decoder.pos_embed[0, 1:] = sincos_3d(o.decoder_dim, self.grid)
            self.decoder.pos_embed[0, :1] = 0.0
            nn.init.normal_(self.decoder.mask_token, std=0.02)
        self.decoder_pred = nn.Linear(o.decoder_dim, ctx.patch_size**3 * ctx.in_chans)

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        x = self._image(out)
        if x.ndim != 5:
            raise ValueError(
                f"objective 'mae3d': views must be volumes [N, C, D, H, W], got "
                f"{tuple(x.shape)}; use the built-in 'mae' for 2D images"
            )
        p = self.ctx.patch_size
        n = x.shape[0]
        n_patches = (x.shape[2] // p) * (x.shape[3] // p) * (x.shape[4] // p)
        masks = out.views.mae_masks
        if masks is None or masks.dtype != torch.bool or masks.shape != (n, n_patches):
            got = "None" if masks is None else f"{masks.dtype} {tuple(masks.shape)}"
            raise ValueError(
                f"objective 'mae3d': views.mae_masks must be bool [{n}, {n_patches}], got {got}"
            )
        if n_patches != self.grid**3:
            raise ValueError(
                f"objective 'mae3d': volumes {tuple(x.shape[2:])} give {n_patches} patches but the "
                f"decoder was built for {self.grid}³ (ObjectiveContext.image_size)"
            )
        n_masked = masks.sum(dim=1)
        if not bool((n_masked == n_masked[0]).all()):
            raise ValueError("objective 'mae3d': every volume must hide the same number of patches")
        n_keep = n_patches - int(n_masked[0])
        keep = torch.argsort(masks.to(torch.int8), dim=1, stable=True)[:, :n_keep]

        tokens = self.decoder_embed(out.student.forward_visible(x, keep))
        d = tokens.shape[-1]
        full = self.decoder.mask_token.to(tokens.dtype).expand(n, 1 + n_patches, d)
        index = torch.cat([keep.new_zeros(n, 1), keep + 1], dim=1)
        full = full.scatter(1, index.unsqueeze(-1).expand(-1, -1, d), tokens)
        pred = self.decoder_pred(self.decoder.decode(self.decoder.add_pos_embed(full))[:, 1:])

        target = patchify_3d(x.float(), p)
        if self.options.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (
                target.var(-1, keepdim=True) + 1e-6
            ).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        m = masks.to(per_patch.dtype)
        return ObjectiveResult(loss=(per_patch * m).sum() / m.sum().clamp_min(1.0))
