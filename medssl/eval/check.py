"""What ``medssl validate`` (and ``medssl run``, before training) checks of a recipe's
``eval:`` list without an encoder: each evaluator builds, its data builds and splits, the
evaluation size tiles into patches, and the samples carry what the evaluator reads
(labels, masks; an evaluator's ``needs``).

What depends on the values themselves (a target with one class in a split, metadata that
is missing on most images) is only known once features are computed; ``medssl run`` then
reports it in one line and keeps the trained run.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from medssl.config import RecipeError, ResolvedRecipe, build_component
from medssl.eval.features import split_datasets
from medssl.plugins import Registry

__all__ = ["check_evaluators"]

#: What each sample key is called in error messages.
_WHAT = {"label": "labels", "mask": "masks"}
_EXAMPLE = {
    "label": "data: {name: demo_cxr, subset: drr}",
    "mask": "data: {name: demo_cxr, masks: true}",
}


def _first_sample(dataset: Dataset, tries: int = 8) -> dict[str, Any] | None:
    """The first readable sample (a few may fail to load; the loader skips those)."""
    for index in range(min(tries, len(dataset))):  # type: ignore[arg-type]
        sample = dataset[index]
        if sample is not None:
            return sample
    return None


def check_evaluators(
    recipe: ResolvedRecipe, registry: Registry, image_size: int, patch_size: int
) -> list[str]:
    """Raise :class:`RecipeError` naming ``eval.N`` on the first problem; return notes.

    ``image_size`` is the encoder's input size (the policy's global crop) and
    ``patch_size`` the backbone's.
    """
    notes: list[str] = []
    source = recipe.source
    for spec in recipe.evaluators:
        evaluator = build_component(registry, spec)
        opts = getattr(evaluator, "options", None)
        own = getattr(opts, "data", None)
        block = dict(own if own is not None else recipe.recipe.data)
        where = f"{spec.key}.data" if own is not None else "data"
        size = getattr(opts, "image_size", None) or image_size
        if size % patch_size:
            raise RecipeError(
                f"evaluator {spec.name!r}: image size {size} is not a multiple of the "
                f"backbone's patch size {patch_size}",
                source,
                f"{spec.key}.image_size",
            )
        try:
            train, val, _, _ = split_datasets(
                registry,
                block,
                where,
                getattr(opts, "split", "auto"),
                val_fraction=getattr(opts, "val_fraction", 0.2),
            )
        except ValueError as exc:  # RecipeError included: name the evaluator too
            raise RecipeError(f"evaluator {spec.name!r}: {exc}", source, spec.key) from None
        sizes = [len(train), len(val)]  # type: ignore[arg-type]
        if len(train) < 2 or len(val) == 0:  # type: ignore[arg-type]
            raise RecipeError(
                f"evaluator {spec.name!r}: dataset {block.get('name')!r} gives "
                f"{sizes[0]} training and {sizes[1]} validation images, too few for a probe",
                source,
                spec.key,
            )
        needs = tuple(getattr(evaluator, "needs", ()))
        sample = _first_sample(train) if needs else None
        for key in needs:
            if sample is not None and key not in sample:
                raise RecipeError(
                    f"evaluator {spec.name!r}: dataset {block.get('name')!r} has no "
                    f"{_WHAT.get(key, key)}; give the evaluator a data block with them "
                    f"(e.g. {_EXAMPLE.get(key, 'data: {...}')})",
                    source,
                    spec.key,
                )
        notes.append(
            f"{spec.key} ({spec.name}): dataset {block.get('name')!r}, "
            f"{' + '.join(map(str, sizes))} images"
        )
    return notes
