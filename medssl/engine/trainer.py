"""The training loop: one optimiser step after another, until done or told to stop.

A step takes ``train.grad_accumulation`` micro-batches; for each, the augmentation policy
makes the views the objectives ask for on the device and the model computes their losses;
then the gradients are clipped, the optimiser steps and the EMA teacher follows. What is
around the loop has its own module; docs/architecture.md maps them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medssl.config import ResolvedRecipe
from medssl.data.robust import LoadFailures
from medssl.engine.build import TrainingParts, build_parts
from medssl.engine.diagnostics import LearningMonitor
from medssl.engine.ema import ema_update
from medssl.engine.fabric_setup import is_fsdp, make_strategy
from medssl.engine.reporting import RunReport
from medssl.engine.resume_check import canonical_recipe
from medssl.engine.run_lock import RunLock
from medssl.engine.run_start import Start, acquire, start_run
from medssl.engine.stopping import (
    EXIT_OUT_OF_TIME,
    RunResult,
    agree_stop,
    stop_exit_code,
    stop_on_signals,
    stop_reason,
)
from medssl.engine.train_state import save_state
from medssl.plugins import Registry
from medssl.types import Views

__all__ = [
    "EXIT_OUT_OF_TIME",
    "RunResult",
    "Trainer",
    "make_strategy",
    "stop_exit_code",
    "train",
]

log = logging.getLogger("medssl.train")


class _Part:
    """One of the built :class:`TrainingParts`, read as ``trainer.<its name>``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, trainer: Trainer | None, owner: type | None = None) -> Any:
        return self if trainer is None else getattr(trainer.parts, self.name)


class Trainer:
    """Trains a resolved recipe: builds its parts (:meth:`fit`), then runs the loop."""

    fabric = _Part()
    dataset = _Part()
    policy = _Part()
    model = _Part()  # wrapped by Fabric (DDP/FSDP); ``raw_model`` is the SSLModel itself
    raw_model = _Part()
    optimizer = _Part()
    request = _Part()
    sampler = _Part()
    loader = _Part()
    generator = _Part()
    steps_per_epoch = _Part()
    total_steps = _Part()
    global_batch = _Part()
    peak_lr = _Part()
    feed = _Part()  # litdata's loader for data.name: streaming, else None

    def __init__(
        self,
        recipe: ResolvedRecipe,
        registry: Registry,
        run_dir: Path | None = None,
        resume: bool = False,
        progress_bar: bool | None = None,
        resume_or_start: bool = False,
        accept_changes: bool = False,
    ) -> None:
        self.recipe = recipe
        self.registry = registry
        self.train_opts = recipe.train
        self.run_dir = Path(run_dir or recipe.recipe.output_dir)
        self.resume = resume or resume_or_start
        self.resume_or_start = resume_or_start
        self.accept_changes = accept_changes
        self.progress_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
        self._parts: TrainingParts | None = None  # built by fit(), in one place
        self.failures_total = 0  # images that failed to load, over the whole run
        self.load_failures = LoadFailures(recipe.train.max_failure_share)  # this epoch's
        self.diagnose_step = False  # whether the current step measures the learning signals
        self.stop_reason: str | None = None

    @property
    def parts(self) -> TrainingParts:
        if self._parts is None:
            raise RuntimeError("the trainer's parts are built by fit()")
        return self._parts

    def _build(self) -> None:
        self._parts = build_parts(self.recipe, self.registry)

    def _prepare_run_dir(self) -> Start:
        """Write config.yaml/run.json; load the checkpoint to resume from, if any."""
        flags = (self.resume, self.resume_or_start, self.accept_changes)
        return start_run(self.parts, self.recipe, self.registry, self.run_dir, *flags)

    def fit(self) -> RunResult:
        self._build()
        lock = RunLock(self.run_dir) if self.fabric.global_rank == 0 else None
        try:
            acquire(lock, self.fabric, self.run_dir, self.recipe.source)
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    # -- the loop -------------------------------------------------------------------------------
    def _fit(self) -> RunResult:
        start = self._prepare_run_dir()
        self.failures_total = start.failures_total
        opts, fabric, total = self.train_opts, self.fabric, self.total_steps
        accum = opts.grad_accumulation
        step = start.step
        last_metrics: dict[str, float] = {}
        stopped, stop_signal, last_ckpt = False, None, None
        started = time.perf_counter()
        report = RunReport(
            self.recipe,
            self.run_dir,
            total,
            start.step,
            resumed=self.resume,
            rank_zero=fabric.global_rank == 0,
            progress_bar=self.progress_bar,  # one bar per run: rank 0's
            diagnostics_state=start.diagnostics,
            device=fabric.device,
        )
        self.model.train()
        log.info(
            "training %d steps (%d per epoch), global batch %d, peak lr %.3g, objectives: %s",
            total,
            self.steps_per_epoch,
            self.global_batch,
            self.peak_lr,
            ", ".join(f"{s.name}×{s.weight:g}" for s in self.recipe.enabled_objectives),
        )
        with stop_on_signals() as stop, report:
            batches = self._batches(start.step)
            while step < total:
                scheduled = self._set_schedules(step)
                epoch = step // self.steps_per_epoch
                step_metrics: dict[str, float] = {}
                n_images = 0
                # the last micro-batch of this step measures the learning signals
                self.diagnose_step = report.diagnose(step + 1)
                for micro in range(accum):
                    epoch, batch = self._next_batch(batches)
                    images = fabric.to_device(batch["image"])
                    micro_metrics, _ = self.micro_step(
                        images, batch.get("text"), step, epoch, micro == accum - 1
                    )
                    for key, value in micro_metrics.items():
                        step_metrics[key] = step_metrics.get(key, 0.0) + value / accum
                    n_images += int(images.shape[0]) * fabric.world_size
                self.optimizer_step(epoch, scheduled["momentum"])
                step += 1
                report.after_step(step, step_metrics, scheduled, epoch, n_images, self.raw_model)
                last_metrics = step_metrics

                out_of_time = (
                    opts.max_minutes is not None
                    and time.perf_counter() - started > opts.max_minutes * 60
                )
                signalled, out_of_time = agree_stop(fabric, stop.signal is not None, out_of_time)
                if step % opts.checkpoint_every == 0 or step == total or signalled or out_of_time:
                    last_ckpt = self._save(step, report.monitor)
                if signalled or out_of_time:
                    self.stop_reason, stop_signal = stop_reason(stop.signal, signalled)
                    log.warning(
                        "stopping at step %d (%s); checkpoint saved, continue with --resume",
                        step,
                        self.stop_reason,
                    )
                    stopped = True
                    break
        summary = report.finish(stopped, self.failures_total)
        if stopped and self.load_failures.n_failed:
            log.warning("epoch so far: %s", self.load_failures.summary())
        elif not stopped:
            # The epoch-start check never sees the last epoch: check it here, so that a
            # run whose last (or only) epoch failed too often does not end as a success.
            self.epoch_end_check(max(step - 1, 0) // self.steps_per_epoch + 1)
        log.info(
            "done: %d steps in %.1f s; run directory %s",
            step,
            time.perf_counter() - started,
            self.run_dir,
        )
        return RunResult(self.run_dir, step, stopped, last_metrics, last_ckpt, summary, stop_signal)

    def _save(self, step: int, diagnostics: LearningMonitor | None = None) -> Path | None:
        state = {
            "failures_total": self.failures_total,
            "diagnostics": diagnostics.state_dict() if diagnostics is not None else None,
            "world_size": self.fabric.world_size,
            "recipe": canonical_recipe(self.recipe),
            "data": self.feed.state_dict() if self.feed is not None else None,
        }
        return save_state(self.parts, self.run_dir, step, state, self.train_opts.keep_checkpoints)

    def micro_step(
        self, images: torch.Tensor, text: list[str] | None, step: int, epoch: int, last: bool
    ) -> tuple[dict[str, float], Any]:
        """Views, forward and backward of one micro-batch; gradients sync on the ``last``."""
        kwargs = {"text": text} if self.request.text else {}
        with torch.no_grad():
            views = self.policy(images, self.request, self.generator, **kwargs)
        return self.forward_backward(views, step, epoch, last)

    def forward_backward(
        self, views: Views, step: int, epoch: int, last: bool
    ) -> tuple[dict[str, float], Any]:
        with self.fabric.no_backward_sync(self.model, enabled=not last):
            loss, metrics, outputs = self.model(
                views, step / self.total_steps, epoch, step, diagnose=last and self.diagnose_step
            )
            self.fabric.backward(loss / self.train_opts.grad_accumulation)
        return metrics, outputs

    def optimizer_step(self, epoch: int, momentum: float) -> None:
        """Clip, step, zero the gradients and move the EMA teacher."""
        self._cancel_frozen_grads(epoch)
        if self.train_opts.clip_grad:
            self._clip_gradients(self.train_opts.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            ema_update(self.raw_model.ema_pairs(), momentum)

    def _clip_gradients(self, max_norm: float) -> None:
        """Scale the gradients to a total norm of at most ``max_norm`` (DINOv2's clip_grad).

        Fabric's clip (``torch.nn.utils.clip_grad_norm_``) always multiplies every gradient
        by the clamped coefficient, to avoid a device sync. On the CPU the norm is on the
        host already, so that pass is skipped when the coefficient is 1 (the result is
        bit-identical: multiplying by 1 changes nothing).
        """
        if self.fabric.device.type != "cpu" or is_fsdp(self.fabric):
            self.fabric.clip_gradients(
                self.model, self.optimizer, max_norm=max_norm, error_if_nonfinite=False
            )
            return
        optimizer = self.optimizer.optimizer
        self.fabric.strategy.precision.unscale_gradients(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        total = torch.nn.utils.get_total_norm([p.grad for p in params], error_if_nonfinite=False)
        if bool(max_norm / (total + 1e-6) < 1.0):
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)

    def _cancel_frozen_grads(self, epoch: int) -> None:
        # DINOv2 both zeroes the last layer's LR and drops its gradient in the first epoch(s).
        for objective in self.raw_model.objectives.values():
            if epoch < getattr(objective, "freeze_last_layer_epochs", 0):
                for param in objective.frozen_last_layer_params():
                    param.grad = None

    def _set_schedules(self, step: int) -> dict[str, float]:
        values = self.parts.schedules.at(step)
        for group in self.optimizer.param_groups:
            lr = values["last_layer_lr"] if group.get("is_last_layer") else values["lr"]
            group["lr"] = lr * group.get("lr_multiplier", 1.0)
            group["weight_decay"] = values["weight_decay"] * group.get("wd_multiplier", 1.0)
        return values

    # -- data -----------------------------------------------------------------------------------
    def _batches(self, start_step: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Micro-batches from ``start_step`` on, epoch after epoch, resumable mid-epoch."""
        accum = self.train_opts.grad_accumulation
        micro_per_epoch = self.steps_per_epoch * accum
        micro = start_step * accum
        if self.feed is not None:  # streaming shards: litdata orders, splits and resumes
            yield from self.feed.batches(micro, micro_per_epoch, self.epoch_end_check)
        while True:
            epoch, offset = divmod(micro, micro_per_epoch)
            self.sampler.set_epoch(epoch, start=offset * self.train_opts.batch_size)
            self.loader.generator.manual_seed(self.recipe.recipe.seed * 100_003 + epoch)
            self.epoch_end_check(epoch)
            for batch in self.loader:
                yield epoch, batch
                micro += 1
                if micro % micro_per_epoch == 0:
                    break

    def epoch_end_check(self, epoch: int) -> None:
        """Report the files that failed to load in the last epoch; abort above the limit."""
        tracker = self.load_failures
        if tracker.n_failed:
            log.warning("epoch %d: %s", epoch - 1, tracker.summary())
            tracker.check()
        tracker.reset()

    def _next_batch(
        self, batches: Iterator[tuple[int, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any]]:
        """The next batch with images; batches whose every file failed are counted, skipped."""
        while True:
            epoch, batch = next(batches)
            failures = batch.get("failures") or []
            n_good = int(batch["image"].shape[0]) if "image" in batch else 0
            self.load_failures.update(failures, n_seen=len(failures) + n_good)
            self.failures_total += len(failures)
            if n_good:
                return epoch, batch


def train(
    recipe: ResolvedRecipe,
    registry: Registry,
    resume: bool = False,
    run_dir: Path | None = None,
    progress_bar: bool | None = None,
    resume_or_start: bool = False,
    accept_changes: bool = False,
) -> RunResult:
    """Train ``recipe``; raises :class:`NonFiniteLossError` with the objective's name.

    ``resume`` continues from the last valid checkpoint and is an error without one;
    ``resume_or_start`` starts from step 0 when the run has no checkpoint yet. A resumed
    recipe that changes what is trained is refused unless ``accept_changes``.
    """
    options = dict(resume=resume, resume_or_start=resume_or_start, accept_changes=accept_changes)
    return Trainer(recipe, registry, run_dir=run_dir, progress_bar=progress_bar, **options).fit()
