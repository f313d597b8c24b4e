"""iBOT masked-patch self-distillation (Zhou et al. 2022), as DINOv2 trains it.

Semantics of facebookresearch/dinov2 (``dinov2/loss/ibot_patch_loss.py::forward_masked``
and ``dinov2/train/ssl_meta_arch.py``): the student sees the global crops with block
masks (a learned mask token replaces the masked patch embeddings); its output tokens at the
masked positions go through the head and are matched to the teacher's head output at the
same positions of the unmasked crops. Each image's masked-patch losses are averaged, and
those averages summed and divided by the number of global-crop images (masked or not).
The head is DINO's by default (``separate_head: false``); iBOT builds its own when asked
or when DINO is not enabled. It has its own centre.
"""

from __future__ import annotations

import math

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor
from typing_extensions import Self

from medssl.builtins.objectives.dino import (
    HeadOptions,
    SelfDistillation,
    TeacherOptions,
    build_head,
    check_output,
    dense_rows,
)
from medssl.builtins.objectives.heads import DINOHead, build_teacher_head
from medssl.types import (
    BlockMaskSpec,
    LearningSignals,
    ObjectiveContext,
    ObjectiveResult,
    StepOutputs,
    ViewRequest,
)

__all__ = ["IBOT"]


class IBOT(SelfDistillation):
    """iBOT patch loss on the block-masked global crops (see the module docstring)."""

    name = "ibot"

    class Options(TeacherOptions, HeadOptions):
        model_config = ConfigDict(extra="forbid")

        separate_head: bool = Field(
            False, description="own head instead of DINO's (head options apply only then)"
        )
        mask_ratio: tuple[float, float] = Field(
            (0.1, 0.5), description="range of per-image masked shares"
        )
        masked_share: float = Field(0.5, ge=0, le=1, description="share of crops masked")
        min_patches: int = Field(4, ge=1, description="smallest mask block, in patches")
        aspect_min: float = Field(0.3, gt=0, le=1, description="block aspect in [min, 1/min]")

        @model_validator(mode="after")
        def _check(self) -> Self:
            lo, hi = self.mask_ratio
            if not 0 <= lo <= hi < 1:
                raise ValueError(
                    f"mask_ratio must satisfy 0 <= min <= max < 1, got {self.mask_ratio}"
                )
            return self

    shares_from = ("dino",)

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        o = self.options
        shared = ctx.shared.get("dino_head"), ctx.shared.get("dino_teacher_head")
        self.owns_head = o.separate_head or shared[0] is None or shared[1] is None
        if self.owns_head:
            self.head = build_head(ctx, o, "ibot_head")
            self.teacher_head = build_teacher_head(self.head)
            k = o.prototypes
        else:
            # A tuple is not registered as a submodule: DINO owns (and checkpoints) the heads.
            self._shared_heads: tuple[DINOHead, DINOHead] = shared  # type: ignore[assignment]
            k = shared[0].n_prototypes  # type: ignore[union-attr]
        self.register_buffer("center", torch.zeros(1, k))

    @property
    def heads(self) -> tuple[DINOHead, DINOHead]:
        if self.owns_head:
            return self.head, self.teacher_head
        return self._shared_heads

    def request(self, patch_size: int) -> ViewRequest:
        o = self.options
        spec = BlockMaskSpec(
            ratio_min=o.mask_ratio[0],
            ratio_max=o.mask_ratio[1],
            masked_share=o.masked_share,
            min_patches=o.min_patches,
            aspect_min=o.aspect_min,
        )
        return ViewRequest(global_crops=True, block_masks=spec, patch_size=patch_size)

    def ema_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        # A shared head's teacher is updated once, through DINO.
        return [(self.head, self.teacher_head)] if self.owns_head else []

    def frozen_last_layer_params(self) -> list[torch.nn.Parameter]:
        if self.owns_head and self.options.freeze_last_layer_epochs > 0:
            return [self.head.last_layer.weight]
        return []

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        v = out.views
        rows = v.n_global * v.batch_size
        student = check_output(self.name, "student_global", out.student_global, rows)
        teacher = check_output(self.name, "teacher_global", out.teacher_global, rows)
        masks = v.block_masks
        if masks is None:
            raise ValueError(
                "objective 'ibot': views.block_masks is None; the augmentation policy must "
                "honour ViewRequest.block_masks"
            )
        n_patches = student.patch.shape[1]
        if masks.shape != (rows, n_patches) or masks.dtype != torch.bool:
            raise ValueError(
                f"objective 'ibot': views.block_masks must be bool [{rows}, {n_patches}], "
                f"got {masks.dtype} {tuple(masks.shape)}"
            )
        if teacher.patch.shape[:2] != student.patch.shape[:2]:
            raise ValueError(
                f"objective 'ibot': teacher patch tokens {tuple(teacher.patch.shape)} do not "
                f"match the student's {tuple(student.patch.shape)}"
            )
        head, teacher_head = self.heads
        protos, keepalive = self._student_prototypes(head, out.step)
        flat = masks.flatten()
        index = flat.nonzero().squeeze(1)
        s_tokens = student.patch.flatten(0, 1).index_select(0, index)
        temp = self._teacher_temp(out.step)
        signals = None
        if index.numel() == 0:
            # Nothing masked in this batch: a zero still connected to the student's tokens.
            loss = student.patch.sum() * 0.0
        else:
            t_tokens = teacher.patch.flatten(0, 1).index_select(0, index)
            probs, _ = self._targets(teacher_head, t_tokens, temp)
            feats = head.features(s_tokens)
            ce = self._cross_entropy(feats, probs, protos)
            weights = _per_image_weights(masks).to(ce.dtype)
            loss = (ce * weights).sum() / rows
            if out.diagnose:
                signals = self._signals(masks, probs, feats, protos)
        if keepalive is not None:
            loss = loss + keepalive
        return ObjectiveResult(
            loss=loss,
            metrics={"masked_patches": float(index.numel()), "teacher_temp": temp},
            signals=signals,
        )

    @torch.no_grad()
    def _signals(
        self, masks: Tensor, probs: Tensor, feats: Tensor, protos: Tensor
    ) -> LearningSignals:
        """Chance: a uniform student scores ``ln K`` on every masked token, so the loss
        (per-image means, summed over the masked images, over all global-crop images) is
        ``ln K x masked images / images``. KL: ``mean(CE - H(teacher))`` over (at most
        ``MAX_ROWS``) masked tokens, per token."""
        teacher = dense_rows(probs)
        student = self._student_probs(feats, protos)
        k = teacher.shape[-1]
        masked_images = (masks.sum(dim=1) > 0).sum()
        chance = math.log(k) * masked_images.double() / masks.shape[0]
        t = teacher.double()
        cross = -(t * torch.log(student.double().clamp_min(1e-30))).sum(dim=1)
        entropy = -(t * torch.log(t.clamp_min(1e-30))).sum(dim=1)
        head_key = self.name if self.owns_head else "dino"
        return LearningSignals(
            chance=chance,
            teacher_probs=teacher,
            student_probs=student,
            kl=(cross - entropy).mean(),
            hint=self._hint(head_key),
        )


def _per_image_weights(masks: Tensor) -> Tensor:
    """``1 / (masked patches of its image)`` for every masked patch, in mask order."""
    per_image = masks.sum(dim=1, keepdim=True).clamp_min(1)
    return (1.0 / per_image).expand_as(masks)[masks]
