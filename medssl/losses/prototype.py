"""Fused prototype heads: projection onto K prototypes + soft cross-entropy / teacher targets.

The last layer of the DINO / iBOT heads maps a bottleneck ``[B, D]`` onto ``K`` prototypes
(65,536 in DINOv2), then takes a softmax cross-entropy against the teacher. Eager code
materialises several ``[B, K]`` fp32 matrices (logits, log-softmax, products, gradients).
Here the student side streams over tiles of prototypes with a running max and sum per row
(the online softmax of Milakov & Gimelshein 2018, as in FlashAttention and Apple's Cut
Cross-Entropy, here with soft targets), and the backward pass recomputes each tile:

    loss_b = P_b * logsumexp_k(s_bk) - sum_k p_bk s_bk,  s = f W^T / tau,  P_b = sum_k p_bk
    dL/dz_bk = g_b (P_b softmax(s)_bk - p_bk) / tau,     z = f W^T
    grad_f = dL/dz @ W,   grad_W = dL/dz^T @ f

(``P_b`` is 1 for proper targets; keeping it makes the result equal
``-(p * log_softmax(s)).sum(-1)`` for any ``p``.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.centering import global_max, sinkhorn_normalize_
from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl, without_autocast
from medssl.losses.targets import PrototypeTargets, sinkhorn_shifts

__all__ = [
    "PrototypeTargets",
    "default_chunk_size",
    "prototype_cross_entropy",
    "prototype_targets",
]

CENTERINGS = ("softmax_center", "sinkhorn_knopp", "none")

# One fp32 [rows, chunk] tile is kept around this size: far below the eager B x K matrices
# (256 MiB each at B = 1024, K = 65,536), large enough that per-op overhead stays small --
# on the shared 2-core CPU of benchmarks/RESULTS.md, 16 MiB tiles ran the DINO head 2x
# faster than 4 MiB ones for 12 MiB more memory. chunk_size overrides it.
_TILE_BYTES = 16 * 2**20


def default_chunk_size(rows: int, k: int) -> int:
    """Prototypes per tile for ``rows`` rows: about 16 MiB of fp32, a multiple of 256."""
    c = _TILE_BYTES // (4 * max(rows, 1))
    c = max(256, (c // 256) * 256)
    return min(c, k)


def _autocast(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Cast to the autocast dtype when autocast is on, as it would for the head's matmul.

    The callers then run with autocast off: the fp32 softmax arithmetic must stay fp32.
    """
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return tuple(t.to(dtype) for t in tensors)
    return tensors


def _check_head(fn: str, features: Tensor, prototypes: Tensor, chunk_size: int | None) -> int:
    check_2d("features", fn, features)
    check_2d("prototypes", fn, prototypes)
    if features.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"medssl.losses.{fn}: features have {features.shape[1]} dims but prototypes "
            f"{tuple(prototypes.shape)} expect {prototypes.shape[1]} (prototypes are [K, D])"
        )
    if features.device != prototypes.device:
        raise ValueError(
            f"medssl.losses.{fn}: features on {features.device}, prototypes on {prototypes.device}"
        )
    k = prototypes.shape[0]
    if chunk_size is None:
        return default_chunk_size(features.shape[0], k)
    if chunk_size < 1:
        raise ValueError(f"medssl.losses.{fn}: chunk_size must be >= 1, got {chunk_size}")
    return min(chunk_size, k)


def _tile_buffer(rows: int, chunk: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Flat storage for one ``[rows, chunk]`` tile, reused across tiles.

    Reusing it (instead of a fresh tensor per tile) keeps the pages hot: a new multi-MiB
    allocation is often a fresh mmap whose page faults cost more than the arithmetic.
    """
    return torch.empty(rows * chunk, dtype=dtype, device=device)


def _tile(buffer: Tensor, rows: int, cols: int) -> Tensor:
    return buffer[: rows * cols].view(rows, cols)


def _logits_into(
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


def _scaled_features(features: Tensor, inv_t: float) -> tuple[Tensor, float | None]:
    """Fold 1/tau into the (small) features when that adds no rounding; else scale tiles."""
    if features.dtype == acc_dtype(features):
        return features * inv_t, None
    return features, inv_t


def _fast_path(*tensors: Tensor) -> bool:
    """All in one full-precision dtype: whole-matrix matmuls over the targets are exact."""
    return len({t.dtype for t in tensors}) == 1 and tensors[0].dtype == acc_dtype(tensors[0])


def _online_logsumexp(f_in: Tensor, scale: float | None, prototypes: Tensor, chunk: int) -> Tensor:
    """Row log-sum-exp of the logits with a running max (exact for any range of logits)."""
    rows = f_in.shape[0]
    acc = {"dtype": acc_dtype(f_in), "device": f_in.device}
    buf = _tile_buffer(rows, chunk, **acc)
    run_max = torch.full((rows,), -torch.inf, **acc)
    run_sum = torch.zeros(rows, **acc)
    for k0 in range(0, prototypes.shape[0], chunk):
        w = prototypes[k0 : k0 + chunk]
        s = _logits_into(_tile(buf, rows, w.shape[0]), f_in, w, scale, None)
        new_max = torch.maximum(run_max, s.amax(dim=1))
        run_sum.mul_(torch.exp(run_max - new_max))
        run_sum.add_(s.sub_(new_max[:, None]).exp_().sum(dim=1))
        run_max = new_max
    return run_max + run_sum.log()


# exp(-60): a row whose sum of exponentials falls below this may have lost terms to
# underflow (fp32 denormals start at exp(-87)); one that overflowed is inf. Either is
# recomputed with a running max.
_UNDERFLOW_GUARD = 8.7e-27


def _student_pass(
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
    f_in, scale = _scaled_features(features, inv_t)
    s_buf = _tile_buffer(rows, chunk, **acc)
    run_sum = torch.zeros(rows, **acc)
    dots = None
    if targets is not None:
        n_teacher, b_t = targets.shape[0], targets.shape[1]
        dots = torch.zeros(n_crops, b_t, n_teacher, **acc)
    for k0 in range(0, k, chunk):
        w = prototypes[k0 : k0 + chunk]
        c = w.shape[0]
        s = _logits_into(_tile(s_buf, rows, c), f_in, w, scale, None)
        if dots is not None:
            q = targets[:, :, k0 : k0 + c].to(acc["dtype"])
            dots += torch.einsum("nbk,tbk->nbt", s.view(n_crops, -1, c), q)
        run_sum.add_(s.exp_().sum(dim=1))
    del s_buf
    lse = run_sum.log()
    redo = ~torch.isfinite(run_sum) | (run_sum < _UNDERFLOW_GUARD)
    if bool(redo.any()):
        lse[redo] = _online_logsumexp(f_in[redo], scale, prototypes, chunk)
    return lse, dots


def _student_lse(features: Tensor, prototypes: Tensor, inv_t: float, chunk: int) -> Tensor:
    """The row log-sum-exp of :func:`_student_pass` alone."""
    return _student_pass(features, prototypes, inv_t, chunk)[0]


def _grad_shift(lse: Tensor, softmax_scale: Tensor) -> tuple[Tensor | None, Tensor]:
    """``(shift, factor)`` with ``softmax_scale * exp(s - lse) = factor * exp(s + shift)``.

    No shift (one pass less per tile) when every row's log-sum-exp is moderate: then no
    ``exp(s)`` (each at most ``exp(lse)``) overflows, and terms that underflow to 0 are
    below exp(-27) of their row's mass. Else the shift ``-lse``."""
    low, high = torch.stack(torch.aminmax(lse)).tolist()  # one host sync, not two
    if high < 80.0 and low > -60.0:
        return None, softmax_scale * torch.exp(-lse)[:, None]
    return (-lse)[:, None], softmax_scale


def _softmax_grad_into(
    out: Tensor, f_in: Tensor, w: Tensor, scale: float | None, shift: Tensor | None,
    factor: Tensor,
) -> Tensor:  # fmt: skip
    """The softmax part of dL/dz for a tile: ``factor * exp(s + shift)`` (see _grad_shift)."""
    return _logits_into(out, f_in, w, scale, shift).exp_().mul_(factor)


def _target_terms(
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


def _add_feature_grad(grad_f: Tensor | None, g_in: Tensor, w: Tensor) -> None:
    """``grad_f += g_in @ w`` for one tile (``g_in`` in the prototypes' dtype); in low
    precision the matmul's output is added into the full-precision accumulator."""
    if grad_f is None:
        return
    if g_in.dtype == grad_f.dtype:
        grad_f.addmm_(g_in, w)
    else:
        grad_f.add_(g_in @ w)


def _input_grads(
    features: Tensor, grad_f: Tensor | None, grad_w: Tensor | None, n_inputs: int
) -> tuple[Tensor | None, ...]:
    """A backward's return: the two gradients (features' in their dtype), then ``None``
    for the ``n_inputs - 2`` inputs that take none."""
    head = grad_f.to(features.dtype) if grad_f is not None else None
    return (head, grad_w, *([None] * (n_inputs - 2)))


class _PrototypeCrossEntropy(torch.autograd.Function):
    """Chunked torch path: one ``[B, chunk]`` tile at a time, never ``[B, K]``.

    Rows are ``n`` crops x ``B_t`` images; the target of crop c, image b is
    ``sum_t weights[c, t] * targets[t, b]``. The forward takes ``exp`` of the logits
    unshifted (see :func:`_student_pass`: rows that overflow or may underflow are redone
    with a running max) and the target-logit dots on the same tiles; the backward
    recomputes each tile, shifts by the row log-sum-exp only where that is needed
    (:func:`_grad_shift`), subtracts the target part inside the tile (a few multiply-adds
    of ``[B_t, chunk]``) and feeds the two gradient matmuls: four passes of matmuls over
    the prototypes, as eager's three plus the recomputation. (Products with the targets
    over the teacher rows instead -- ``p W``, ``p^T (g f)`` -- would add two more, as
    large as the student's for iBOT's one-to-one targets.)

    In low precision the logits tiles hold what the matmul rounded, in fp32, and the
    softmax, the dots and the target subtraction are fp32 on them; each gradient tile is
    rounded once, for the two matmuls (what eager autocast computes).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        features: Tensor,
        prototypes: Tensor,
        targets: Tensor,
        weights: Tensor,
        student_temp: float,
        chunk: int,
    ) -> Tensor:
        n_crops = weights.shape[0]
        inv_t = 1.0 / student_temp
        lse, dots = _student_pass(features, prototypes, inv_t, chunk, targets, n_crops)
        w_acc = weights.to(lse.dtype)
        mass = (w_acc @ targets.sum(dim=2, dtype=lse.dtype)).reshape(-1)
        loss = mass * lse - (dots * w_acc[:, None, :]).sum(dim=2).reshape(-1)
        ctx.save_for_backward(features, prototypes, targets, weights, lse, mass)
        ctx.student_temp = student_temp
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        return without_autocast(_PrototypeCrossEntropy._backward, ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss: Tensor):  # type: ignore[no-untyped-def]
        features, prototypes, targets, weights, lse, mass = ctx.saved_tensors
        need_f, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_f or need_w):
            return None, None, None, None, None, None
        n_crops, b_t = weights.shape[0], targets.shape[1]
        chunk = ctx.chunk
        inv_t = 1.0 / ctx.student_temp
        rows, k = features.shape[0], prototypes.shape[0]
        acc = {"dtype": lse.dtype, "device": features.device}
        # dL/dz_bk = r_b (P_b softmax_bk - p_bk), r_b = g_b / tau, z = f W^T
        row_scale = grad_loss.to(lse.dtype) * inv_t
        shift, factor = _grad_shift(lse, (mass * row_scale)[:, None])
        f_in, scale = _scaled_features(features, inv_t)
        coef = weights.to(acc["dtype"])[:, :, None, None] * row_scale.view(n_crops, 1, b_t, 1)
        pairs = [tuple(pair) for pair in weights.nonzero().tolist()]
        g_buf = _tile_buffer(rows, chunk, **acc)
        grad_f = torch.zeros(features.shape, **acc) if need_f else None
        grad_w = torch.empty_like(prototypes) if need_w else None
        for k0 in range(0, k, chunk):
            w = prototypes[k0 : k0 + chunk]
            c = w.shape[0]
            g = _softmax_grad_into(_tile(g_buf, rows, c), f_in, w, scale, shift, factor)
            q = targets[:, :, k0 : k0 + c]
            g3 = g.view(n_crops, b_t, c)
            for crop, teacher in pairs:
                g3[crop].addcmul_(q[teacher], coef[crop, teacher], value=-1)
            g_in = g if g.dtype == features.dtype else g.to(features.dtype)
            _add_feature_grad(grad_f, g_in, w)
            if grad_w is not None:
                torch.mm(g_in.T, features, out=grad_w[k0 : k0 + c])
        return _input_grads(features, grad_f, grad_w, 6)


def _stream_targets(targets: PrototypeTargets, prototypes: Tensor) -> tuple[Tensor, ...]:
    """One pass over lazy targets in teacher-sized tiles: ``P W`` ``[B_t, D]``, the row
    masses and the row shift that gives the probabilities (softmax rows: minus the row
    log-sum-exp, found with a running max as the tiles stream)."""
    t_rows, k = targets.rows, prototypes.shape[0]
    acc = {"dtype": targets.dtype, "device": targets.device}
    t_chunk = default_chunk_size(t_rows, k)
    t_buf = _tile_buffer(t_rows, t_chunk, **acc)
    normalise = targets.row_shift is None
    pw_t = torch.zeros(t_rows, prototypes.shape[1], **acc)
    t_max = torch.full((t_rows,), -torch.inf, **acc)
    t_sum = torch.zeros(t_rows, **acc)
    for k0 in range(0, k, t_chunk):
        w = prototypes[k0 : k0 + t_chunk]
        p = targets.logits_into(_tile(t_buf, t_rows, w.shape[0]), k0, k0 + w.shape[0])
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


class _LazyTargetsCrossEntropy(torch.autograd.Function):
    """Chunked torch path against :class:`PrototypeTargets`: the teacher tile of each
    chunk of prototypes is recomputed from the teacher features where it is needed (the
    ``P W`` product forward, ``P^T X`` backward), so no ``[B_t, K]`` matrix exists. Rows
    normalised here (softmax targets) keep a running max and sum, as the student side.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        features: Tensor,
        prototypes: Tensor,
        weights: Tensor,
        student_temp: float,
        chunk: int,
        targets: PrototypeTargets,
    ) -> Tensor:
        inv_t = 1.0 / student_temp
        lse = _student_lse(features, prototypes, inv_t, chunk)
        pw_t, mass_t, t_shift = _stream_targets(targets, prototypes)
        pw, mass, loss = _target_terms(weights, pw_t, mass_t, features, lse, inv_t)
        ctx.save_for_backward(features, prototypes, weights, lse, mass, pw, t_shift)
        ctx.targets = targets
        ctx.student_temp = student_temp
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        return without_autocast(_LazyTargetsCrossEntropy._backward, ctx, grad_loss)

    @staticmethod
    def _backward(ctx, grad_loss: Tensor):  # type: ignore[no-untyped-def]
        features, prototypes, weights, lse, mass, pw, t_shift = ctx.saved_tensors
        need_f, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_f or need_w):
            return None, None, None, None, None, None
        targets: PrototypeTargets = ctx.targets
        inv_t = 1.0 / ctx.student_temp
        chunk = ctx.chunk
        n_crops, n_teacher = weights.shape
        rows, k = features.shape[0], prototypes.shape[0]
        t_rows = targets.rows
        acc = {"dtype": lse.dtype, "device": features.device}
        f_in, scale = _scaled_features(features, inv_t)
        row_scale = grad_loss.to(lse.dtype) * inv_t
        shift, factor = _grad_shift(lse, (mass * row_scale)[:, None])
        features_acc = features.to(acc["dtype"])
        # grad_W's target part: P^T X, X_t = sum_c weights[c, t] * row_scale * f (crop c)
        rf = (row_scale[:, None] * features_acc).view(n_crops, t_rows // n_teacher, -1)
        x = torch.einsum("ct,cbd->tbd", weights.to(acc["dtype"]), rf).reshape(t_rows, -1)
        fast = _fast_path(features, prototypes)
        g_buf = _tile_buffer(rows, chunk, **acc)
        # low precision: the target part is subtracted per tile in fp32, before rounding
        t_buf = None if fast else _tile_buffer(t_rows, chunk, **acc)
        grad_f = torch.zeros(features.shape, **acc) if need_f else None
        grad_w = torch.empty_like(prototypes) if need_w else None
        for k0 in range(0, k, chunk):
            w = prototypes[k0 : k0 + chunk]
            c = w.shape[0]
            g = _softmax_grad_into(_tile(g_buf, rows, c), f_in, w, scale, shift, factor)
            _add_feature_grad(grad_f, g if fast else g.to(features.dtype), w)
            if grad_w is not None and fast:
                torch.mm(g.T, features, out=grad_w[k0 : k0 + c])
            elif grad_w is not None:
                p = targets.logits_into(_tile(t_buf, t_rows, c), k0, k0 + c)
                tile = torch.mm(g.T, features_acc)
                tile.addmm_(p.add_(t_shift[:, None]).exp_().T, x, alpha=-1)
                grad_w[k0 : k0 + c] = tile
        del g_buf, g  # free the student tile before the teacher's
        if grad_w is not None and fast:  # the target part over larger teacher tiles
            t_chunk = default_chunk_size(t_rows, k)
            t_buf = _tile_buffer(t_rows, t_chunk, **acc)
            for k0 in range(0, k, t_chunk):
                c = min(t_chunk, k - k0)
                p = targets.logits_into(_tile(t_buf, t_rows, c), k0, k0 + c)
                grad_w[k0 : k0 + c].addmm_(p.add_(t_shift[:, None]).exp_().T, x, alpha=-1)
        if grad_f is not None:
            grad_f.sub_(row_scale[:, None] * pw)
        return _input_grads(features, grad_f, grad_w, 6)


def prototype_cross_entropy(
    student_features: Tensor,
    teacher_probs: Tensor,
    prototypes: Tensor,
    student_temp: float,
    impl: str = "auto",
    chunk_size: int | None = None,
    crop_weights: Tensor | None = None,
) -> Tensor:
    """Per-row loss ``[B]`` (fp32): ``-(p * log_softmax(f @ W.T / student_temp)).sum(-1)``.

    ``student_features`` ``[B, D]``; ``prototypes`` ``[K, D]`` (the head's last layer weight,
    already weight-normalised); ``teacher_probs`` the targets, no gradient (detach them):

    - ``[B, K]``: one target row per student row;
    - ``[B_t, K]`` with ``B = n * B_t``: student rows are ``n`` crops of the same ``B_t``
      images (crop-major), every crop against the same targets, without copies;
    - ``[T, B_t, K]``: ``T`` teacher crops; row (crop c, image b) is scored against
      ``sum_t crop_weights[c, t] * teacher_probs[t, b]`` -- by linearity the sum of its
      cross-entropies against each teacher crop. ``crop_weights`` ``[n, T]`` defaults to
      ones; DINO passes 0 where student crop c is teacher crop t (global crops are not
      scored against themselves), so all crops of a step go through one call.

    Under autocast the features and prototypes are cast to its dtype (as the matmul would
    be); the softmax arithmetic stays fp32. Gradients flow to the features and the
    prototypes (in their own dtypes). The ``[B, K]`` logits are never
    materialised: the torch path works on ``[B, chunk_size]`` tiles (``None``: about 16 MiB
    of fp32 per tile), the Triton path on register tiles.
    """
    fn = "prototype_cross_entropy"
    chunk = _check_head(fn, student_features, prototypes, chunk_size)
    student_features, prototypes = _autocast(student_features, prototypes)
    rows, k = student_features.shape[0], prototypes.shape[0]
    lazy = teacher_probs if isinstance(teacher_probs, PrototypeTargets) else None
    if lazy is not None:
        t_shape = (lazy.groups, lazy.rows // lazy.groups, lazy.shape[-1])
    else:
        targets = teacher_probs[None] if teacher_probs.dim() == 2 else teacher_probs
        t_shape = tuple(targets.shape)
    if len(t_shape) != 3 or t_shape[2] != k or t_shape[1] == 0 or rows % t_shape[1]:
        raise ValueError(
            f"medssl.losses.{fn}: teacher_probs shape {tuple(teacher_probs.shape)} does not fit "
            f"{rows} student rows and {k} prototypes: expected [{rows}, {k}], [B_t, {k}] or "
            f"[T, B_t, {k}] with {rows} a multiple of B_t"
        )
    if teacher_probs.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"medssl.losses.{fn}: teacher_probs requires grad; the fused head gives targets "
            "no gradient, pass teacher_probs.detach()"
        )
    n_crops = rows // t_shape[1]
    if crop_weights is None:
        crop_weights = torch.ones(n_crops, t_shape[0], device=student_features.device)
    elif tuple(crop_weights.shape) != (n_crops, t_shape[0]):
        raise ValueError(
            f"medssl.losses.{fn}: crop_weights shape {tuple(crop_weights.shape)}, expected "
            f"[{n_crops}, {t_shape[0]}] (student crops, teacher crops)"
        )
    crop_weights = crop_weights.detach().float()
    use_triton = resolve_impl(impl, student_features, fn) == "triton"
    with torch.autocast(student_features.device.type, enabled=False):
        if use_triton:
            from medssl.losses import triton_kernels

            return triton_kernels.prototype_cross_entropy(
                student_features,
                lazy if lazy is not None else targets,
                prototypes,
                float(student_temp),
                crop_weights,
            )
        if lazy is not None:
            return _LazyTargetsCrossEntropy.apply(
                student_features, prototypes, crop_weights, float(student_temp), chunk, lazy
            )
        return _PrototypeCrossEntropy.apply(
            student_features, prototypes, targets, crop_weights, float(student_temp), chunk
        )


@torch.no_grad()
def prototype_targets(
    teacher_features: Tensor,
    prototypes: Tensor,
    temp: float,
    centering: str = "softmax_center",
    center: Tensor | None = None,
    n_iter: int = 3,
    impl: str = "auto",
    chunk_size: int | None = None,
    lazy: bool = False,
) -> Tensor | PrototypeTargets:
    """Teacher probabilities ``[B, K]`` (fp32; fp64 for fp64 inputs; rows sum to 1) of ``teacher_features @ prototypes.T``.

    ``centering="softmax_center"``: ``softmax((z - center) / temp)`` (``center`` ``[K]`` or
    ``[1, K]``, or ``None`` for no centring, which ``centering="none"`` also means);
    ``"sinkhorn_knopp"``: :func:`medssl.losses.sinkhorn_knopp` of ``z`` with ``n_iter``
    iterations (all-reduced when distributed). The output is the only ``[B, K]`` matrix:
    logits are written tile by tile into it and normalised in place. No gradient.

    ``lazy=True`` returns a :class:`~medssl.losses.targets.PrototypeTargets` instead: the
    same probabilities as a formula (features, prototypes, column and row shifts), which
    :func:`prototype_cross_entropy` streams over without ever holding ``[B, K]``
    (Sinkhorn-Knopp's scaling vectors are computed here, one pass over the logits per
    iteration; softmax rows are normalised where they are streamed). Keep the prototypes
    unchanged until the loss has been backpropagated: the targets read them then.
    """
    fn = "prototype_targets"
    chunk = _check_head(fn, teacher_features, prototypes, chunk_size)
    teacher_features, prototypes = _autocast(teacher_features, prototypes)
    with torch.autocast(teacher_features.device.type, enabled=False):
        return _prototype_targets(
            teacher_features, prototypes, temp, centering, center, n_iter, impl, chunk, lazy
        )


def _prototype_targets(
    teacher_features: Tensor,
    prototypes: Tensor,
    temp: float,
    centering: str,
    center: Tensor | None,
    n_iter: int,
    impl: str,
    chunk: int,
    lazy: bool = False,
) -> Tensor | PrototypeTargets:
    fn = "prototype_targets"
    if centering not in CENTERINGS:
        raise ValueError(
            f"medssl.losses.{fn}: centering must be one of {CENTERINGS}, got {centering!r}"
        )
    if centering == "none":
        center = None
    if center is not None and center.numel() != prototypes.shape[0]:
        raise ValueError(
            f"medssl.losses.{fn}: center has {center.numel()} values, expected one per "
            f"prototype ({prototypes.shape[0]})"
        )
    if centering == "sinkhorn_knopp" and center is not None:
        raise ValueError(f"medssl.losses.{fn}: centering='sinkhorn_knopp' takes no center")
    if lazy:
        dtype = acc_dtype(teacher_features)
        col_shift = None if center is None else center.reshape(-1).to(dtype) * (-1.0 / temp)
        base = PrototypeTargets(teacher_features, prototypes, 1.0 / temp, col_shift)
        return sinkhorn_shifts(base, n_iter, chunk) if centering == "sinkhorn_knopp" else base
    if resolve_impl(impl, teacher_features, fn) == "triton":
        from medssl.losses import triton_kernels

        return triton_kernels.prototype_targets(
            teacher_features, prototypes, temp, centering, center, n_iter
        )
    rows, k = teacher_features.shape[0], prototypes.shape[0]
    dtype = acc_dtype(teacher_features)
    out = torch.empty(rows, k, dtype=dtype, device=teacher_features.device)
    inv_t = 1.0 / temp
    f_in, scale = _scaled_features(teacher_features, inv_t)
    if center is None:
        neg_c = torch.zeros(1, k, dtype=dtype, device=out.device)
    else:
        neg_c = center.reshape(1, k).to(dtype) * -inv_t
    for k0 in range(0, k, chunk):
        w = prototypes[k0 : k0 + chunk]
        _logits_into(out[:, k0 : k0 + chunk], f_in, w, scale, neg_c[:, k0 : k0 + chunk])
    if centering == "sinkhorn_knopp":
        out.sub_(global_max(out)).exp_()
        return sinkhorn_normalize_(out, n_iter)
    out.sub_(out.amax(dim=1, keepdim=True)).exp_()
    return out.div_(out.sum(dim=1, keepdim=True))
