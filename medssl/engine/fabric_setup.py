"""Lightning Fabric for a recipe's ``train`` options: strategy (DDP/FSDP), precision, devices.

Fabric gives the same training code DDP/FSDP, mixed precision and multi-node launches
(torchrun, SLURM); the checks that name the recipe's keys live in
:mod:`medssl.engine.preflight`, shared with ``medssl validate``.
"""

from __future__ import annotations

from typing import Any

import torch

from medssl.config import TrainOptions
from medssl.engine.preflight import accelerator_name, check_devices, check_strategy

__all__ = ["fused_adamw", "is_fsdp", "make_fabric", "make_strategy"]


def make_strategy(name: str) -> Any:
    """The Fabric strategy for ``train.strategy``.

    FSDP shards every transformer block (student and teacher alike, so the EMA update pairs
    shard with shard) and keeps the original parameters visible (``use_orig_params``),
    which the layer-wise learning-rate groups, the frozen teacher and the EMA need.
    """
    if name != "fsdp":
        return name
    from lightning_fabric.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block

    return FSDPStrategy(
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy={Block},
        state_dict_type="full",
        use_orig_params=True,
    )


def make_fabric(train: TrainOptions) -> Any:
    """A Fabric (not yet launched) for ``train``; bad strategy or devices are a
    :class:`~medssl.config.RecipeError` naming the key."""
    from lightning_fabric import Fabric

    precision = "32-true" if train.precision in ("32", "32-true") else train.precision
    accelerator = accelerator_name(train)
    check_strategy(train)
    check_devices(train)
    return Fabric(
        accelerator=accelerator,
        strategy=make_strategy(train.strategy),
        devices=train.devices,
        num_nodes=train.num_nodes,
        precision=precision,
    )


def is_fsdp(fabric: Any) -> bool:
    """Whether ``fabric`` shards the model (its state must then be gathered to save it)."""
    from lightning_fabric.strategies import FSDPStrategy

    return isinstance(fabric.strategy, FSDPStrategy)


def fused_adamw(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA, and CPU since 2.4)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper: assume what torch 2.4+ supports
        return device.type in ("cuda", "cpu")
    return device.type in _get_fused_kernels_supported_devices()
