"""The training loop, on Lightning Fabric.

Fabric gives the same code DDP/FSDP, mixed precision and multi-node launches (torchrun,
SLURM); this module adds what SSL pre-training needs on top: the on-device augmentation
policy, the EMA teacher, DINOv2's schedules, atomic checkpoints with exact resume, a
non-finite-loss guard, clean stops on SIGTERM/SIGINT, and the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from torch.utils.data import DataLoader

from medssl.config import RecipeError, ResolvedRecipe, TrainOptions, build_component
from medssl.data.robust import LoadFailures
from medssl.engine import checkpoint as ckpt
from medssl.engine import schedules
from medssl.engine.adapt import adapt_backbone, parameter_report
from medssl.engine.diagnostics import LearningMonitor, final_lines
from medssl.engine.ema import ema_update
from medssl.engine.loggers import Trackers
from medssl.engine.lora import has_lora, merged_state_dict
from medssl.engine.metrics import MetricsWriter
from medssl.engine.model import SSLModel
from medssl.engine.preflight import (
    accelerator_name,
    batch_plan,
    check_devices,
    check_output_dir,
    check_strategy,
    setup_objectives,
)
from medssl.engine.resume_check import (
    alters_training,
    append_history,
    canonical_recipe,
    describe,
    recipe_changes,
)
from medssl.engine.run_info import run_info
from medssl.engine.run_lock import RunDirectoryLocked, RunLock
from medssl.engine.sampler import EpochSampler
from medssl.plugins import Registry
from medssl.types import Views

log = logging.getLogger("medssl.train")


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    stopped_early: bool = False
    final_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that stopped the run early, if one did


#: Exit code of ``medssl run`` stopped by ``train.max_minutes`` with a checkpoint saved
#: (EX_TEMPFAIL); a run stopped by signal N exits with 128 + N (143 for SIGTERM), as a
#: shell reports it, so SLURM requeue scripts can tell a stop from a finish (0) or an error (1).
EXIT_OUT_OF_TIME = 75


def stop_exit_code(result: RunResult) -> int:
    """The exit code documented for ``result``: 0 when it finished."""
    if not result.stopped_early:
        return 0
    return 128 + result.stop_signal if result.stop_signal else EXIT_OUT_OF_TIME


class _StopFlag:
    """Set by SIGTERM/SIGINT (what SLURM pre-emption and Ctrl-C send)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, flag)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            pass
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def make_strategy(name: str) -> Any:
    """The Fabric strategy for ``train.strategy``.

    FSDP shards every transformer block (student and teacher alike, so the EMA update pairs
    shard with shard) and keeps the original parameters visible (``use_orig_params``),
    which the layer-wise learning-rate groups, the frozen teacher and the EMA need.
    """
    if name != "fsdp":
        return name
    from lightning_fabric.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block

    return FSDPStrategy(
        sharding_strategy="FULL_SHARD",
        auto_wrap_policy={Block},
        state_dict_type="full",
        use_orig_params=True,
    )


def _make_fabric(train: TrainOptions) -> Any:
    from lightning_fabric import Fabric

    precision = "32-true" if train.precision in ("32", "32-true") else train.precision
    accelerator = accelerator_name(train)
    check_strategy(train)
    check_devices(train)
    return Fabric(
        accelerator=accelerator,
        strategy=make_strategy(train.strategy),
        devices=train.devices,
        num_nodes=train.num_nodes,
        precision=precision,
    )


def _fused_adamw(device: torch.device) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (CUDA, and CPU since 2.4)."""
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices
    except ImportError:  # a private helper: assume what torch 2.4+ supports
        return device.type in ("cuda", "cpu")
    return device.type in _get_fused_kernels_supported_devices()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "policy": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    generator.set_state(state["policy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Builds every component of a resolved recipe and trains it."""

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

    # -- building ---------------------------------------------------------------------------
    def _build(self) -> None:
        opts = self.train_opts
        if opts.threads:
            torch.set_num_threads(opts.threads)
        self.fabric = _make_fabric(opts)
        self.fabric.launch()
        seed = self.recipe.recipe.seed
        # Every rank builds the same initial weights (no reliance on DDP's broadcast, which
        # FSDP and the teacher's EMA copy would not get); per-rank seeds come after building.
        _seed_all(seed)
        registry = self.registry

        self.dataset = build_component(registry, self.recipe.data)
        self.policy = build_component(registry, self.recipe.augmentation)
        student = build_component(registry, self.recipe.backbone)
        if self.recipe.adaptation is not None:
            adapt_backbone(student, self.recipe.adaptation, self.recipe.source)
        policy_channels = getattr(self.policy, "channels", None)
        if policy_channels is not None and policy_channels != student.in_chans:
            raise RecipeError(
                f"augmentation.channels is {policy_channels} but backbone.in_chans is "
                f"{student.in_chans}; set them to the same value",
                self.recipe.source,
                "augmentation.channels",
            )

        world = self.fabric.world_size
        n_images = len(self.dataset)
        self.steps_per_epoch, self.total_steps, global_batch = batch_plan(
            n_images, opts, world, self.recipe.source
        )
        self.global_batch = global_batch

        image_size = getattr(self.policy, "global_crop_size", student.img_size)
        objectives = setup_objectives(
            self.recipe,
            registry,
            student,
            {
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": world,
                "image_size": int(image_size),
            },
        )
        # Continued pre-training: heads shipped beside a backbone.init folder start the heads.
        from medssl.export.huggingface import apply_initial_heads

        try:
            loaded = apply_initial_heads(student, {k: o for k, (o, _) in objectives.items()})
        except ValueError as exc:
            raise RecipeError(str(exc), self.recipe.source, "backbone.init") from None
        if loaded:
            log.info("initial heads loaded from backbone.init for: %s", ", ".join(loaded))
        # FSDP flattens each module's parameters on its own: the teacher cannot share them.
        model = SSLModel(student, objectives, share_frozen=not self._is_fsdp())
        self.request = model.view_request()
        mask_token = getattr(student, "mask_token", None)
        if self.request.block_masks is None and isinstance(mask_token, torch.nn.Parameter):
            # Unused without block masks: DDP would wait forever for its gradient.
            mask_token.requires_grad_(False)
        if self.request.text and not getattr(self.dataset, "has_text", False):
            raise RecipeError(
                f"an enabled objective needs report text but dataset {self.recipe.data.name!r} "
                "provides none; disable it (objectives.<name>.weight=0) or use a dataset with text",
                self.recipe.source,
                "objectives",
            )

        objective_modules = [obj for obj, _ in objectives.values()]
        self.freeze_last_layer_epochs = max(
            (getattr(obj, "freeze_last_layer_epochs", 0) for obj in objective_modules), default=0
        )
        self.schedules = schedules.dinov2_schedules(
            self.total_steps,
            self.steps_per_epoch,
            global_batch,
            base_lr=opts.lr or opts.base_lr,
            lr_scaling="none" if opts.lr else "sqrt",
            min_lr=opts.min_lr,
            warmup_epochs=opts.warmup_epochs,
            weight_decay=opts.weight_decay,
            weight_decay_end=opts.weight_decay_end,
            momentum=opts.momentum_teacher,
            momentum_end=opts.momentum_teacher_end,
            freeze_last_layer_epochs=self.freeze_last_layer_epochs,
        )
        self.peak_lr = self.schedules.lr.base
        groups = schedules.param_groups(
            model.student,
            objective_modules,
            layer_decay=opts.layerwise_decay,
            patch_embed_lr_mult=opts.patch_embed_lr_mult,
            last_layer_params=[p for o in objective_modules for p in o.frozen_last_layer_params()],
        )
        fused = _fused_adamw(self.fabric.device)
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.peak_lr,
            betas=opts.betas,
            weight_decay=opts.weight_decay,
            # One fused kernel per tensor (CUDA and CPU): a single pass over parameter,
            # gradient and both moments, no temporaries. On the CPU it steps ViT-S + a
            # 65,536-prototype head 4x faster than tensor by tensor, and the foreach path
            # allocates temporaries the size of the whole model.
            fused=fused or None,
            foreach=None if fused else False,
        )
        if opts.compile:
            # In place, so parameter names (checkpoints, EMA pairs) keep no ``_orig_mod.``.
            model.student.compile()
        log.info(parameter_report(model.student, objective_modules, optimizer))
        self.model, self.optimizer = self.fabric.setup(model, optimizer)
        self.raw_model = model

        from medssl.data import collate

        self.sampler = EpochSampler(
            n_images, self.recipe.recipe.seed, self.fabric.global_rank, world
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=opts.batch_size,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=opts.num_workers,
            drop_last=True,
            persistent_workers=False,
            # Its own generator, reseeded every epoch (``_batches``): creating an iterator
            # then never draws from the global RNG, so a resumed run's RNG stream matches.
            generator=torch.Generator(),
        )
        rank = self.fabric.global_rank
        self.generator = torch.Generator(device=self.fabric.device)
        self.generator.manual_seed(seed * 1000 + rank)
        _seed_all(seed + rank)  # drop-path and anything else drawing from the global RNG

    # -- run directory ------------------------------------------------------------------------
    def _prepare_run_dir(self) -> int:
        """Write config.yaml/run.json; return the step to start from (resume)."""
        run_dir = self.run_dir
        ckpt_dir = run_dir / "checkpoints"
        start_step = 0
        if self.fabric.global_rank == 0:
            ckpt.remove_temporary(ckpt_dir)
        self.fabric.barrier()
        history: dict[str, Any] = {"event": "start"}
        if self.resume:
            latest = ckpt.latest_valid_checkpoint(ckpt_dir)
            if latest is None and ckpt.list_checkpoints(ckpt_dir):
                # Restarting here would mix a new run with the old one's folders.
                raise RecipeError(
                    f"--resume: no valid checkpoint in {ckpt_dir} (every one is incomplete, "
                    "corrupt or of an older format); move them away to start again",
                    self.recipe.source,
                    "output_dir",
                )
            if latest is None and not self.resume_or_start:
                raise RecipeError(
                    f"--resume: {ckpt_dir} holds no checkpoint; use --resume-or-start to "
                    "start from step 0 when there is none",
                    self.recipe.source,
                    "output_dir",
                )
            if latest is not None:
                try:
                    model_state, state = ckpt.load_checkpoint(latest)
                except ValueError as exc:
                    raise RecipeError(str(exc), self.recipe.source, "output_dir") from None
                history = {"event": "resume", "from_step": int(state["step"])}
                history["changes"] = self._check_recipe_changes(state, latest)
                try:
                    self._load_full_state(model_state, state["optimizer"])
                except (RuntimeError, ValueError, KeyError) as exc:
                    # A recipe accepted with --accept-changes may still not fit the weights.
                    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    raise RecipeError(
                        f"checkpoint {latest.name} does not fit the model this recipe builds: "
                        f"{type(exc).__name__}: {first}",
                        self.recipe.source,
                    ) from None
                self._restore_rng(state["rng"])
                start_step = int(state["step"])
                self.failures_total = state.get("failures_total", 0)
                self.diagnostics_state = state.get("diagnostics")
                log.info("resumed from %s (step %d)", latest, start_step)
        else:
            check_output_dir(run_dir, False, self.recipe.source)
        if self.fabric.global_rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            if history["event"] == "start" or not (run_dir / "config.yaml").is_file():
                # A resumed run keeps the recipe it started with; changes go to history.jsonl.
                with (run_dir / "config.yaml").open("w") as fh:
                    yaml.safe_dump(self.recipe.config, fh, sort_keys=False)
            append_history(run_dir, {**history, "pid": os.getpid()})
            info = run_info(
                self.registry,
                self.recipe.recipe.seed,
                {
                    "recipe": self.recipe.source,
                    "world_size": self.fabric.world_size,
                    "device": str(self.fabric.device),
                    "global_batch": self.global_batch,
                    "total_steps": self.total_steps,
                    "steps_per_epoch": self.steps_per_epoch,
                    "peak_lr": self.peak_lr,
                    "objectives": {s.name: s.weight for s in self.recipe.objectives},
                    "resumed_from_step": start_step or None,
                },
            )
            (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
        return start_step

    def _check_recipe_changes(self, state: dict[str, Any], latest: Path) -> dict[str, Any]:
        """Refuse (unless accepted) a resume whose recipe trains something else than the
        checkpoint's; return every change, for the run history."""
        saved = state.get("recipe")
        if not isinstance(saved, dict):
            log.warning("checkpoint %s records no recipe; changes cannot be checked", latest)
            return {}
        changes = recipe_changes(saved, canonical_recipe(self.recipe))
        altering = {k: v for k, v in changes.items() if alters_training(k)}
        if altering and not self.accept_changes:
            raise RecipeError(
                f"--resume with a recipe that changes what is trained ({describe(altering)}); "
                f"the checkpoint {latest.name} was trained with the values on the left. Resume "
                "with the same values, start a new output_dir, or pass --accept-changes to "
                "continue anyway (recorded in history.jsonl)",
                self.recipe.source,
                next(iter(altering)),
            )
        if changes:
            log.info("resuming with recipe changes: %s", describe(changes))
        return {k: {"checkpoint": a, "now": b} for k, (a, b) in changes.items()}

    def _restore_rng(self, saved: Any) -> None:
        """Each rank takes back its own RNG streams (checkpoints hold one per rank)."""
        rank, world = self.fabric.global_rank, self.fabric.world_size
        per_rank = saved if isinstance(saved, list) else [saved]
        if len(per_rank) == world:
            _set_rng_state(per_rank[rank], self.generator)
            return
        log.warning(
            "the checkpoint holds RNG states of %d ranks but this run has %d; reseeding "
            "the augmentation and global RNG (weights, optimiser and data order resume exactly)",
            len(per_rank),
            world,
        )

    def _gather_rng(self) -> list[dict[str, Any]]:
        state = _rng_state(self.generator)
        if self.fabric.world_size == 1:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.fabric.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def _save(self, step: int, diagnostics: LearningMonitor | None = None) -> Path | None:
        path = None
        rng = self._gather_rng()  # a collective: every rank takes part
        model_state = self._full_model_state()
        optimizer_state = self._full_optimizer_state()
        if self.fabric.global_rank == 0:
            state = {
                "optimizer": optimizer_state,
                "step": step,
                "rng": rng,
                "failures_total": self.failures_total,
                "diagnostics": diagnostics.state_dict() if diagnostics is not None else None,
                "world_size": self.fabric.world_size,
                "recipe": canonical_recipe(self.recipe),
            }
            shared = self.raw_model.shared_teacher_keys()
            path = ckpt.save_checkpoint(
                self.run_dir / "checkpoints",
                step,
                {k: v for k, v in model_state.items() if k not in shared},
                state,
                self.train_opts.keep_checkpoints,
            )
            self._export_backbone(step, model_state)
        self.fabric.barrier()
        return path

    def _is_fsdp(self) -> bool:
        from lightning_fabric.strategies import FSDPStrategy

        return isinstance(self.fabric.strategy, FSDPStrategy)

    def _full_model_state(self) -> dict[str, torch.Tensor]:
        """The whole (unsharded) state dict; under FSDP gathered onto rank 0 by all ranks."""
        if not self._is_fsdp():
            return self.raw_model.state_dict()
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=True)
        with FSDP.state_dict_type(
            self.model._forward_module, StateDictType.FULL_STATE_DICT, config
        ):
            state = self.model._forward_module.state_dict()
        return {k.replace("_fsdp_wrapped_module.", ""): v for k, v in state.items()}

    def _load_full_state(
        self, model_state: dict[str, Any], optimizer_state: dict[str, Any]
    ) -> None:
        """Load what :meth:`_full_model_state` / :meth:`_full_optimizer_state` saved."""
        if not self._is_fsdp():
            # The teacher's frozen parameters are the student's, stored once.
            shared = self.raw_model.shared_teacher_keys()
            model_state = {
                **{t: model_state[s] for t, s in shared.items() if s in model_state},
                **model_state,
            }
            self.raw_model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        module = self.model._forward_module
        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
        with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT, config):
            module.load_state_dict(model_state)
            flat = FSDP.optim_state_dict_to_load(module, self.optimizer.optimizer, optimizer_state)
        self.optimizer.load_state_dict(flat)

    def _full_optimizer_state(self) -> dict[str, Any]:
        if not self._is_fsdp():
            return self.optimizer.state_dict()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(self.model._forward_module, self.optimizer.optimizer)

    def _export_backbone(self, step: int, model_state: dict[str, torch.Tensor]) -> None:
        """``backbone.safetensors``: the teacher (or student) encoder alone, for eval/export."""
        from safetensors.torch import save_file

        prefix = "teacher.backbone." if self.raw_model.teacher is not None else "student."
        if has_lora(self.raw_model.student):
            # A plain backbone (adapters merged) so that eval and export need no peft.
            teacher = self.raw_model.teacher
            encoder = teacher.backbone if teacher is not None else self.raw_model.student
            merged = merged_state_dict(encoder)
            model_state = {prefix + k: v for k, v in merged.items()}
        state = {
            k[len(prefix) :]: v.detach().cpu().contiguous()
            for k, v in model_state.items()
            if k.startswith(prefix)
        }
        tmp = self.run_dir / "backbone.safetensors.tmp"
        try:
            save_file(state, str(tmp), metadata={"step": str(step)})
            os.replace(tmp, self.run_dir / "backbone.safetensors")
        except (OSError, SafetensorError) as exc:
            tmp.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ckpt.CheckpointError(
                f"could not write {self.run_dir / 'backbone.safetensors'}: {reason}; the "
                f"checkpoint of step {step} is complete (free space and --resume)"
            ) from None

    # -- the loop -------------------------------------------------------------------------------
    def _batches(self, start_step: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Micro-batches from ``start_step`` on, epoch after epoch, resumable mid-epoch."""
        accum = self.train_opts.grad_accumulation
        micro_per_epoch = self.steps_per_epoch * accum
        micro = start_step * accum
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

    def _set_schedules(self, step: int) -> dict[str, float]:
        values = self.schedules.at(step)
        for group in self.optimizer.param_groups:
            lr = values["last_layer_lr"] if group.get("is_last_layer") else values["lr"]
            group["lr"] = lr * group.get("lr_multiplier", 1.0)
            group["weight_decay"] = values["weight_decay"] * group.get("wd_multiplier", 1.0)
        return values

    def fit(self) -> RunResult:
        self._build()
        lock = RunLock(self.run_dir) if self.fabric.global_rank == 0 else None
        try:
            self._acquire(lock)
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _acquire(self, lock: RunLock | None) -> None:
        """Rank 0 takes the run directory's lock; every rank stops if it could not (the
        others would otherwise wait for rank 0 at the next barrier forever)."""
        failure: tuple[str, str] | None = None
        if lock is not None:
            try:
                lock.acquire()
            except RunDirectoryLocked as exc:
                failure = ("locked", str(exc))
            except OSError as exc:  # output_dir is a file, read-only, too long a name
                failure = ("os", f"cannot use {self.run_dir} as the run directory: {exc.strerror}")
        if self.fabric.world_size > 1:
            failure = self.fabric.broadcast(failure, src=0)
        if failure is None:
            return
        kind, message = failure
        if kind == "locked":
            raise RunDirectoryLocked(message)
        raise RecipeError(message, self.recipe.source, "output_dir")

    def _fit(self) -> RunResult:
        self.failures_total = 0
        self.load_failures = LoadFailures(self.train_opts.max_failure_share)
        start_step = self._prepare_run_dir()
        metrics_writer = (
            MetricsWriter(self.run_dir, resume_step=start_step if self.resume else None)
            if self.fabric.global_rank == 0
            else None
        )
        trackers = (
            Trackers.open(
                self.train_opts.loggers,
                self.run_dir,
                self.recipe.config,
                json.loads((self.run_dir / "run.json").read_text()),
                resume=self.resume,
            )
            if self.fabric.global_rank == 0
            else None
        )
        opts = self.train_opts
        accum = opts.grad_accumulation
        step = start_step
        last_metrics: dict[str, float] = {}
        stopped = False
        stop_signal: int | None = None
        last_ckpt: Path | None = None
        started = time.perf_counter()
        window_start, window_images = time.perf_counter(), 0
        bar = self.progress_bar and self.fabric.global_rank == 0  # one bar per run
        progress = _Progress(self.total_steps, start_step, enabled=bar)
        diagnostics = LearningMonitor(self.total_steps)
        if getattr(self, "diagnostics_state", None):
            diagnostics.load_state_dict(self.diagnostics_state)
        self.model.train()
        log.info(
            "training %d steps (%d per epoch), global batch %d, peak lr %.3g, objectives: %s",
            self.total_steps,
            self.steps_per_epoch,
            self.global_batch,
            self.peak_lr,
            ", ".join(f"{s.name}×{s.weight:g}" for s in self.recipe.enabled_objectives),
        )
        with _stop_on_signals() as stop, progress:
            batches = self._batches(start_step)
            while step < self.total_steps:
                scheduled = self._set_schedules(step)
                epoch = step // self.steps_per_epoch
                step_metrics: dict[str, float] = {}
                outputs = None
                # the last micro-batch of this step measures the learning signals
                self.diagnose_step = (step + 1) % opts.diagnostics_every == 0 or (
                    step + 1 == self.total_steps
                )
                for micro in range(accum):
                    epoch, batch = self._next_batch(batches)
                    images = self.fabric.to_device(batch["image"])
                    micro_metrics, outputs = self.micro_step(
                        images, batch.get("text"), step, epoch, micro == accum - 1
                    )
                    for key, value in micro_metrics.items():
                        step_metrics[key] = step_metrics.get(key, 0.0) + value / accum
                    window_images += int(images.shape[0]) * self.fabric.world_size
                self.optimizer_step(epoch, scheduled["momentum"])
                step += 1

                if step % opts.diagnostics_every == 0 or step == self.total_steps:
                    step_metrics.update(diagnostics.observe(step, self.raw_model))
                if step % opts.log_every == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    step_metrics.update(scheduled)
                    step_metrics["images_per_s"] = window_images / max(elapsed, 1e-9)
                    step_metrics["epoch"] = float(epoch)
                    if torch.cuda.is_available() and self.fabric.device.type == "cuda":
                        step_metrics["cuda_max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                    window_start, window_images = time.perf_counter(), 0
                    if metrics_writer is not None:
                        metrics_writer.log(step, step_metrics)
                    if trackers is not None:
                        trackers.log_metrics(step, step_metrics)
                    progress.log(step, step_metrics)
                last_metrics = step_metrics
                progress.advance(step, last_metrics)

                out_of_time = (
                    opts.max_minutes is not None
                    and time.perf_counter() - started > opts.max_minutes * 60
                )
                signalled, out_of_time = self._agree_stop(stop.signal is not None, out_of_time)
                if (
                    step % opts.checkpoint_every == 0
                    or step == self.total_steps
                    or signalled
                    or out_of_time
                ):
                    last_ckpt = self._save(step, diagnostics)
                if signalled or out_of_time:
                    reason = (
                        f"signal {signal.Signals(stop.signal).name}"
                        if stop.signal
                        else ("a signal to another rank" if signalled else "train.max_minutes")
                    )
                    self.stop_reason = reason
                    # SIGTERM's exit code when another rank was signalled (SLURM requeue)
                    stop_signal = stop.signal or (int(signal.SIGTERM) if signalled else None)
                    log.warning(
                        "stopping at step %d (%s); checkpoint saved, continue with --resume",
                        step,
                        reason,
                    )
                    stopped = True
                    break
        if metrics_writer is not None:
            metrics_writer.close()
        summary = diagnostics.summary()
        for line in final_lines(summary):
            log.info("%s", line)
        if self.fabric.global_rank == 0:
            (self.run_dir / "diagnostics.json").write_text(json.dumps(summary, indent=2))
            if (self.run_dir / "metrics.csv").is_file():
                from medssl.engine.plots import plot_run

                # after diagnostics.json: the panels' titles carry each objective's state
                plot_run(self.run_dir / "metrics.csv", self.run_dir / "loss_curves.png")
            if self.failures_total:
                log.warning("%d images failed to load in this run in all", self.failures_total)
        if trackers is not None:  # after the plot: trackers keep loss_curves.png
            trackers.finish(stopped)
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
            diagnose = last and getattr(self, "diagnose_step", False)
            loss, metrics, outputs = self.model(
                views, step / self.total_steps, epoch, step, diagnose=diagnose
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
        if self.fabric.device.type != "cpu" or self._is_fsdp():
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

    def _agree_stop(self, signalled: bool, out_of_time: bool) -> tuple[bool, bool]:
        """Stop every rank when any rank is told to (SLURM may signal only some), so no
        rank waits forever in a collective that the others left."""
        if self.fabric.world_size == 1:
            return signalled, out_of_time
        import torch.distributed as dist

        flags = torch.tensor([float(signalled), float(out_of_time)], device=self.fabric.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def _cancel_frozen_grads(self, epoch: int) -> None:
        # DINOv2 both zeroes the last layer's LR and drops its gradient in the first epoch(s).
        for objective in self.raw_model.objectives.values():
            if epoch < getattr(objective, "freeze_last_layer_epochs", 0):
                for param in objective.frozen_last_layer_params():
                    param.grad = None


class _Progress:
    """A rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.start = start
        self._bar = None
        self._started = time.perf_counter()

    def __enter__(self) -> _Progress:
        self._started = time.perf_counter()
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
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
    trainer = Trainer(
        recipe,
        registry,
        run_dir=run_dir,
        resume=resume,
        progress_bar=progress_bar,
        resume_or_start=resume_or_start,
        accept_changes=accept_changes,
    )
    return trainer.fit()
