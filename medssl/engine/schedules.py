"""Training schedules and optimizer parameter groups, with DINOv2's defaults.

Formulas of facebookresearch/dinov2: ``CosineScheduler`` (``dinov2/utils/utils.py``: optional
frozen steps at 0, linear warm-up, then ``final + (base - final) * (1 + cos(pi * i / n)) / 2``
and ``final`` afterwards), the schedules of ``dinov2/train/train.py::build_schedulers``
(learning rate, weight decay 0.04 -> 0.4, EMA momentum 0.992 -> 1, teacher temperature
warm-up, last-layer learning rate frozen for the first epoch), the learning-rate scaling
``lr = base_lr * sqrt(batch / 1024)`` and the parameter groups of
``dinov2/utils/param_groups.py`` (layer-wise LR decay, patch-embedding LR multiplier, no
weight decay on biases and norms). Unlike DINOv2, tokens (CLS, position embeddings, mask
and register tokens) get no weight decay either, as in timm's ``no_weight_decay()``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "CosineSchedule",
    "Schedules",
    "apply_to_optimizer",
    "dinov2_schedules",
    "layer_id",
    "param_groups",
    "scaled_lr",
    "teacher_temperature",
]


@dataclass(frozen=True)
class CosineSchedule:
    """Value at a step: ``freeze_steps`` at 0, linear warm-up, cosine decay, then ``final``.

    The warm-up is ``linspace(warmup_start, base, warmup_steps)`` and the cosine part covers
    ``total_steps - warmup_steps - freeze_steps`` steps, exactly as DINOv2's CosineScheduler.
    """

    base: float
    final: float
    total_steps: int
    warmup_steps: int = 0
    warmup_start: float = 0.0
    freeze_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("total_steps", "warmup_steps", "freeze_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"CosineSchedule: {name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps + self.freeze_steps > self.total_steps:
            raise ValueError(
                f"CosineSchedule: warmup_steps ({self.warmup_steps}) + freeze_steps "
                f"({self.freeze_steps}) exceed total_steps ({self.total_steps})"
            )

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"CosineSchedule: step must be >= 0, got {step}")
        if step >= self.total_steps:
            return self.final
        if step < self.freeze_steps:
            return 0.0
        i = step - self.freeze_steps
        if i < self.warmup_steps:
            if self.warmup_steps == 1:
                return self.warmup_start
            return self.warmup_start + (self.base - self.warmup_start) * i / (self.warmup_steps - 1)
        i -= self.warmup_steps
        n = self.total_steps - self.warmup_steps - self.freeze_steps
        return self.final + 0.5 * (self.base - self.final) * (1 + math.cos(math.pi * i / n))


def scaled_lr(base_lr: float, batch_size: int, rule: str = "sqrt", reference: int = 1024) -> float:
    """Learning rate for a global ``batch_size`` from one given per ``reference`` images.

    ``"sqrt"`` is DINOv2's rule (``dinov2/train/train.py``), ``"linear"`` the Goyal et al.
    rule DINO v1 used, ``"none"`` keeps ``base_lr``.
    """
    if batch_size < 1:
        raise ValueError(f"scaled_lr: batch_size must be >= 1, got {batch_size}")
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / reference)
    if rule == "linear":
        return base_lr * batch_size / reference
    if rule == "none":
        return base_lr
    raise ValueError(f"scaled_lr: rule must be 'sqrt', 'linear' or 'none', got {rule!r}")


def teacher_temperature(
    step: int, steps_per_epoch: int, warmup_temp: float, temp: float, warmup_epochs: float
) -> float:
    """DINO's teacher temperature: linear from ``warmup_temp`` to ``temp`` over
    ``warmup_epochs`` epochs, then constant (DINOv2's ``teacher_temp_schedule``)."""
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    return CosineSchedule(
        base=temp,
        final=temp,
        total_steps=warmup_steps,
        warmup_steps=warmup_steps,
        warmup_start=warmup_temp,
    )(step)


@dataclass(frozen=True)
class Schedules:
    """Every per-step value of a DINOv2-style run; call :meth:`at` with the step."""

    lr: CosineSchedule
    last_layer_lr: CosineSchedule
    weight_decay: CosineSchedule
    momentum: CosineSchedule

    def at(self, step: int) -> dict[str, float]:
        return {
            "lr": self.lr(step),
            "last_layer_lr": self.last_layer_lr(step),
            "weight_decay": self.weight_decay(step),
            "momentum": self.momentum(step),
        }


def dinov2_schedules(
    total_steps: int,
    steps_per_epoch: int,
    batch_size: int,
    base_lr: float = 0.004,
    lr_scaling: str = "sqrt",
    min_lr: float = 1e-6,
    warmup_epochs: float = 10,
    weight_decay: float = 0.04,
    weight_decay_end: float = 0.4,
    momentum: float = 0.992,
    momentum_end: float = 1.0,
    freeze_last_layer_epochs: float = 1,
) -> Schedules:
    """The schedules of DINOv2's ``build_schedulers`` (defaults of ``ssl_default_config.yaml``).

    Warm-up and freezing are clipped to the run so short runs (tests, CPU demos) still
    get a valid schedule.
    """
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"dinov2_schedules: total_steps ({total_steps}) and steps_per_epoch "
            f"({steps_per_epoch}) must be >= 1"
        )
    lr = scaled_lr(base_lr, batch_size, lr_scaling)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    freeze = min(int(round(freeze_last_layer_epochs * steps_per_epoch)), total_steps - warmup)
    return Schedules(
        lr=CosineSchedule(lr, min_lr, total_steps, warmup_steps=warmup),
        # As DINOv2: the same curve, held at 0 during the freeze, then warm-up and cosine.
        last_layer_lr=CosineSchedule(
            lr, min_lr, total_steps, warmup_steps=warmup, freeze_steps=freeze
        ),
        weight_decay=CosineSchedule(weight_decay, weight_decay_end, total_steps),
        momentum=CosineSchedule(momentum, momentum_end, total_steps),
    )


_TOKEN_NAMES = ("cls_token", "pos_embed", "mask_token", "register_tokens", "reg_token")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _n_blocks(model: nn.Module) -> int:
    blocks = getattr(model, "blocks", None)
    if blocks is not None:
        return len(blocks)
    ids = {int(m.group(1)) for n, _ in model.named_parameters() if (m := _BLOCK_RE.search(n))}
    return max(ids) + 1 if ids else 0


def layer_id(name: str, n_blocks: int) -> int:
    """DINOv2's ``get_vit_lr_decay_rate`` layer index: 0 for the embeddings and tokens,
    ``i + 1`` for block ``i``, ``n_blocks + 1`` for everything after the blocks."""
    if "patch_embed" in name or any(t in name for t in _TOKEN_NAMES):
        return 0
    m = _BLOCK_RE.search(name)
    if m is not None:
        return int(m.group(1)) + 1
    return n_blocks + 1


def _no_weight_decay(name: str, param: torch.Tensor) -> bool:
    # DINOv2: biases, norms, LayerScale gammas; timm: tokens; 1-d tensors are norms/biases.
    return (
        name.endswith(".bias")
        or "norm" in name
        or "gamma" in name
        or any(t in name for t in _TOKEN_NAMES)
        or param.ndim <= 1
    )


def param_groups(
    backbone: nn.Module,
    heads: Iterable[nn.Module] = (),
    layer_decay: float = 0.9,
    patch_embed_lr_mult: float = 0.2,
    last_layer_params: Iterable[nn.Parameter] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with per-group ``lr_multiplier`` and ``wd_multiplier``.

    Backbone parameters get ``layer_decay ** (n_blocks + 1 - layer_id)`` (DINOv2's layer-wise
    decay; the final norm keeps 1), the patch embedding additionally ``patch_embed_lr_mult``;
    head parameters keep 1. Biases, norms, LayerScale and tokens get no weight decay.
    Parameters in ``last_layer_params`` are flagged ``is_last_layer`` (their LR follows the
    frozen-first-epoch schedule). Frozen parameters (``requires_grad=False``) are skipped,
    and parameters shared by several modules appear once.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"param_groups: layer_decay must be in (0, 1], got {layer_decay}")
    if patch_embed_lr_mult < 0:
        raise ValueError(
            f"param_groups: patch_embed_lr_mult must be >= 0, got {patch_embed_lr_mult}"
        )
    last_ids = {id(p) for p in last_layer_params}
    n_blocks = _n_blocks(backbone)
    seen: set[int] = set()
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}

    def add(name: str, param: nn.Parameter, lr_mult: float) -> None:
        if not param.requires_grad or id(param) in seen:
            return
        seen.add(id(param))
        wd_mult = 0.0 if _no_weight_decay(name, param) else 1.0
        is_last = id(param) in last_ids
        key = (lr_mult, wd_mult, is_last)
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "is_last_layer": is_last,
            },
        )
        group["params"].append(param)
        group["names"].append(name)

    for name, param in backbone.named_parameters():
        mult = layer_decay ** (n_blocks + 1 - layer_id(name, n_blocks))
        if "patch_embed" in name:
            mult *= patch_embed_lr_mult
        add(name, param, mult)
    for i, head in enumerate(heads):
        for name, param in head.named_parameters():
            add(f"heads.{i}.{name}", param, 1.0)
    return list(groups.values())


def apply_to_optimizer(
    optimizer: torch.optim.Optimizer,
    lr: float,
    weight_decay: float,
    last_layer_lr: float | None = None,
) -> None:
    """Set each group's ``lr`` and ``weight_decay`` from the scheduled values and its
    multipliers (groups without multipliers take the values as they are)."""
    for group in optimizer.param_groups:
        base = last_layer_lr if group.get("is_last_layer") and last_layer_lr is not None else lr
        group["lr"] = base * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = weight_decay * group.get("wd_multiplier", 1.0)
