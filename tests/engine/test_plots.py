"""loss_curves.png (a panel per objective, chance dashed, diagnostics) and ablate's grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

from medssl.engine.metrics import MetricsWriter
from medssl.engine.plots import objectives_in, plot_run, plot_variants, read_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def _run(folder: Path, dino_ratio: float) -> Path:
    folder.mkdir(parents=True)
    writer = MetricsWriter(folder)
    for step in range(1, 7):
        values = {"loss": 6.0, "loss_dino": 5.5 * dino_ratio, "loss_koleo": -1.0 / step}
        if step % 2 == 0:
            values.update(
                {
                    "diag/dino/chance": math.log(256),
                    "diag/dino/loss_ratio": dino_ratio,
                    "diag/dino/teacher_entropy_ratio": 0.8,
                    "diag/dino/student_entropy_ratio": 0.99,
                    "diag/dino/grad_share": 0.2,
                    "diag/koleo/grad_share": 0.9,
                }
            )
        writer.log(step, values)
    writer.close()
    final = {"dino": "not_learning" if dino_ratio > 0.98 else "learning", "koleo": "unjudged"}
    (folder / "diagnostics.json").write_text(json.dumps({"final_state": final}))
    return folder / "metrics.csv"


def test_a_panel_per_objective_then_the_diagnostics(tmp_path: Path, monkeypatch) -> None:
    csv_path = _run(tmp_path / "run", 1.0)
    columns = read_metrics(csv_path)
    assert objectives_in(columns) == ["dino", "koleo"]
    assert columns["diag/dino/chance"][0] == [2, 4, 6]  # blank cells skipped
    import matplotlib.figure

    titles: list[str] = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_visible())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    out = plot_run(csv_path, tmp_path / "loss_curves.png")
    assert out is not None and out.read_bytes()[:8] == PNG
    assert titles[:2] == ["dino — not_learning", "koleo — unjudged"]
    assert len(titles) == 5  # 2 objectives + loss/chance, entropies, gradient shares


def test_variants_side_by_side(tmp_path: Path) -> None:
    runs = {"a": _run(tmp_path / "a", 1.0), "b": _run(tmp_path / "b", 0.7)}
    out = plot_variants(tmp_path / "ablation_losses.png", runs)
    assert out is not None and out.read_bytes()[:8] == PNG
    assert plot_variants(tmp_path / "none.png", {"c": tmp_path / "missing.csv"}) is None


def test_a_run_without_losses_has_no_plot(tmp_path: Path) -> None:
    MetricsWriter(tmp_path).close()
    assert plot_run(tmp_path / "metrics.csv", tmp_path / "loss.png") is None
