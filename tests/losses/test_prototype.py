"""prototype_cross_entropy / prototype_targets (chunked torch path) against the eager formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import prototype_cross_entropy, prototype_targets, tiles
from medssl.losses.prototype import default_chunk_size

from . import dinov2_reference as ref

SHAPES = [(7, 16, 100), (20, 32, 257), (33, 24, 300)]  # (B, D, K); K not a tile multiple


def head_inputs(b: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """L2-normalised bottleneck and prototypes (the DINO head) and Sinkhorn targets, fp64."""
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    w = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    p = ref.sinkhorn_knopp_teacher(t @ w.T, 0.05)
    return f, w, t, p


def eager_loss_and_grads(f, w, p, temp, weights):
    """``-(p * log_softmax(f @ w.T / temp)).sum(-1)`` in fp64 and its grads for ``weights``."""
    f = f.detach().double().requires_grad_()
    w = w.detach().double().requires_grad_()
    loss = ref.ibot_patch_token_loss(f @ w.T, p.double(), temp)
    gf, gw = torch.autograd.grad((loss * weights).sum(), (f, w))
    return loss, gf, gw


# (loss, grad) atol against fp64. fp32: fp32 matmuls over D <= 32 and fp32 online softmax;
# bf16: the tile logits come out of a bf16 matmul (2^-8 relative of |z| <= 1, divided by
# tau = 0.1: ~0.04 in s) and the grads are returned in bf16.
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 5e-2)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_size", [64, None])
def test_cross_entropy_matches_eager(dtype, shape, chunk_size) -> None:
    f64, w64, _, p = head_inputs(*shape)
    f = f64.to(dtype).requires_grad_()
    w = w64.to(dtype).requires_grad_()
    weights = torch.rand(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    loss = prototype_cross_entropy(f, p.to(dtype), w, 0.1, impl="torch", chunk_size=chunk_size)
    gf, gw = torch.autograd.grad((loss * weights.to(loss.dtype)).sum(), (f, w))
    # the reference sees the same (rounded) inputs
    want, want_gf, want_gw = eager_loss_and_grads(f, w, p.to(dtype), 0.1, weights)
    loss_tol, grad_tol = TOL[dtype]
    assert loss.shape == (shape[0],) and gf.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(loss.double(), want, atol=loss_tol, rtol=0)
    torch.testing.assert_close(gf.double(), want_gf, atol=grad_tol, rtol=0)
    torch.testing.assert_close(gw.double(), want_gw, atol=grad_tol, rtol=0)


def test_cross_entropy_unnormalised_targets_and_one_sided_grads() -> None:
    """Targets whose rows do not sum to 1 still give the formula; grads only where asked."""
    f, w, _, p = head_inputs(9, 16, 130)
    p = p * torch.linspace(0.5, 2.0, 9, dtype=torch.float64)[:, None]
    wt = w.clone().requires_grad_()
    loss = prototype_cross_entropy(f, p, wt, 0.07, impl="torch", chunk_size=50)
    want, _, want_gw = eager_loss_and_grads(f, w, p, 0.07, torch.ones(9, dtype=torch.float64))
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)
    loss.sum().backward()
    torch.testing.assert_close(wt.grad, want_gw, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n_teacher", [1, 2, "dino"])
def test_cross_entropy_crop_targets(n_teacher, dtype) -> None:
    """[T, B_t, K] targets: crop c of B_t images against sum_t weights[c, t] * p[t]."""
    g = torch.Generator().manual_seed(7)
    b_t, crops, k = 5, 3, 130
    t = 1 if n_teacher == 1 else 2
    f = F.normalize(torch.randn(crops * b_t, 16, generator=g, dtype=torch.float64), dim=-1)
    w = F.normalize(torch.randn(k, 16, generator=g, dtype=torch.float64), dim=-1)
    p = torch.softmax(torch.randn(t, b_t, k, generator=g, dtype=torch.float64) / 0.1, -1)
    weights = torch.ones(crops, t, dtype=torch.float64)
    if n_teacher == "dino":  # crops 0, 1 are the teacher's crops 0, 1: not scored on themselves
        weights = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    row_w = torch.rand(crops * b_t, generator=g, dtype=torch.float64)
    fr, wr = f.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    targets = p.to(dtype) if t > 1 else p[0].to(dtype)
    loss = prototype_cross_entropy(
        fr, targets, wr, 0.1, impl="torch", chunk_size=40,
        crop_weights=weights if n_teacher == "dino" else None,
    )  # fmt: skip
    gf, gw = torch.autograd.grad((loss * row_w.to(loss.dtype)).sum(), (fr, wr))
    dense = torch.einsum("ct,tbk->cbk", weights, p.to(dtype).double()).reshape(crops * b_t, k)
    want, want_gf, want_gw = eager_loss_and_grads(fr, wr, dense, 0.1, row_w)
    loss_tol, grad_tol = TOL[dtype]
    torch.testing.assert_close(loss.double(), want, atol=2 * loss_tol, rtol=0)
    torch.testing.assert_close(gf.double(), want_gf, atol=2 * grad_tol, rtol=0)
    torch.testing.assert_close(gw.double(), want_gw, atol=2 * grad_tol, rtol=0)


def test_cross_entropy_backward_inside_autocast() -> None:
    """fp32 parameters, bf16 autocast, backward called inside the autocast region (as a
    loss.backward() under ``with torch.autocast(...)`` does): grads match the bf16 eager ones."""
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(10, 16, generator=g), dim=-1).requires_grad_()
    w = F.normalize(torch.randn(70, 16, generator=g), dim=-1).requires_grad_()
    p = torch.softmax(torch.randn(2, 5, 70, generator=g) / 0.1, -1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prototype_cross_entropy(f, p, w, 0.1, impl="torch", chunk_size=32).sum()
        loss.backward()
    dense = p.sum(0).repeat(2, 1).double()
    want, want_gf, want_gw = eager_loss_and_grads(
        f.bfloat16(), w.bfloat16(), dense, 0.1, torch.ones(10, dtype=torch.float64)
    )
    assert f.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), want.sum(), atol=0.3, rtol=0)
    torch.testing.assert_close(f.grad.double(), want_gf, atol=0.1, rtol=0)
    torch.testing.assert_close(w.grad.double(), want_gw, atol=0.1, rtol=0)


@pytest.mark.parametrize("case", ["overflow", "underflow"])
def test_cross_entropy_extreme_logits_fall_back_to_running_max(monkeypatch, case) -> None:
    """Rows whose unshifted exp() sums overflow (logits far above 88) or underflow (all
    far below -87) are recomputed with a running max: loss and grads stay exact."""
    calls = []
    exact = tiles.online_logsumexp
    monkeypatch.setattr(
        tiles, "online_logsumexp", lambda f, *a: calls.append(len(f)) or exact(f, *a)
    )
    g = torch.Generator().manual_seed(11)
    w = F.normalize(torch.randn(90, 8, generator=g, dtype=torch.float64), dim=-1)
    f = torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.5
    if case == "overflow":  # rows 0-2 point along prototype 0 with a large norm
        w[0] *= 40.0
        f[:3] = w[0] * 2.0
    else:  # every prototype in one half-space; rows 0-2 far on the other side
        w[:, 0] = w[:, 0].abs() + 1.0
        f[:3] = torch.tensor([-30.0] + [0.0] * 7, dtype=torch.float64)
    p = torch.softmax(torch.randn(6, 90, generator=g, dtype=torch.float64), -1)
    for dtype in (torch.float64, torch.float32):
        calls.clear()
        fr, wr = f.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        loss = prototype_cross_entropy(fr, p.to(dtype), wr, 0.05, impl="torch", chunk_size=32)
        gf, gw = torch.autograd.grad(loss.sum(), (fr, wr))
        want, want_gf, want_gw = eager_loss_and_grads(
            f, w, p, 0.05, torch.ones(6, dtype=torch.float64)
        )
        tol = 1e-10 if dtype == torch.float64 else 1e-3  # |loss| up to ~1e4 here
        torch.testing.assert_close(loss.double(), want, atol=tol, rtol=1e-6)
        torch.testing.assert_close(gf.double(), want_gf, atol=tol, rtol=1e-5)
        torch.testing.assert_close(gw.double(), want_gw, atol=tol, rtol=1e-5)
        if dtype == torch.float32:  # fp64's range holds these sums; fp32's does not
            lse = torch.logsumexp(f @ w.T / 0.05, dim=1)
            assert calls == [int(((lse > 88.72) | (lse < -60.0)).sum())], (calls, lse)
            assert calls[0] >= 3


def test_cross_entropy_rejects_bad_input() -> None:
    f, w, _, p = head_inputs(4, 8, 20)
    with pytest.raises(ValueError, match="prototype_cross_entropy: teacher_probs shape"):
        prototype_cross_entropy(f, p[:, :10], w, 0.1)
    with pytest.raises(ValueError, match=r"4 a multiple of B_t"):
        prototype_cross_entropy(f, p[:3], w, 0.1)
    with pytest.raises(ValueError, match=r"crop_weights shape \(2, 2\), expected \[2, 1\]"):
        prototype_cross_entropy(f, p[:2], w, 0.1, crop_weights=torch.ones(2, 2))
    with pytest.raises(ValueError, match="prototypes .* expect 8"):
        prototype_cross_entropy(f[:, :6], p, w, 0.1)
    with pytest.raises(ValueError, match="teacher_probs requires grad"):
        prototype_cross_entropy(f, p.requires_grad_(), w, 0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("centering", ["softmax_center", "sinkhorn_knopp", "none"])
def test_targets_match_dinov2(dtype, shape, centering) -> None:
    _, w64, t64, _ = head_inputs(*shape)
    t, w = t64.to(dtype), w64.to(dtype)
    z = t.double() @ w.double().T
    center = None
    if centering == "softmax_center":
        center = (torch.rand(shape[2], dtype=torch.float64) * 0.2).to(dtype)
        want = ref.softmax_center_teacher(z, center.double(), 0.04)
    elif centering == "sinkhorn_knopp":
        want = ref.sinkhorn_knopp_teacher(z, 0.04, 3)
    else:
        want = ref.softmax_center_teacher(z, 0.0, 0.04)
    got = prototype_targets(
        t, w, 0.04, centering=centering, center=center, impl="torch", chunk_size=64
    )
    # bf16: the logits come from a bf16 matmul (2^-8 of |z| <= 1, over temp 0.04: ~0.1 in
    # the exponent; measured <= 1.4e-2 at these shapes); fp32: fp32 matmul and exp
    atol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=atol, rtol=0)


def test_targets_reject_bad_options() -> None:
    _, w, t, _ = head_inputs(4, 8, 20)
    with pytest.raises(ValueError, match="centering must be one of"):
        prototype_targets(t, w, 0.1, centering="mean")
    with pytest.raises(ValueError, match="center has 3 values"):
        prototype_targets(t, w, 0.1, center=torch.zeros(3))
    with pytest.raises(ValueError, match="takes no center"):
        prototype_targets(t, w, 0.1, centering="sinkhorn_knopp", center=torch.zeros(20))


def test_default_chunk_keeps_tiles_small() -> None:
    assert default_chunk_size(1024, 65536) * 1024 * 4 <= 16 * 2**20
    assert default_chunk_size(3, 100) == 100
