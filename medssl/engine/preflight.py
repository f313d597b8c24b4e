"""What a run checks before its first step, shared by the trainer and ``medssl validate``.

Each check raises :class:`~medssl.config.RecipeError` naming the recipe key, so ``run``
and ``validate`` print the same one line: FSDP without CUDA, devices this machine lacks,
a dataset smaller than one global batch, objectives that cannot be set up, an output_dir
that holds another run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medssl.config import RecipeError, ResolvedRecipe, TrainOptions, build_component
from medssl.engine import checkpoint as ckpt
from medssl.engine.model import objective_setup_order
from medssl.plugins import Registry
from medssl.types import ObjectiveContext

__all__ = [
    "accelerator_name",
    "batch_plan",
    "check_output_dir",
    "check_strategy",
    "setup_objectives",
    "world_size",
]


def accelerator_name(train: TrainOptions) -> str:
    """``train.accelerator`` as Fabric names it."""
    return "cuda" if train.accelerator == "gpu" else train.accelerator


def _on_cpu(train: TrainOptions) -> bool:
    accelerator = accelerator_name(train)
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def check_strategy(train: TrainOptions, source: str | None = None) -> None:
    """FSDP needs CUDA devices (``medssl validate`` runs this check too)."""
    if train.strategy == "fsdp" and _on_cpu(train):
        # Fabric's own message names its arguments, not the recipe's keys
        raise RecipeError(
            "'fsdp' shards the model over CUDA devices (Lightning Fabric's FSDP is GPU-only) "
            f"and train.accelerator is {train.accelerator!r}"
            f"{'' if accelerator_name(train) == 'cpu' else ' with no CUDA device'}; on the CPU use "
            "train.strategy=ddp (several processes) or auto",
            source,
            "train.strategy",
        )


def world_size(train: TrainOptions) -> int | None:
    """The number of processes ``train.devices`` x ``train.num_nodes`` asks for, as Fabric
    counts them; None where that cannot be told before launching."""
    from lightning_fabric.accelerators import CPUAccelerator, CUDAAccelerator

    accelerator = CPUAccelerator if _on_cpu(train) else CUDAAccelerator
    try:
        if train.devices == "auto":
            per_node = accelerator.auto_device_count()
        else:
            parsed = accelerator.parse_devices(train.devices)
            per_node = parsed if isinstance(parsed, int) else len(parsed or [])
    except Exception:  # Fabric rejects the devices at launch, with its own message
        return None
    return per_node * train.num_nodes if per_node > 0 else None


def batch_plan(
    n_images: int, train: TrainOptions, world: int, source: str | None = None
) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, global_batch)``; a dataset too small for them is a
    :class:`RecipeError` (``medssl validate`` runs this check too)."""
    global_batch = train.batch_size * world * train.grad_accumulation
    if n_images < global_batch:
        raise RecipeError(
            f"the dataset has {n_images} images, fewer than one global batch "
            f"({train.batch_size} per device x {world} devices x "
            f"{train.grad_accumulation} accumulation steps)",
            source,
            "train.batch_size",
        )
    available = n_images // global_batch
    steps_per_epoch = train.steps_per_epoch or max(available, 1)
    if steps_per_epoch > max(available, 1):
        raise RecipeError(
            f"train.steps_per_epoch={steps_per_epoch} needs more images than the "
            f"dataset has ({n_images} images give {available} steps of {global_batch})",
            source,
            "train.steps_per_epoch",
        )
    total_steps = train.steps or (train.epochs or 1) * steps_per_epoch
    return steps_per_epoch, total_steps, global_batch


def setup_objectives(
    recipe: ResolvedRecipe, registry: Registry, student: Any, context: dict[str, Any]
) -> dict[str, tuple[Any, float]]:
    """Build and set up every enabled objective for ``student``; an objective that cannot
    be set up (an image size its decoder cannot tile, a missing ``head_init``) is a
    :class:`RecipeError` naming its block. ``context``: the rest of
    :class:`ObjectiveContext`."""
    objectives = {}
    shared: dict[str, torch.nn.Module] = {}
    for spec in objective_setup_order(recipe.enabled_objectives, registry):
        objective = build_component(registry, spec)
        check_backbone = getattr(objective, "check_backbone", None)
        if check_backbone is not None:  # e.g. distillation: the teacher against the student
            try:
                check_backbone(student, int(context["image_size"]))
            except ValueError as exc:
                raise RecipeError(str(exc), recipe.source, spec.key) from None
        try:
            objective.setup(
                ObjectiveContext(
                    embed_dim=student.embed_dim,
                    patch_size=student.patch_size,
                    in_chans=student.in_chans,
                    shared=shared,
                    **context,
                )
            )
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise RecipeError(
                f"objective {spec.name!r} could not be set up: {exc}", recipe.source, spec.key
            ) from exc
        objectives[spec.key.split(".", 1)[1]] = (objective, spec.weight)
    # Metrics and checkpoints keep the recipe's order, whatever the set-up order was.
    recipe_order = [spec.key.split(".", 1)[1] for spec in recipe.enabled_objectives]
    return {key: objectives[key] for key in recipe_order}


def check_output_dir(run_dir: Path, resume: bool, source: str | None = None) -> None:
    """A run directory with checkpoints is only continued with ``--resume``."""
    if not resume and ckpt.list_checkpoints(run_dir / "checkpoints"):
        raise RecipeError(
            f"{run_dir} already holds checkpoints of an earlier run; pass --resume to "
            "continue it, or choose another output_dir",
            source,
            "output_dir",
        )


def check_devices(train: TrainOptions) -> None:
    """``train.devices`` against this machine: one process per device, so a thousand on a
    CPU would be a thousand interpreters."""
    devices = train.devices
    if devices == "auto" or not isinstance(devices, int):
        return  # the recipe model admits only positive ints and "auto"
    accelerator = "cuda" if train.accelerator == "gpu" else train.accelerator
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        available, what = os.cpu_count() or 1, "CPU cores"
    elif torch.cuda.is_available():
        available, what = torch.cuda.device_count(), "CUDA devices"
    else:
        return  # another accelerator: Lightning checks its own count
    if devices > available:
        raise RecipeError(
            f"train.devices={devices} but this machine has {available} {what}; "
            f"use at most {available} (or auto)",
            key="train.devices",
        )
