"""A reusable contract test class for objectives (kornia style) and its helpers.

A plugin that adds an objective subclasses :class:`ObjectiveContractTests` in its tests::

    from medssl.testing.objectives import ObjectiveContractTests

    class TestMyObjective(ObjectiveContractTests):
        factory = MyObjective
        options = {"dim": 16}          # tiny options: tests run on a 2-core CPU

and gets the checks every built-in objective passes: construction costs nothing, options
are validated, ``setup``/``request``/``loss`` work on a step shaped as the engine builds
it (a tiny real backbone and views fabricated from the request), gradients reach the
backbone, bad input fails clearly, a NaN input is not hidden, results are deterministic
and survive a state-dict round trip.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from medssl.types import (
    BackboneOutput,
    Objective,
    ObjectiveContext,
    StepOutputs,
    ViewRequest,
    Views,
)

__all__ = [
    "hand_made_step",
    "objective_context",
    "perturb_",
    "random_tokens",
    "ObjectiveContractTests",
    "build_objective",
    "make_step",
    "make_views",
    "random_block_masks",
    "random_patch_masks",
    "tiny_backbone",
]


def tiny_backbone(
    embed_dim: int = 32, patch_size: int = 4, img_size: int = 16, in_chans: int = 1
) -> nn.Module:
    """A 2-block ViT of the built-in backbone class, small enough for CPU tests."""
    from medssl.builtins.backbones import VisionTransformer

    return VisionTransformer(
        embed_dim=embed_dim,
        depth=2,
        num_heads=2,
        patch_size=patch_size,
        img_size=img_size,
        in_chans=in_chans,
    )


def random_block_masks(
    n: int, n_patches: int, ratio: tuple[float, float], share: float, generator: torch.Generator
) -> Tensor:
    """Bool ``[n, n_patches]``: the first ``round(share * n)`` rows mask a random share
    (linearly spread over ``ratio``) of their patches, as DINOv2's collate does; the rest
    mask nothing. Random patches rather than blocks: enough for loss tests."""
    masks = torch.zeros(n, n_patches, dtype=torch.bool)
    n_masked = int(round(share * n))
    for i in range(n_masked):
        r = ratio[0] + (ratio[1] - ratio[0]) * (i / max(n_masked - 1, 1))
        k = max(1, int(round(r * n_patches)))
        masks[i, torch.randperm(n_patches, generator=generator)[:k]] = True
    return masks


def random_patch_masks(n: int, n_patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """Bool ``[n, n_patches]`` hiding exactly ``int(ratio * n_patches)`` patches per row (MAE)."""
    k = int(ratio * n_patches)
    noise = torch.rand(n, n_patches, generator=generator)
    masks = torch.zeros(n, n_patches, dtype=torch.bool)
    masks.scatter_(1, noise.argsort(dim=1)[:, :k], True)
    return masks


def make_views(
    request: ViewRequest,
    batch_size: int = 4,
    image_size: int = 16,
    local_size: int = 8,
    in_chans: int = 1,
    n_global: int = 2,
    n_local: int = 2,
    seed: int = 0,
) -> Views:
    """Random views with what ``request`` asks for, laid out as a policy lays them out."""
    g = torch.Generator().manual_seed(seed)
    b, p = batch_size, request.patch_size
    views = Views(batch_size=b)
    n_patches = (image_size // p) ** 2
    if request.global_crops:
        views.global_crops = torch.randn(
            n_global * b, in_chans, image_size, image_size, generator=g
        )
        views.n_global = n_global
    if request.local_crops:
        views.local_crops = torch.randn(n_local * b, in_chans, local_size, local_size, generator=g)
        views.n_local = n_local
    if request.block_masks is not None and views.global_crops is not None:
        spec = request.block_masks
        views.block_masks = random_block_masks(
            n_global * b, n_patches, (spec.ratio_min, spec.ratio_max), spec.masked_share, g
        )
    if request.single_view:
        views.single_view = torch.randn(b, in_chans, image_size, image_size, generator=g)
    if request.mae_mask_ratio is not None:
        views.mae_masks = random_patch_masks(b, n_patches, request.mae_mask_ratio, g)
    if request.text:
        words = ["lungs", "clear", "no", "effusion", "cardiomegaly", "mild", "opacity", "left"]
        views.text = [
            " ".join(words[int(j)] for j in torch.randint(len(words), (5,), generator=g))
            for _ in range(b)
        ]
    return views


def make_step(
    student: nn.Module,
    views: Views,
    teacher: nn.Module | None = None,
    step: int = 0,
    epoch: int = 0,
    progress: float = 0.0,
) -> StepOutputs:
    """The shared forward pass as the engine runs it: the student once per crop group (global
    crops with ``views.block_masks``), the teacher without gradient on the global crops."""
    student_global = student_local = teacher_global = None
    if views.global_crops is not None:
        student_global = student(views.global_crops, masks=views.block_masks)
        if teacher is not None:
            with torch.no_grad():
                teacher_global = teacher(views.global_crops)
    if views.local_crops is not None:
        student_local = student(views.local_crops)
    return StepOutputs(
        views=views,
        student_global=student_global,
        student_local=student_local,
        teacher_global=teacher_global,
        student=student,
        progress=progress,
        epoch=epoch,
        step=step,
    )


def build_objective(
    factory: Callable[..., Objective],
    options: dict[str, Any],
    ctx: ObjectiveContext,
    before: tuple[tuple[Callable[..., Objective], dict[str, Any]], ...] = (),
) -> tuple[Objective, list[Objective]]:
    """Set up the objectives in ``before`` (e.g. DINO for iBOT's shared head), then this one."""
    others = []
    for other_factory, other_options in before:
        other = other_factory(**other_options)
        other.setup(ctx)
        others.append(other)
    objective = factory(**options)
    objective.setup(ctx)
    return objective, others


class ObjectiveContractTests:
    """Contract tests every objective passes; subclass and set ``factory`` and ``options``."""

    factory: ClassVar[Callable[..., Objective]]
    options: ClassVar[dict[str, Any]] = {}
    #: Objectives set up first, in recipe order (e.g. ``((DINO, {...}),)`` for iBOT).
    before: ClassVar[tuple[tuple[Callable[..., Objective], dict[str, Any]], ...]] = ()
    batch_size: ClassVar[int] = 4
    image_size: ClassVar[int] = 16
    patch_size: ClassVar[int] = 4
    embed_dim: ClassVar[int] = 32
    in_chans: ClassVar[int] = 1
    others: list[Objective]

    # -- helpers -----------------------------------------------------------------------
    def context(self) -> ObjectiveContext:
        return objective_context(
            embed_dim=self.embed_dim,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            image_size=self.image_size,
        )

    def build(self, seed: int = 0) -> tuple[Objective, nn.Module, nn.Module | None]:
        torch.manual_seed(seed)
        objective, self.others = build_objective(
            type(self).factory, self.options, self.context(), self.before
        )
        student = tiny_backbone(self.embed_dim, self.patch_size, self.image_size, self.in_chans)
        teacher = None
        if objective.uses_teacher:
            teacher = copy.deepcopy(student).requires_grad_(False)
        return objective, student, teacher

    def views(self, objective: Objective, seed: int = 0) -> Views:
        return make_views(
            objective.request(self.patch_size),
            batch_size=self.batch_size,
            image_size=self.image_size,
            local_size=self.image_size // 2,
            in_chans=self.in_chans,
            seed=seed,
        )

    def step(
        self,
        objective: Objective,
        student: nn.Module,
        teacher: nn.Module | None,
        views: Views,
        step: int = 20,
    ) -> StepOutputs:
        return make_step(student, views, teacher, step=step, epoch=step // 10, progress=step / 100)

    # -- the contract --------------------------------------------------------------------
    def test_construction_is_cheap(self) -> None:
        objective = type(self).factory(**self.options)
        assert sum(p.numel() for p in objective.parameters()) == 0, (
            "an objective must build its heads in setup(), not at construction"
        )

    def test_options_model(self) -> None:
        model = getattr(type(self).factory, "Options", None)
        assert model is not None, "the factory needs a nested pydantic Options model"
        assert "weight" not in model.model_fields, (
            "the recipe weight is the engine's, not an option"
        )
        model(**self.options)
        from pydantic import ValidationError

        with pytest.raises((ValidationError, TypeError)):
            type(self).factory(**self.options, not_an_option=1)

    def test_request(self) -> None:
        objective, _, _ = self.build()
        request = objective.request(self.patch_size)
        assert isinstance(request, ViewRequest)
        assert request.patch_size == self.patch_size

    def test_smoke(self) -> None:
        objective, student, teacher = self.build()
        result = objective.loss(self.step(objective, student, teacher, self.views(objective)))
        assert isinstance(result.loss, Tensor) and result.loss.ndim == 0
        assert torch.isfinite(result.loss)
        assert all(isinstance(v, float) for v in result.metrics.values())

    def test_gradients_reach_backbone(self) -> None:
        objective, student, teacher = self.build()
        result = objective.loss(self.step(objective, student, teacher, self.views(objective)))
        result.loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads, "no gradient reached the student backbone"
        assert all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
        if teacher is not None:
            assert all(p.grad is None for p in teacher.parameters())
        for _student_head, teacher_head in objective.ema_pairs():
            assert not any(p.requires_grad for p in teacher_head.parameters())
            assert all(p.grad is None for p in teacher_head.parameters())

    def test_bad_input(self) -> None:
        objective, student, _ = self.build()
        empty = StepOutputs(
            views=Views(batch_size=self.batch_size),
            student_global=None,
            student_local=None,
            teacher_global=None,
            student=student,
            progress=0.0,
            epoch=0,
            step=0,
        )
        with pytest.raises(ValueError, match=r"\S"):
            objective.loss(empty)

    def test_nan_input_is_not_hidden(self) -> None:
        objective, student, teacher = self.build()
        views = self.views(objective)
        b = self.batch_size
        for name in ("global_crops", "local_crops", "single_view"):
            x = getattr(views, name)
            if x is not None:
                x = x.clone()
                x[::b] = math.nan  # image 0 of every crop group
                setattr(views, name, x)
        result = objective.loss(self.step(objective, student, teacher, views))
        assert not torch.isfinite(result.loss), "a NaN input must give a non-finite loss"

    def test_determinism(self) -> None:
        losses = []
        for _ in range(2):
            objective, student, teacher = self.build(seed=3)
            views = self.views(objective, seed=4)
            losses.append(objective.loss(self.step(objective, student, teacher, views)).loss)
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)

    def test_learning_signals(self) -> None:
        """A diagnosed step (``StepOutputs.diagnose``) gives the same loss, and well-formed
        :class:`~medssl.types.LearningSignals` when the objective returns them."""
        from medssl.engine.diagnostics import learning_signals

        objective, student, teacher = self.build(seed=3)
        plain = objective.loss(
            self.step(objective, student, teacher, self.views(objective, seed=4))
        ).loss
        objective, student, teacher = self.build(seed=3)
        views = self.views(objective, seed=4)
        step = dataclasses.replace(self.step(objective, student, teacher, views), diagnose=True)
        result = objective.loss(step)
        torch.testing.assert_close(result.loss, plain, rtol=0, atol=0)
        signals = result.signals
        if signals is None:
            return
        if signals.chance is not None:
            chance = float(signals.chance)
            assert math.isfinite(chance) and chance > 0, "the chance level must be a positive loss"
        for probs in (signals.teacher_probs, signals.student_probs):
            if probs is not None:
                assert probs.dim() == 2 and not probs.requires_grad
                sums = probs.double().sum(dim=1)
                torch.testing.assert_close(sums, torch.ones_like(sums))
        assert all(t.requires_grad for t in signals.backbone_tokens)
        values = learning_signals({"objective": result}, {"objective": 1.0}, step)
        assert all(math.isfinite(v) for v in values["objective"].values())

    def test_state_dict_round_trip(self) -> None:
        objective, student, teacher = self.build(seed=1)
        views = self.views(objective, seed=2)
        objective.loss(self.step(objective, student, teacher, views))  # moves running state
        states = [copy.deepcopy(o.state_dict()) for o in [*self.others, objective]]
        expected = objective.loss(self.step(objective, student, teacher, views)).loss
        restored, _, _ = self.build(seed=7)
        for o, state in zip([*self.others, restored], states, strict=True):
            o.load_state_dict(state)
        got = restored.loss(self.step(restored, student, teacher, views)).loss
        torch.testing.assert_close(got, expected)


# -- hand-made backbone outputs -----------------------------------------------------------
HAND_MADE_EMBED = 12


def objective_context(**overrides: object) -> ObjectiveContext:
    """An ObjectiveContext for tests (10 steps per epoch, 16-pixel images, patch 4)."""
    values: dict[str, Any] = {
        "embed_dim": HAND_MADE_EMBED,
        "patch_size": 4,
        "in_chans": 1,
        "total_steps": 100,
        "steps_per_epoch": 10,
        "shared": {},
        "image_size": 16,
    }
    values.update(overrides)
    return ObjectiveContext(**values)


def random_tokens(
    rows: int, n_patches: int, dtype: torch.dtype, gen: torch.Generator
) -> BackboneOutput:
    """A BackboneOutput of leaf tensors that require grad (so tests can read their grads)."""
    cls = torch.randn(rows, HAND_MADE_EMBED, generator=gen, dtype=dtype).requires_grad_()
    patch = torch.randn(
        rows, n_patches, HAND_MADE_EMBED, generator=gen, dtype=dtype
    ).requires_grad_()
    return BackboneOutput(cls=cls, patch=patch)


def hand_made_step(
    b: int,
    n_global: int,
    n_local: int,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    step: int = 0,
    n_patches: int = 6,
    block_masks: Tensor | None = None,
) -> StepOutputs:
    """StepOutputs of random leaf tensors (embed 12): no backbone, float64 by default, for
    pinning losses to reference formulas. The teacher's tensors are detached."""
    gen = torch.Generator().manual_seed(seed)
    views = Views(batch_size=b, n_global=n_global, n_local=n_local, block_masks=block_masks)
    student_global = random_tokens(n_global * b, n_patches, dtype, gen)
    student_local = random_tokens(n_local * b, 2, dtype, gen) if n_local else None
    teacher = random_tokens(n_global * b, n_patches, dtype, gen)
    teacher = BackboneOutput(cls=teacher.cls.detach(), patch=teacher.patch.detach())
    return StepOutputs(
        views=views,
        student_global=student_global,
        student_local=student_local,
        teacher_global=teacher,
        student=nn.Identity(),
        progress=0.0,
        epoch=step // 10,
        step=step,
    )


@torch.no_grad()
def perturb_(module: nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Move a (teacher) head away from its student copy so the two differ."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype) * p.std().clamp_min(0.02))
