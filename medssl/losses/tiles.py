"""Tile-by-tile arithmetic of the chunked prototype head (the torch path).

The pieces :mod:`medssl.losses.chunked_head` assembles into the forward and backward of
the fused head: ``[rows, chunk]`` logits tiles in a reused buffer, the unshifted
log-sum-exp pass with its exact running-max fallback (the online softmax of Milakov &
Gimelshein 2018), the gradient tiles and the teacher-target stream. Internal to
:mod:`medssl.losses`; the public functions are in :mod:`medssl.losses.prototype`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.dispatch import acc_dtype
from medssl.losses.targets import PrototypeTargets

# One fp32 [rows, chunk] tile is kept around this size: far below the eager B x K matrices
# (256 MiB each at B = 1024, K = 65,536), large enough that per-op overhead stays small
# (4 and 16 MiB tiles compared in benchmarks/RESULTS.md, "Loss head"). chunk_size
# overrides it.
_TILE_BYTES = 16 * 2**20


def default_chunk_size(rows: int, k: int) -> int:
    """Prototypes per tile for ``rows`` rows: about 16 MiB of fp32, a multiple of 256."""
    c = _TILE_BYTES // (4 * max(rows, 1))
    c = max(256, (c // 256) * 256)
    return min(c, k)


def tile_buffer(rows: int, chunk: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Flat storage for one ``[rows, chunk]`` tile, reused across tiles.

    Reusing it (instead of a fresh tensor per tile) keeps the pages hot: a new multi-MiB
    allocation is often a fresh mmap whose page faults cost more than the arithmetic.
    """
    return torch.empty(rows * chunk, dtype=dtype, device=device)


def tile_view(buffer: Tensor, rows: int, cols: int) -> Tensor:
    return buffer[: rows * cols].view(rows, cols)


def logits_into(
    out: Tensor, features: Tensor, w: Tensor, scale: float | None, neg_shift: Tensor | None
) -> Tensor:
    """``out = features @ w.T (* scale) (+ neg_shift)`` (``neg_shift`` ``[rows, 1]``).

    ``scale=None`` when the features are pre-scaled; then it is one ``mm``/``addmm`` (the
    shift rides on the matmul's output write instead of costing a pass over the tile).
    """
    if features.dtype == out.dtype and scale is None:
        if neg_shift is None:
            return torch.mm(features, w.T, out=out)
        return torch.addmm(neg_shift, features, w.T, out=out)
    out.copy_(features @ w.T)  # low-precision matmul, softmax arithmetic in acc_dtype
    if scale is not None:
        out.mul_(scale)
    return out if neg_shift is None else out.add_(neg_shift)


def scaled_features(features: Tensor, inv_t: float) -> tuple[Tensor, float | None]:
    """Fold 1/tau into the (small) features when that adds no rounding; else scale tiles."""
    if features.dtype == acc_dtype(features):
        return features * inv_t, None
    return features, inv_t


def fast_path(*tensors: Tensor) -> bool:
    """All in one full-precision dtype: whole-matrix matmuls over the targets are exact."""
    return len({t.dtype for t in tensors}) == 1 and tensors[0].dtype == acc_dtype(tensors[0])


def online_logsumexp(f_in: Tensor, scale: float | None, prototypes: Tensor, chunk: int) -> Tensor:
    """Row log-sum-exp of the logits with a running max (exact for any range of logits)."""
    rows = f_in.shape[0]
    acc = {"dtype": acc_dtype(f_in), "device": f_in.device}
    buf = tile_buffer(rows, chunk, **acc)
    run_max = torch.full((rows,), -torch.inf, **acc)
    run_sum = torch.zeros(rows, **acc)
    for k0 in range(0, prototypes.shape[0], chunk):
        w = prototypes[k0 : k0 + chunk]
        s = logits_into(tile_view(buf, rows, w.shape[0]), f_in, w, scale, None)
        new_max = torch.maximum(run_max, s.amax(dim=1))
        run_sum.mul_(torch.exp(run_max - new_max))
        run_sum.add_(s.sub_(new_max[:, None]).exp_().sum(dim=1))
        run_max = new_max
    return run_max + run_sum.log()


# exp(-60): a row whose sum of exponentials falls below this may have lost terms to
# underflow (fp32 denormals start at exp(-87)); one that overflowed is inf. Either is
# recomputed with a running max.
_UNDERFLOW_GUARD = 8.7e-27


def student_pass(
    features: Tensor,
    prototypes: Tensor,
    inv_t: float,
    chunk: int,
    targets: Tensor | None = None,
    n_crops: int = 1,
) -> tuple[Tensor, Tensor | None]:
    """One pass over the prototypes: ``(lse, dots)``.

    ``lse``: row log-sum-exp of ``features @ prototypes.T * inv_t``, tile by tile,
    unshifted -- ``exp`` straight on the logits (no max pass, no shift pass; the
    L2-normalised DINO head's logits lie within +-1/tau). Rows whose sum overflowed or
    could have lost terms to underflow are recomputed exactly with a running max.

    ``dots`` (with ``targets`` ``[T, B_t, K]``, rows ``n_crops x B_t`` crop-major):
    ``<s_(c, b), targets[t, b]>`` ``[n_crops, B_t, T]``, taken on each logits tile before
    its ``exp`` -- a batch over images of ``[n, chunk] x [chunk, T]`` products (row dots
    for one-to-one targets) instead of a ``targets @ W`` matmul.
    """
    rows, k = features.shape[0], prototypes.shape[0]
    acc = {"dtype": acc_dtype(features), "device": features.device}
    f_in, scale = scaled_features(features, inv_t)
    s_buf = tile_buffer(rows, chunk, **acc)
    run_sum = torch.zeros(rows, **acc)
    dots = None
    if targets is not None:
        n_teacher, b_t = targets.shape[0], targets.shape[1]
        dots = torch.zeros(n_crops, b_t, n_teacher, **acc)
    for k0 in range(0, k, chunk):
        w = prototypes[k0 : k0 + chunk]
        c = w.shape[0]
        s = logits_into(tile_view(s_buf, rows, c), f_in, w, scale, None)
        if dots is not None:
            q = targets[:, :, k0 : k0 + c].to(acc["dtype"])
            dots += torch.einsum("nbk,tbk->nbt", s.view(n_crops, -1, c), q)
        run_sum.add_(s.exp_().sum(dim=1))
    del s_buf
    lse = run_sum.log()
    redo = ~torch.isfinite(run_sum) | (run_sum < _UNDERFLOW_GUARD)
    if bool(redo.any()):
        lse[redo] = online_logsumexp(f_in[redo], scale, prototypes, chunk)
    return lse, dots


def student_lse(features: Tensor, prototypes: Tensor, inv_t: float, chunk: int) -> Tensor:
    """The row log-sum-exp of :func:`student_pass` alone."""
    return student_pass(features, prototypes, inv_t, chunk)[0]


def grad_shift(lse: Tensor, softmax_scale: Tensor) -> tuple[Tensor | None, Tensor]:
    """``(shift, factor)`` with ``softmax_scale * exp(s - lse) = factor * exp(s + shift)``.

    No shift (one pass less per tile) when every row's log-sum-exp is moderate: then no
    ``exp(s)`` (each at most ``exp(lse)``) overflows, and terms that underflow to 0 are
    below exp(-27) of their row's mass. Else the shift ``-lse``."""
    low, high = torch.stack(torch.aminmax(lse)).tolist()  # one host sync, not two
    if high < 80.0 and low > -60.0:
        return None, softmax_scale * torch.exp(-lse)[:, None]
    return (-lse)[:, None], softmax_scale


def softmax_grad_into(
    out: Tensor, f_in: Tensor, w: Tensor, scale: float | None, shift: Tensor | None,
    factor: Tensor,
) -> Tensor:  # fmt: skip
    """The softmax part of dL/dz for a tile: ``factor * exp(s + shift)`` (see grad_shift)."""
    return logits_into(out, f_in, w, scale, shift).exp_().mul_(factor)


def target_terms(
    weights: Tensor, pw_t: Tensor, mass_t: Tensor, features: Tensor, lse: Tensor, inv_t: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(p W, target mass, loss)`` per student row. Row (crop c, image b) has the target
    ``sum_t weights[c, t] * targets[t, b]``; ``pw_t`` and ``mass_t`` are per teacher row
    (``[T, B_t, D]``/``[T, B_t]`` or flat), so only ``[rows, D]`` is ever formed."""
    acc = lse.dtype
    w_acc = weights.to(acc)
    n_teacher = weights.shape[1]
    d = pw_t.shape[-1]
    pw = torch.einsum("ct,tbd->cbd", w_acc, pw_t.reshape(n_teacher, -1, d)).reshape(-1, d)
    mass = (w_acc @ mass_t.reshape(n_teacher, -1)).reshape(-1)
    dot = torch.linalg.vecdot(features.to(acc), pw) * inv_t
    return pw, mass, mass * lse - dot


def add_feature_grad(grad_f: Tensor | None, g_in: Tensor, w: Tensor) -> None:
    """``grad_f += g_in @ w`` for one tile (``g_in`` in the prototypes' dtype); in low
    precision the matmul's output is added into the full-precision accumulator."""
    if grad_f is None:
        return
    if g_in.dtype == grad_f.dtype:
        grad_f.addmm_(g_in, w)
    else:
        grad_f.add_(g_in @ w)


def input_grads(
    features: Tensor, grad_f: Tensor | None, grad_w: Tensor | None, n_inputs: int
) -> tuple[Tensor | None, ...]:
    """A backward's return: the two gradients (features' in their dtype), then ``None``
    for the ``n_inputs - 2`` inputs that take none."""
    head = grad_f.to(features.dtype) if grad_f is not None else None
    return (head, grad_w, *([None] * (n_inputs - 2)))


def stream_targets(targets: PrototypeTargets, prototypes: Tensor) -> tuple[Tensor, ...]:
    """One pass over lazy targets in teacher-sized tiles: ``P W`` ``[B_t, D]``, the row
    masses and the row shift that gives the probabilities (softmax rows: minus the row
    log-sum-exp, found with a running max as the tiles stream)."""
    t_rows, k = targets.rows, prototypes.shape[0]
    acc = {"dtype": targets.dtype, "device": targets.device}
    t_chunk = default_chunk_size(t_rows, k)
    t_buf = tile_buffer(t_rows, t_chunk, **acc)
    normalise = targets.row_shift is None
    pw_t = torch.zeros(t_rows, prototypes.shape[1], **acc)
    t_max = torch.full((t_rows,), -torch.inf, **acc)
    t_sum = torch.zeros(t_rows, **acc)
    for k0 in range(0, k, t_chunk):
        w = prototypes[k0 : k0 + t_chunk]
        p = targets.logits_into(tile_view(t_buf, t_rows, w.shape[0]), k0, k0 + w.shape[0])
        if normalise:  # running max: rescale what was summed so far
            new_max = torch.maximum(t_max, p.amax(dim=1))
            rescale = torch.exp(t_max - new_max)
            pw_t.mul_(rescale[:, None])
            t_sum.mul_(rescale)
            p.sub_(new_max[:, None])
            t_max = new_max
        else:
            p.add_(targets.row_shift[:, None])
        p.exp_()
        t_sum.add_(p.sum(dim=1))
        pw_t.addmm_(p, w.to(acc["dtype"]))
    if not normalise:
        return pw_t, t_sum, targets.row_shift
    return pw_t.div_(t_sum[:, None]), torch.ones(t_rows, **acc), -(t_max + t_sum.log())
