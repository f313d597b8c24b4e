"""Writes ``metrics.csv``: one row per logged step, kept across resumes.

The plots are in :mod:`medssl.engine.plots`, the trackers in :mod:`medssl.engine.loggers`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends one row per logged step to ``metrics.csv``; new columns rewrite the header.

    Appending (instead of truncating) keeps the history of a resumed run; rows past the
    resume step are dropped so a resumed run has no duplicate steps.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = ["step"]
        if resume_step is not None and self.path.is_file():
            text = self.path.read_text()
            if not text.endswith("\n"):
                # A process killed mid-append leaves a partial last row: drop it.
                text = text[: text.rfind("\n") + 1]
            reader = csv.DictReader(io.StringIO(text, newline=""))
            self.columns = list(reader.fieldnames or ["step"])
            self.rows = [
                row
                for row in reader
                if None not in row.values() and int(row["step"]) <= resume_step
            ]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: _fmt(v) for k, v in values.items()}}
        self.rows.append(row)
        new = [key for key in row if key not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
        else:
            with self.path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writerow(row)

    def close(self) -> None:
        """Nothing to flush (every row is written when logged); kept for the trainer."""


def _fmt(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)
