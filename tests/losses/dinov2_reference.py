"""The loss formulas of facebookresearch/dinov2 (``dinov2/loss``), written out plainly.

Eager, unfused and unshifted, as the original code computes them; the tests run them in
float64 so they serve as ground truth for every implementation in :mod:`medssl.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def softmax_center_teacher(teacher_output: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """``DINOLoss.softmax_center_teacher`` (dino_clstoken_loss.py), centre update excluded."""
    return F.softmax((teacher_output - center) / teacher_temp, dim=-1)


def sinkhorn_knopp_teacher(
    teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3
) -> Tensor:
    """``DINOLoss.sinkhorn_knopp_teacher`` on one rank (world size 1)."""
    q = torch.exp(teacher_output / teacher_temp).t()  # K x B
    b = q.shape[1]
    k = q.shape[0]
    q = q / torch.sum(q)
    for _ in range(n_iterations):
        q = q / torch.sum(q, dim=1, keepdim=True)
        q = q / k
        q = q / torch.sum(q, dim=0, keepdim=True)
        q = q / b
    q = q * b
    return q.t()


def dino_clstoken_loss(
    student_outputs: list[Tensor], teacher_probs: list[Tensor], student_temp: float
) -> Tensor:
    """``DINOLoss.forward``: every student crop against every teacher crop, summed."""
    total = 0
    for s in student_outputs:
        lsm = F.log_softmax(s / student_temp, dim=-1)
        for t in teacher_probs:
            total = total - torch.sum(t * lsm, dim=-1).mean()
    return total


def ibot_patch_token_loss(
    student_patch: Tensor, teacher_probs: Tensor, student_temp: float
) -> Tensor:
    """Per-token term of ``iBOTPatchLoss.forward_masked`` (before mask weighting)."""
    return -torch.sum(teacher_probs * F.log_softmax(student_patch / student_temp, dim=-1), dim=-1)


def koleo_loss(student_output: Tensor, eps: float = 1e-8) -> Tensor:
    """``KoLeoLoss.forward`` (koleo_loss.py)."""
    x = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)
    _, nn_idx = torch.max(dots, dim=1)
    distances = torch.nn.PairwiseDistance(2, eps=eps)(x, x[nn_idx])
    return -torch.log(distances + eps).mean()
