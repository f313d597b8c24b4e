"""KoLeo regulariser on the student's CLS tokens (Sablayrolles et al. 2019), as DINOv2 uses it.

Semantics of facebookresearch/dinov2 (``dinov2/loss/koleo_loss.py`` and
``ssl_meta_arch.py``): :func:`medssl.losses.koleo` (L2-normalise, nearest neighbour by
inner product, ``-mean log distance``, in fp32) on the backbone's CLS tokens of each global
crop separately, summed over the crops. The recipe weight (0.1 in DINOv2) scales the sum.
A crop of one image contributes 0 (no NaN at batch size 1, dinov2 issue #314).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from medssl.losses import koleo
from medssl.objectives.configured import ConfiguredObjective
from medssl.types import ObjectiveResult, StepOutputs, ViewRequest

__all__ = ["KoLeo"]


class KoLeo(ConfiguredObjective):
    """KoLeo on the student CLS tokens of each global crop, summed over crops."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        eps: float = Field(1e-8, gt=0, description="distance and normalisation epsilon")

    def request(self, patch_size: int) -> ViewRequest:
        return ViewRequest(global_crops=True, patch_size=patch_size)

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        v = out.views
        student = out.student_global
        if student is None:
            raise ValueError("objective 'koleo': StepOutputs.student_global is None")
        rows = v.n_global * v.batch_size
        if student.cls.ndim != 2 or student.cls.shape[0] != rows or rows == 0:
            raise ValueError(
                f"objective 'koleo': student_global.cls has shape {tuple(student.cls.shape)}, "
                f"expected [{rows}, D] ({v.n_global} global crops x batch size {v.batch_size})"
            )
        crops = student.cls.float().chunk(v.n_global)
        loss = torch.stack([koleo(c, eps=self.options.eps) for c in crops]).sum()
        return ObjectiveResult(loss=loss)
