"""Resume honesty: what a checkpoint was trained with, against the recipe resuming it.

A checkpoint stores the resolved recipe with every default filled in. On ``--resume`` the
two are compared key by key: a change to what is trained (data, views, model, objectives,
seed, batch, optimiser and schedule) is refused with the list of keys, unless the user
accepts it explicitly; a change to how long or how the run is observed (steps, epochs,
logging, checkpoints, evaluation, workers, precision) is allowed. Either way it is
appended to ``history.jsonl`` in the run directory; ``config.yaml`` keeps the recipe the
run started with.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medssl.config import ResolvedRecipe

HISTORY_FILE = "history.jsonl"

#: Keys (and key prefixes) whose change alters what the checkpoint's weights are trained on
#: or towards. ``train.devices``/``num_nodes`` are not among them: resuming on another
#: number of ranks is supported (docs/distributed.md) and is recorded in the history.
TRAINING_KEYS = (
    "seed",
    "data",
    "augmentation",
    "backbone",
    "objectives",
    "train.batch_size",
    "train.grad_accumulation",
    "train.steps_per_epoch",
    "train.optimizer",
    "train.base_lr",
    "train.lr",
    "train.min_lr",
    "train.warmup_epochs",
    "train.betas",
    "train.weight_decay",
    "train.weight_decay_end",
    "train.momentum_teacher",
    "train.momentum_teacher_end",
    "train.layerwise_decay",
    "train.patch_embed_lr_mult",
    "train.clip_grad",
)


def _plain(value: Any) -> Any:
    # JSON round trip: tuples become lists, paths strings, so saved and fresh compare equal.
    return json.loads(json.dumps(value, default=str))


def canonical_recipe(recipe: ResolvedRecipe) -> dict[str, Any]:
    """The recipe as trained: every component's validated options, defaults included."""

    def block(spec: Any) -> dict[str, Any]:
        return {"name": spec.name, **spec.options}

    return _plain(
        {
            "seed": recipe.recipe.seed,
            "output_dir": recipe.recipe.output_dir,
            "data": block(recipe.data),
            "augmentation": block(recipe.augmentation),
            "backbone": block(recipe.backbone),
            "objectives": {
                spec.key.split(".", 1)[1]: {"weight": spec.weight, **spec.options}
                for spec in recipe.objectives
            },
            "train": recipe.train.model_dump(),
            "eval": [block(spec) for spec in recipe.evaluators],
        }
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    # 2 and 2.0 are one value in a recipe
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return not isinstance(b, bool) and a == b
    return a == b


def recipe_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple]:
    """``{key: (saved value, current value)}`` for every leaf that differs."""
    old, new = _flatten(saved), _flatten(current)
    missing = "(unset)"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if key not in old or key not in new or not _same(old[key], new[key])
    }


def alters_training(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in TRAINING_KEYS)


def describe(changes: Mapping[str, tuple]) -> str:
    def short(value: Any) -> str:
        text = json.dumps(value) if not isinstance(value, str) else value
        return text if len(text) <= 60 else text[:57] + "..."

    return ", ".join(f"{k}: {short(a)} -> {short(b)}" for k, (a, b) in changes.items())


def append_history(run_dir: Path, entry: Mapping[str, Any]) -> None:
    """One JSON line per start or resume of the run; earlier lines are never rewritten."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    with (run_dir / HISTORY_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(_plain(record)) + "\n")
