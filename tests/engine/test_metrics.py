"""metrics.csv (the plots: test_plots.py; trackers: test_loggers.py)."""

from __future__ import annotations

import csv
from pathlib import Path

from medssl.engine.metrics import MetricsWriter


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_new_columns_rewrite_the_header_and_resume_drops_later_rows(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path)
    writer.log(1, {"loss": 2.0})
    writer.log(2, {"loss": 1.5, "lr": 0.1})
    writer.log(3, {"loss": float("nan"), "lr": 0.1})
    writer.close()
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["lr"] == "" and rows[2]["loss"] == "nan"
    resumed = MetricsWriter(tmp_path, resume_step=2)
    resumed.log(3, {"loss": 1.0, "lr": 0.1})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "metrics.csv")] == [
        ("1", "2.0"),
        ("2", "1.5"),
        ("3", "1.0"),
    ]


def test_a_row_cut_by_a_kill_is_dropped_on_resume(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.log(step, {"loss": 1.0 / step, "lr": 0.5})
    writer.close()
    path = tmp_path / "metrics.csv"
    path.write_text(path.read_text() + "1")  # the first byte of step 12's row
    resumed = MetricsWriter(tmp_path, resume_step=12)
    resumed.close()
    assert [r["step"] for r in _rows(path)] == ["1", "2", "3"]


def test_tensorboard_only_when_named(tmp_path: Path) -> None:
    # TensorBoard is a train.loggers entry now (tests/engine/test_loggers.py), not a side
    # effect of having the package installed.
    writer = MetricsWriter(tmp_path)
    writer.log(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "tensorboard").exists()
