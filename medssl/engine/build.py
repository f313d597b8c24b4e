"""Builds what a run trains, on a launched Fabric: model, optimiser, schedules, loader, RNG.

The components come from :func:`medssl.engine.assembly.assemble`, built and
cross-checked as ``medssl validate`` checks them. Everything the training loop steps lives in one
:class:`TrainingParts`, made in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from medssl.config import ResolvedRecipe
from medssl.engine import schedules
from medssl.engine.adapt import parameter_report
from medssl.engine.assembly import assemble
from medssl.engine.fabric_setup import fused_adamw, is_fsdp, make_fabric
from medssl.engine.model import SSLModel
from medssl.engine.sampler import EpochSampler
from medssl.engine.train_state import seed_all
from medssl.plugins import Registry
from medssl.types import ViewRequest

__all__ = ["TrainingParts", "build_parts"]

log = logging.getLogger("medssl.train")


@dataclass
class TrainingParts:
    """Everything a run steps, built once by :func:`build_parts`."""

    fabric: Any
    dataset: Any
    policy: Any
    model: Any  # the Fabric-wrapped :class:`SSLModel` (DDP/FSDP)
    raw_model: SSLModel
    optimizer: Any  # Fabric-wrapped AdamW
    schedules: schedules.Schedules
    request: ViewRequest
    sampler: EpochSampler
    loader: DataLoader
    generator: torch.Generator  # the augmentation policy's, one stream per rank
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    peak_lr: float
    feed: Any = None  # litdata's loader (medssl.data.streaming) for data.name: streaming


def build_parts(recipe: ResolvedRecipe, registry: Registry) -> TrainingParts:
    """Launch Fabric and build every component of ``recipe``; errors a recipe can fix
    are :class:`RecipeError` naming its key."""
    opts = recipe.train
    if opts.threads:
        torch.set_num_threads(opts.threads)
    fabric = make_fabric(opts)
    fabric.launch()
    seed = recipe.recipe.seed
    # Every rank builds the same initial weights (no reliance on DDP's broadcast, which
    # FSDP and the teacher's EMA copy would not get); per-rank seeds come after building.
    seed_all(seed)

    parts = assemble(recipe, registry, fabric.world_size)
    dataset, policy, student = parts.dataset, parts.policy, parts.backbone
    objectives, request = parts.objectives, parts.request
    steps_per_epoch, total_steps = parts.steps_per_epoch, parts.total_steps
    global_batch, n_images, world = parts.global_batch, len(dataset), fabric.world_size
    # FSDP flattens each module's parameters on its own: the teacher cannot share them.
    model = SSLModel(student, objectives, share_frozen=not is_fsdp(fabric))
    mask_token = getattr(student, "mask_token", None)
    if request.block_masks is None and isinstance(mask_token, torch.nn.Parameter):
        # Unused without block masks: DDP would wait forever for its gradient.
        mask_token.requires_grad_(False)

    objective_modules = [obj for obj, _ in objectives.values()]
    plan = schedules.dinov2_schedules(
        total_steps,
        steps_per_epoch,
        global_batch,
        base_lr=opts.lr or opts.base_lr,
        lr_scaling="none" if opts.lr else "sqrt",
        min_lr=opts.min_lr,
        warmup_epochs=opts.warmup_epochs,
        weight_decay=opts.weight_decay,
        weight_decay_end=opts.weight_decay_end,
        momentum=opts.momentum_teacher,
        momentum_end=opts.momentum_teacher_end,
        freeze_last_layer_epochs=max(
            (getattr(obj, "freeze_last_layer_epochs", 0) for obj in objective_modules), default=0
        ),
    )
    peak_lr = plan.lr.base
    groups = schedules.param_groups(
        model.student,
        objective_modules,
        layer_decay=opts.layerwise_decay,
        patch_embed_lr_mult=opts.patch_embed_lr_mult,
        last_layer_params=[p for o in objective_modules for p in o.frozen_last_layer_params()],
    )
    fused = fused_adamw(fabric.device)
    optimizer = torch.optim.AdamW(
        groups,
        lr=peak_lr,
        betas=opts.betas,
        weight_decay=opts.weight_decay,
        # One fused kernel per tensor (CUDA and CPU): a single pass over parameter,
        # gradient and both moments, no temporaries; the foreach path allocates
        # temporaries the size of the whole model (CPU speed-up: benchmarks/RESULTS.md).
        fused=fused or None,
        foreach=None if fused else False,
    )
    if opts.compile:
        # In place, so parameter names (checkpoints, EMA pairs) keep no ``_orig_mod.``.
        model.student.compile()
    log.info(parameter_report(model.student, objective_modules, optimizer))
    wrapped, wrapped_optimizer = fabric.setup(model, optimizer)

    from medssl.data import collate

    sampler = EpochSampler(n_images, seed, fabric.global_rank, world)
    loader = DataLoader(
        dataset,
        batch_size=opts.batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=opts.num_workers,
        drop_last=True,
        persistent_workers=False,
        # Its own generator, reseeded every epoch (``Trainer._batches``): creating an
        # iterator then never draws from the global RNG, so a resumed run's RNG stream matches.
        generator=torch.Generator(),
    )
    from medssl.data.streaming import make_feed  # litdata's loader for data.name: streaming

    feed = make_feed(dataset, opts.batch_size, opts.num_workers, seed)
    rank = fabric.global_rank
    generator = torch.Generator(device=fabric.device)
    generator.manual_seed(seed * 1000 + rank)
    seed_all(seed + rank)  # drop-path and anything else drawing from the global RNG
    return TrainingParts(
        fabric=fabric,
        dataset=dataset,
        policy=policy,
        model=wrapped,
        raw_model=model,
        optimizer=wrapped_optimizer,
        schedules=plan,
        request=request,
        sampler=sampler,
        loader=loader,
        generator=generator,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch=global_batch,
        peak_lr=peak_lr,
        feed=feed,
    )
