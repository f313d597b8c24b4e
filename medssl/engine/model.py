"""The module a training step runs: student backbone, EMA teacher and the objectives.

One student forward per crop group and one teacher forward on the global crops serve
every objective (DINOv2's ``ssl_meta_arch.py`` does the same); objectives with weight 0
are never built, so they cost nothing.
"""

from __future__ import annotations

import copy
import math
from contextlib import ExitStack
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from medssl.types import Objective, StepOutputs, ViewRequest, Views

if TYPE_CHECKING:
    from medssl.config import ComponentSpec
    from medssl.plugins import Registry


class NonFiniteLossError(FloatingPointError):
    """An objective produced NaN or Inf; the step is not applied."""

    def __init__(self, objective: str, step: int, value: float) -> None:
        self.objective = objective
        self.step = step
        super().__init__(
            f"objective {objective!r} produced a non-finite loss ({value}) at step {step}; "
            "the step was not applied. Resume from the last good checkpoint with "
            "`medssl run RECIPE --resume` (a lower learning rate or fp32 precision often helps; "
            "add --accept-changes to resume with a changed learning rate)"
        )


class _Teacher(nn.Module):
    """Wraps the EMA copy so that ``.train()`` never turns its drop-path back on.

    With ``share_frozen``, the student's frozen parameters (``backbone.freeze``, LoRA's base
    weights) are not copied: the teacher holds the same tensors. The EMA never moves them
    (teacher and student are equal there), so a copy would only double their memory: a
    whole backbone for LoRA.
    """

    def __init__(self, student: nn.Module, share_frozen: bool = True) -> None:
        super().__init__()
        memo: dict[int, object] = {}
        if share_frozen:
            memo = {id(p): p for p in student.parameters() if not p.requires_grad}
        self.backbone = copy.deepcopy(student, memo)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> _Teacher:
        super().train(False)
        return self

    def forward(self, x: Tensor) -> object:
        return self.backbone(x)


class SSLModel(nn.Module):
    """Student, teacher (when an objective needs one) and weighted objectives."""

    def __init__(
        self,
        student: nn.Module,
        objectives: dict[str, tuple[Objective, float]],
        share_frozen: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        self.objectives = nn.ModuleDict({name: obj for name, (obj, _) in objectives.items()})
        self.weights = {name: weight for name, (_, weight) in objectives.items()}
        self.uses_teacher = any(obj.uses_teacher for obj, _ in objectives.values())
        self.teacher = _Teacher(student, share_frozen) if self.uses_teacher else None
        # Modules that share work between the objectives of one forward (the DINO / iBOT
        # heads normalise their prototypes once): each offers a ``step_cache()`` context.
        self._step_caches = [m for m in self.modules() if callable(getattr(m, "step_cache", None))]
        # The learning signals of the last diagnosed step (medssl.engine.diagnostics).
        self.last_signals: dict[str, dict[str, float]] = {}
        self.last_hints: dict[str, str | None] = {}

    def shared_teacher_keys(self) -> dict[str, str]:
        """``{teacher key: student key}`` of the state-dict entries the teacher shares
        with the student (its frozen parameters): checkpoints store them once."""
        if self.teacher is None:
            return {}
        student = {id(p): name for name, p in self.student.named_parameters()}
        return {
            f"teacher.backbone.{name}": f"student.{student[id(p)]}"
            for name, p in self.teacher.backbone.named_parameters(remove_duplicate=False)
            if id(p) in student
        }

    def view_request(self) -> ViewRequest:
        patch_size = int(self.student.patch_size)
        request = ViewRequest(patch_size=patch_size)
        for objective in self.objectives.values():
            request = request | objective.request(patch_size)
        return request

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs: list[tuple[nn.Module, nn.Module]] = []
        if self.teacher is not None:
            pairs.append((self.student, self.teacher.backbone))
        for objective in self.objectives.values():
            pairs.extend(objective.ema_pairs())
        return pairs

    def forward(
        self, views: Views, progress: float, epoch: int, step: int, diagnose: bool = False
    ) -> tuple[Tensor, dict[str, float], StepOutputs]:
        student_global = student_local = teacher_global = None
        if views.global_crops is not None:
            student_global = self.student(views.global_crops, masks=views.block_masks)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_global = self.teacher(views.global_crops)
        if views.local_crops is not None:
            student_local = self.student(views.local_crops)
        out = StepOutputs(
            views=views,
            student_global=student_global,
            student_local=student_local,
            teacher_global=teacher_global,
            student=self.student,
            progress=progress,
            epoch=epoch,
            step=step,
            diagnose=diagnose,
        )
        with ExitStack() as caches:
            for module in self._step_caches:
                caches.enter_context(module.step_cache())
            return self._losses(out, step)

    def _losses(self, out: StepOutputs, step: int) -> tuple[Tensor, dict[str, float], StepOutputs]:
        results = {name: objective.loss(out) for name, objective in self.objectives.items()}
        assert results, "SSLModel needs at least one objective"
        # One host transfer for every loss value (each .item() is a device sync on CUDA).
        values = torch.stack(
            [r.loss.detach().float().reshape(()) for r in results.values()]
        ).tolist()
        metrics: dict[str, float] = {}
        for (name, result), value in zip(results.items(), values, strict=True):
            if not math.isfinite(value):
                raise NonFiniteLossError(name, step, value)
            metrics[f"loss_{name}"] = value
            metrics.update({f"{name}/{key}": v for key, v in result.metrics.items()})
        if out.diagnose:
            from medssl.engine.diagnostics import hints, learning_signals

            self.last_signals = learning_signals(results, self.weights, out)
            self.last_hints = hints(results)
        total: Tensor | None = None
        for name, result in results.items():
            weighted = result.loss * self.weights[name]
            total = weighted if total is None else total + weighted
        assert total is not None
        metrics["loss"] = total.detach().float().item()
        return total, metrics, out


def objective_setup_order(specs: list[ComponentSpec], registry: Registry) -> list[ComponentSpec]:
    """``specs`` with every objective after those it ``shares_from`` (a stable sort).

    iBOT reuses DINO's head only if DINO was set up first; the recipe's key order must not
    decide that.
    """
    names = {spec.name for spec in specs}
    ordered: list[ComponentSpec] = []
    placed: set[str] = set()

    def place(spec: ComponentSpec, seen: frozenset[str]) -> None:
        if spec.name in placed or spec.name in seen:
            return
        factory = registry.get("objective", spec.name).factory
        for name in getattr(factory, "shares_from", ()):
            if name in names:
                place(next(s for s in specs if s.name == name), seen | {spec.name})
        placed.add(spec.name)
        ordered.append(spec)

    for spec in specs:
        place(spec, frozenset())
    return ordered
