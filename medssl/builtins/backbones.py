"""Vision Transformer backbones (timm), with iBOT mask tokens and an MAE visible-only path.

The architecture follows DINOv2's ViTs (Oquab et al. 2023, ``dinov2/models/vision_transformer.py``):
a CLS token, learned absolute position embeddings interpolated to the crop size, LayerScale,
no register tokens — the layout of the Hugging Face ``Dinov2Model`` that RAD-DINO ships, so
weights map one-to-one in :mod:`medssl.export`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import Tensor, nn

from medssl.export.hf_format import read_hf_folder
from medssl.export.hf_load import load_hf_dinov2_into
from medssl.types import BackboneOutput
from medssl.weights import load_weights

__all__ = ["VisionTransformer", "BACKBONES", "backbone_from_hf_folder", "load_initial_weights"]


# DINOv2 switches from multiplying dropped samples by 0 to not computing them above 0.1
# (the margin: timm's per-block rates come from a float32 linspace, 0.1 -> 0.10000000149).
_SUBSET_DROP_RATE = 0.1 + 1e-6


def _residual_on_subset(x: Tensor, branch: tuple[nn.Module, ...], rate: float) -> Tensor:
    """``x + branch(x)`` (the modules of ``branch`` applied in turn) for ``int(N * (1 -
    rate))`` samples drawn without replacement, their branch scaled by ``N / kept``
    (unbiased), the others passed through unchanged."""
    n = x.shape[0]
    kept = max(int(n * (1 - rate)), 1)
    index = torch.randperm(n, device=x.device)[:kept]
    residual = x[index]
    for module in branch:
        residual = module(residual)
    out = torch.index_add(x.flatten(1), 0, index, residual.to(x.dtype).flatten(1), alpha=n / kept)
    return out.view_as(x)


class VisionTransformer(nn.Module):
    """A ViT encoder returning CLS and patch tokens.

    ``forward(x, masks)`` replaces the patch embeddings where ``masks`` is True by a
    learned mask token before the position embedding, as iBOT and DINOv2 do.
    ``forward_visible(x, keep)`` runs only the patches indexed by ``keep`` (MAE).
    """

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        embed_dim: int = Field(768, gt=0)
        depth: int = Field(12, gt=0)
        num_heads: int = Field(12, gt=0)
        patch_size: int = Field(14, gt=0)
        img_size: int = Field(224, gt=0, description="size the position embedding is made for")
        in_chans: Literal[1, 3] = 1
        mlp_ratio: float = Field(4.0, gt=0)
        layer_scale_init: float | None = Field(1e-5, description="LayerScale init; null disables")
        drop_path_rate: float = Field(0.0, ge=0, lt=1)
        init: str = Field(
            "none",
            description="'none', a medssl checkpoint (.safetensors), or a Hugging Face Dinov2 folder",
        )

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 14,
        img_size: int = 224,
        in_chans: int = 1,
        mlp_ratio: float = 4.0,
        layer_scale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        init: str = "none",
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
        self.num_heads = num_heads
        self.depth = depth
        self.vit = TimmVisionTransformer(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            init_values=layer_scale_init,
            drop_path_rate=drop_path_rate,
            dynamic_img_size=True,
            # DINOv2 / HF Dinov2 use LayerNorm eps 1e-6.
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        # DINOv2 initialises the mask token to zeros.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        if init != "none":
            load_initial_weights(self, init)

    # timm-style attributes that the schedules (layer-wise LR decay) look for.
    @property
    def blocks(self) -> nn.Sequential:
        return self.vit.blocks

    @property
    def patch_embed(self) -> nn.Module:
        return self.vit.patch_embed

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"backbone expects images [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"backbone was built for {self.in_chans}-channel input (backbone.in_chans) "
                f"but got {x.shape[1]} channels"
            )
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size "
                f"{self.patch_size}"
            )

    def _embed(self, x: Tensor, masks: Tensor | None) -> Tensor:
        tokens = self.vit.patch_embed(x)  # [N, Hp, Wp, D] with dynamic_img_size
        if masks is not None:
            n, hp, wp, d = tokens.shape
            if masks.shape != (n, hp * wp):
                raise ValueError(
                    f"masks must have shape {(n, hp * wp)} for {tuple(x.shape)} images, "
                    f"got {tuple(masks.shape)}"
                )
            mask = masks.reshape(n, hp, wp, 1).to(tokens.dtype)
            tokens = tokens * (1 - mask) + self.mask_token.to(tokens.dtype) * mask
        tokens = self.vit._pos_embed(tokens)
        tokens = self.vit.patch_drop(tokens)
        return self.vit.norm_pre(tokens)

    def _blocks(self, tokens: Tensor) -> Tensor:
        """The transformer blocks; in training, a residual branch whose drop-path rate is
        above 0.1 runs only on the samples it keeps (DINOv2's
        ``drop_add_residual_stochastic_depth``): the compute the rate drops is saved."""
        if not self.training:
            return self.vit.blocks(tokens)
        for block in self.vit.blocks:
            # timm gives both branches of a block the same rate
            if getattr(block.drop_path1, "drop_prob", 0.0) <= _SUBSET_DROP_RATE:
                tokens = block(tokens)
                continue
            rate = block.drop_path1.drop_prob
            tokens = _residual_on_subset(tokens, (block.norm1, block.attn, block.ls1), rate)
            tokens = _residual_on_subset(tokens, (block.norm2, block.mlp, block.ls2), rate)
        return tokens

    def forward(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        self._check_input(x)
        tokens = self._blocks(self._embed(x, masks))
        tokens = self.vit.norm(tokens)
        return BackboneOutput(cls=tokens[:, 0], patch=tokens[:, 1:])

    def forward_visible(self, x: Tensor, keep: Tensor) -> Tensor:
        """Encode the CLS token and the patches at ``keep`` (long ``[N, P_keep]``)."""
        self._check_input(x)
        tokens = self._embed(x, None)
        index = (keep + 1).unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        visible = torch.cat([tokens[:, :1], torch.gather(tokens, 1, index)], dim=1)
        return self.vit.norm(self._blocks(visible))

    def patch_layers(self, x: Tensor, n: int) -> list[Tensor]:
        """Patch tokens ``[N, P, D]`` after each of the last ``n`` blocks, each through the
        final norm (DINOv2's ``get_intermediate_layers(norm=True)``, read by its
        multilayer linear segmentation probe)."""
        self._check_input(x)
        if not 1 <= n <= len(self.vit.blocks):
            raise ValueError(f"patch_layers: n={n} is not in 1..{len(self.vit.blocks)} (depth)")
        tokens = self._embed(x, None)
        outs = []
        for block in self.vit.blocks:
            tokens = block(tokens)
            outs.append(tokens)
        return [self.vit.norm(t)[:, 1:] for t in outs[-n:]]

    def get_last_self_attention(self, x: Tensor) -> Tensor:
        """Attention weights ``[N, heads, T, T]`` of the last block (for attention maps)."""
        self._check_input(x)
        tokens = self._embed(x, None)
        for block in self.vit.blocks[:-1]:
            tokens = block(tokens)
        last = self.vit.blocks[-1]
        attn = last.attn
        h = last.norm1(tokens)
        n, t, d = h.shape
        qkv = attn.qkv(h).reshape(n, t, 3, attn.num_heads, d // attn.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        return (q @ k.transpose(-2, -1) * attn.scale).softmax(dim=-1)


def load_initial_weights(model: VisionTransformer, init: str) -> None:
    """Load ``init`` (a medssl/timm safetensors file or a HF Dinov2 folder) into ``model``."""
    path = Path(init).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"backbone.init: {init!r} does not exist; set backbone.init=none to start from "
            "random weights, or point it at a Hugging Face Dinov2 folder "
            "(e.g. a downloaded microsoft/rad-dino or facebook/dinov2-base)"
        )
    if path.is_dir():
        load_hf_dinov2_into(model, path)
        return
    if path.suffix != ".safetensors":
        raise ValueError(
            f"backbone.init: {init!r} is neither a .safetensors file nor a Hugging Face folder"
        )
    state = load_weights(path, "backbone.init")
    state = {k.removeprefix("backbone."): v for k, v in state.items() if "head" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(
            f"backbone.init: {init!r} does not fit this backbone "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def backbone_from_hf_folder(path: str | Path) -> nn.Module:
    """A medssl ``VisionTransformer`` built from a Dinov2 folder's config and weights."""
    config, _ = read_hf_folder(path)
    embed = int(config["hidden_size"])
    model = VisionTransformer(
        embed_dim=embed,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        patch_size=int(config["patch_size"]),
        img_size=int(config["image_size"]),
        in_chans=int(config.get("num_channels", 3)),
        mlp_ratio=float(config.get("mlp_ratio", 4)),
        layer_scale_init=float(config.get("layerscale_value", 1.0)),
    )
    return load_hf_dinov2_into(model, path)


def _preset(embed_dim: int, depth: int, num_heads: int) -> Callable[..., VisionTransformer]:
    """A named size whose architecture defaults can still be overridden from the recipe."""

    class Options(VisionTransformer.Options):
        pass

    defaults = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads}
    for field_name, value in defaults.items():
        Options.model_fields[field_name].default = value
    Options.model_rebuild(force=True)

    def factory(**options: Any) -> VisionTransformer:
        return VisionTransformer(**{**defaults, **options})

    factory.Options = Options  # type: ignore[attr-defined]
    factory.__doc__ = f"ViT with embed_dim={embed_dim}, depth={depth}, heads={num_heads}."
    return factory


BACKBONES: dict[str, Callable[..., Any]] = {
    "vit_patch14": VisionTransformer,  # every size option set in the recipe
    "vit_tiny_patch14": _preset(192, 12, 3),
    "vit_small_patch14": _preset(384, 12, 6),
    "vit_base_patch14": _preset(768, 12, 12),
    "vit_large_patch14": _preset(1024, 24, 16),
}
