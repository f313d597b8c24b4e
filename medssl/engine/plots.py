"""Pictures of a run's ``metrics.csv``: one panel per objective, then the diagnostics.

Each objective's loss gets its own panel and y-axis (the objectives' scales differ by
orders of magnitude: a shared axis hides all movement), with its chance level
(``diag/<objective>/chance``, see ``docs/diagnostics.md``) as a dashed line. The
diagnostic panels put every objective on one dimensionless axis: loss / chance, teacher
and student entropy / ln K, and the share of the backbone's gradient.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["objectives_in", "plot_run", "plot_variants", "read_metrics"]

Series = tuple[list[int], list[float]]


def read_metrics(metrics_csv: Path) -> dict[str, Series]:
    """Every numeric column of ``metrics.csv`` as (steps, values), blank cells skipped."""
    with Path(metrics_csv).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, Series] = {}
    for row in rows:
        step = int(row["step"])
        for key, cell in row.items():
            if key == "step" or cell in ("", None):
                continue
            try:
                value = float(cell)
            except ValueError:
                continue
            steps, values = columns.setdefault(key, ([], []))
            steps.append(step)
            values.append(value)
    return columns


def objectives_in(columns: Mapping[str, Series]) -> list[str]:
    """The objectives with a ``loss_<name>`` column, in column order."""
    return [key[len("loss_") :] for key in columns if key.startswith("loss_")]


def _states(run_dir: Path) -> dict[str, str]:
    path = run_dir / "diagnostics.json"
    try:
        final = json.loads(path.read_text()).get("final_state")
    except (OSError, ValueError):
        return {}
    return final if isinstance(final, dict) else {}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _objective_panel(ax: Any, columns: Mapping[str, Series], name: str, title: str) -> None:
    steps, values = columns[f"loss_{name}"]
    ax.plot(steps, values, color="tab:blue", label="loss")
    chance = columns.get(f"diag/{name}/chance")
    if chance is not None:
        ax.plot(*chance, color="tab:red", linestyle="--", label="chance level")
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def _ratio_panel(
    ax: Any, columns: Mapping[str, Series], names: list[str], signal: str, title: str
) -> bool:
    """One line per objective of ``diag/<name>/<signal>``; False when none has it."""
    drawn = False
    for i, name in enumerate(names):
        series = columns.get(f"diag/{name}/{signal}")
        if signal == "loss_ratio":  # the mean over the window, which the states judge
            series = columns.get(f"diag/{name}/loss_ratio_window", series)
        if series is not None:
            ax.plot(*series, color=f"C{i}", marker=".", label=name)
            drawn = True
        if signal == "teacher_entropy_ratio":
            student = columns.get(f"diag/{name}/student_entropy_ratio")
            if student is not None:
                ax.plot(*student, color=f"C{i}", linestyle=":", label=f"{name} student")
    if signal == "loss_ratio":
        from medssl.engine.diagnostics import CHANCE_TOLERANCE

        ax.axhline(1.0, color="tab:red", linestyle="--", linewidth=1, label="chance")
        ax.axhline(1.0 - CHANCE_TOLERANCE, color="grey", linestyle=":", linewidth=1)
    if signal == "teacher_entropy_ratio":
        from medssl.engine.diagnostics import UNIFORM_ENTROPY_RATIO

        ax.axhline(UNIFORM_ENTROPY_RATIO, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
    if drawn:
        ax.legend(fontsize=7)
    return drawn


_DIAGNOSTIC_PANELS = (
    ("loss_ratio", "loss / chance (mean over the window; dashed: chance)"),
    ("teacher_entropy_ratio", "teacher (solid), student (dotted) entropy / ln K"),
    ("grad_share", "share of the gradient at the backbone's output"),
)


def plot_run(metrics_csv: Path, out: Path) -> Path | None:
    """``loss_curves.png``: a panel per objective (own y-axis, chance dashed, final state
    from ``diagnostics.json`` in the title), then the diagnostic panels that have data."""
    columns = read_metrics(metrics_csv)
    names = objectives_in(columns)
    if not names:
        return None
    states = _states(Path(metrics_csv).parent)
    diagnostic = [
        (signal, title)
        for signal, title in _DIAGNOSTIC_PANELS
        if any(f"diag/{n}/{signal}" in columns for n in names)
    ]
    n_panels = len(names) + len(diagnostic)
    n_cols = min(3, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    plt = _pyplot()
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(4.2 * n_cols, 3.0 * n_rows), dpi=110, squeeze=False
    )
    flat = list(axes.flat)
    for ax, name in zip(flat, names, strict=False):
        state = states.get(name)
        _objective_panel(ax, columns, name, f"{name}" + (f" — {state}" if state else ""))
    for ax, (signal, title) in zip(flat[len(names) :], diagnostic, strict=False):
        _ratio_panel(ax, columns, names, signal, title)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    fig.suptitle("medssl training losses and learning diagnostics", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_variants(out: Path, runs: Mapping[str, Path]) -> Path | None:
    """Variants side by side (``medssl ablate``): a column per variant, a row per
    objective (y-axis shared along the row, so variants compare), and a last row of
    loss / chance. ``runs`` maps a variant's name to its ``metrics.csv``."""
    loaded = {name: read_metrics(path) for name, path in runs.items() if Path(path).is_file()}
    if not loaded:
        return None
    names: list[str] = []
    for columns in loaded.values():
        names += [n for n in objectives_in(columns) if n not in names]
    if not names:
        return None
    with_ratio = any(f"diag/{n}/loss_ratio" in c for c in loaded.values() for n in names)
    n_rows, n_cols = len(names) + int(with_ratio), len(loaded)
    plt = _pyplot()
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(3.4 * n_cols, 2.5 * n_rows),
        dpi=110,
        squeeze=False,
        sharex="col",
        sharey="row",
    )
    for col, (variant, columns) in enumerate(loaded.items()):
        states = _states(Path(runs[variant]).parent)
        for row, name in enumerate(names):
            ax = axes[row][col]
            if f"loss_{name}" in columns:
                state = states.get(name)
                _objective_panel(ax, columns, name, name + (f" — {state}" if state else ""))
            else:
                ax.set_title(f"{name}: not in this variant", fontsize=8)
            if row == 0:
                ax.set_title(f"{variant}\n{ax.get_title()}", fontsize=9)
        if with_ratio:
            _ratio_panel(axes[-1][col], columns, names, "loss_ratio", "loss / chance")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
