"""Partial freezing of a backbone from the recipe (``backbone.freeze``).

Continued pre-training of a released encoder often freezes the patch embedding and the
first blocks (timm's ``freeze`` helpers, DINOv2 fine-tuning): frozen parameters get
``requires_grad=False``, so :func:`medssl.engine.schedules.param_groups` leaves them out of
the optimiser (no AdamW moments), :func:`medssl.engine.ema.ema_update` skips them, and no
gradient is kept for them. Freezing a prefix of the network (embeddings, then the first
blocks) also saves their activations for the backward pass.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from medssl.engine.schedules import layer_id

__all__ = ["AdaptError", "FreezeOptions", "freeze_backbone"]


class AdaptError(ValueError):
    """A freeze or LoRA spec the backbone cannot take; ``key`` is relative to its block."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)
        self.message = message


class FreezeOptions(BaseModel):
    """``backbone.freeze``: a mapping, or a plain list of parameter-name prefixes."""

    model_config = ConfigDict(extra="forbid")

    patch_embed: bool = Field(
        False,
        description="freeze the embedding layer: patch projection, position embedding, "
        "CLS/register/mask tokens (DINOv2's layer 0)",
    )
    blocks: int = Field(0, ge=0, description="freeze the first N transformer blocks")
    params: list[str] = Field(
        default_factory=list,
        description="freeze every parameter whose name (as in named_parameters()) starts "
        "with one of these prefixes",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"params": list(value)}
        return value

    @property
    def enabled(self) -> bool:
        return self.patch_embed or self.blocks > 0 or bool(self.params)


def _block_names(backbone: nn.Module) -> list[set[str]]:
    """The parameter names of each of the backbone's ``blocks`` (timm's attribute)."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Module):
        return []
    ids = {id(p): name for name, p in backbone.named_parameters()}
    return [{ids[id(p)] for p in block.parameters() if id(p) in ids} for block in blocks.children()]


def freeze_backbone(backbone: nn.Module, options: FreezeOptions) -> list[str]:
    """Set ``requires_grad=False`` on what ``options`` names; return the frozen names.

    Raises :class:`AdaptError` when the spec names something the backbone does not have,
    or freezes every parameter.
    """
    names = [name for name, _ in backbone.named_parameters()]
    frozen: set[str] = set()
    if options.patch_embed:
        n_blocks = len(_block_names(backbone))
        embed = {n for n in names if layer_id(n, n_blocks) == 0}
        if not embed:
            raise AdaptError("patch_embed", "the backbone has no patch embedding parameters")
        frozen |= embed
    if options.blocks:
        blocks = _block_names(backbone)
        if not blocks:
            raise AdaptError("blocks", "the backbone has no `blocks` (a timm-style ViT has)")
        if options.blocks > len(blocks):
            raise AdaptError(
                "blocks", f"cannot freeze {options.blocks} blocks, the backbone has {len(blocks)}"
            )
        for block in blocks[: options.blocks]:
            frozen |= block
    for i, prefix in enumerate(options.params):
        matched = {n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")}
        if not matched:
            example = ", ".join(names[:3])
            raise AdaptError(
                f"params.{i}",
                f"{prefix!r} names no parameter of the backbone (names look like {example}, ...)",
            )
        frozen |= matched
    if frozen and len(frozen) == len(names):
        raise AdaptError("", "freezes every backbone parameter; nothing of the encoder would train")
    for name, param in backbone.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return sorted(frozen)
