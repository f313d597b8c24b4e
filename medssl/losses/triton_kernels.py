"""Triton kernels behind ``impl="triton"`` of :mod:`medssl.losses`.

The fused prototype head streams over tiles of prototypes as the chunked torch path does
(:mod:`medssl.losses.prototype`), with register tiles instead of ``[B, chunk]`` tensors.
As there, the kernels compute only the softmax part of the loss; everything linear in the
targets is a product with them, so the ``[T * B_t, K]`` targets are read once per pass:

- forward: programs own (row block, range of prototypes) and keep a running max and sum
  of exponentials per row, merged on the host (``[splits, 2, B]``) into the log-sum-exp;
  a second kernel computes ``P W`` and the target mass (``loss = mass * lse - f . P W / tau``);
- backward: one kernel per row block and range accumulates ``softmax part @ W`` (partials
  per range, summed on the host: deterministic); one kernel per prototype tile accumulates
  ``softmax part^T @ f`` over all rows, then subtracts ``P^T X`` (the target part); both
  recompute the logits tile.

Teacher targets: a kernel writes the scaled, centred logits tile by tile into the output
with each tile's row max and sum of exponentials; one in-place pass then takes
``exp(x - shift)``: the softmax (shift = row log-sum-exp), or Sinkhorn-Knopp's shifted
exponential, which :func:`medssl.losses.sinkhorn.sinkhorn_normalize_` rescales.

Import only where Triton can run: on CUDA, or on a CPU with ``TRITON_INTERPRET=1`` set
before this module is first imported (Triton reads it when the kernels are defined).
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl
from torch import Tensor

from medssl.losses.dispatch import triton_interpreter_enabled, without_autocast
from medssl.losses.sinkhorn import global_max, sinkhorn_normalize_
from medssl.losses.targets import PrototypeTargets

__all__ = [
    "prototype_cross_entropy",
    "prototype_targets",
    "soft_cross_entropy",
    "softmax_center",
    "sinkhorn_knopp",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DOT_F32 = triton_interpreter_enabled()
# Enough programs to fill an H100/H200 (132 SMs) twice over.
_TARGET_PROGRAMS = 264
# Tiles and launch options of each head kernel per input dtype. Chosen so that no kernel
# spills registers at D = 256 on sm_90 (ptxas reports, `benchmarks/triton_spills.py`): the
# [rows, 256] fp32 accumulators of the gradient kernels leave room for 32-prototype tiles
# at 8 warps only (64-prototype tiles spilled 1 KB per thread in the prototype gradient,
# the slowest kernel on an H200 in benchmarks/RESULTS.md). fp32 tiles are twice the bytes
# (two pipeline stages fit the shared memory) and exact fp32 dots use more registers.
_KERNELS = ("lse", "features", "prototypes", "targets", "logits")


def _tiles(block_b: int, block_k: int, warps: int, stages: int) -> dict[str, int]:
    return {"BLOCK_B": block_b, "BLOCK_K": block_k, "num_warps": warps, "num_stages": stages}


_LOW_PRECISION = {
    "lse": _tiles(128, 64, 8, 3),
    "features": _tiles(64, 32, 8, 3),
    "prototypes": _tiles(128, 32, 8, 3),
    "targets": _tiles(32, 32, 8, 3),
    "logits": _tiles(64, 64, 8, 3),
}
_HEAD_CONFIGS: dict[torch.dtype, dict[str, dict[str, int]]] = {
    torch.bfloat16: _LOW_PRECISION,
    torch.float16: _LOW_PRECISION,
    torch.float32: {  # exact (ieee) fp32 dots need smaller tiles to stay in registers
        "lse": _tiles(32, 32, 8, 2),
        "features": _tiles(32, 32, 8, 2),
        "prototypes": _tiles(16, 32, 8, 2),
        "targets": _tiles(32, 32, 8, 2),
        "logits": _tiles(32, 32, 8, 2),
    },
}
# Teacher rows per step of the target-part loop of the prototype-gradient kernel (32
# spilled once the targets are computed in the loop: lazy targets).
_BLOCK_T = 16
_logger = logging.getLogger("medssl.losses")


def _check_dtype(fn: str, *tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype not in _DTYPES:
            raise TypeError(
                f"medssl.losses.{fn}: impl='triton' supports float32/float16/bfloat16, got "
                f"{t.dtype}; use impl='torch' for other dtypes"
            )


def _precision(dtype: torch.dtype) -> str:
    """tl.dot precision for fp32 inputs, following torch's fp32 matmul setting."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


# --------------------------------------------------------------------------- kernels


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
    """a @ b with fp32 accumulation; DOT_F32 upcasts first (the interpreter has no bf16 dot:
    the products of bf16 values are exact in fp32, so results match the GPU's bf16 dot)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load_rows(Ptr, idx, ok, stride, dcol, d_ok):
    """[len(idx), BLOCK_D] block of a row-major matrix, zeros outside (ok, d_ok)."""
    return tl.load(
        Ptr + idx[:, None] * stride + dcol[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0
    )


# Each program of the head kernels owns a block of rows and a range of prototypes (a
# split); splits are chosen on the host so there are a few programs per multiprocessor.
# Base-2 exponentials: the logits are scaled by log2(e) / tau once, so each element costs
# one exp2 and no extra multiply.
_LOG2E = 1.4426950408889634
_LN2 = 0.6931471805599453


@triton.jit
def _split_range(pid_s, K, BLOCK_K: tl.constexpr):
    """[start, end) of split ``pid_s`` of ``num_programs(1)`` over K, a multiple of BLOCK_K."""
    per = tl.cdiv(tl.cdiv(K, tl.num_programs(1)), BLOCK_K) * BLOCK_K
    k_start = pid_s * per
    return k_start, tl.minimum(k_start + per, K)


@triton.jit
def _lse_kernel(
    F, W, Stats, Col2,
    B, K, D,
    stride_fb, stride_wk,
    scale2,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr, HAS_COL: tl.constexpr = False,
):  # fmt: skip
    """Per (row block, split): running max and sum of exp2 of ``f W^T * scale2`` (plus
    ``Col2[k]`` with HAS_COL: the teacher's centring, for lazy targets)."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    run_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_B], tl.float32)
    k_start, k_end = _split_range(pid_s, K, BLOCK_K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
        s = _mm(f, tl.trans(w), PRECISION, DOT_F32) * scale2
        if HAS_COL:
            s += tl.load(Col2 + ks, mask=k_ok, other=0.0)[None, :]
        s = tl.where(k_ok[None, :], s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        run_sum = run_sum * tl.exp2(run_max - new_max) + tl.sum(tl.exp2(s - new_max[:, None]), 1)
        run_max = new_max
    out = Stats + pid_s * 2 * B + rows
    tl.store(out, run_max, mask=row_ok)
    tl.store(out + B, run_sum, mask=row_ok)


@triton.jit
def _softmax_grad_tile(f, w, lse2, soft_scale, row_ok, k_ok, scale2, PRECISION: tl.constexpr,
                       DOT_F32: tl.constexpr):  # fmt: skip
    """The softmax part of dL/dz: ``soft_scale * softmax`` (0 outside rows and range)."""
    s = _mm(f, tl.trans(w), PRECISION, DOT_F32) * scale2
    g = tl.exp2(s - lse2[:, None]) * soft_scale[:, None]
    return tl.where(row_ok[:, None] & k_ok[None, :], g, 0.0)


@triton.jit
def _ce_bwd_features_kernel(
    F, W, LSE2, SoftScale, GradF,
    B, K, D,
    stride_fb, stride_wk,
    scale2,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    """Partial (per split) ``softmax part @ W`` for a block of rows."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    lse2 = tl.load(LSE2 + rows, mask=row_ok, other=0.0)
    soft_scale = tl.load(SoftScale + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    k_start, k_end = _split_range(pid_s, K, BLOCK_K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
        g = _softmax_grad_tile(f, w, lse2, soft_scale, row_ok, k_ok, scale2, PRECISION, DOT_F32)
        acc += _mm(g.to(w.dtype), w, PRECISION, DOT_F32)
    out = GradF + pid_s * B * D + rows[:, None] * D + dcol[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _split(x, LOW: tl.constexpr):
    """fp32 ``x`` as ``hi + lo`` in dtype LOW (16 bits of mantissa for bf16), so products
    with low-precision operands run on the tensor cores at about fp32 accuracy."""
    hi = x.to(LOW)
    return hi, (x - hi.to(tl.float32)).to(LOW)


@triton.jit
def _target_tile(
    P, TF, TW, Col2, Row2, trows, t_ok, ks, k_ok, stride_pb, stride_tf, stride_tw, dcol, d_ok,
    tscale2, LAZY: tl.constexpr, HAS_COL: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
):  # fmt: skip
    """``[rows, prototypes]`` tile of the targets (0 outside): loaded from P, or (LAZY)
    computed as ``exp2(TF TW^T * tscale2 + Col2[k] + Row2[b])`` from the teacher's
    features and prototypes, the shifts in log2 units (:class:`PrototypeTargets`)."""
    if LAZY:
        tf = _load_rows(TF, trows, t_ok, stride_tf, dcol, d_ok)
        tw = _load_rows(TW, ks, k_ok, stride_tw, dcol, d_ok)
        z = _mm(tf, tl.trans(tw), PRECISION, DOT_F32) * tscale2
        z += tl.load(Row2 + trows, mask=t_ok, other=0.0)[:, None]
        if HAS_COL:
            z += tl.load(Col2 + ks, mask=k_ok, other=0.0)[None, :]
        return tl.where(t_ok[:, None] & k_ok[None, :], tl.exp2(z), 0.0)
    return _load_rows(P, trows, t_ok, stride_pb, ks, k_ok)


@triton.jit
def _ce_bwd_prototypes_kernel(
    F, W, LSE2, SoftScale, P, XHi, XLo, GradW,
    B, K, D, TB,
    stride_fb, stride_wk, stride_pb, stride_gk,
    scale2,
    TF, TW, Col2, Row2, stride_tf, stride_tw, tscale2,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr, PRECISION: tl.constexpr, SPLIT: tl.constexpr,
    DOT_F32: tl.constexpr, LAZY: tl.constexpr = False, HAS_COL: tl.constexpr = False,
):  # fmt: skip
    """A tile of prototypes: ``softmax part^T @ f`` over all rows, minus ``P^T X`` (the
    target part, over the ``TB`` teacher rows: one pass over the targets in all). SPLIT:
    ``X = XHi + XLo`` and P are split into the prototypes' low precision (three products);
    else ``XHi`` is the fp32 X and the product runs at PRECISION."""
    pid_k = tl.program_id(0)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
    acc = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
        lse2 = tl.load(LSE2 + rows, mask=row_ok, other=0.0)
        soft_scale = tl.load(SoftScale + rows, mask=row_ok, other=0.0)
        g = _softmax_grad_tile(f, w, lse2, soft_scale, row_ok, k_ok, scale2, PRECISION, DOT_F32)
        acc += _mm(tl.trans(g).to(f.dtype), f, PRECISION, DOT_F32)
    for t0 in range(0, TB, BLOCK_T):
        trows = t0 + tl.arange(0, BLOCK_T)
        t_ok = trows < TB
        p = _target_tile(P, TF, TW, Col2, Row2, trows, t_ok, ks, k_ok, stride_pb, stride_tf,
                         stride_tw, dcol, d_ok, tscale2, LAZY, HAS_COL, PRECISION, DOT_F32)  # fmt: skip
        x_hi = _load_rows(XHi, trows, t_ok, D, dcol, d_ok)
        if SPLIT:
            x_lo = _load_rows(XLo, trows, t_ok, D, dcol, d_ok)
            p_hi, p_lo = _split(tl.trans(p), x_hi.dtype)
            acc -= _mm(p_hi, x_hi, PRECISION, DOT_F32)
            acc -= _mm(p_lo, x_hi, PRECISION, DOT_F32)
            acc -= _mm(p_hi, x_lo, PRECISION, DOT_F32)
        else:
            acc -= _mm(tl.trans(p), x_hi, PRECISION, DOT_F32)
    out = GradW + ks[:, None] * stride_gk + dcol[None, :]
    tl.store(out, acc.to(GradW.dtype.element_ty), mask=k_ok[:, None] & d_ok[None, :])


@triton.jit
def _targets_times_prototypes_kernel(
    P, W, Out, Mass,
    TB, K, D,
    stride_pb, stride_wk,
    TF, TW, Col2, Row2, stride_tf, stride_tw, tscale2,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, SPLIT: tl.constexpr, DOT_F32: tl.constexpr,
    LAZY: tl.constexpr = False, HAS_COL: tl.constexpr = False,
):  # fmt: skip
    """Partial (per split) ``P W`` and row sums of ``P`` for a block of teacher rows
    (SPLIT: P as hi + lo in the prototypes' low precision, two products)."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < TB
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    mass = tl.zeros([BLOCK_B], tl.float32)
    k_start, k_end = _split_range(pid_s, K, BLOCK_K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        p = _target_tile(P, TF, TW, Col2, Row2, rows, row_ok, ks, k_ok, stride_pb, stride_tf,
                         stride_tw, dcol, d_ok, tscale2, LAZY, HAS_COL, PRECISION, DOT_F32)  # fmt: skip
        w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
        if SPLIT:
            p_hi, p_lo = _split(p, w.dtype)
            acc += _mm(p_hi, w, PRECISION, DOT_F32)
            acc += _mm(p_lo, w, PRECISION, DOT_F32)
        else:
            acc += _mm(p, w, PRECISION, DOT_F32)
        mass += tl.sum(p, axis=1)
    out = Out + pid_s * TB * D + rows[:, None] * D + dcol[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Mass + pid_s * TB + rows, mass, mask=row_ok)


@triton.jit
def _scaled_logits_kernel(
    F, W, C, Out, TileMax, TileSum,
    B, K, D,
    stride_fb, stride_wk, stride_ob,
    inv_t,
    HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    """Out tile = (f @ w.T - center) / temp in fp32, with the tile's row max and
    ``sum exp(out - max)`` (so row and global normalisers need no further pass)."""
    pid_k = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    k_ok = ks < K
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
    z = _mm(f, tl.trans(w), PRECISION, DOT_F32)
    if HAS_CENTER:
        z -= tl.load(C + ks, mask=k_ok, other=0.0)[None, :]
    z = z * inv_t
    tl.store(Out + rows[:, None] * stride_ob + ks[None, :], z,
             mask=row_ok[:, None] & k_ok[None, :])  # fmt: skip
    z = tl.where(k_ok[None, :], z, float("-inf"))
    tile_max = tl.max(z, axis=1)
    tile_sum = tl.sum(tl.exp(z - tile_max[:, None]), axis=1)
    tl.store(TileMax + pid_k * B + rows, tile_max, mask=row_ok)
    tl.store(TileSum + pid_k * B + rows, tile_sum, mask=row_ok)


@triton.jit
def _exp_shift_rows_kernel(X, Shift, K, stride_x, BLOCK_K: tl.constexpr):
    """In place: ``x[row, k] = exp(x[row, k] - shift[row])``."""
    row = tl.program_id(0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = ks < K
    ptr = X + row * stride_x + ks
    x = tl.load(ptr, mask=ok, other=0.0)
    tl.store(ptr, tl.exp(x - tl.load(Shift + row)), mask=ok)


@triton.jit
def _online_lanes(run_max, run_sum, s):
    """Per-lane online softmax update; lanes that saw only -inf (masked) stay at 0."""
    new_max = tl.maximum(run_max, s)
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    return new_max, run_sum * tl.exp(run_max - shift) + tl.exp(s - shift)


@triton.jit
def _row_softmax_kernel(X, C, Out, K, stride_x, stride_o, inv_t, HAS_CENTER: tl.constexpr,
                        BLOCK_K: tl.constexpr):  # fmt: skip
    """Out row = softmax((x - c) * inv_t); two passes over the row, Out may alias X."""
    row = tl.program_id(0)
    run_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        s = tl.load(X + row * stride_x + ks, mask=k_ok, other=0.0).to(tl.float32)
        if HAS_CENTER:
            s -= tl.load(C + ks, mask=k_ok, other=0.0)
        s = tl.where(k_ok, s * inv_t, float("-inf"))
        run_max, run_sum = _online_lanes(run_max, run_sum, s)
    row_max = tl.max(run_max, axis=0)
    total = tl.sum(run_sum * tl.exp(run_max - row_max), axis=0)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        s = tl.load(X + row * stride_x + ks, mask=k_ok, other=0.0).to(tl.float32)
        if HAS_CENTER:
            s -= tl.load(C + ks, mask=k_ok, other=0.0)
        tl.store(Out + row * stride_o + ks, tl.exp(s * inv_t - row_max) / total, mask=k_ok)


@triton.jit
def _shifted_exp_kernel(X, Out, Shift, N, inv_t, BLOCK: tl.constexpr):
    """Out = exp(x * inv_t - shift) elementwise (contiguous), Out may alias X."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Out + offs, tl.exp(x * inv_t - tl.load(Shift)), mask=ok)


@triton.jit
def _soft_ce_fwd_kernel(S, P, Loss, LSE, K, stride_s, stride_p, inv_t, BLOCK_K: tl.constexpr):
    row = tl.program_id(0)
    run_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_K], tl.float32)
    dot = tl.zeros([BLOCK_K], tl.float32)
    mass = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        s = tl.load(S + row * stride_s + ks, mask=k_ok, other=0.0).to(tl.float32) * inv_t
        p = tl.load(P + row * stride_p + ks, mask=k_ok, other=0.0).to(tl.float32)
        dot += p * s
        mass += p
        s = tl.where(k_ok, s, float("-inf"))
        run_max, run_sum = _online_lanes(run_max, run_sum, s)
    row_max = tl.max(run_max, axis=0)
    lse = row_max + tl.log(tl.sum(run_sum * tl.exp(run_max - row_max), axis=0))
    tl.store(LSE + row, lse)
    tl.store(Loss + row, tl.sum(mass, axis=0) * lse - tl.sum(dot, axis=0))


@triton.jit
def _soft_ce_bwd_kernel(S, P, LSE, SoftScale, TgtScale, Grad, K, stride_s, stride_p, stride_g,
                        inv_t, BLOCK_K: tl.constexpr):  # fmt: skip
    row = tl.program_id(0)
    lse = tl.load(LSE + row)
    soft_scale = tl.load(SoftScale + row)
    tgt_scale = tl.load(TgtScale + row)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        s = tl.load(S + row * stride_s + ks, mask=k_ok, other=0.0).to(tl.float32) * inv_t
        p = tl.load(P + row * stride_p + ks, mask=k_ok, other=0.0).to(tl.float32)
        g = tl.exp(s - lse) * soft_scale - p * tgt_scale
        tl.store(Grad + row * stride_g + ks, g.to(Grad.dtype.element_ty), mask=k_ok)


# --------------------------------------------------------------------------- wrappers


_SINGLE_STAGE: set[tuple] = set()


def _launch(kernel, grid: tuple[int, ...], *args, **options) -> None:  # type: ignore[no-untyped-def]
    """Launch ``kernel``; if its pipeline stages overflow this GPU's shared memory (cards
    smaller than the H200 the defaults were chosen on), use a single stage from then on."""
    key = (getattr(kernel, "__name__", str(kernel)),
           *sorted((k, str(v)) for k, v in options.items()
                   if k.startswith(("BLOCK_", "num_")) or isinstance(v, (bool, str))))  # fmt: skip
    if key in _SINGLE_STAGE:
        options = {**options, "num_stages": 1}
    try:
        kernel[grid](*args, **options)
    except triton.runtime.errors.OutOfResources as exc:
        if options.get("num_stages", 1) <= 1:
            raise
        _logger.warning("medssl.losses: %s: %s; using num_stages=1", key[0], exc)
        _SINGLE_STAGE.add(key)
        kernel[grid](*args, **{**options, "num_stages": 1})


def _contiguous_rows(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _head_config(
    dtype: torch.dtype, block_b: int | None, block_k: int | None
) -> dict[str, dict[str, int]]:
    """Per-kernel tiles and launch options: the defaults for ``dtype``, the caller's
    ``block_b``/``block_k`` for every kernel when given."""
    configs = _HEAD_CONFIGS.get(dtype, _HEAD_CONFIGS[torch.bfloat16])
    out = {}
    for name in _KERNELS:
        cfg = dict(configs[name])
        if _DOT_F32:  # the interpreter: small tiles keep the CPU emulation quick
            cfg.update(BLOCK_B=16, BLOCK_K=64, num_warps=4, num_stages=1)
        if block_b is not None:
            cfg["BLOCK_B"] = block_b
        if block_k is not None:
            cfg["BLOCK_K"] = block_k
        out[name] = cfg
    return out


def _options(cfg: dict[str, int], d: int, **extra) -> dict:  # type: ignore[no-untyped-def]
    """Launch keywords of one kernel: its tiles, BLOCK_D for ``d``, warps and stages."""
    return {**cfg, "BLOCK_D": _block_d(d), "DOT_F32": _DOT_F32, **extra}


def _n_splits(row_blocks: int, k: int, block_k: int) -> int:
    """Prototype ranges per row block: about _TARGET_PROGRAMS programs in all."""
    return max(1, min(triton.cdiv(_TARGET_PROGRAMS, row_blocks), triton.cdiv(k, block_k)))


def _merge_lse2(stats: Tensor) -> Tensor:
    """Per-split (max, sum) ``[S, 2, B]`` in base 2 -> row log-sum-exp in base 2."""
    run_max, run_sum = stats.unbind(1)
    row_max = run_max.amax(dim=0)
    return row_max + (run_sum * torch.exp2(run_max - row_max)).sum(dim=0).log2()


def _row_lse2(f: Tensor, w: Tensor, scale2: float, col2: Tensor | None, cfg: dict) -> Tensor:
    """Row log-sum-exp (base 2) of ``f W^T * scale2 (+ col2)`` by the streamed kernel."""
    rows, d = f.shape
    k = w.shape[0]
    row_blocks = triton.cdiv(rows, cfg["BLOCK_B"])
    n_split = _n_splits(row_blocks, k, cfg["BLOCK_K"])
    stats = torch.empty(n_split, 2, rows, dtype=torch.float32, device=f.device)
    _launch(_lse_kernel, (row_blocks, n_split),
        f, w, stats, col2 if col2 is not None else stats, rows, k, d, f.stride(0), w.stride(0),
        scale2, **_options(cfg, d, PRECISION=_precision(f.dtype), HAS_COL=col2 is not None),
    )  # fmt: skip
    return _merge_lse2(stats)


def _dense_target_args(flat: Tensor) -> dict:
    """Kernel arguments for ``[T * B_t, K]`` targets in memory."""
    return {"P": flat, "TF": flat, "TW": flat, "Col2": flat, "Row2": flat,
            "stride_pb": flat.stride(0), "stride_tf": 0, "stride_tw": 0, "tscale2": 1.0,
            "LAZY": False, "HAS_COL": False}  # fmt: skip


def _lazy_target_args(targets: PrototypeTargets, dtype: torch.dtype, cfg: dict) -> dict:
    """Kernel arguments for targets computed tile by tile from the teacher's features."""
    tf = _contiguous_rows(targets.features.to(dtype))
    tw = _contiguous_rows(targets.prototypes.to(dtype))
    tscale2 = targets.inv_temp * _LOG2E
    col2 = None
    if targets.col_shift is not None:
        col2 = (targets.col_shift.float() * _LOG2E).contiguous()
    if targets.row_shift is None:  # softmax rows: minus the row log-sum-exp
        row2 = -_row_lse2(tf, tw, tscale2, col2, cfg["lse"])
    else:
        row2 = (targets.row_shift.float() * _LOG2E).contiguous()
    return {"P": tf, "TF": tf, "TW": tw, "Col2": row2 if col2 is None else col2, "Row2": row2,
            "stride_pb": 0, "stride_tf": tf.stride(0), "stride_tw": tw.stride(0),
            "tscale2": tscale2, "LAZY": True, "HAS_COL": col2 is not None}  # fmt: skip


def _targets_times_prototypes(
    tgt: dict, tb: int, prototypes: Tensor, cfg: dict[str, int]
) -> tuple[Tensor, Tensor]:
    """``targets @ prototypes`` ``[T * B_t, D]`` and the target row sums, in fp32."""
    k, d = prototypes.shape
    row_blocks = triton.cdiv(tb, cfg["BLOCK_B"])
    n_split = _n_splits(row_blocks, k, cfg["BLOCK_K"])
    partial = torch.empty(n_split, tb, d, dtype=torch.float32, device=prototypes.device)
    mass = torch.empty(n_split, tb, dtype=torch.float32, device=prototypes.device)
    _launch(_targets_times_prototypes_kernel, (row_blocks, n_split),
        W=prototypes, Out=partial, Mass=mass, TB=tb, K=k, D=d, stride_wk=prototypes.stride(0),
        **tgt, **_options(cfg, d, PRECISION=_precision(prototypes.dtype),
                          SPLIT=prototypes.dtype != torch.float32),
    )  # fmt: skip
    return partial.sum(dim=0), mass.sum(dim=0)


class _TritonPrototypeCrossEntropy(torch.autograd.Function):
    """Kernels stream over the prototypes for the softmax part only; everything linear in
    the targets is a product with them (``P W`` forward, ``P^T X`` backward), as in the
    torch path, so the ``[B, K]`` targets are read (or, lazy, computed) once per pass, not
    once per row block."""

    @staticmethod
    def forward(ctx, features, prototypes, weights, student_temp, cfg, tgt, tb):  # type: ignore[override]
        rows, d = features.shape
        n_teacher = weights.shape[1]
        n_images = tb // n_teacher
        lse2 = _row_lse2(features, prototypes, _LOG2E / student_temp, None, cfg["lse"])
        pw_t, mass_t = _targets_times_prototypes(tgt, tb, prototypes, cfg["targets"])
        # row (crop c, image b): its target is sum_t weights[c, t] * targets[t, b]
        pw = torch.einsum("ct,tbd->cbd", weights, pw_t.view(n_teacher, n_images, d))
        pw = pw.reshape(rows, d)
        mass = (weights @ mass_t.view(n_teacher, n_images)).reshape(rows)
        dot = torch.linalg.vecdot(features.float(), pw) / student_temp
        loss = mass * (lse2 * _LN2) - dot
        ctx.save_for_backward(features, prototypes, weights, lse2, mass, pw)
        ctx.student_temp = student_temp
        ctx.cfg = cfg
        ctx.tgt = tgt
        ctx.tb = tb
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        return without_autocast(_TritonPrototypeCrossEntropy._backward, ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss):  # type: ignore[no-untyped-def]
        features, prototypes, weights, lse2, mass, pw = ctx.saved_tensors
        rows, d = features.shape
        k = prototypes.shape[0]
        inv_t = 1.0 / ctx.student_temp
        scale2 = _LOG2E * inv_t
        row_scale = grad_loss.float() * inv_t
        soft_scale = (mass * row_scale).contiguous()
        precision = _precision(features.dtype)
        grad_f = grad_w = None
        if ctx.needs_input_grad[0]:
            cfg = ctx.cfg["features"]
            row_blocks = triton.cdiv(rows, cfg["BLOCK_B"])
            n_split = _n_splits(row_blocks, k, cfg["BLOCK_K"])
            partial = torch.empty(n_split, rows, d, dtype=torch.float32, device=features.device)
            _launch(_ce_bwd_features_kernel, (row_blocks, n_split),
                features, prototypes, lse2, soft_scale, partial, rows, k, d,
                features.stride(0), prototypes.stride(0), scale2,
                **_options(cfg, d, PRECISION=precision),
            )  # fmt: skip
            grad_f = partial.sum(dim=0).sub_(row_scale[:, None] * pw).to(features.dtype)
        if ctx.needs_input_grad[1]:
            cfg = ctx.cfg["prototypes"]
            n_images = ctx.tb // weights.shape[1]
            # X_t = sum_c weights[c, t] * row_scale f (crop c): grad_W's target part is P^T X
            rf = (row_scale[:, None] * features.float()).view(-1, n_images, d)
            x = torch.einsum("ct,cbd->tbd", weights, rf).reshape(-1, d)
            split = features.dtype != torch.float32
            x_hi = x.to(features.dtype).contiguous()
            x_lo = (x - x_hi.float()).to(features.dtype) if split else x_hi
            grad_w = torch.empty_like(prototypes)
            _launch(_ce_bwd_prototypes_kernel, (triton.cdiv(k, cfg["BLOCK_K"]),),
                F=features, W=prototypes, LSE2=lse2, SoftScale=soft_scale, XHi=x_hi, XLo=x_lo,
                GradW=grad_w, B=rows, K=k, D=d, TB=ctx.tb, stride_fb=features.stride(0),
                stride_wk=prototypes.stride(0), stride_gk=grad_w.stride(0), scale2=scale2,
                **ctx.tgt,
                **_options(cfg, d, BLOCK_T=_BLOCK_T, SPLIT=split, PRECISION=precision),
            )  # fmt: skip
        return grad_f, grad_w, None, None, None, None, None


def prototype_cross_entropy(
    features: Tensor,
    targets: Tensor | PrototypeTargets,
    prototypes: Tensor,
    student_temp: float,
    crop_weights: Tensor | None = None,
    block_b: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """Fused projection + soft cross-entropy; ``targets`` ``[T, B_t, K]`` or lazy
    :class:`PrototypeTargets` (never materialised), ``crop_weights`` ``[B / B_t, T]``
    (fp32, default ones) as :func:`medssl.losses.prototype_cross_entropy` validates them.
    ``block_b``/``block_k`` override the tiles of ``_HEAD_CONFIGS``."""
    _check_dtype("prototype_cross_entropy", features, prototypes)
    features = _contiguous_rows(features)
    prototypes = _contiguous_rows(prototypes)
    cfg = _head_config(features.dtype, block_b, block_k)
    if isinstance(targets, PrototypeTargets):
        n_teacher, tb = targets.groups, targets.rows
        tgt = _lazy_target_args(targets, features.dtype, cfg)
    else:
        n_teacher, tb = targets.shape[0], targets.shape[0] * targets.shape[1]
        flat = targets.float() if targets.dtype != torch.float32 else targets
        tgt = _dense_target_args(flat.contiguous().reshape(tb, -1))
    if crop_weights is None:
        crop_weights = torch.ones(features.shape[0] // (tb // n_teacher), n_teacher)
    weights = crop_weights.to(device=features.device, dtype=torch.float32).contiguous()
    return _TritonPrototypeCrossEntropy.apply(
        features, prototypes, weights, float(student_temp), cfg, tgt, tb
    )


@torch.no_grad()
def prototype_targets(
    features: Tensor,
    prototypes: Tensor,
    temp: float,
    centering: str,
    center: Tensor | None,
    n_iter: int,
    block_b: int | None = None,
    block_k: int | None = None,
) -> Tensor:
    """Teacher targets: logits tile by tile into the output with per-tile row statistics,
    then one in-place pass ``exp(out - shift)`` (shift: the row log-sum-exp, or for
    Sinkhorn-Knopp the global max before its row/column scaling)."""
    _check_dtype("prototype_targets", features, prototypes)
    features = _contiguous_rows(features)
    prototypes = _contiguous_rows(prototypes)
    rows, d = features.shape
    k = prototypes.shape[0]
    cfg = _head_config(features.dtype, block_b, block_k)["logits"]
    out = torch.empty(rows, k, dtype=torch.float32, device=features.device)
    k_tiles = triton.cdiv(k, cfg["BLOCK_K"])
    tile_max = torch.empty(k_tiles, rows, dtype=torch.float32, device=features.device)
    tile_sum = torch.empty_like(tile_max)
    c = None if center is None else center.reshape(-1).float().contiguous()
    _launch(_scaled_logits_kernel, (triton.cdiv(rows, cfg["BLOCK_B"]), k_tiles),
        features, prototypes, c if c is not None else out, out, tile_max, tile_sum,
        rows, k, d,
        features.stride(0), prototypes.stride(0), out.stride(0),
        1.0 / temp,
        **_options(cfg, d, HAS_CENTER=c is not None, PRECISION=_precision(features.dtype)),
    )  # fmt: skip
    if centering == "sinkhorn_knopp":
        shift = global_max(tile_max).expand(rows).contiguous()
    else:
        row_max = tile_max.amax(dim=0)
        shift = row_max + (tile_sum * torch.exp(tile_max - row_max)).sum(dim=0).log()
    row_block = min(4096, triton.next_power_of_2(k))
    _exp_shift_rows_kernel[(rows, triton.cdiv(k, row_block))](
        out, shift, k, out.stride(0), BLOCK_K=row_block
    )
    if centering == "sinkhorn_knopp":
        return sinkhorn_normalize_(out, n_iter)
    return out


def _row_softmax(
    x: Tensor, center: Tensor | None, temp: float, out: Tensor, block_k: int = 1024
) -> Tensor:
    c = None if center is None else center.reshape(-1).float().contiguous()
    _row_softmax_kernel[(x.shape[0],)](
        x, c if c is not None else x, out, x.shape[1], x.stride(0), out.stride(0), 1.0 / temp,
        HAS_CENTER=c is not None, BLOCK_K=min(block_k, triton.next_power_of_2(x.shape[1])),
    )  # fmt: skip
    return out


def _sinkhorn_in_place(q: Tensor, temp: float, n_iter: int, block: int = 1024) -> Tensor:
    """``q`` (contiguous fp32 logits) -> Sinkhorn-Knopp probabilities, in place."""
    shift = (global_max(q) / temp).reshape(1)
    _shifted_exp_kernel[(triton.cdiv(q.numel(), block),)](
        q, q, shift, q.numel(), 1.0 / temp, BLOCK=block
    )
    return sinkhorn_normalize_(q, n_iter)


def softmax_center(logits: Tensor, center: Tensor | None, temp: float) -> Tensor:
    _check_dtype("softmax_center", logits)
    logits = _contiguous_rows(logits)
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    return _row_softmax(logits, center, temp, out=out)


def sinkhorn_knopp(logits: Tensor, temp: float, n_iter: int) -> Tensor:
    _check_dtype("sinkhorn_knopp", logits)
    q = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).copy_(logits)
    return _sinkhorn_in_place(q, temp, n_iter)


class _TritonSoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, probs, student_temp, block_k):  # type: ignore[override]
        rows, k = logits.shape
        loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(loss)
        _soft_ce_fwd_kernel[(rows,)](
            logits, probs, loss, lse, k, logits.stride(0), probs.stride(0), 1.0 / student_temp,
            BLOCK_K=block_k,
        )  # fmt: skip
        ctx.save_for_backward(logits, probs, lse)
        ctx.student_temp = student_temp
        ctx.block_k = block_k
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        logits, probs, lse = ctx.saved_tensors
        inv_t = 1.0 / ctx.student_temp
        tgt_scale = (grad_loss.float() * inv_t).contiguous()
        soft_scale = (probs.sum(dim=1, dtype=torch.float32) * tgt_scale).contiguous()
        grad = torch.empty_like(logits)
        _soft_ce_bwd_kernel[(logits.shape[0],)](
            logits, probs, lse, soft_scale, tgt_scale, grad, logits.shape[1],
            logits.stride(0), probs.stride(0), grad.stride(0), inv_t, BLOCK_K=ctx.block_k,
        )  # fmt: skip
        return grad, None, None, None


def soft_cross_entropy(
    logits: Tensor, probs: Tensor, student_temp: float, block_k: int = 1024
) -> Tensor:
    """Row kernel: online log-sum-exp forward, one write of the gradient backward."""
    _check_dtype("soft_cross_entropy", logits, probs)
    block_k = min(block_k, triton.next_power_of_2(logits.shape[1]))
    return _TritonSoftCrossEntropy.apply(
        _contiguous_rows(logits), _contiguous_rows(probs.detach()), float(student_temp), block_k
    )
