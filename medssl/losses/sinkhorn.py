"""Sinkhorn-Knopp normalisation shared by the torch and the Triton paths of the losses.

Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"
(SwAV, 2020), as ``DINOLoss.sinkhorn_knopp_teacher`` in facebookresearch/dinov2
(``dinov2/loss/dino_clstoken_loss.py``). A leaf module: :mod:`medssl.losses.centering`,
:mod:`medssl.losses.prototype` and :mod:`medssl.losses.triton_kernels` all import it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_max", "sinkhorn_normalize_"]


_TINY = torch.finfo(torch.float32).tiny


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


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
