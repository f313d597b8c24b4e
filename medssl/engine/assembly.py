"""A recipe's components built and cross-checked once: what ``run`` trains and ``validate``
checks.

:func:`assemble` builds the dataset, the augmentation policy, the backbone (with its
adaptation), and every enabled objective set up for that backbone, then checks them
against each other: policy channels against the backbone, the dataset against one global
batch, each objective against the backbone (:meth:`setup`, ``check_backbone``), the views
the objectives ask for, report text against the dataset. ``medssl run``
(:func:`medssl.engine.build.build_parts`) and ``medssl validate``
(:func:`medssl.validation.check_recipe`) both call it, so a recipe error reaches the user
as the same line from either command, before any step.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from medssl.config import RecipeError, ResolvedRecipe, build_component
from medssl.data.large import sampled_file_checks
from medssl.engine.adapt import adapt_backbone
from medssl.engine.preflight import batch_plan, setup_objectives
from medssl.plugins import Registry
from medssl.types import ViewRequest

__all__ = ["Assembly", "assemble"]

log = logging.getLogger("medssl.train")


@dataclass(kw_only=True)
class Assembly:
    """The checked components of one recipe, for ``world`` processes."""

    dataset: Any
    policy: Any
    backbone: Any
    #: objective key -> (set-up objective, recipe weight), in the recipe's order
    objectives: dict[str, tuple[Any, float]]
    request: ViewRequest
    steps_per_epoch: int
    total_steps: int
    global_batch: int
    image_size: int


def _check_channels(recipe: ResolvedRecipe, policy: Any, backbone: Any) -> None:
    channels = getattr(policy, "channels", None)
    if channels is not None and channels != backbone.in_chans:
        raise RecipeError(
            f"the policy makes {channels}-channel views but backbone.in_chans is "
            f"{backbone.in_chans}; set augmentation.channels and backbone.in_chans alike",
            recipe.source,
            "augmentation.channels",
        )


def _view_request(recipe: ResolvedRecipe, objectives: dict[str, Any], patch_size: int) -> Any:
    """The union of the objectives' view requests; a conflict names the objective."""
    request = ViewRequest(patch_size=patch_size)
    for key, (objective, _) in objectives.items():
        try:
            request = request | objective.request(patch_size)
        except ValueError as exc:
            raise RecipeError(str(exc), recipe.source, f"objectives.{key}") from None
    return request


def _check_text(
    recipe: ResolvedRecipe, objectives: dict[str, Any], dataset: Any, patch_size: int
) -> None:
    if getattr(dataset, "has_text", False):
        return
    for key, (objective, _) in objectives.items():
        if objective.request(patch_size).text:
            raise RecipeError(
                f"objective {key!r} needs report text, but dataset "
                f"{recipe.data.name!r} provides none (set a text column, use a dataset with "
                f"reports, or disable it with objectives.{key}.weight=0)",
                recipe.source,
                f"objectives.{key}",
            )


def assemble(
    recipe: ResolvedRecipe, registry: Registry, world: int, *, sampled_files: bool = False
) -> Assembly:
    """Build and cross-check ``recipe``'s components for ``world`` processes; every error
    a recipe can fix is a :class:`RecipeError` naming its key.

    The build order is fixed (data, policy, backbone, objectives): the trainer seeds the
    global RNG first, so the same recipe always starts from the same weights.
    ``sampled_files``: a large table's files are checked on a seeded sample
    (``medssl validate``), not one by one (training).
    """
    source = recipe.source
    with sampled_file_checks() if sampled_files else nullcontext():
        dataset = build_component(registry, recipe.data)
    policy = build_component(registry, recipe.augmentation)
    backbone = build_component(registry, recipe.backbone)
    if recipe.adaptation is not None:
        adapt_backbone(backbone, recipe.adaptation, source)
    _check_channels(recipe, policy, backbone)
    if len(dataset) == 0:
        raise RecipeError("the dataset is empty", source, "data")
    steps_per_epoch, total_steps, global_batch = batch_plan(
        len(dataset), recipe.train, world, source
    )
    image_size = int(getattr(policy, "global_crop_size", backbone.img_size))
    objectives = setup_objectives(
        recipe,
        registry,
        backbone,
        {
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "world_size": world,
            "image_size": image_size,
        },
    )
    # Continued pre-training: heads shipped beside a backbone.init folder start the heads.
    from medssl.export.huggingface import apply_initial_heads

    try:
        loaded = apply_initial_heads(backbone, {k: o for k, (o, _) in objectives.items()})
    except ValueError as exc:
        raise RecipeError(str(exc), source, "backbone.init") from None
    if loaded:
        log.info("initial heads loaded from backbone.init for: %s", ", ".join(loaded))
    patch_size = int(backbone.patch_size)
    request = _view_request(recipe, objectives, patch_size)
    _check_text(recipe, objectives, dataset, patch_size)
    return Assembly(
        dataset=dataset,
        policy=policy,
        backbone=backbone,
        objectives=objectives,
        request=request,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch=global_batch,
        image_size=image_size,
    )
