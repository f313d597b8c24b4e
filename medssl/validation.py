"""``medssl validate``: every check that can run without training.

Beyond what :func:`medssl.config.load_recipe` already checks (names resolve, options
valid), this builds the dataset, policy, backbone and objectives and dry-runs the policy
on two images, so incompatibilities surface before a long job is queued: text-needing
objectives on a dataset without text, channel mismatches, crop sizes that are not
multiples of the patch size, views an objective needs that the policy does not make.
"""

from __future__ import annotations

import torch

from medssl.config import RecipeError, ResolvedRecipe, build_component
from medssl.data.robust import LoadFailure
from medssl.plugins import Registry
from medssl.types import ViewRequest, Views


def _dataset_has_text(dataset: object) -> bool:
    return bool(getattr(dataset, "has_text", False))


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


def check_recipe(recipe: ResolvedRecipe, registry: Registry) -> list[str]:
    """Raise :class:`RecipeError` on the first problem; return informational notes."""
    notes: list[str] = []
    source = recipe.source
    dataset = build_component(registry, recipe.data)
    policy = build_component(registry, recipe.augmentation)
    backbone = build_component(registry, recipe.backbone)
    if recipe.adaptation is not None:
        from medssl.engine.adapt import adapt_backbone

        adapt_backbone(backbone, recipe.adaptation, source)
    patch_size = int(backbone.patch_size)

    request = ViewRequest(patch_size=patch_size)
    for spec in recipe.enabled_objectives:
        objective = build_component(registry, spec)
        check_backbone = getattr(objective, "check_backbone", None)
        if check_backbone is not None:  # e.g. distillation: the teacher against the student
            size = int(getattr(policy, "global_crop_size", backbone.img_size))
            try:
                check_backbone(backbone, size)
            except ValueError as exc:
                raise RecipeError(str(exc), source, spec.key) from None
        try:
            request = request | objective.request(patch_size)
        except ValueError as exc:
            raise RecipeError(str(exc), source, spec.key) from None
        if objective.request(patch_size).text and not _dataset_has_text(dataset):
            raise RecipeError(
                f"objective {spec.name!r} needs report text, but dataset "
                f"{recipe.data.name!r} provides none (set a text column, use a dataset "
                f"with reports, or disable it with {spec.key}.weight=0)",
                source,
                spec.key,
            )

    channels = getattr(policy, "channels", None)
    if channels is not None and channels != backbone.in_chans:
        raise RecipeError(
            f"the policy makes {channels}-channel views but backbone.in_chans is "
            f"{backbone.in_chans}; set augmentation.channels and backbone.in_chans alike",
            source,
            "augmentation.channels",
        )

    if len(dataset) == 0:
        raise RecipeError("the dataset is empty", source, "data")
    if len(dataset) < recipe.train.batch_size:
        notes.append(
            f"the dataset has {len(dataset)} images, fewer than train.batch_size="
            f"{recipe.train.batch_size}"
        )
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
    return notes
