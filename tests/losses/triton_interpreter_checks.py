"""Triton kernels of medssl.losses under the Triton interpreter (CPU), against fp64 formulas.

Not collected directly (Triton reads TRITON_INTERPRET when kernels are defined, so this must
run in a fresh process): ``test_triton_kernels.py`` runs it with ``TRITON_INTERPRET=1``.
Small shapes with small tiles, so loops, masks and ragged edges are all exercised.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

assert os.environ.get("TRITON_INTERPRET") == "1", "run through test_triton_kernels.py"

from medssl.losses import (  # noqa: E402
    prototype_cross_entropy,
    prototype_targets,
    sinkhorn_knopp,
    soft_cross_entropy,
    softmax_center,
)
from medssl.losses import triton_kernels as tk  # noqa: E402

from . import dinov2_reference as ref  # noqa: E402

# (B, D, K): rows and prototypes not multiples of the 16 x 64 tiles, D not a power of 2
SHAPES = [(7, 16, 100), (33, 24, 300), (20, 32, 257)]
# fp32 loss/grad atol vs fp64: fp32 dots over D <= 32 and fp32 online softmax. bf16: bf16
# inputs (the reference sees the rounded values), fp32 accumulation; the logits are not
# rounded (unlike the torch path), so only the bf16 cast of dL/dz before the gradient
# matmuls (2^-8 relative) and the bf16 gradients remain.
TOL = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-3, 5e-2)}


def _head(b, d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    w = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return f, w, t


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [(SHAPES[0], torch.float32), (SHAPES[1], torch.bfloat16), (SHAPES[2], torch.float32)],
)
def test_prototype_cross_entropy(shape, dtype) -> None:
    torch.set_float32_matmul_precision("highest")
    f64, w64, t64 = _head(*shape)
    p = ref.sinkhorn_knopp_teacher(t64 @ w64.T, 0.05)
    f, w = f64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
    weights = torch.rand(shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss = tk.prototype_cross_entropy(f, p.float()[None], w, 0.1, block_b=16, block_k=64)
    gf, gw = torch.autograd.grad((loss * weights.float()).sum(), (f, w))
    fr, wr = f.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = ref.ibot_patch_token_loss(fr @ wr.T, p.float().double(), 0.1)
    want_gf, want_gw = torch.autograd.grad((want * weights).sum(), (fr, wr))
    lt, gt = TOL[dtype]
    assert gf.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(loss.double(), want, atol=lt, rtol=0)
    torch.testing.assert_close(gf.double(), want_gf, atol=gt, rtol=0)
    torch.testing.assert_close(gw.double(), want_gw, atol=gt, rtol=0)


def test_prototype_cross_entropy_crop_targets_and_dispatch() -> None:
    """[T, B_t, K] targets and crop weights through the public function, impl='triton'."""
    f64, w64, _ = _head(15, 16, 130)
    p = torch.softmax(torch.randn(2, 5, 130, dtype=torch.float64), -1)
    f, w = f64.float().requires_grad_(), w64.float().requires_grad_()
    cw = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # DINO: no crop against itself
    loss = prototype_cross_entropy(f, p.float(), w, 0.1, impl="triton", crop_weights=cw)
    torch_loss = prototype_cross_entropy(f, p.float(), w, 0.1, impl="torch", crop_weights=cw)
    torch.testing.assert_close(loss, torch_loss, atol=2e-5, rtol=0)
    g = torch.autograd.grad(loss.sum(), (f, w))
    g_torch = torch.autograd.grad(torch_loss.sum(), (f, w))
    for a, b in zip(g, g_torch, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.parametrize(
    ("centering", "shape"),
    [("softmax_center", SHAPES[1]), ("sinkhorn_knopp", SHAPES[2]), ("none", SHAPES[0])],
)
def test_prototype_targets(centering, shape) -> None:
    torch.set_float32_matmul_precision("highest")
    _, w64, t64 = _head(*shape)
    z = t64 @ w64.T
    center = None
    if centering == "softmax_center":
        center = torch.rand(shape[2], dtype=torch.float64) * 0.2
        want = ref.softmax_center_teacher(z, center, 0.04)
    elif centering == "sinkhorn_knopp":
        want = ref.sinkhorn_knopp_teacher(z, 0.04)
    else:
        want = ref.softmax_center_teacher(z, 0.0, 0.04)
    got = tk.prototype_targets(t64.float(), w64.float(), 0.04, centering,
                               None if center is None else center.float(), 3, block_b=16, block_k=64)  # fmt: skip
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    public = prototype_targets(t64.float(), w64.float(), 0.04, centering=centering,
                               center=None if center is None else center.float(), impl="triton")  # fmt: skip
    torch.testing.assert_close(public, got, atol=1e-5, rtol=0)


def test_row_kernels() -> None:
    g = torch.Generator().manual_seed(2)
    s = torch.rand(9, 300, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.rand(9, 300, generator=g, dtype=torch.float64) * 2 - 1
    c = torch.rand(300, generator=g, dtype=torch.float64) * 0.1
    torch.testing.assert_close(softmax_center(t.float(), c.float(), 0.04, impl="triton").double(),
                               ref.softmax_center_teacher(t, c, 0.04), atol=1e-5, rtol=0)  # fmt: skip
    torch.testing.assert_close(sinkhorn_knopp(t.float(), 0.05, impl="triton").double(),
                               ref.sinkhorn_knopp_teacher(t, 0.05), atol=1e-5, rtol=0)  # fmt: skip
    p = ref.softmax_center_teacher(t, c, 0.04)
    sf = s.float().requires_grad_()
    loss = tk.soft_cross_entropy(sf, p.float(), 0.1, block_k=128)
    sr = s.clone().requires_grad_()
    want = ref.ibot_patch_token_loss(sr, p.float().double(), 0.1)
    torch.testing.assert_close(loss.double(), want, atol=2e-5, rtol=0)
    w = torch.rand(9, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((loss * w.float()).sum(), sf)
    (want_grad,) = torch.autograd.grad((want * w).sum(), sr)
    torch.testing.assert_close(grad.double(), want_grad, atol=1e-6, rtol=0)
    public = soft_cross_entropy(s.float(), p.float(), 0.1, impl="triton")
    torch.testing.assert_close(public, loss.detach(), atol=1e-5, rtol=0)


def test_fp64_is_refused_with_a_clear_message() -> None:
    with pytest.raises(TypeError, match="prototype_cross_entropy: impl='triton' supports"):
        prototype_cross_entropy(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 8, dtype=torch.float64),
                                torch.zeros(8, 4, dtype=torch.float64), 0.1, impl="triton")  # fmt: skip


def test_launch_falls_back_to_one_stage_once(caplog) -> None:
    """A kernel whose pipeline stages overflow shared memory runs with num_stages=1, and
    later launches of the same configuration go straight there (one warning)."""
    import triton

    calls = []

    class Kernel:
        __name__ = "fake_kernel"

        def __getitem__(self, grid):
            def run(*args, **options):
                calls.append(options["num_stages"])
                if options["num_stages"] > 1 or options["BLOCK_B"] > 128:
                    raise triton.runtime.errors.OutOfResources(262144, 232448, "shared memory")

            return run

    kernel = Kernel()
    with caplog.at_level("WARNING", logger="medssl.losses"):
        tk._launch(kernel, (1,), num_stages=3, BLOCK_B=128)
        tk._launch(kernel, (1,), num_stages=3, BLOCK_B=128)
    assert calls == [3, 1, 1]
    assert sum("using num_stages=1" in r.message for r in caplog.records) == 1
    calls.clear()
    with pytest.raises(triton.runtime.errors.OutOfResources):  # one stage too: no retry
        tk._launch(kernel, (1,), num_stages=1, BLOCK_B=256)
    assert calls == [1]


@pytest.mark.parametrize(
    ("centering", "dtype"),
    [("sinkhorn_knopp", torch.float32), ("softmax_center", torch.float32),
     ("none", torch.bfloat16), ("softmax_center", torch.bfloat16)],
)  # fmt: skip
def test_lazy_targets_through_the_triton_head(centering, dtype) -> None:
    """PrototypeTargets computed tile by tile inside the Triton kernels (two teacher
    crops, DINO pairing): same loss and grads as the torch path on the same targets."""
    f64, w64, t64 = _head(15, 16, 130)
    center = torch.rand(130, generator=torch.Generator().manual_seed(3)) * 0.2
    lazy = prototype_targets(
        t64[:10].to(dtype), w64.to(dtype), 0.04, centering=centering, lazy=True,
        center=center if centering == "softmax_center" else None,
    ).view(2, 5, -1)  # fmt: skip
    cw = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    f, w = f64.to(dtype).requires_grad_(), w64.to(dtype).requires_grad_()
    loss = prototype_cross_entropy(f, lazy, w, 0.1, impl="triton", crop_weights=cw)
    got = (loss, *torch.autograd.grad(loss.sum(), (f, w)))
    # reference: the same targets in float64 from the same (rounded) inputs and shifts
    exact = dataclasses.replace(
        lazy, features=lazy.features.double(), prototypes=lazy.prototypes.double(),
        col_shift=None if lazy.col_shift is None else lazy.col_shift.double(),
        row_shift=None if lazy.row_shift is None else lazy.row_shift.double(),
    )  # fmt: skip
    fr, wr = f.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref_loss = prototype_cross_entropy(fr, exact.materialize(), wr, 0.1, impl="torch",
                                       crop_weights=cw)  # fmt: skip
    want = (ref_loss, *torch.autograd.grad(ref_loss.sum(), (fr, wr)))
    # fp32: fp32 arithmetic; bf16: fp32 arithmetic on bf16 operands, then the gradients
    # rounded to bf16 (2^-8 relative) and the gradient tiles cast to bf16 for the products
    # (the same bounds as TOL above for the dense targets)
    loss_tol, grad_tol = TOL[dtype]
    for a, b, tol in zip(got, want, (loss_tol, grad_tol, grad_tol), strict=True):
        assert a.dtype == (torch.float32 if a is got[0] else dtype)
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=0)
