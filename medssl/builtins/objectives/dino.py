"""DINO self-distillation on the CLS token (Caron et al. 2021), as DINOv2 trains it.

Semantics of facebookresearch/dinov2 (``dinov2/loss/dino_clstoken_loss.py`` and
``dinov2/train/ssl_meta_arch.py``): the EMA teacher's head output on the global crops,
centred (softmax with a running mean centre, or Sinkhorn-Knopp) at a temperature that
warms up linearly, is the target of the student's head output at temperature 0.1. Student
global crop ``i`` is matched to every teacher global crop ``j != i`` (with two crops: the
swap), every local crop to every teacher global crop, and the loss is the sum of the
per-pair batch means divided by the number of pairs (without local crops DINOv2 divides
by 3 for its 2 pairs, since its local-term count is at least 1; here by 2, as lightly
does). The head's last layer (the prototypes) gets no gradient during the first
``freeze_last_layer_epochs``.

The prototype projection and cross-entropy run through :mod:`medssl.losses`'s fused head,
so the ``[B, 65536]`` logits are never materialised on the student side.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from medssl.builtins.objectives.heads import DINOHead, build_teacher_head, load_dinov2_head
from medssl.engine.diagnostics import MAX_ROWS, collapse_metrics, mean_entropy
from medssl.engine.schedules import teacher_temperature
from medssl.losses import PrototypeTargets, prototype_cross_entropy, prototype_targets
from medssl.objectives.configured import ConfiguredObjective
from medssl.types import (
    BackboneOutput,
    LearningSignals,
    ObjectiveContext,
    ObjectiveResult,
    StepOutputs,
    ViewRequest,
)

__all__ = [
    "DINO",
    "HeadOptions",
    "SelfDistillation",
    "TeacherOptions",
    "build_head",
    "check_output",
    "dense_rows",
]

Centering = Literal["mean", "sinkhorn_knopp"]
Impl = Literal["auto", "torch", "triton"]
#: The recipe word for each centring -> the name :func:`medssl.losses.prototype_targets` uses.
CENTERING_IMPL = {"mean": "softmax_center", "sinkhorn_knopp": "sinkhorn_knopp"}


class TeacherOptions(BaseModel):
    """Options DINO and iBOT share: temperatures, centring, the freeze of the prototypes."""

    model_config = ConfigDict(extra="forbid")

    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0, description="teacher temperature after warm-up")
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: float = Field(30, ge=0)
    centering: Centering = Field("mean", description="'mean' (DINOv2 default) or 'sinkhorn_knopp'")
    center_momentum: float = Field(0.9, ge=0, le=1)
    sinkhorn_iterations: int = Field(3, ge=1)
    freeze_last_layer_epochs: float = Field(1, ge=0)
    impl: Impl = Field("auto", description="medssl.losses implementation")
    lazy_targets: bool = Field(
        False,
        description="never hold the teacher's [rows, prototypes] targets: the loss recomputes "
        "them tile by tile (medssl.losses.PrototypeTargets; saves rows x prototypes x 4 bytes "
        "for one more pass of teacher logits)",
    )


class HeadOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prototypes: int = Field(65536, ge=1)
    hidden_dim: int = Field(2048, ge=1)
    bottleneck_dim: int = Field(256, ge=1)
    n_layers: int = Field(3, ge=1)
    head_init: str | None = Field(
        None,
        description="a DINOv2 / medssl checkpoint to start the head (student and teacher) from",
    )


class SelfDistillation(ConfiguredObjective):
    """Teacher temperature, centring and prototype freezing shared by DINO and iBOT."""

    uses_teacher = True
    center: Tensor
    name = "objective"

    @property
    def freeze_last_layer_epochs(self) -> float:
        """Epochs during which the prototypes get no update (the engine reads this)."""
        return self.options.freeze_last_layer_epochs

    def _teacher_temp(self, step: int) -> float:
        o = self.options
        return teacher_temperature(
            step,
            self.ctx.steps_per_epoch,
            o.warmup_teacher_temp,
            o.teacher_temp,
            o.warmup_teacher_temp_epochs,
        )

    @torch.no_grad()
    def _targets(
        self, teacher_head: DINOHead, tokens: Tensor, temp: float
    ) -> tuple[Tensor, Tensor]:
        """Teacher probabilities of ``tokens`` (centred) and the teacher head's features."""
        feats = teacher_head.features(tokens)
        protos = _matmul_prototypes(teacher_head, feats)
        o = self.options
        probs = prototype_targets(
            feats.to(protos.dtype),
            protos,
            temp,
            centering=CENTERING_IMPL[o.centering],
            center=self.center if o.centering == "mean" else None,
            n_iter=o.sinkhorn_iterations,
            impl=o.impl,
            lazy=o.lazy_targets,
        )
        if o.centering == "mean":
            self._update_center(feats, protos, teacher_head.last_layer.weight)
        return probs, feats

    @torch.no_grad()
    def _update_center(self, feats: Tensor, protos: Tensor, weight: Tensor) -> None:
        # The mean of the logits is the mean feature times the prototypes: no [B, K] matrix.
        acc = torch.promote_types(feats.dtype, torch.float32)  # fp64 stays fp64 (reference tests)
        with torch.autocast(feats.device.type, enabled=False):
            mean = feats.to(acc).mean(dim=0, keepdim=True)
            if protos.dtype == acc:
                batch_center = mean @ protos.T
            else:
                # Low-precision prototypes (autocast): from the raw weight, rows scaled by
                # 1 / max(|w_k|, eps) afterwards -- full precision, no full-precision copy.
                weight = weight.to(acc)
                norms = torch.linalg.vector_norm(weight, dim=1).clamp_min(1e-12)
                batch_center = (mean @ weight.T) / norms
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(batch_center)
            batch_center /= dist.get_world_size()
        m = self.options.center_momentum
        self.center.mul_(m).add_(batch_center.to(self.center.dtype), alpha=1.0 - m)

    def _student_prototypes(self, head: DINOHead, step: int) -> tuple[Tensor, Tensor | None]:
        """The prototypes, detached while frozen, plus a zero term that keeps the last
        layer in the graph (zero gradient instead of none, so DDP sees every parameter)."""
        protos = _matmul_prototypes(head, head.last_layer.weight)
        frozen_steps = self.options.freeze_last_layer_epochs * self.ctx.steps_per_epoch
        if step < frozen_steps:
            return protos.detach(), head.last_layer.weight.sum() * 0.0
        return protos, None

    def _hint(self, head_key: str) -> str:
        """The recipe keys to try when the student does not learn (docs/diagnostics.md)."""
        return (
            f"objectives.{self.name}.teacher_temp and warmup_teacher_temp (lower: sharper "
            f"targets), objectives.{head_key}.prototypes (fewer), objectives.{head_key}.n_layers "
            "(1 on small data)"
        )

    @torch.no_grad()
    def _student_probs(self, feats: Tensor, protos: Tensor) -> Tensor:
        """The student's distributions on (at most ``MAX_ROWS`` of) its rows."""
        logits = _rows(feats).float() @ protos.detach().float().T
        return torch.softmax(logits / self.options.student_temp, dim=1)

    def _cross_entropy(
        self, feats: Tensor, probs: Tensor, protos: Tensor, crop_weights: Tensor | None = None
    ) -> Tensor:
        return prototype_cross_entropy(
            feats.to(protos.dtype),
            probs,
            protos,
            self.options.student_temp,
            impl=self.options.impl,
            crop_weights=crop_weights,
        )


def _row_index(n: int, device: torch.device) -> Tensor | None:
    """Evenly spaced rows, at most ``MAX_ROWS`` of ``n`` (``None``: all of them)."""
    if n <= MAX_ROWS:
        return None
    return torch.linspace(0, n - 1, MAX_ROWS, device=device).long()


def _rows(x: Tensor) -> Tensor:
    index = _row_index(x.shape[0], x.device)
    return x if index is None else x.index_select(0, index)


@torch.no_grad()
def dense_rows(probs: Tensor | PrototypeTargets) -> Tensor:
    """At most ``MAX_ROWS`` rows of the teacher's targets, dense ``[rows, K]`` (lazy targets
    are computed for those rows only)."""
    if not isinstance(probs, PrototypeTargets):
        return _rows(probs.reshape(-1, probs.shape[-1]))
    index = _row_index(probs.rows, probs.device)
    if index is not None:
        shift = probs.row_shift
        probs = dataclasses.replace(
            probs,
            features=probs.features.index_select(0, index),
            row_shift=None if shift is None else shift.index_select(0, index),
            groups=1,
        )
    return probs.materialize().reshape(-1, probs.prototypes.shape[0])


def _matmul_prototypes(head: DINOHead, like: Tensor) -> Tensor:
    """The head's prototypes in the dtype autocast gives its matmuls on ``like``'s device.

    Cast here rather than in :mod:`medssl.losses` (which would cast the same way): the head
    caches one cast per step for every objective instead of one per call.
    """
    device = like.device.type
    if torch.is_autocast_enabled(device):
        return head.prototypes_as(torch.get_autocast_dtype(device))
    return head.prototypes


def build_head(ctx: ObjectiveContext, o: HeadOptions, prefix: str) -> DINOHead:
    """The student head of the options, loaded from ``o.head_init`` when given."""
    head = DINOHead(ctx.embed_dim, o.prototypes, o.hidden_dim, o.bottleneck_dim, o.n_layers)
    if o.head_init is not None:
        load_dinov2_head(head, o.head_init, prefix)
    return head


def check_output(name: str, what: str, out: BackboneOutput | None, rows: int) -> BackboneOutput:
    """``StepOutputs.<what>`` of objective ``name``, checked to hold ``rows`` CLS rows."""
    if out is None:
        raise ValueError(f"objective {name!r}: StepOutputs.{what} is None, but {name} needs it")
    if out.cls.ndim != 2 or out.cls.shape[0] != rows:
        raise ValueError(
            f"objective {name!r}: StepOutputs.{what}.cls has shape {tuple(out.cls.shape)}, "
            f"expected [{rows}, D] (crops x batch size)"
        )
    return out


class DINO(SelfDistillation):
    """DINO CLS-token self-distillation with a DINOv2 head (see the module docstring).

    Registers its student and teacher heads as ``ctx.shared["dino_head"]`` and
    ``ctx.shared["dino_teacher_head"]`` so iBOT can share them.
    """

    name = "dino"

    class Options(TeacherOptions, HeadOptions):
        model_config = ConfigDict(extra="forbid")

        local_crops: bool = Field(True, description="match local crops to the teacher's globals")
        diagnostics_every: int = Field(
            0,
            ge=0,
            description="steps between per-step teacher-entropy metrics (0: never; the "
            "engine's learning diagnostics report them every train.diagnostics_every steps)",
        )

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        o = self.options
        self.head = build_head(ctx, o, "dino_head")
        self.teacher_head = build_teacher_head(self.head)
        self.register_buffer("center", torch.zeros(1, o.prototypes))
        ctx.shared["dino_head"] = self.head
        ctx.shared["dino_teacher_head"] = self.teacher_head

    def request(self, patch_size: int) -> ViewRequest:
        return ViewRequest(
            global_crops=True, local_crops=self.options.local_crops, patch_size=patch_size
        )

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.head, self.teacher_head)]

    def frozen_last_layer_params(self) -> list[torch.nn.Parameter]:
        return [self.head.last_layer.weight] if self.options.freeze_last_layer_epochs > 0 else []

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        v = out.views
        b, ng = v.batch_size, v.n_global
        student = check_output(self.name, "student_global", out.student_global, ng * b)
        teacher = check_output(self.name, "teacher_global", out.teacher_global, ng * b)
        nl = v.n_local if (self.options.local_crops and out.student_local is not None) else 0
        local = check_output(self.name, "student_local", out.student_local, nl * b) if nl else None
        n_pairs = ng * (ng - 1) + ng * nl
        if n_pairs == 0:
            raise ValueError(
                f"objective 'dino': {ng} global and {nl} local crops leave no pair of "
                "different views to match; DINO needs 2 global crops or local crops"
            )
        temp = self._teacher_temp(out.step)
        probs, _ = self._targets(self.teacher_head, teacher.cls, temp)
        t_crops = probs.view(ng, b, -1)
        protos, keepalive = self._student_prototypes(self.head, out.step)

        # Every student crop in one pass over the prototypes: global crop i is scored
        # against every teacher global crop j != i, each local crop against all of them
        # (crop weights [ng + nl, ng]; by linearity, the sum of the per-pair losses).
        cls = student.cls if local is None else torch.cat([student.cls, local.cls])
        crop_weights = torch.ones(ng + nl, ng, device=probs.device)
        crop_weights[:ng].fill_diagonal_(0.0)
        feats = self.head.features(cls)
        total = self._cross_entropy(feats, t_crops, protos, crop_weights).sum()
        loss = total / (b * n_pairs)
        signals = self._signals(loss, probs, feats[: ng * b], protos) if out.diagnose else None
        if keepalive is not None:
            loss = loss + keepalive

        metrics = {"teacher_temp": temp}
        every = self.options.diagnostics_every
        if every and out.step % every == 0:
            metrics.update(collapse_metrics(dense_rows(probs)))
        return ObjectiveResult(loss=loss, metrics=metrics, signals=signals)

    @torch.no_grad()
    def _signals(
        self, loss: Tensor, probs: Tensor | PrototypeTargets, feats: Tensor, protos: Tensor
    ) -> LearningSignals:
        """Chance ``ln K`` (the cross-entropy of a uniform student against any target);
        ``KL(teacher || student)`` = loss - mean teacher entropy, exactly, since every
        teacher row enters the same number of crop pairs."""
        teacher = dense_rows(probs)
        k = teacher.shape[-1]
        if isinstance(probs, PrototypeTargets) and probs.rows > teacher.shape[0]:
            kl = None  # the entropy of the sampled rows only: no exact KL
        else:
            kl = loss.detach().double() - mean_entropy(teacher)
        return LearningSignals(
            chance=math.log(k),
            teacher_probs=teacher,
            student_probs=self._student_probs(feats, protos),
            kl=kl,
            hint=self._hint(self.name),
        )
