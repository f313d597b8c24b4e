"""Triton kernels behind ``impl="triton"`` of :mod:`medssl.losses`.

The fused prototype head streams over tiles of prototypes as the chunked torch path does
(:mod:`medssl.losses.prototype`), with register tiles instead of ``[B, chunk]`` tensors:

- forward: programs own (row block, range of prototypes); each keeps a running max, sum of
  exponentials, target mass and target-logit dot per row; the ranges are merged on the host
  (a few ``[splits, B]`` vectors) into the per-row loss and log-sum-exp;
- backward: one kernel per row block and range accumulates ``dL/dz @ W`` (partial feature
  gradients, summed on the host: deterministic), one kernel per prototype tile accumulates
  ``dL/dz^T @ f`` over all rows; both recompute the logits tile.

Teacher targets: a kernel writes the scaled, centred logits tile by tile into the output,
which a row kernel turns into the softmax in place (Sinkhorn-Knopp: a kernel takes the
shifted exponential in place, then :func:`medssl.losses.centering.sinkhorn_normalize_`
rescales rows and columns).

Import only where Triton can run: on CUDA, or on a CPU with ``TRITON_INTERPRET=1`` set
before this module is first imported (Triton reads it when the kernels are defined).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from medssl.losses.centering import global_max, sinkhorn_normalize_
from medssl.losses.dispatch import triton_interpreter_enabled

__all__ = [
    "prototype_cross_entropy",
    "prototype_targets",
    "soft_cross_entropy",
    "softmax_center",
    "sinkhorn_knopp",
]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DOT_F32 = triton_interpreter_enabled()
# 64 x 256 fp32 accumulators (D = 256) need 8 warps to stay in registers.
_NUM_WARPS = 8
# Enough programs to fill an H100 (132 SMs) twice over.
_TARGET_PROGRAMS = 264


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


def _splits(rows: int, k: int, block_b: int, block_k: int) -> tuple[int, int]:
    """(number of prototype ranges, prototypes per range), ranges a multiple of block_k."""
    row_blocks = triton.cdiv(rows, block_b)
    n = max(1, min(triton.cdiv(_TARGET_PROGRAMS, row_blocks), triton.cdiv(k, block_k)))
    per = triton.cdiv(triton.cdiv(k, n), block_k) * block_k
    return triton.cdiv(k, per), per


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


@triton.jit
def _target_tile(P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, T: tl.constexpr):
    """Targets tile (fp32): row (crop c, image b) gets sum_t CW[c, t] * P[t, b]."""
    mask = row_ok[:, None] & k_ok[None, :]
    offs = (rows % n_targets)[:, None] * stride_pb + ks[None, :]
    crop = rows // n_targets
    p = tl.zeros([rows.shape[0], ks.shape[0]], tl.float32)
    for t in range(T):
        cw = tl.load(CW + crop * T + t, mask=row_ok, other=0.0)
        p += cw[:, None] * tl.load(P + t * stride_pt + offs, mask=mask, other=0.0).to(tl.float32)
    return p


@triton.jit
def _ce_fwd_kernel(
    F, W, P, CW, Stats,
    B, K, D, n_targets, k_per_split,
    stride_fb, stride_wk, stride_pt, stride_pb,
    inv_t,
    T: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    run_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    run_sum = tl.zeros([BLOCK_B], tl.float32)
    dot = tl.zeros([BLOCK_B], tl.float32)
    mass = tl.zeros([BLOCK_B], tl.float32)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
        s = _mm(f, tl.trans(w), PRECISION, DOT_F32) * inv_t
        p = _target_tile(P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, T)
        dot += tl.sum(p * s, axis=1)  # p is 0 outside the range
        mass += tl.sum(p, axis=1)
        s = tl.where(k_ok[None, :], s, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(s, axis=1))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(s - new_max[:, None]), axis=1)
        run_max = new_max
    out = Stats + pid_s * 4 * B + rows
    tl.store(out, run_max, mask=row_ok)
    tl.store(out + B, run_sum, mask=row_ok)
    tl.store(out + 2 * B, dot, mask=row_ok)
    tl.store(out + 3 * B, mass, mask=row_ok)


@triton.jit
def _grad_logits(f, w, P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, lse,
                 soft_scale, tgt_scale, inv_t, T: tl.constexpr, PRECISION: tl.constexpr,
                 DOT_F32: tl.constexpr):  # fmt: skip
    """dL/dz tile = soft_scale * softmax - tgt_scale * p (0 outside rows and range)."""
    s = _mm(f, tl.trans(w), PRECISION, DOT_F32) * inv_t
    p = _target_tile(P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, T)
    g = tl.exp(s - lse[:, None]) * soft_scale[:, None] - p * tgt_scale[:, None]
    return tl.where(row_ok[:, None] & k_ok[None, :], g, 0.0)


@triton.jit
def _ce_bwd_features_kernel(
    F, W, P, CW, LSE, SoftScale, TgtScale, GradF,
    B, K, D, n_targets, k_per_split,
    stride_fb, stride_wk, stride_pt, stride_pb,
    inv_t,
    T: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    soft_scale = tl.load(SoftScale + rows, mask=row_ok, other=0.0)
    tgt_scale = tl.load(TgtScale + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
        g = _grad_logits(f, w, P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, lse,
                         soft_scale, tgt_scale, inv_t, T, PRECISION, DOT_F32)  # fmt: skip
        acc += _mm(g.to(w.dtype), w, PRECISION, DOT_F32)
    out = GradF + pid_s * B * D + rows[:, None] * D + dcol[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _ce_bwd_prototypes_kernel(
    F, W, P, CW, LSE, SoftScale, TgtScale, GradW,
    B, K, D, n_targets,
    stride_fb, stride_wk, stride_pt, stride_pb, stride_gk,
    inv_t,
    T: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
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
        lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
        soft_scale = tl.load(SoftScale + rows, mask=row_ok, other=0.0)
        tgt_scale = tl.load(TgtScale + rows, mask=row_ok, other=0.0)
        g = _grad_logits(f, w, P, CW, stride_pt, stride_pb, rows, n_targets, row_ok, ks, k_ok, lse,
                         soft_scale, tgt_scale, inv_t, T, PRECISION, DOT_F32)  # fmt: skip
        acc += _mm(tl.trans(g).to(f.dtype), f, PRECISION, DOT_F32)
    out = GradW + ks[:, None] * stride_gk + dcol[None, :]
    tl.store(out, acc.to(GradW.dtype.element_ty), mask=k_ok[:, None] & d_ok[None, :])


@triton.jit
def _scaled_logits_kernel(
    F, W, C, Out,
    B, K, D,
    stride_fb, stride_wk, stride_ob,
    inv_t,
    HAS_CENTER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    """Out tile = (f @ w.T - center) / temp, in fp32."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    k_ok = ks < K
    dcol = tl.arange(0, BLOCK_D)
    d_ok = dcol < D
    f = _load_rows(F, rows, row_ok, stride_fb, dcol, d_ok)
    w = _load_rows(W, ks, k_ok, stride_wk, dcol, d_ok)
    z = _mm(f, tl.trans(w), PRECISION, DOT_F32)
    if HAS_CENTER:
        z -= tl.load(C + ks, mask=k_ok, other=0.0)[None, :]
    tl.store(
        Out + rows[:, None] * stride_ob + ks[None, :],
        z * inv_t,
        mask=row_ok[:, None] & k_ok[None, :],
    )


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


def _contiguous_rows(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _merge_stats(stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-range (max, sum, dot, mass) ``[S, 4, B]`` -> (loss, lse, mass) per row."""
    run_max, run_sum, dot, mass = stats.unbind(1)
    row_max = run_max.amax(dim=0)
    lse = row_max + (run_sum * torch.exp(run_max - row_max)).sum(dim=0).log()
    mass = mass.sum(dim=0)
    return mass * lse - dot.sum(dim=0), lse, mass


class _TritonPrototypeCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, prototypes, targets, weights, student_temp, blocks):  # type: ignore[override]
        block_b, block_k = blocks
        rows, d = features.shape
        k = prototypes.shape[0]
        n_split, per = _splits(rows, k, block_b, block_k)
        stats = torch.empty(n_split, 4, rows, dtype=torch.float32, device=features.device)
        precision = _precision(features.dtype)
        _ce_fwd_kernel[(triton.cdiv(rows, block_b), n_split)](
            features, prototypes, targets, weights, stats,
            rows, k, d, targets.shape[1], per,
            features.stride(0), prototypes.stride(0), targets.stride(0), targets.stride(1),
            1.0 / student_temp,
            T=targets.shape[0], BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_D=_block_d(d),
            PRECISION=precision, DOT_F32=_DOT_F32, num_warps=_NUM_WARPS,
        )  # fmt: skip
        loss, lse, mass = _merge_stats(stats)
        ctx.save_for_backward(features, prototypes, targets, weights, lse, mass)
        ctx.student_temp = student_temp
        ctx.blocks = blocks
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        features, prototypes, targets, weights, lse, mass = ctx.saved_tensors
        block_b, block_k = ctx.blocks
        rows, d = features.shape
        k = prototypes.shape[0]
        inv_t = 1.0 / ctx.student_temp
        precision = _precision(features.dtype)
        tgt_scale = (grad_loss.float() * inv_t).contiguous()
        soft_scale = (mass * tgt_scale).contiguous()
        common = dict(T=targets.shape[0], BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_D=_block_d(d),
                      PRECISION=precision, DOT_F32=_DOT_F32, num_warps=_NUM_WARPS)  # fmt: skip
        grad_f = grad_w = None
        if ctx.needs_input_grad[0]:
            n_split, per = _splits(rows, k, block_b, block_k)
            partial = torch.empty(n_split, rows, d, dtype=torch.float32, device=features.device)
            _ce_bwd_features_kernel[(triton.cdiv(rows, block_b), n_split)](
                features, prototypes, targets, weights, lse, soft_scale, tgt_scale, partial,
                rows, k, d, targets.shape[1], per,
                features.stride(0), prototypes.stride(0), targets.stride(0), targets.stride(1),
                inv_t, **common,
            )  # fmt: skip
            grad_f = partial.sum(dim=0).to(features.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(prototypes)
            _ce_bwd_prototypes_kernel[(triton.cdiv(k, block_k),)](
                features, prototypes, targets, weights, lse, soft_scale, tgt_scale, grad_w,
                rows, k, d, targets.shape[1],
                features.stride(0), prototypes.stride(0), targets.stride(0), targets.stride(1),
                grad_w.stride(0), inv_t, **common,
            )  # fmt: skip
        return grad_f, grad_w, None, None, None, None


def prototype_cross_entropy(
    features: Tensor,
    targets: Tensor,
    prototypes: Tensor,
    student_temp: float,
    crop_weights: Tensor | None = None,
    block_b: int = 64,
    block_k: int = 64,
) -> Tensor:
    """Fused projection + soft cross-entropy; ``targets`` ``[T, B_t, K]``, ``crop_weights``
    ``[B / B_t, T]`` (fp32, default ones) as :func:`medssl.losses.prototype_cross_entropy`
    validates them."""
    _check_dtype("prototype_cross_entropy", features, prototypes)
    features = _contiguous_rows(features)
    prototypes = _contiguous_rows(prototypes)
    targets = targets if targets.stride(-1) == 1 else targets.contiguous()
    if crop_weights is None:
        crop_weights = torch.ones(features.shape[0] // targets.shape[1], targets.shape[0])
    weights = crop_weights.to(device=features.device, dtype=torch.float32).contiguous()
    return _TritonPrototypeCrossEntropy.apply(
        features, prototypes, targets, weights, student_temp, (block_b, block_k)
    )


@torch.no_grad()
def prototype_targets(
    features: Tensor,
    prototypes: Tensor,
    temp: float,
    centering: str,
    center: Tensor | None,
    n_iter: int,
    block_b: int = 64,
    block_k: int = 64,
) -> Tensor:
    """Teacher targets: logits tile by tile into the output, then normalised in place."""
    _check_dtype("prototype_targets", features, prototypes)
    features = _contiguous_rows(features)
    prototypes = _contiguous_rows(prototypes)
    rows, d = features.shape
    k = prototypes.shape[0]
    out = torch.empty(rows, k, dtype=torch.float32, device=features.device)
    c = None if center is None else center.reshape(-1).float().contiguous()
    _scaled_logits_kernel[(triton.cdiv(rows, block_b), triton.cdiv(k, block_k))](
        features, prototypes, c if c is not None else out, out,
        rows, k, d,
        features.stride(0), prototypes.stride(0), out.stride(0),
        1.0 / temp,
        HAS_CENTER=c is not None, BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_D=_block_d(d),
        PRECISION=_precision(features.dtype), DOT_F32=_DOT_F32, num_warps=_NUM_WARPS,
    )  # fmt: skip
    if centering == "sinkhorn_knopp":
        return _sinkhorn_in_place(out, 1.0, n_iter)
    return _row_softmax(out, None, 1.0, out=out)


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
