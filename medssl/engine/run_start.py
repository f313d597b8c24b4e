"""Starting or resuming a run directory: its lock, the checkpoint to resume, its records.

Rank 0 locks the directory; a resume takes the newest valid checkpoint, refuses a recipe
that trains something else (unless accepted) and restores weights, optimiser and RNG;
then ``config.yaml``, ``run.json`` and a line of ``history.jsonl`` record the start.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medssl.config import RecipeError, ResolvedRecipe
from medssl.engine import checkpoint as ckpt
from medssl.engine.build import TrainingParts
from medssl.engine.preflight import check_output_dir
from medssl.engine.resume_check import (
    alters_training,
    append_history,
    canonical_recipe,
    describe,
    recipe_changes,
)
from medssl.engine.run_info import run_info
from medssl.engine.run_lock import RunDirectoryLocked, RunLock
from medssl.engine.train_state import load_full_state, restore_rng
from medssl.plugins import Registry

__all__ = ["Start", "acquire", "start_run"]

log = logging.getLogger("medssl.train")


@dataclass
class Start:
    """Where a run starts: step 0, or a checkpoint's step with its counters."""

    step: int = 0
    failures_total: int = 0
    diagnostics: dict[str, Any] | None = None


def acquire(lock: RunLock | None, fabric: Any, run_dir: Path, source: str | None) -> None:
    """Rank 0 takes the run directory's lock; every rank stops if it could not (the
    others would otherwise wait for rank 0 at the next barrier forever)."""
    failure: tuple[str, str] | None = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirectoryLocked as exc:
            failure = ("locked", str(exc))
        except OSError as exc:  # output_dir is a file, read-only, too long a name
            failure = ("os", f"cannot use {run_dir} as the run directory: {exc.strerror}")
    if fabric.world_size > 1:
        failure = fabric.broadcast(failure, src=0)
    if failure is None:
        return
    kind, message = failure
    if kind == "locked":
        raise RunDirectoryLocked(message)
    raise RecipeError(message, source, "output_dir")


def start_run(
    parts: TrainingParts,
    recipe: ResolvedRecipe,
    registry: Registry,
    run_dir: Path,
    resume: bool,
    resume_or_start: bool,
    accept_changes: bool,
) -> Start:
    """Write config.yaml/run.json; load the checkpoint to resume from (``resume``)."""
    fabric = parts.fabric
    ckpt_dir = run_dir / "checkpoints"
    start = Start()
    if fabric.global_rank == 0:
        ckpt.remove_temporary(ckpt_dir)
    fabric.barrier()
    history: dict[str, Any] = {"event": "start"}
    if resume:
        latest = ckpt.latest_valid_checkpoint(ckpt_dir)
        if latest is None and ckpt.list_checkpoints(ckpt_dir):
            # Restarting here would mix a new run with the old one's folders.
            raise RecipeError(
                f"--resume: no valid checkpoint in {ckpt_dir} (every one is incomplete, "
                "corrupt or of an older format); move them away to start again",
                recipe.source,
                "output_dir",
            )
        if latest is None and not resume_or_start:
            raise RecipeError(
                f"--resume: {ckpt_dir} holds no checkpoint; use --resume-or-start to "
                "start from step 0 when there is none",
                recipe.source,
                "output_dir",
            )
        if latest is not None:
            start, history = _resume(parts, recipe, latest, accept_changes)
    else:
        check_output_dir(run_dir, False, recipe.source)
    if fabric.global_rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if history["event"] == "start" or not (run_dir / "config.yaml").is_file():
            # A resumed run keeps the recipe it started with; changes go to history.jsonl.
            with (run_dir / "config.yaml").open("w") as fh:
                yaml.safe_dump(recipe.config, fh, sort_keys=False)
        append_history(run_dir, {**history, "pid": os.getpid()})
        info = run_info(
            registry,
            recipe.recipe.seed,
            {
                "recipe": recipe.source,
                "world_size": fabric.world_size,
                "device": str(fabric.device),
                "global_batch": parts.global_batch,
                "total_steps": parts.total_steps,
                "steps_per_epoch": parts.steps_per_epoch,
                "peak_lr": parts.peak_lr,
                "objectives": {s.name: s.weight for s in recipe.objectives},
                "resumed_from_step": start.step or None,
            },
        )
        (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
    return start


def _resume(
    parts: TrainingParts, recipe: ResolvedRecipe, latest: Path, accept_changes: bool
) -> tuple[Start, dict[str, Any]]:
    """Load ``latest`` into ``parts``: its start and the history line recording it."""
    try:
        model_state, state = ckpt.load_checkpoint(latest)
    except ValueError as exc:
        raise RecipeError(str(exc), recipe.source, "output_dir") from None
    history = {"event": "resume", "from_step": int(state["step"])}
    history["changes"] = _check_recipe_changes(recipe, state, latest, accept_changes)
    try:
        load_full_state(
            parts.fabric,
            parts.model,
            parts.raw_model,
            parts.optimizer,
            model_state,
            state["optimizer"],
        )
    except (RuntimeError, ValueError, KeyError) as exc:
        # A recipe accepted with --accept-changes may still not fit the weights.
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise RecipeError(
            f"checkpoint {latest.name} does not fit the model this recipe builds: "
            f"{type(exc).__name__}: {first}",
            recipe.source,
        ) from None
    if not restore_rng(parts.fabric, parts.generator, state["rng"]):
        saved = state["rng"]
        log.warning(
            "the checkpoint holds RNG states of %d ranks but this run has %d; reseeding "
            "the augmentation and global RNG (weights, optimiser and data order resume exactly)",
            len(saved) if isinstance(saved, list) else 1,
            parts.fabric.world_size,
        )
    if parts.feed is not None and state.get("data"):  # streaming: litdata's loader position
        parts.feed.load_state_dict(state["data"])
    start = Start(int(state["step"]), state.get("failures_total", 0), state.get("diagnostics"))
    log.info("resumed from %s (step %d)", latest, start.step)
    return start, history


def _check_recipe_changes(
    recipe: ResolvedRecipe, state: dict[str, Any], latest: Path, accept_changes: bool
) -> dict[str, Any]:
    """Refuse (unless accepted) a resume whose recipe trains something else than the
    checkpoint's; return every change, for the run history."""
    saved = state.get("recipe")
    if not isinstance(saved, dict):
        log.warning("checkpoint %s records no recipe; changes cannot be checked", latest)
        return {}
    changes = recipe_changes(saved, canonical_recipe(recipe))
    altering = {k: v for k, v in changes.items() if alters_training(k)}
    if altering and not accept_changes:
        raise RecipeError(
            f"--resume with a recipe that changes what is trained ({describe(altering)}); "
            f"the checkpoint {latest.name} was trained with the values on the left. Resume "
            "with the same values, start a new output_dir, or pass --accept-changes to "
            "continue anyway (recorded in history.jsonl)",
            recipe.source,
            next(iter(altering)),
        )
    if changes:
        log.info("resuming with recipe changes: %s", describe(changes))
    return {k: {"checkpoint": a, "now": b} for k, (a, b) in changes.items()}
