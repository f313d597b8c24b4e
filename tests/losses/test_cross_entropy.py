"""soft_cross_entropy against DINOv2's DINO / iBOT formulas and lightly's DINOLoss."""

from __future__ import annotations

import pytest
import torch
from lightly.loss import DINOLoss

from medssl.losses import soft_cross_entropy, softmax_center

from . import dinov2_reference as ref


def _inputs(b: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = torch.rand(b, k, generator=g, dtype=torch.float64) * 2 - 1
    teacher = torch.softmax((torch.rand(b, k, generator=g, dtype=torch.float64) * 2 - 1) / 0.04, -1)
    return student, teacher


# (value atol, grad atol) against the fp64 formula. fp32: fp32 log-softmax of logits/0.1
# in [-10, 10]; bf16: inputs rounded to bf16 (the reference sees the rounded values) and
# computed in fp32, the gradient returned in bf16 (relative 2^-8 of entries <= 1/tau).
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 1e-6), torch.bfloat16: (2e-5, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 100), (33, 300)])
def test_matches_dinov2_values_and_grads(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    s64, t64 = _inputs(*shape)
    s = s64.to(dtype).requires_grad_()
    t = t64.to(dtype)
    got = soft_cross_entropy(s, t, 0.1, impl="torch")
    s_ref = s.detach().double().requires_grad_()
    want = ref.ibot_patch_token_loss(s_ref, t.double(), 0.1)
    val_tol, grad_tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, atol=val_tol, rtol=0)
    w = torch.randn(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((got * w.to(got.dtype)).sum(), s)
    (g_ref,) = torch.autograd.grad((want * w).sum(), s_ref)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), g_ref, atol=grad_tol, rtol=0)


def test_dino_multicrop_sum_matches_dinov2() -> None:
    """DINOv2's crop-pair sum, rebuilt from softmax_center + soft_cross_entropy."""
    g = torch.Generator().manual_seed(1)
    students = [torch.randn(5, 64, generator=g, dtype=torch.float64) for _ in range(4)]
    teachers = [torch.randn(5, 64, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.randn(1, 64, generator=g, dtype=torch.float64) * 0.1
    probs = [softmax_center(t, center, 0.04, impl="torch") for t in teachers]
    got = sum(
        -(-soft_cross_entropy(s, p, 0.1, impl="torch")).mean() for s in students for p in probs
    )
    want = ref.dino_clstoken_loss(
        students, [ref.softmax_center_teacher(t, center, 0.04) for t in teachers], 0.1
    )
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_lightly_dino_loss(dtype: torch.dtype) -> None:
    """lightly 1.6 DINOLoss (mean centering): value and student gradient.

    Small shapes, so lightly's fp32 einsum error (docs/references.md: up to 1.7e-3 relative at
    1e3 x 65536) stays below the stated 1e-5 relative here.
    """
    g = torch.Generator().manual_seed(2)
    k, b, views = 128, 6, 3
    teacher = [torch.randn(b, k, generator=g, dtype=dtype) for _ in range(views)]
    student = [torch.randn(b, k, generator=g, dtype=dtype).requires_grad_() for _ in range(views)]
    center = torch.randn(1, 1, k, generator=g, dtype=dtype) * 0.1
    lightly_loss = DINOLoss(output_dim=k, teacher_temp=0.05, student_temp=0.1).to(dtype)
    lightly_loss.center.copy_(center)
    want = lightly_loss(teacher, student)
    want_grads = torch.autograd.grad(want, student)

    probs = [softmax_center(t, center[0], 0.05, impl="torch") for t in teacher]
    terms = [
        soft_cross_entropy(s, p, 0.1, impl="torch").mean()
        for i, p in enumerate(probs)
        for j, s in enumerate(student)
        if i != j  # lightly skips a view against itself
    ]
    got = torch.stack(terms).mean()
    grads = torch.autograd.grad(got, student)
    # lightly holds the teacher temperature as a fp32 tensor (0.05 -> 0.0500000007), so even
    # in fp64 it differs from the exact formula at ~1e-10 relative.
    rtol = 1e-8 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, want, rtol=rtol, atol=0)
    for a, b_ in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, b_, rtol=rtol, atol=rtol)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="soft_cross_entropy: teacher_probs shape"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4), 0.1)
