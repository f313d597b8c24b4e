"""koleo against DINOv2's KoLeoLoss formula and lightly's KoLeoLoss."""

from __future__ import annotations

import pytest
import torch
from lightly.loss import KoLeoLoss

from medssl.losses import koleo

from . import dinov2_reference as ref


@pytest.mark.parametrize(
    ("dtype", "tol"),
    # fp32 / bf16 inputs are computed in fp32 (autocast off, as DINOv2 does): errors are
    # fp32 rounding of distances ~0.1-1 through log; bf16 inputs are rounded first.
    [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1e-5)],
)
@pytest.mark.parametrize("shape", [(2, 8), (16, 32), (33, 5)])
def test_matches_dinov2(dtype: torch.dtype, tol: float, shape: tuple[int, int]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(dtype).requires_grad_()
    got = koleo(x, impl="torch")
    x_ref = x.detach().double().requires_grad_()
    want = ref.koleo_loss(x_ref)
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    (g,) = torch.autograd.grad(got, x)
    (g_ref,) = torch.autograd.grad(want, x_ref)
    grad_tol = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 2e-2)
    torch.testing.assert_close(g.double(), g_ref, atol=grad_tol, rtol=grad_tol)


def test_matches_lightly() -> None:
    x = torch.randn(12, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
    got = koleo(x)
    want = KoLeoLoss()(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_of_one_is_zero_with_grad(dtype: torch.dtype) -> None:
    """dinov2 issue #314: a single row has no neighbour; the loss is 0, not NaN or huge."""
    x = torch.randn(1, 8, dtype=dtype, requires_grad=True)
    loss = koleo(x)
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="koleo: x has no rows"):
        koleo(torch.zeros(0, 4))
