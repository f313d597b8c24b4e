"""Correctness of the Triton loss kernels on a CUDA device, against float64 formulas.

The test suite runs the kernels under the Triton interpreter on the CPU; this checks the
compiled kernels on a real GPU, at the default tiles, for ragged and full-size shapes, in
fp32 (``ieee`` dots) and bf16. One command, a few seconds::

    python benchmarks/gpu_check_kernels.py

Prints one line per check (max abs error against float64, tolerance) and exits 1 if any
check fails, 0 with a message when CUDA is not available.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

from medssl.losses import (
    prototype_cross_entropy,
    prototype_targets,
    sinkhorn_knopp,
    soft_cross_entropy,
    softmax_center,
)

# (student rows, D, K): ragged against the 64 x 64 tiles, and the benchmark's D and K
SHAPES = [(7, 16, 100), (130, 96, 1000), (1020, 256, 65536)]
# relative error limits against fp64: (targets, loss and gradients) per dtype. fp32 dots run
# in ieee mode; bf16 operands round at 2^-8 and the gradient tiles are cast to bf16.
TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}
failures: list[str] = []


def check(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """Relative error ||got - want|| / ||want|| (METHOD: fp32 far under 1e-3, bf16 ~1e-2)."""
    got = got.detach().double().cpu()
    err = ((got - want).norm() / want.norm().clamp_min(1e-300)).item()
    ok = bool(torch.isfinite(got).all()) and err <= rtol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: rel err {err:.2e} (limit {rtol:.0e})")
    if not ok:
        failures.append(name)


def reference_sinkhorn(z: torch.Tensor, temp: float, n_iter: int = 3) -> torch.Tensor:
    q = torch.exp(z / temp - (z / temp).max()).t()
    q = q / q.sum()
    for _ in range(n_iter):
        q = q / q.sum(dim=1, keepdim=True) / q.shape[0]
        q = q / q.sum(dim=0, keepdim=True) / q.shape[1]
    return (q * q.shape[1]).t()


def main() -> int:
    dev, shapes = "cuda", SHAPES
    if not torch.cuda.is_available():
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("gpu_check_kernels: CUDA is not available; nothing to check.")
            return 0
        dev, shapes = "cpu", SHAPES[:2]  # dry run of this script under the interpreter
    torch.set_float32_matmul_precision("highest")
    g = torch.Generator().manual_seed(0)
    for rows, d, k in shapes:
        f64 = F.normalize(torch.randn(rows, d, generator=g, dtype=torch.float64), dim=-1)
        w64 = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=-1)
        t64 = F.normalize(
            torch.randn(max(rows // 5, 1), d, generator=g, dtype=torch.float64), dim=-1
        )
        n_t = t64.shape[0]
        if rows % n_t:  # targets per crop: rows must be crops x images
            f64 = f64[: rows - rows % n_t]
        center = torch.rand(k, generator=g, dtype=torch.float64) * 0.1
        for dtype in (torch.float32, torch.bfloat16):
            lt, gt = TOL[dtype]
            tag = f"B={f64.shape[0]} D={d} K={k} {str(dtype)[6:]}"
            f_in, w_in, t_in = (x.to(dtype) for x in (f64, w64, t64))
            z = t_in.double() @ w_in.double().T
            for centering in ("softmax_center", "sinkhorn_knopp"):
                c = center if centering == "softmax_center" else None
                want = (
                    torch.softmax((z - c) / 0.04, dim=-1)
                    if c is not None
                    else reference_sinkhorn(z, 0.05)
                )
                got = prototype_targets(
                    t_in.to(dev), w_in.to(dev), 0.04 if c is not None else 0.05, centering=centering,
                    center=None if c is None else c.float().to(dev), impl="triton",
                )  # fmt: skip
                check(f"targets {centering} {tag}", got, want, lt)
            probs = torch.softmax((z - center) / 0.04, dim=-1)
            n_crops = f64.shape[0] // n_t
            weights = torch.ones(n_crops, 1)
            fc = f_in.to(dev).requires_grad_()
            wc = w_in.to(dev).requires_grad_()
            loss = prototype_cross_entropy(fc, probs.float().to(dev), wc, 0.1, impl="triton",
                                           crop_weights=weights.to(dev))  # fmt: skip
            row_w = torch.rand(loss.shape[0], generator=g, dtype=torch.float64)
            gf, gw = torch.autograd.grad((loss * row_w.float().to(dev)).sum(), (fc, wc))
            fr = f_in.double().requires_grad_()
            wr = w_in.double().requires_grad_()
            lsm = torch.log_softmax(fr @ wr.T / 0.1, dim=-1).view(n_crops, n_t, k)
            want = -(probs.float().double()[None] * lsm).sum(-1).reshape(-1)
            want_gf, want_gw = torch.autograd.grad((want * row_w).sum(), (fr, wr))
            check(f"cross-entropy loss {tag}", loss, want, gt)
            check(f"cross-entropy grad_f {tag}", gf, want_gf, gt)
            check(f"cross-entropy grad_w {tag}", gw, want_gw, gt)
            # lazy targets, computed inside the kernels from the teacher's features
            lazy = prototype_targets(t_in.to(dev), w_in.to(dev), 0.04, center=center.float().to(dev),
                                     lazy=True)  # fmt: skip
            fc = f_in.to(dev).requires_grad_()
            wc = w_in.to(dev).requires_grad_()
            loss = prototype_cross_entropy(fc, lazy, wc, 0.1, impl="triton",
                                           crop_weights=weights.to(dev))  # fmt: skip
            gf, gw = torch.autograd.grad((loss * row_w.float().to(dev)).sum(), (fc, wc))
            check(f"lazy-target loss {tag}", loss, want, gt)
            check(f"lazy-target grad_f {tag}", gf, want_gf, gt)
            check(f"lazy-target grad_w {tag}", gw, want_gw, gt)
    s = torch.randn(33, 3000, generator=g, dtype=torch.float64)
    c = torch.rand(3000, generator=g, dtype=torch.float64) * 0.1
    check("softmax_center row kernel", softmax_center(s.float().to(dev), c.float().to(dev), 0.04,
          impl="triton"), torch.softmax((s - c) / 0.04, -1), 1e-5)  # fmt: skip
    check("sinkhorn_knopp row kernel", sinkhorn_knopp(s.float().to(dev), 0.05, impl="triton"),
          reference_sinkhorn(s, 0.05), 1e-5)  # fmt: skip
    p = torch.softmax(torch.randn(33, 3000, generator=g, dtype=torch.float64), dim=-1)
    sc = s.float().to(dev).requires_grad_()
    loss = soft_cross_entropy(sc, p.float().to(dev), 0.1, impl="triton")
    sr = s.clone().requires_grad_()
    want = -(p.float().double() * torch.log_softmax(sr / 0.1, -1)).sum(-1)
    check("soft_cross_entropy row kernel", loss, want, 1e-4)
    (gs,) = torch.autograd.grad(loss.sum(), sc)
    (want_gs,) = torch.autograd.grad(want.sum(), sr)
    check("soft_cross_entropy row kernel grad", gs, want_gs, 1e-5)
    print(f"gpu_check_kernels on {torch.cuda.get_device_name() if dev == 'cuda' else dev}: "
          f"{'all passed' if not failures else f'{len(failures)} FAILED'}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
