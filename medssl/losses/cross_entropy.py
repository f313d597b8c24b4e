"""Soft-target cross-entropy, the student side of DINO and iBOT.

``-(p_t * log_softmax(s / tau)).sum(-1)`` per row, as ``DINOLoss.forward`` and
``iBOTPatchLoss.forward`` compute it in facebookresearch/dinov2 (``dinov2/loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl

__all__ = ["soft_cross_entropy"]


def soft_cross_entropy(
    student_logits: Tensor, teacher_probs: Tensor, student_temp: float, impl: str = "auto"
) -> Tensor:
    """Per-row loss ``[B]`` (fp32) of ``student_logits [B, K]`` against ``teacher_probs [B, K]``.

    The teacher probabilities get no gradient in the Triton path; in the torch path they
    do (autograd), though DINO/iBOT always pass detached targets.
    """
    fn = "soft_cross_entropy"
    check_2d("student_logits", fn, student_logits)
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"medssl.losses.{fn}: teacher_probs shape {tuple(teacher_probs.shape)} != "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    if resolve_impl(impl, student_logits, fn) == "triton":
        from medssl.losses import triton_kernels

        return triton_kernels.soft_cross_entropy(student_logits, teacher_probs, student_temp)
    dtype = acc_dtype(student_logits)
    log_p = torch.log_softmax(student_logits.to(dtype) / student_temp, dim=-1)
    return -(teacher_probs.to(dtype) * log_p).sum(dim=-1)
