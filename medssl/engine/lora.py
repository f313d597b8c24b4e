"""Low-rank adapters (LoRA, Hu et al. 2021) on a backbone through Hugging Face ``peft``.

``backbone.lora`` injects peft's ``LoraLayer`` into the chosen linear layers of the chosen
blocks (``peft.inject_adapter_in_model``, which leaves only the adapters trainable); the
EMA teacher is a copy of the adapted student, so it averages the adapters. For evaluation
and export the adapters are merged into the base weights with peft's own
``LoraLayer.merge`` (:func:`merged_state_dict`): the run's ``backbone.safetensors`` then
holds a plain backbone that loads without peft.
"""

from __future__ import annotations

import copy
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from medssl.engine.freeze import AdaptError

__all__ = ["LoraOptions", "add_lora", "has_lora", "merge_lora", "merged_state_dict"]

#: The linear layers of a timm ViT block that a target names (``attn.qkv``, ``mlp.fc1``...).
TARGETS = ("qkv", "proj", "fc1", "fc2")


class LoraOptions(BaseModel):
    """``backbone.lora``."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, gt=0, le=1024)
    alpha: float = Field(16.0, gt=0, description="scaling is alpha / rank, as in peft")
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: ["qkv", "proj", "fc1", "fc2"],
        min_length=1,
        description="linear layers of each block to adapt, by their last name",
    )
    blocks: int | list[int] | None = Field(
        None, description="blocks to adapt: null for all, N for the last N, or a list of indices"
    )

    @field_validator("blocks")
    @classmethod
    def _non_negative(cls, value: int | list[int] | None) -> int | list[int] | None:
        values = [value] if isinstance(value, int) else (value or [])
        if any(v < 0 for v in values):
            raise ValueError("block numbers must be >= 0")
        return value


def _target_modules(backbone: nn.Module, options: LoraOptions) -> list[str]:
    """Full names of the ``nn.Linear`` modules ``options`` selects; :class:`AdaptError`
    when a target or block is absent."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Module):
        raise AdaptError("targets", "the backbone has no `blocks` to put adapters in")
    n_blocks = len(list(blocks.children()))
    if options.blocks is None:
        chosen = list(range(n_blocks))
    elif isinstance(options.blocks, int):
        if not 0 < options.blocks <= n_blocks:
            raise AdaptError("blocks", f"must be in [1, {n_blocks}] (the backbone's depth)")
        chosen = list(range(n_blocks - options.blocks, n_blocks))
    else:
        bad = [b for b in options.blocks if b >= n_blocks]
        if bad:
            raise AdaptError("blocks", f"{bad} out of range, the backbone has {n_blocks} blocks")
        chosen = sorted(set(options.blocks))
    pattern = re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:.+\.)?([^.]+)$")
    found: dict[str, list[str]] = {t: [] for t in options.targets}
    for name, module in backbone.named_modules():
        m = pattern.search(name)
        if m is None or int(m.group(1)) not in chosen or m.group(2) not in found:
            continue
        if isinstance(module, nn.Linear):
            found[m.group(2)].append(name)
    missing = [t for t, names in found.items() if not names]
    if missing:
        raise AdaptError(
            "targets",
            f"no linear layer named {missing} in the chosen blocks of this backbone "
            f"(a timm ViT block has {list(TARGETS)})",
        )
    return [name for names in found.values() for name in names]


def add_lora(backbone: nn.Module, options: LoraOptions) -> list[str]:
    """Inject LoRA adapters in place; return the adapted module names. Everything but the
    adapters is frozen (peft's ``inject_adapter_in_model``)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = _target_modules(backbone, options)
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(config, backbone)
    return targets


def has_lora(module: nn.Module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return any(isinstance(m, LoraLayer) for m in module.modules())


def merge_lora(module: nn.Module) -> nn.Module:
    """Merge every adapter into its base layer (peft's ``LoraLayer.merge``) and put the
    plain base layer back in its place, in ``module`` itself."""
    from peft.tuners.lora import LoraLayer

    for name, layer in list(module.named_modules()):
        if not isinstance(layer, LoraLayer):
            continue
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
    return module


def merged_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The state dict of ``module`` with its adapters merged (``module`` is left as is)."""
    if not has_lora(module):
        return module.state_dict()
    return merge_lora(copy.deepcopy(module)).state_dict()
