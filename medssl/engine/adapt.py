"""Cheap adaptation of a backbone: the ``backbone.freeze`` and ``backbone.lora`` keys.

These two keys belong to the engine, not to the backbone plugin: :func:`split_adaptation`
takes them out of the ``backbone`` block before the plugin's own options are checked, so
any registered backbone with timm-style ``blocks`` and ``patch_embed`` can be frozen or
adapted. :func:`adapt_backbone` applies them to a built backbone, every error a
:class:`~medssl.errors.RecipeError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from medssl.engine.freeze import AdaptError, FreezeOptions, freeze_backbone
from medssl.engine.lora import LoraOptions, add_lora
from medssl.errors import RecipeError

__all__ = ["Adaptation", "adapt_backbone", "parameter_report", "split_adaptation"]


@dataclass(frozen=True)
class Adaptation:
    """The validated ``backbone.freeze`` / ``backbone.lora`` of a recipe."""

    freeze: FreezeOptions | None = None
    lora: LoraOptions | None = None

    @property
    def enabled(self) -> bool:
        return (self.freeze is not None and self.freeze.enabled) or self.lora is not None


def _validate(model: type[BaseModel], value: Any, key: str, source: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise RecipeError(err["msg"], source, _key(key, where)) from None


def split_adaptation(block: Any, source: str) -> tuple[Any, Adaptation]:
    """``block`` without ``freeze``/``lora``, and those two validated."""
    if not isinstance(block, dict) or not ({"freeze", "lora"} & block.keys()):
        return block, Adaptation()
    block = dict(block)
    freeze = block.pop("freeze", None)
    lora = block.pop("lora", None)
    return block, Adaptation(
        freeze=None
        if freeze is None
        else _validate(FreezeOptions, freeze, "backbone.freeze", source),
        lora=None if lora is None else _validate(LoraOptions, lora, "backbone.lora", source),
    )


def _key(block: str, key: str) -> str:
    return f"{block}.{key}" if key else block


def adapt_backbone(backbone: nn.Module, adaptation: Adaptation, source: str) -> nn.Module:
    """Freeze, then add adapters, in place; a spec the backbone cannot take is a RecipeError."""
    if adaptation.freeze is not None and adaptation.freeze.enabled:
        try:
            freeze_backbone(backbone, adaptation.freeze)
        except AdaptError as exc:
            raise RecipeError(exc.message, source, _key("backbone.freeze", exc.key)) from None
    if adaptation.lora is not None:
        try:
            add_lora(backbone, adaptation.lora)
        except ImportError:
            raise RecipeError(
                "LoRA needs the peft package: pip install 'medssl[lora]'", source, "backbone.lora"
            ) from None
        except AdaptError as exc:
            raise RecipeError(exc.message, source, _key("backbone.lora", exc.key)) from None
    return backbone


def parameter_report(
    backbone: nn.Module, heads: list[nn.Module], optimizer: torch.optim.Optimizer
) -> str:
    """One line: trainable and frozen backbone parameters, head parameters, and the size of
    the optimiser state (AdamW keeps two moments per trainable parameter)."""
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in backbone.parameters() if not p.requires_grad)
    head = sum(p.numel() for h in heads for p in h.parameters() if p.requires_grad)
    state_bytes = sum(
        2 * p.numel() * p.element_size() for g in optimizer.param_groups for p in g["params"]
    )
    return (
        f"backbone parameters: {trainable:,} trainable, {frozen:,} frozen; heads: {head:,}; "
        f"optimizer state: {state_bytes / 2**20:.1f} MiB"
    )
