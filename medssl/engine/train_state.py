"""A run's training state in and out of checkpoints: weights, optimiser, every rank's RNG.

Exact resume needs more than the weights: the optimiser's moments and each rank's RNG
streams (global torch/python/numpy and the augmentation policy's generator). Under FSDP
the sharded weights and optimiser state are gathered to full tensors on save and
scattered back on load, so a checkpoint is the same file whatever the strategy. The file
format itself is :mod:`medssl.engine.checkpoint`'s.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from medssl.engine import checkpoint as ckpt
from medssl.engine.fabric_setup import is_fsdp
from medssl.engine.lora import has_lora, merged_state_dict

__all__ = [
    "export_backbone",
    "full_model_state",
    "full_optimizer_state",
    "gather_rng",
    "load_full_state",
    "restore_rng",
    "rng_state",
    "save_state",
    "seed_all",
    "set_rng_state",
]


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """This process's RNG streams, with the policy's ``generator``."""
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "policy": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator.set_state(state["policy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(fabric: Any, generator: torch.Generator) -> list[dict[str, Any]]:
    """Every rank's RNG streams, in rank order (a collective: every rank takes part)."""
    state = rng_state(generator)
    if fabric.world_size == 1:
        return [state]
    import torch.distributed as dist

    gathered: list[Any] = [None] * fabric.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng(fabric: Any, generator: torch.Generator, saved: Any) -> bool:
    """Each rank takes back its own RNG streams (checkpoints hold one per rank); False
    when the checkpoint was saved by another number of ranks (the streams stay seeded)."""
    per_rank = saved if isinstance(saved, list) else [saved]
    if len(per_rank) != fabric.world_size:
        return False
    set_rng_state(per_rank[fabric.global_rank], generator)
    return True


def full_model_state(fabric: Any, model: Any, raw_model: torch.nn.Module) -> dict[str, Any]:
    """The whole (unsharded) state dict; under FSDP gathered onto rank 0 by all ranks."""
    if not is_fsdp(fabric):
        return raw_model.state_dict()
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
    with FSDP.state_dict_type(model._forward_module, StateDictType.FULL_STATE_DICT, config):
        state = model._forward_module.state_dict()
    return {k.replace("_fsdp_wrapped_module.", ""): v for k, v in state.items()}


def full_optimizer_state(fabric: Any, model: Any, optimizer: Any) -> dict[str, Any]:
    if not is_fsdp(fabric):
        return optimizer.state_dict()
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.optim_state_dict(model._forward_module, optimizer.optimizer)


def load_full_state(
    fabric: Any,
    model: Any,
    raw_model: torch.nn.Module,
    optimizer: Any,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:
    """Load what :func:`full_model_state` / :func:`full_optimizer_state` saved."""
    if not is_fsdp(fabric):
        # The teacher's frozen parameters are the student's, stored once.
        shared = raw_model.shared_teacher_keys()
        model_state = {
            **{t: model_state[s] for t, s in shared.items() if s in model_state},
            **model_state,
        }
        raw_model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    module = model._forward_module
    config = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
    with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
        module.load_state_dict(model_state)
        flat = FSDP.optim_state_dict_to_load(module, optimizer.optimizer, optimizer_state)
    optimizer.load_state_dict(flat)


def save_state(
    parts: Any, run_dir: Path, step: int, state: dict[str, Any], keep: int
) -> Path | None:
    """Checkpoint ``step`` with ``state`` (counters, recipe) beside the weights, optimiser
    and RNG of every rank, and refresh ``backbone.safetensors``; every rank takes part,
    rank 0 writes and gets the checkpoint's path."""
    fabric = parts.fabric
    path = None
    rng = gather_rng(fabric, parts.generator)
    model_state = full_model_state(fabric, parts.model, parts.raw_model)
    optimizer_state = full_optimizer_state(fabric, parts.model, parts.optimizer)
    if fabric.global_rank == 0:
        state = {"optimizer": optimizer_state, "step": step, "rng": rng, **state}
        shared = parts.raw_model.shared_teacher_keys()
        path = ckpt.save_checkpoint(
            run_dir / "checkpoints",
            step,
            {k: v for k, v in model_state.items() if k not in shared},
            state,
            keep,
        )
        export_backbone(parts.raw_model, run_dir, step, model_state)
    fabric.barrier()
    return path


def export_backbone(
    raw_model: Any, run_dir: Path, step: int, model_state: dict[str, torch.Tensor]
) -> None:
    """``backbone.safetensors``: the teacher (or student) encoder alone, for eval/export."""
    from safetensors.torch import save_file

    prefix = "teacher.backbone." if raw_model.teacher is not None else "student."
    if has_lora(raw_model.student):
        # A plain backbone (adapters merged) so that eval and export need no peft.
        teacher = raw_model.teacher
        encoder = teacher.backbone if teacher is not None else raw_model.student
        merged = merged_state_dict(encoder)
        model_state = {prefix + k: v for k, v in merged.items()}
    state = {
        k[len(prefix) :]: v.detach().cpu().contiguous()
        for k, v in model_state.items()
        if k.startswith(prefix)
    }
    tmp = run_dir / "backbone.safetensors.tmp"
    try:
        save_file(state, str(tmp), metadata={"step": str(step)})
        os.replace(tmp, run_dir / "backbone.safetensors")
    except (OSError, SafetensorError) as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ckpt.CheckpointError(
            f"could not write {run_dir / 'backbone.safetensors'}: {reason}; the "
            f"checkpoint of step {step} is complete (free space and --resume)"
        ) from None
