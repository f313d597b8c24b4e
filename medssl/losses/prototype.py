"""Fused prototype heads: projection onto K prototypes + soft cross-entropy / teacher targets.

The last layer of the DINO / iBOT heads maps a bottleneck ``[B, D]`` onto ``K`` prototypes
(65,536 in DINOv2). Eager code materialises several ``[B, K]`` fp32 matrices (logits,
softmax, their gradients); the functions here stream over the prototypes instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.centering import global_max, sinkhorn_normalize_
from medssl.losses.dispatch import check_2d, resolve_impl

__all__ = ["prototype_cross_entropy", "prototype_targets"]


def prototype_cross_entropy(
    student_features: Tensor,
    teacher_probs: Tensor,
    prototypes: Tensor,
    student_temp: float,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Per-row soft cross-entropy of ``features @ prototypes.T / student_temp`` vs targets."""
    fn = "prototype_cross_entropy"
    check_2d("student_features", fn, student_features)
    logits = student_features @ prototypes.T
    return -(teacher_probs.float() * torch.log_softmax(logits.float() / student_temp, -1)).sum(-1)


@torch.no_grad()
def prototype_targets(
    teacher_features: Tensor,
    prototypes: Tensor,
    temp: float,
    centering: str = "softmax_center",
    center: Tensor | None = None,
    n_iter: int = 3,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> Tensor:
    """Teacher probabilities ``[B, K]`` of ``teacher_features @ prototypes.T``."""
    fn = "prototype_targets"
    check_2d("teacher_features", fn, teacher_features)
    resolve_impl(impl, teacher_features, fn)
    out = (teacher_features @ prototypes.T).float()
    if centering == "softmax_center":
        if center is not None:
            out.sub_(center.float())
        return torch.softmax(out.div_(temp), dim=-1)
    out.div_(temp)
    out.sub_(global_max(out)).exp_()
    return sinkhorn_normalize_(out, n_iter)
