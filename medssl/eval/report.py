"""``eval.json`` and ``eval.md``: every score with its floors and their paired intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medssl.eval.base import EvalResult, Row

__all__ = ["FLOORS", "markdown_table", "results_from_payload", "write_report"]

#: The floors a row can carry, in the order the table shows them.
FLOORS = ("random", "pixels", "trivial")
_FLOOR_NAMES = {"random": "random weights", "pixels": "raw pixels", "trivial": "trivial"}


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _ci(ci: Any, signed: bool = False) -> str:
    if not ci or any(v is None or v != v for v in ci):
        return ""
    return f" [{_fmt(ci[0], signed)}, {_fmt(ci[1], signed)}]"


def _vs(row: Row, floor: str) -> str:
    """The paired difference from ``floor`` with its interval (> 0: better)."""
    if floor in row.vs:
        diff, lo, hi = row.vs[floor]
        return _fmt(diff, True) + _ci((lo, hi), True)
    value = row.floors.get(floor, math.nan)
    if value != value:
        return "—"
    return _fmt((row.score - value) * (1 if row.higher_is_better else -1), True)


def markdown_table(results: list[EvalResult]) -> str:
    """One row per score: encoder with its 95 % interval, each floor beside it with the
    paired difference, and the floors the score does not beat (marked ✗)."""
    present = [f for f in FLOORS if any(f in row.floors for r in results for row in r.rows)]
    head = ["evaluator", "target", "features", "metric", "encoder [95% CI]"]
    for f in present:
        head += [_FLOOR_NAMES[f], f"Δ vs {_FLOOR_NAMES[f]}"]
    head.append("does not beat")
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] * 4 + ["---:"] * (len(head) - 5) + ["---"]) + " |",
    ]
    for r in results:
        for row in r.rows:
            cells = [r.evaluator, row.target, row.features or "—", row.metric]
            cells.append(f"**{_fmt(row.score)}**{_ci(row.ci)}")
            for f in present:
                cells += [_fmt(row.floors.get(f, math.nan)), _vs(row, f)]
            missed = [_FLOOR_NAMES[f] for f in present if f in row.floors and row.below(f)]
            cells.append("✗ " + ", ".join(missed) if missed else "")
            lines.append("| " + " | ".join(cells) + " |")
    data = [
        f"- {r.evaluator}: {r.dataset}, {r.n_train} train / {r.n_val} validation images"
        for r in results
    ]
    notes = [f"- {r.evaluator}: {note}" for r in results for note in r.notes]
    notes += [f"- {r.evaluator} split: {r.split['summary']}" for r in results if r.split]
    legend = (
        "\nFloors: *random weights* is the same probe on the recipe's backbone at its seeded "
        "initialisation; *raw pixels* the same probe fit on the downsampled raw pixels (for "
        "segmentation, on the raw pixel patches); *trivial* is chance AUROC, the majority "
        "class, the training mean, or the average training mask. Intervals: 95 % paired "
        "bootstrap over validation images. Δ is signed so that > 0 means better than the "
        "floor; ✗ marks a floor the score does not beat (its paired interval reaches 0). "
        "abs_err (mean absolute error of a regression target): lower is better."
    )
    body = lines + ["", "Data:"] + data + (["", "Notes:"] + notes if notes else []) + [legend]
    return "\n".join(body) + "\n"


def results_from_payload(payload: dict[str, Any]) -> list[EvalResult]:
    """The :class:`EvalResult` list of an ``eval.json`` payload."""
    return [
        EvalResult(**{**r, "rows": [Row(**row) for row in r["rows"]]}) for r in payload["results"]
    ]


def write_report(
    out_dir: str | Path, results: list[EvalResult], header: dict[str, Any]
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**header, "results": [r.to_dict() for r in results]}
    (out / "eval.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    title = f"# Evaluation of {header.get('source', out)}\n\n"
    encoder = header.get("encoder", {})
    if encoder:
        title += f"Input {encoder.get('image_size')} px, frozen features.\n\n"
    (out / "eval.md").write_text(title + markdown_table(results))
    return payload
