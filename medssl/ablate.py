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
    group: str = ""
    """The variant without its seed: runs of one group are seeds of one setting."""
    seed: int | None = None

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


def plan_variants(
    recipes: Sequence[str | Path], vary: Sequence[str], seeds: Sequence[int] | None = None
) -> list[Variant]:
    """Every recipe × every combination of the ``--vary`` values (× every seed of
    ``seeds``: ``seed=S`` appended, ``__seed=S`` in the name), with readable names."""
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
    for v in variants:
        v.group = v.name
    if not seeds:
        return variants
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {list(seeds)} repeats a seed")
    return [
        Variant(f"{v.name}__seed={s}", v.recipe, [*v.overrides, f"seed={s}"], v.name, s)
        for v in variants
        for s in seeds
    ]


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
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Train + evaluate every variant (× seed; skipping finished ones); write the tables
    and plot."""
    if train_fn is None:
        from medssl.engine.trainer import train as train_fn
    out = Path(out_dir)
    # One ablation per --out: a second one would train and tabulate the same variants.
    with RunLock(out, what="ablate --out"):
        return _run_locked(recipes, vary, out, registry, overrides, train_fn, seeds)


def _run_locked(
    recipes: Sequence[str | Path],
    vary: Sequence[str],
    out: Path,
    registry: Registry,
    overrides: Sequence[str],
    train_fn: Callable[..., Any],
    seeds: Sequence[int] | None,
) -> list[dict[str, Any]]:
    from medssl.eval import run_evaluators

    variants = plan_variants(recipes, vary, seeds)
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
            {
                "variant": v.name,
                "group": v.group,
                "seed": v.seed,
                "overrides": v.overrides,
                "recipe": str(v.recipe),
                **payload,
            }
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
            ci = row.get("ci") or (math.nan, math.nan)
            vs = (row.get("vs") or {}).get("random") or (math.nan,) * 3
            rows.append(
                {
                    "variant": summary.get("group") or summary["variant"],
                    "seed": "" if summary.get("seed") is None else summary["seed"],
                    "evaluator": result["evaluator"],
                    "dataset": result["dataset"],
                    "target": row["target"],
                    "features": row.get("features", ""),
                    "metric": row["metric"],
                    "score": row["score"],
                    "ci_lo": ci[0],
                    "ci_hi": ci[1],
                    "floor_random": row["floors"].get("random", math.nan),
                    "vs_random": vs[0],
                    "vs_random_lo": vs[1],
                    "vs_random_hi": vs[2],
                    "floor_pixels": row["floors"].get("pixels", math.nan),
                    "floor_trivial": row["floors"].get("trivial", math.nan),
                }
            )
    return rows


def _headlines(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One score per evaluator: its mean row (or first target) at its first metric, read
    from the first feature mode."""
    out = {}
    for i, result in enumerate(summary["results"]):
        rows = result["rows"]
        first = rows[0].get("features", "")
        rows = [r for r in rows if r.get("features", "") == first]
        chosen = [r for r in rows if r["target"] == "mean"] or [
            r for r in rows if r["target"] == rows[0]["target"]
        ]
        row = chosen[0]
        label = f"{result['evaluator']} {row['target']} {row['metric']}"
        out[f"{i}:{label}" + (f" ({first})" if first else "")] = row
    return out


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


#: two-sided 95 % Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df))
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95 % interval of one score over seeds: a Student t interval of the mean
    over seeds (seed-to-seed spread) when there are several, else the run's own bootstrap
    interval over validation images."""
    scores = [float(r["score"]) for r in rows]
    n = len(scores)
    mean = sum(scores) / n
    if n == 1:
        lo, hi = (rows[0].get("ci") or (math.nan, math.nan))[:2]
        return {"mean": mean, "lo": lo, "hi": hi, "n": 1}
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1))
    half = _T975.get(n - 1, 1.96) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def _grouped(summaries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        groups.setdefault(s.get("group") or s["variant"], []).append(s)
    return groups


def _aggregate(summaries: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Headline columns, and per group and column its :func:`seed_summary`."""
    heads = {s["variant"]: _headlines(s) for s in summaries}
    columns = list(next(iter(heads.values()))) if heads else []
    agg: dict[str, dict[str, Any]] = {}
    for group, runs in _grouped(summaries).items():
        agg[group] = {}
        for c in columns:
            rows = [heads[r["variant"]][c] for r in runs if c in heads[r["variant"]]]
            if rows:
                agg[group][c] = seed_summary(rows)
                agg[group][c]["higher_is_better"] = rows[0].get("higher_is_better", True)
    return columns, agg


def separated(columns: list[str], agg: dict[str, dict[str, Any]]) -> list[str]:
    """Pairs of groups whose intervals do not overlap, per column ("A > B on column")."""
    label = lambda c: c.split(":", 1)[1]  # noqa: E731
    found = []
    groups = list(agg)
    for c in columns:
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                x, y = agg[a].get(c), agg[b].get(c)
                if not x or not y or any(math.isnan(v) for v in (x["lo"], y["lo"])):
                    continue
                if x["lo"] > y["hi"] or y["lo"] > x["hi"]:
                    top, low = (a, b) if x["mean"] > y["mean"] else (b, a)
                    if not x["higher_is_better"]:
                        top, low = low, top
                    found.append(f"{top} > {low} on {label(c)}")
    return found


def write_tables(out: Path, summaries: list[dict[str, Any]]) -> None:
    rows = [r for s in summaries for r in _score_rows(s)]
    with (out / "ablation.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)
        columns, agg = _aggregate(summaries)
        seeded = any(s.get("seed") is not None for s in summaries)
        first = _headlines(summaries[0]) if summaries else {}
        for group, cols in agg.items() if seeded else ():
            for c, a in cols.items():  # one line per variant and headline score
                head = first[c]
                writer.writerow(
                    {
                        "variant": group,
                        "seed": f"mean of {a['n']}",
                        "evaluator": c.split(":", 1)[1].split(" ")[0],
                        "target": head["target"],
                        "features": head.get("features", ""),
                        "metric": head["metric"],
                        "score": a["mean"],
                        "ci_lo": a["lo"],
                        "ci_hi": a["hi"],
                    }
                )
    label = lambda c: c.split(":", 1)[1]  # noqa: E731
    groups = _grouped(summaries)
    lines = [
        "| variant | seeds | overrides | " + " | ".join(label(c) for c in columns) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for group, runs in groups.items():
        cells = []
        for c in columns:
            a = agg[group].get(c)
            cells.append(
                "—" if a is None else f"{_fmt(a['mean'])} [{_fmt(a['lo'])}, {_fmt(a['hi'])}]"
            )
        shown = (
            [o for o in runs[0]["overrides"] if not o.startswith("seed=")]
            if runs[0].get("seed") is not None
            else runs[0]["overrides"]
        )
        lines.append(
            f"| {group} | {len(runs)} | {' '.join(shown) or '—'} | " + " | ".join(cells) + " |"
        )
    first = _headlines(summaries[0]) if summaries else {}
    if first:
        for floor in ("random", "pixels", "trivial"):
            cells = [_fmt(first[c]["floors"].get(floor, math.nan)) for c in columns]
            name = {
                "random": "random-weights floor (first run's seed)",
                "pixels": "raw-pixel floor",
                "trivial": "trivial floor",
            }[floor]
            lines.append(f"| *{name}* | | | " + " | ".join(cells) + " |")
    apart = separated(columns, agg)
    verdict = (
        "Variants that differ beyond their intervals: " + "; ".join(apart) + "."
        if apart
        else "No two variants differ beyond their intervals."
    )
    text = (
        "# Ablation\n\n"
        + "\n".join(lines)
        + "\n\n"
        + verdict
        + (
            "\n\nOne headline score per evaluator (the mean over targets where there are several; "
            "the first feature mode), mean over seeds [95 % interval: Student t over seeds, or "
            "the run's paired bootstrap over validation images for one seed]. Every score "
            "with its floors is in ablation.csv and each run's eval.md.\n"
        )
    )
    (out / "ablation.md").write_text(text)


def plot(path: Path, summaries: list[dict[str, Any]]) -> Path:
    """Bars per variant (mean over seeds, 95 % interval as error bars) for each headline
    score, with its floors as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns, agg = _aggregate(summaries)
    first = _headlines(summaries[0]) if summaries else {}
    fig, axes = plt.subplots(
        1, max(len(columns), 1), figsize=(4 * max(len(columns), 1), 3.6), squeeze=False
    )
    names = list(agg)
    for ax, column in zip(axes[0], columns, strict=False):
        stats = [agg[g].get(column) for g in names]
        values = [a["mean"] if a else math.nan for a in stats]
        err = [
            [0.0 if not a or math.isnan(a["lo"]) else a["mean"] - a["lo"] for a in stats],
            [0.0 if not a or math.isnan(a["hi"]) else a["hi"] - a["mean"] for a in stats],
        ]
        ax.bar(range(len(names)), values, color="tab:blue", yerr=err, capsize=3)
        styles = {
            "random": ("tab:orange", "-."),
            "pixels": ("tab:red", "--"),
            "trivial": ("grey", ":"),
        }
        for floor, style in styles.items():
            value = first[column]["floors"].get(floor)
            if value is not None and not math.isnan(value):
                ax.axhline(value, color=style[0], linestyle=style[1], label=f"{floor} floor")
        ax.set_title(column.split(":", 1)[1], fontsize=9)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
