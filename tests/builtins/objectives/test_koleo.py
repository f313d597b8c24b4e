"""KoLeo pinned to facebookresearch/dinov2's ``KoLeoLoss`` (float64) and lightly's KoLeoLoss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import KoLeoLoss
from torch import Tensor

from medssl.builtins.objectives import KoLeo
from medssl.testing.objectives import hand_made_step


def dinov2_koleo(student_output: Tensor, eps: float = 1e-8) -> Tensor:
    """dinov2/loss/koleo_loss.py, written out."""
    x = F.normalize(student_output, eps=eps, p=2, dim=-1)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)  # the diagonal
    _, nn_idx = torch.max(dots, dim=1)
    distances = torch.nn.PairwiseDistance(2, eps=eps)(x, x[nn_idx])
    return -torch.log(distances + eps).mean()


def test_matches_dinov2_formula_float64_summed_over_crops() -> None:
    out = hand_made_step(b=6, n_global=2, n_local=0, seed=3)
    got = KoLeo().loss(out).loss
    cls = out.student_global.cls
    expected = sum(dinov2_koleo(c) for c in cls.chunk(2))  # ssl_meta_arch.py: summed over crops
    torch.testing.assert_close(got, expected.float(), rtol=1e-6, atol=1e-6)
    # The objective computes in fp32 (as DINOv2); gradients against the float64 formula:
    g_got = torch.autograd.grad(got, cls)[0]
    g_ref = torch.autograd.grad(expected, cls)[0]
    torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-6)
    assert got.dtype == torch.float32


def test_matches_lightly_koleo_loss() -> None:
    """Tolerance: fp32 on both sides, rtol 1e-6."""
    out = hand_made_step(b=5, n_global=2, n_local=0, dtype=torch.float32, seed=4)
    got = KoLeo().loss(out).loss
    expected = sum(KoLeoLoss()(c) for c in out.student_global.cls.chunk(2))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_batch_size_one_is_finite_and_zero() -> None:
    out = hand_made_step(b=1, n_global=2, n_local=0, dtype=torch.float32)
    loss = KoLeo().loss(out).loss
    assert loss.item() == 0.0
    loss.backward()
    grad = out.student_global.cls.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_low_precision_input_is_computed_in_fp32() -> None:
    out = hand_made_step(b=4, n_global=2, n_local=0, dtype=torch.bfloat16)
    loss = KoLeo().loss(out).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
