"""Teacher-side centring: DINO's softmax centring and Sinkhorn-Knopp (SwAV / DINOv2).

Formulas of ``DINOLoss.softmax_center_teacher`` and ``DINOLoss.sinkhorn_knopp_teacher`` in
facebookresearch/dinov2 (``dinov2/loss/dino_clstoken_loss.py``); Sinkhorn-Knopp from
Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(SwAV, 2020). Both return fp32 (fp64 for fp64 input) probabilities of shape ``[B, K]`` whose rows sum to 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl

__all__ = ["softmax_center", "sinkhorn_knopp", "sinkhorn_normalize_"]


_TINY = torch.finfo(torch.float32).tiny


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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


def sinkhorn_normalize_(q: Tensor, n_iter: int) -> Tensor:
    """Sinkhorn-Knopp normalisation, in place, of ``q = exp(logits/temp - shift)`` ``[B, K]``.

    Follows DINOv2: normalise the total to 1, then ``n_iter`` times make every prototype
    (column here) sum to ``1/K`` and every sample (row) sum to ``1/B_total``; finally scale
    by ``B_total`` so rows sum to 1. With torch.distributed initialised, the total and the
    per-prototype sums are all-reduced and ``B_total`` is the global batch, as in DINOv2.
    """
    world = dist.get_world_size() if _distributed() else 1
    rows, k = q.shape
    b_total: float | Tensor = rows
    total = q.sum()
    if world > 1:
        # Ranks may hold different row counts (iBOT's masked patches): reduce the count too,
        # as DINOv2 all-reduces n_masked_patches.
        b_total = torch.tensor(float(rows), dtype=q.dtype, device=q.device)
        dist.all_reduce(b_total)
        dist.all_reduce(total)
    q.div_(total)
    for _ in range(n_iter):
        per_prototype = q.sum(dim=0, keepdim=True)
        if world > 1:
            dist.all_reduce(per_prototype)
        # A prototype (or sample) whose every exp() underflowed would give 0/0; keeping it
        # at zero instead is the limit of the formula and leaves all other entries as is.
        q.div_(per_prototype.clamp_min_(_TINY).mul_(k))
        q.div_(q.sum(dim=1, keepdim=True).clamp_min_(_TINY).mul_(b_total))
    return q.mul_(b_total)


def global_max(x: Tensor) -> Tensor:
    """Max of ``x`` across all elements (and all ranks when distributed), as a 0-d tensor.

    Subtracting it before ``exp`` keeps Sinkhorn-Knopp finite at low temperatures; the shift
    cancels in the first normalisation, so the result equals DINOv2's unshifted formula.
    """
    m = x.max()
    if _distributed() and dist.get_world_size() > 1:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


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
