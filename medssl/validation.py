"""``medssl validate``: every check that can run without training.

Beyond what :func:`medssl.config.load_recipe` already checks (names resolve, options
valid), this assembles the recipe as training does (:mod:`medssl.engine.assembly`:
dataset, policy, backbone, objectives set up and cross-checked) and dry-runs the policy
on two images, so incompatibilities surface before a long job is queued: text-needing
objectives on a dataset without text, channel mismatches, crop sizes that are not
multiples of the patch size, views an objective needs that the policy does not make;
then what the trainer checks before its first step (:mod:`medssl.engine.preflight`: FSDP
without CUDA, devices, a dataset smaller than one global batch, objectives that cannot be
set up, an output_dir holding another run) and what the evaluations need
(:mod:`medssl.eval.check`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from medssl.config import RecipeError, ResolvedRecipe, TrainOptions
from medssl.data.robust import LoadFailure
from medssl.engine.assembly import assemble
from medssl.engine.preflight import (
    check_devices,
    check_output_dir,
    check_strategy,
    world_size,
)
from medssl.eval.check import check_evaluators
from medssl.plugins import Registry
from medssl.types import ViewRequest, Views


def _missing_views(request: ViewRequest, views: Views) -> list[str]:
    missing = []
    if request.global_crops and views.global_crops is None:
        missing.append("global crops")
    if request.local_crops and views.local_crops is None:
        missing.append("local crops")
    if request.single_view and views.single_view is None and views.global_crops is None:
        missing.append("a single view")
    if request.block_masks is not None and views.block_masks is None:
        missing.append("iBOT block masks")
    if request.mae_mask_ratio is not None and views.mae_masks is None:
        missing.append("MAE masks")
    if request.text and views.text is None:
        missing.append("text")
    return missing


def _first_readable(dataset: object, tries: int = 8) -> tuple[dict | None, list[tuple[str, str]]]:
    """The first sample that loads among the first ``tries``, and the failures before it."""
    failed: list[tuple[str, str]] = []
    for index in range(min(tries, len(dataset))):  # type: ignore[arg-type]
        sample = dataset[index]  # type: ignore[index]
        if isinstance(sample, dict) and "image" in sample:
            return sample, failed
        if isinstance(sample, LoadFailure):
            failed.append((sample.path, sample.reason))
        else:
            failed.append((f"item {index}", "no image"))
    return None, failed


def _world(train: TrainOptions, device_check: bool, source: str) -> int | None:
    """The processes a run starts: checked against this machine's devices, or (without
    the device check) counted from an integer ``train.devices`` alone."""
    if device_check:
        check_strategy(train, source)
        check_devices(train)
        world = world_size(train)
        if world is None:
            cuda = train.accelerator != "cpu" and torch.cuda.is_available()
            have = f"{torch.cuda.device_count()} CUDA devices" if cuda else "a CPU"
            raise RecipeError(
                f"train.devices={train.devices!r} does not fit this machine ({have}); see "
                "docs/distributed.md",
                source,
                "train.devices",
            )
        return world
    if isinstance(train.devices, int) and train.devices > 0:
        return train.devices * train.num_nodes
    return None


def check_recipe(
    recipe: ResolvedRecipe, registry: Registry, *, resume: bool = False, device_check: bool = True
) -> list[str]:
    """Raise :class:`RecipeError` on the first problem ``medssl run`` would meet before
    its first step or in its evaluations; return informational notes.

    ``resume``: the run would continue its output_dir. ``device_check``: check
    ``train.strategy``/``train.devices`` against this machine (off to validate a GPU
    recipe on a machine without one).
    """
    notes: list[str] = []
    source = recipe.source
    world = _world(recipe.train, device_check, source)
    check_output_dir(Path(recipe.recipe.output_dir), resume, source)
    parts = assemble(recipe, registry, world or 1, sampled_files=True)
    dataset, policy, backbone, request = parts.dataset, parts.policy, parts.backbone, parts.request
    patch_size = int(backbone.patch_size)
    if world is None:
        notes.append("train.devices is counted at launch: the batch check assumed 1 process")
    sample, failed = _first_readable(dataset)
    if sample is None:
        raise RecipeError(
            f"none of the first {len(failed)} items of the dataset could be read ("
            + "; ".join(f"{key}: {reason}" for key, reason in failed[:3])
            + ")",
            source,
            "data",
        )
    if failed:
        notes.append(
            f"{len(failed)} of the first items failed to load (they are skipped and counted "
            "in training): " + "; ".join(f"{key}: {reason}" for key, reason in failed[:3])
        )
    image = sample["image"]
    images = torch.stack([image, image.flip(-1)])
    kwargs = {"text": ["report text", "report text"]} if request.text else {}
    generator = torch.Generator().manual_seed(0)
    try:
        views = policy(images, request, generator, **kwargs)
    except (ValueError, TypeError) as exc:
        raise RecipeError(
            f"policy {recipe.augmentation.name!r} failed on a sample: {exc}",
            source,
            "augmentation",
        ) from None
    missing = _missing_views(request, views)
    if missing:
        raise RecipeError(
            f"the enabled objectives need {', '.join(missing)}, which policy "
            f"{recipe.augmentation.name!r} does not produce; choose another policy or "
            "disable those objectives",
            source,
            "augmentation.name",
        )
    for name in ("global_crops", "local_crops", "single_view"):
        crops = getattr(views, name)
        if crops is not None and (crops.shape[-1] % patch_size or crops.shape[-2] % patch_size):
            raise RecipeError(
                f"{name.replace('_', ' ')} of size {tuple(crops.shape[-2:])} are not a "
                f"multiple of the backbone's patch size {patch_size}",
                source,
                "augmentation",
            )
    notes.append(
        f"dataset {recipe.data.name!r}: {len(dataset)} images of shape {tuple(image.shape)}"
    )
    if getattr(dataset, "check_note", None):
        notes.append(str(dataset.check_note))
    crop = getattr(policy, "global_crop_size", None) or backbone.img_size
    notes += check_evaluators(recipe, registry, int(crop), patch_size)
    return notes
