"""KoLeo regulariser (Sablayrolles et al., "Spreading vectors for similarity search", 2019).

Formula of ``KoLeoLoss`` in facebookresearch/dinov2 (``dinov2/loss/koleo_loss.py``):
L2-normalise, find each row's nearest neighbour by maximum inner product (itself excluded),
``-log(||x_i - x_nn(i) + eps|| + eps)`` averaged over rows. Computed in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl

__all__ = ["koleo"]


def koleo(x: Tensor, eps: float = 1e-8, impl: str = "auto") -> Tensor:
    """KoLeo loss (0-d fp32 tensor) of the rows of ``x [B, D]``.

    A batch of one row has no neighbour: DINOv2 then measures the row's distance to itself
    (``-log(eps * sqrt(D) + eps)``, a large constant that only adds noise and, in low
    precision, NaN; dinov2 issue #314). Here it returns ``0`` connected to ``x`` so
    ``backward()`` still works and gives zero gradients.
    ``impl`` is accepted for a uniform API: the B x B similarity is a small matmul that
    torch already runs at full speed, so every choice uses the torch code.
    """
    check_2d("x", "koleo", x)
    resolve_impl(impl, x, "koleo")
    n = x.shape[0]
    if n == 0:
        raise ValueError("medssl.losses.koleo: x has no rows")
    if n == 1:
        return (x.to(acc_dtype(x)) * 0.0).sum()
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.to(acc_dtype(x)), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            dots = x @ x.T
            dots.fill_diagonal_(-2.0)
            nn_idx = dots.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nn_idx], p=2, eps=eps)
        return -torch.log(dist + eps).mean()
