"""``medssl ablate``: train and evaluate each variant of a recipe the same way.

Variants are the grid of ``--vary KEY=V1,V2`` values (the Cartesian product over every
``--vary``) applied to each recipe given (a list of recipes is a list of variants, as the
objective-swap study in ``recipes/ablations/`` is). Each variant trains in its own run
directory under the output folder and is evaluated with its recipe's ``eval:`` list,
which must be the same for every variant. A variant whose ``eval.json`` exists for the
same recipe and overrides is not rerun; one that stopped mid-training resumes from its
last checkpoint. Results: ``ablation.csv`` (one row per score), ``ablation.md`` (one row
per variant, floors at the bottom), ``ablation.png`` (bars with the floors drawn) and
``ablation_losses.png`` (each variant's losses and chance levels, side by side).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.config import RecipeError, load_recipe
from medssl.engine.checkpoint import latest_valid_checkpoint
from medssl.engine.loggers import log_eval_scores
from medssl.engine.run_lock import RunLock
from medssl.plugins import Registry

log = logging.getLogger("medssl.ablate")

__all__ = ["Variant", "parse_vary", "plan_variants", "run_ablation", "write_tables", "plot"]


class VariantStopped(RuntimeError):
    """A variant's training stopped early (a signal or train.max_minutes), checkpoint saved."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class Variant:
    name: str
    recipe: Path
    overrides: list[str]

    def signature(self) -> dict[str, Any]:
        return {"recipe": str(self.recipe.resolve()), "overrides": self.overrides}


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets/braces/quotes (``[0.1,0.5]`` stays one value)."""
    values, depth, current, quote = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += ch
    values.append(current)
    return [v.strip() for v in values]


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["objectives.ibot.weight=0,1"]`` -> ``[("objectives.ibot.weight", ["0", "1"])]``."""
    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--vary {item!r} is not KEY=V1,V2,...")
        parsed = _split_values(values)
        if any(not v for v in parsed):
            raise ValueError(f"--vary {item!r} has an empty value")
        out.append((key.strip(), parsed))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80]


def plan_variants(recipes: Sequence[str | Path], vary: Sequence[str]) -> list[Variant]:
    """Every recipe × every combination of the ``--vary`` values, with readable names."""
    axes = parse_vary(vary)
    if not recipes:
        raise ValueError("ablate needs at least one recipe")
    variants = []
    for recipe in recipes:
        path = Path(recipe)
        for combo in itertools.product(*[values for _, values in axes]) if axes else [()]:
            overrides = [f"{key}={value}" for (key, _), value in zip(axes, combo, strict=True)]
            parts = [path.stem] if len(recipes) > 1 or not axes else []
            parts += [
                f"{key.split('.')[-2 if key.endswith('weight') else -1]}={value}"
                if "." in key
                else f"{key}={value}"
                for (key, _), value in zip(axes, combo, strict=True)
            ]
            variants.append(Variant(_slug("__".join(parts)), path, overrides))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):  # short names collided: fall back to full keys
        for v in variants:
            v.name = _slug("__".join([v.recipe.stem, *v.overrides]))
    return variants


def _done(run_dir: Path, variant: Variant) -> bool:
    marker = run_dir / "variant.json"
    if not (run_dir / "eval.json").is_file() or not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == variant.signature()
    except json.JSONDecodeError:
        return False


def run_ablation(
    recipes: Sequence[str | Path],
    vary: Sequence[str],
    out_dir: str | Path,
    registry: Registry,
    overrides: Sequence[str] = (),
    train_fn: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """Train + evaluate every variant (skipping finished ones); write the tables and plot."""
    if train_fn is None:
        from medssl.engine.trainer import train as train_fn
    out = Path(out_dir)
    # One ablation per --out: a second one would train and tabulate the same variants.
    with RunLock(out, what="ablate --out"):
        return _run_locked(recipes, vary, out, registry, overrides, train_fn)


def _run_locked(
    recipes: Sequence[str | Path],
    vary: Sequence[str],
    out: Path,
    registry: Registry,
    overrides: Sequence[str],
    train_fn: Callable[..., Any],
) -> list[dict[str, Any]]:
    from medssl.eval import run_evaluators

    variants = plan_variants(recipes, vary)
    eval_lists = {}
    resolved_all = []
    for v in variants:  # validate everything before training anything
        run_dir = out / v.name
        resolved = load_recipe(
            v.recipe, [*overrides, *v.overrides, f"output_dir={run_dir}"], registry
        )
        if not resolved.evaluators:
            raise RecipeError(
                "ablate evaluates every variant with the recipe's 'eval:' list, which is empty",
                resolved.source,
                "eval",
            )
        eval_lists[v.name] = json.dumps(resolved.recipe.eval, sort_keys=True, default=str)
        resolved_all.append(resolved)
    if len(set(eval_lists.values())) > 1:
        raise RecipeError(
            "the variants have different 'eval:' lists, so their scores would not compare: "
            + ", ".join(sorted(eval_lists)),
            None,
            "eval",
        )
    log.info("ablation: %d variants in %s", len(variants), out)
    summaries = []
    floor_cache: dict[str, Any] = {}  # the floors do not depend on the variant's encoder
    for v, resolved in zip(variants, resolved_all, strict=True):
        run_dir = out / v.name
        if _done(run_dir, v):
            log.info("variant %s: finished earlier, not rerun", v.name)
        else:
            # Only a verifiable checkpoint is resumed; a folder of corrupt ones is refused
            # by the trainer rather than silently restarted.
            resume = latest_valid_checkpoint(run_dir / "checkpoints") is not None
            log.info("variant %s: training%s", v.name, " (resuming)" if resume else "")
            result = train_fn(resolved, registry, resume=resume)
            if getattr(result, "stopped_early", False):
                raise VariantStopped(
                    f"variant {v.name} stopped before its last step; rerun ablate to resume it",
                    result,
                )
            scores = run_evaluators(run_dir, resolved, registry, floor_cache=floor_cache)
            log_eval_scores(resolved.recipe.train.loggers, run_dir, scores)
            (run_dir / "variant.json").write_text(json.dumps(v.signature(), indent=2))
        payload = json.loads((run_dir / "eval.json").read_text())
        summaries.append(
            {"variant": v.name, "overrides": v.overrides, "recipe": str(v.recipe), **payload}
        )
    write_tables(out, summaries)
    plot(out / "ablation.png", summaries)
    from medssl.engine.plots import plot_variants

    plot_variants(
        out / "ablation_losses.png", {v.name: out / v.name / "metrics.csv" for v in variants}
    )
    return summaries


def _score_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for result in summary["results"]:
        for row in result["rows"]:
            rows.append(
                {
                    "variant": summary["variant"],
                    "evaluator": result["evaluator"],
                    "dataset": result["dataset"],
                    "target": row["target"],
                    "metric": row["metric"],
                    "score": row["score"],
                    "floor_pixels": row["floors"].get("pixels", math.nan),
                    "floor_trivial": row["floors"].get("trivial", math.nan),
                }
            )
    return rows


def _headlines(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One score per evaluator: its mean row (or first target) at its first metric."""
    out = {}
    for i, result in enumerate(summary["results"]):
        rows = result["rows"]
        chosen = [r for r in rows if r["target"] == "mean"] or [
            r for r in rows if r["target"] == rows[0]["target"]
        ]
        row = chosen[0]
        out[f"{i}:{result['evaluator']} {row['target']} {row['metric']}"] = row
    return out


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def write_tables(out: Path, summaries: list[dict[str, Any]]) -> None:
    rows = [r for s in summaries for r in _score_rows(s)]
    with (out / "ablation.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)
    heads = [_headlines(s) for s in summaries]
    columns = list(heads[0]) if heads else []
    label = lambda c: c.split(":", 1)[1]  # noqa: E731
    lines = [
        "| variant | overrides | " + " | ".join(label(c) for c in columns) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for s, h in zip(summaries, heads, strict=True):
        cells = [_fmt(h[c]["score"]) if c in h else "—" for c in columns]
        lines.append(
            f"| {s['variant']} | {' '.join(s['overrides']) or '—'} | " + " | ".join(cells) + " |"
        )
    if heads:
        for floor in ("pixels", "trivial"):
            cells = [_fmt(heads[0][c]["floors"].get(floor, math.nan)) for c in columns]
            name = "raw-pixel floor" if floor == "pixels" else "trivial floor"
            lines.append(f"| *{name}* | | " + " | ".join(cells) + " |")
    text = (
        "# Ablation\n\n"
        + "\n".join(lines)
        + (
            "\n\nOne headline score per evaluator (the mean over targets where there are several); "
            "every score with its floors is in ablation.csv and each variant's eval.md.\n"
        )
    )
    (out / "ablation.md").write_text(text)


def plot(path: Path, summaries: list[dict[str, Any]]) -> Path:
    """Bars per variant for each headline score, with its floors as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = [_headlines(s) for s in summaries]
    columns = list(heads[0]) if heads else []
    fig, axes = plt.subplots(
        1, max(len(columns), 1), figsize=(4 * max(len(columns), 1), 3.6), squeeze=False
    )
    names = [s["variant"] for s in summaries]
    for ax, column in zip(axes[0], columns, strict=False):
        values = [h[column]["score"] if column in h else math.nan for h in heads]
        ax.bar(range(len(names)), values, color="tab:blue")
        for floor, style in (("pixels", ("tab:red", "--")), ("trivial", ("grey", ":"))):
            value = heads[0][column]["floors"].get(floor)
            if value is not None and not math.isnan(value):
                ax.axhline(value, color=style[0], linestyle=style[1], label=f"{floor} floor")
        ax.set_title(column.split(":", 1)[1], fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
