"""``eval.json`` and ``eval.md``: every score with its floors beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from medssl.eval.base import EvalResult

__all__ = ["markdown_table", "write_report"]


def _fmt(value: float) -> str:
    return (
        "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def markdown_table(results: list[EvalResult]) -> str:
    """One row per score: evaluator, target, metric, encoder, raw-pixel floor, trivial floor."""
    lines = [
        "| evaluator | dataset | target | metric | encoder | raw-pixel floor | trivial floor | n train/val |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for row in r.rows:
            lines.append(
                f"| {r.evaluator} | {r.dataset} | {row.target} | {row.metric} | "
                f"**{_fmt(row.score)}** | {_fmt(row.floors.get('pixels', math.nan))} | "
                f"{_fmt(row.floors.get('trivial', math.nan))} | {r.n_train}/{r.n_val} |"
            )
    notes = [f"- {r.evaluator}: {note}" for r in results for note in r.notes]
    notes += [f"- {r.evaluator} split: {r.split['summary']}" for r in results if r.split]
    legend = (
        "\nFloors: *raw-pixel* is the same probe fit on the downsampled raw pixels (for "
        "segmentation, on the raw pixel patches); *trivial* is chance AUROC, the majority "
        "class, the training mean, or the average training mask. MAE: lower is better."
    )
    return "\n".join(lines + ([""] + notes if notes else []) + [legend]) + "\n"


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
