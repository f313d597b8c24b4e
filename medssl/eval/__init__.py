"""Evaluations on frozen features (linear probe, k-NN, segmentation probe, metadata probe).

:func:`run_evaluators` runs a recipe's ``eval:`` list on a run directory (or on an
exported Hugging Face folder) and writes ``eval.json`` and ``eval.md`` there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medssl.config import ComponentSpec, RecipeError, ResolvedRecipe, build_component
from medssl.eval.base import EvalContext, EvalOptions, EvalResult, Evaluator, Row
from medssl.eval.encoder import Encoder, encoder_from_recipe, load_encoder, random_encoder
from medssl.eval.report import markdown_table, write_report
from medssl.plugins import Registry

log = logging.getLogger("medssl.eval")

__all__ = [
    "Encoder",
    "EvalContext",
    "EvalOptions",
    "EvalResult",
    "Evaluator",
    "Row",
    "encoder_from_recipe",
    "evaluate",
    "load_encoder",
    "markdown_table",
    "random_encoder",
    "run_evaluators",
]


def evaluate(
    encoder: Encoder,
    specs: Sequence[ComponentSpec],
    registry: Registry,
    default_data: dict[str, Any] | None,
    floor_cache: dict[str, Any] | None = None,
    random: Encoder | None = None,
) -> list[EvalResult]:
    """Run each evaluator spec on ``encoder``; features are shared between them.

    ``random`` is the random-weights floor's encoder (:func:`random_encoder`; None: no
    such floor). Pass the same ``floor_cache`` when evaluating several encoders on the
    same data so the floors are fit once.
    """
    ctx = EvalContext(encoder, registry, default_data, random_encoder=random)
    if floor_cache is not None:
        ctx.floor_cache = floor_cache
    results = []
    for spec in specs:
        evaluator = build_component(registry, spec)
        log.info("evaluating %s (%s)", spec.name, spec.key)
        ctx.last_split = None
        try:
            result = evaluator(ctx)
        except ValueError as exc:
            raise RecipeError(str(exc), None, spec.key) from exc
        if result.split is None:
            result.split = ctx.last_split
        results.append(result)
    return results


def run_evaluators(
    run_dir: str | Path,
    resolved_recipe: ResolvedRecipe | None,
    registry: Registry,
    specs: Sequence[ComponentSpec] | None = None,
    out_dir: str | Path | None = None,
    floor_cache: dict[str, Any] | None = None,
    default_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory (or HF folder); write and return ``eval.json``'s content.

    ``specs`` default to the recipe's ``eval:`` list; results go to ``out_dir`` (default:
    ``run_dir``, or the current directory's ``eval/`` for a read-only HF folder).
    ``default_data``: the data block of evaluators without their own, where there is no
    recipe (default: the recipe's).
    """
    specs = list(
        specs if specs is not None else (resolved_recipe.evaluators if resolved_recipe else [])
    )
    if not specs:
        raise RecipeError("no evaluator to run: the recipe has no 'eval:' list", None, "eval")
    encoder = load_encoder(run_dir, resolved_recipe, registry)
    if resolved_recipe is not None:
        default_data = dict(resolved_recipe.recipe.data)
    # An exported folder without its recipe has no known initialisation: no such floor.
    random = None if resolved_recipe is None else random_encoder(resolved_recipe, registry)
    results = evaluate(encoder, specs, registry, default_data, floor_cache, random)
    header = {
        "source": str(run_dir),
        "encoder": {"image_size": encoder.image_size, **encoder.info},
    }
    payload = write_report(out_dir or run_dir, results, header)
    log.info("wrote %s", Path(out_dir or run_dir) / "eval.md")
    return payload
