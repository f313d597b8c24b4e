"""What a run reports as it trains and when it ends: progress, metrics, diagnostics, plot.

Per step: the learning diagnostics (:mod:`medssl.engine.diagnostics`) on their steps, and
on logged steps the schedules, throughput and memory, written to ``metrics.csv``, the
trackers (:mod:`medssl.engine.loggers`) and a progress bar or log line. At the end:
``diagnostics.json``, ``loss_curves.png`` and the trackers' last artefacts. Rank 0 writes
the files; every rank follows the diagnostics.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from medssl.config import ResolvedRecipe
from medssl.engine.diagnostics import LearningMonitor, final_lines
from medssl.engine.loggers import Trackers
from medssl.engine.metrics import MetricsWriter

__all__ = ["Progress", "RunReport"]

log = logging.getLogger("medssl.train")


class RunReport:
    """The reports of one run from ``start_step`` on; a context manager for the bar."""

    def __init__(
        self,
        recipe: ResolvedRecipe,
        run_dir: Path,
        total_steps: int,
        start_step: int,
        *,
        resumed: bool,
        rank_zero: bool,
        progress_bar: bool,
        diagnostics_state: dict[str, Any] | None,
        device: torch.device,
    ) -> None:
        self.opts = recipe.train
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.rank_zero = rank_zero
        self.device = device
        self.writer = (
            MetricsWriter(run_dir, resume_step=start_step if resumed else None)
            if rank_zero
            else None
        )
        self.trackers = (
            Trackers.open(
                self.opts.loggers,
                run_dir,
                recipe.config,
                json.loads((run_dir / "run.json").read_text()),
                resume=resumed,
            )
            if rank_zero
            else None
        )
        self.progress = Progress(total_steps, start_step, enabled=progress_bar and rank_zero)
        self.monitor = LearningMonitor(total_steps)
        if diagnostics_state:
            self.monitor.load_state_dict(diagnostics_state)
        self.window_start = time.perf_counter()
        self.window_images = 0

    def __enter__(self) -> RunReport:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def diagnose(self, step: int) -> bool:
        """Whether the step that ends at ``step`` measures the learning signals."""
        return step % self.opts.diagnostics_every == 0 or step == self.total_steps

    def after_step(
        self,
        step: int,
        metrics: dict[str, float],
        scheduled: dict[str, float],
        epoch: int,
        images: int,
        model: Any,
    ) -> None:
        """Add the diagnostics and, on logged steps, the rest to ``metrics`` and report it;
        ``images``: how many the step trained on, all ranks together."""
        self.window_images += images
        if self.diagnose(step):
            metrics.update(self.monitor.observe(step, model))
        if step % self.opts.log_every == 0 or step == self.total_steps:
            elapsed = time.perf_counter() - self.window_start
            metrics.update(scheduled)
            metrics["images_per_s"] = self.window_images / max(elapsed, 1e-9)
            metrics["epoch"] = float(epoch)
            if torch.cuda.is_available() and self.device.type == "cuda":
                metrics["cuda_max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.window_start, self.window_images = time.perf_counter(), 0
            if self.writer is not None:
                self.writer.log(step, metrics)
            if self.trackers is not None:
                self.trackers.log_metrics(step, metrics)
            self.progress.log(step, metrics)
        self.progress.advance(step, metrics)

    def finish(self, stopped: bool, failures_total: int) -> dict[str, Any]:
        """Write the end-of-run reports; return the diagnostics summary."""
        if self.writer is not None:
            self.writer.close()
        summary = self.monitor.summary()
        for line in final_lines(summary):
            log.info("%s", line)
        if self.rank_zero:
            (self.run_dir / "diagnostics.json").write_text(json.dumps(summary, indent=2))
            if (self.run_dir / "metrics.csv").is_file():
                from medssl.engine.plots import plot_run

                # after diagnostics.json: the panels' titles carry each objective's state
                plot_run(self.run_dir / "metrics.csv", self.run_dir / "loss_curves.png")
            if failures_total:
                log.warning("%d images failed to load in this run in all", failures_total)
        if self.trackers is not None:  # after the plot: trackers keep loss_curves.png
            self.trackers.finish(stopped)
        return summary


class Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.start = start
        self._bar: Any = None
        self._task: Any = None
        self._started = time.perf_counter()

    def __enter__(self) -> Progress:
        self._started = time.perf_counter()
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("[bold]training"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=self.total, completed=self.start, info=""
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, step: int, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            info = f"loss {metrics.get('loss', float('nan')):.4f}"
            self._bar.update(self._task, completed=step, info=info)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            return
        losses = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("loss"))
        log.info(
            "step %d/%d %s lr=%.3g %.1f img/s %s",
            step,
            self.total,
            losses,
            metrics.get("lr", float("nan")),
            metrics.get("images_per_s", float("nan")),
            self.timing(step),
        )

    def timing(self, step: int, now: float | None = None) -> str:
        """The elapsed time and an ETA at the mean pace of the steps so far."""
        elapsed = (time.perf_counter() if now is None else now) - self._started
        done = step - self.start
        text = f"elapsed {_clock(elapsed)}"
        if done > 0 and step < self.total:
            text += f", ETA {_clock(elapsed / done * (self.total - step))}"
        return text


def _clock(seconds: float) -> str:
    """H:MM:SS, or M:SS under an hour."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
