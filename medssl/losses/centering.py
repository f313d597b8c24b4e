"""Teacher-side centring: DINO's softmax centring and Sinkhorn-Knopp (SwAV / DINOv2).

Formulas of ``DINOLoss.softmax_center_teacher`` and ``DINOLoss.sinkhorn_knopp_teacher`` in
facebookresearch/dinov2 (``dinov2/loss/dino_clstoken_loss.py``); Sinkhorn-Knopp from
Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(SwAV, 2020). Both return fp32 (fp64 for fp64 input) probabilities of shape ``[B, K]`` whose rows sum to 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl
from medssl.losses.sinkhorn import global_max, sinkhorn_normalize_

__all__ = ["softmax_center", "sinkhorn_knopp", "sinkhorn_normalize_"]


def softmax_center(
    teacher_logits: Tensor, center: Tensor | None, temp: float, impl: str = "auto"
) -> Tensor:
    """``softmax((teacher_logits - center) / temp)`` over the last dim, in fp32 (fp64 for fp64 inputs).

    ``center`` broadcasts against ``teacher_logits`` (``[K]``, ``[1, K]``) or is ``None``.
    """
    check_2d("teacher_logits", "softmax_center", teacher_logits)
    if resolve_impl(impl, teacher_logits, "softmax_center") == "triton":
        from medssl.losses import triton_kernels

        return triton_kernels.softmax_center(teacher_logits, center, temp)
    t = teacher_logits.to(acc_dtype(teacher_logits))
    if center is not None:
        t = t - center.to(t.dtype)
    return torch.softmax(t / temp, dim=-1)


def sinkhorn_knopp(
    teacher_logits: Tensor, temp: float, n_iter: int = 3, impl: str = "auto"
) -> Tensor:
    """Sinkhorn-Knopp teacher probabilities ``[B, K]`` (rows sum to 1), in fp32 (fp64 for fp64 inputs).

    ``exp(teacher_logits / temp)`` normalised as :func:`sinkhorn_normalize_` describes.
    All-reduces across ranks when torch.distributed is initialised.
    """
    check_2d("teacher_logits", "sinkhorn_knopp", teacher_logits)
    if n_iter < 0:
        raise ValueError(f"medssl.losses.sinkhorn_knopp: n_iter must be >= 0, got {n_iter}")
    if resolve_impl(impl, teacher_logits, "sinkhorn_knopp") == "triton":
        from medssl.losses import triton_kernels

        return triton_kernels.sinkhorn_knopp(teacher_logits, temp, n_iter)
    scaled = teacher_logits.to(acc_dtype(teacher_logits)) / temp
    q = scaled.sub_(global_max(scaled)).exp_()
    return sinkhorn_normalize_(q, n_iter)
