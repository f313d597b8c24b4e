"""The chunked torch autograd functions of the fused prototype head.

One ``[rows, chunk]`` tile of logits at a time, never ``[B, K]``: the forward and backward
of :func:`medssl.losses.prototype_cross_entropy` against dense targets and against lazy
:class:`~medssl.losses.targets.PrototypeTargets`, built from :mod:`medssl.losses.tiles`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.dispatch import without_autocast
from medssl.losses.targets import PrototypeTargets
from medssl.losses.tiles import (
    add_feature_grad,
    default_chunk_size,
    fast_path,
    grad_shift,
    input_grads,
    scaled_features,
    softmax_grad_into,
    stream_targets,
    student_lse,
    student_pass,
    target_terms,
    tile_buffer,
    tile_view,
)

__all__ = ["LazyTargetsCrossEntropy", "PrototypeCrossEntropy"]


class PrototypeCrossEntropy(torch.autograd.Function):
    """Chunked torch path: one ``[B, chunk]`` tile at a time, never ``[B, K]``.

    Rows are ``n`` crops x ``B_t`` images; the target of crop c, image b is
    ``sum_t weights[c, t] * targets[t, b]``. The forward takes ``exp`` of the logits
    unshifted (see :func:`student_pass`: rows that overflow or may underflow are redone
    with a running max) and the target-logit dots on the same tiles; the backward
    recomputes each tile, shifts by the row log-sum-exp only where that is needed
    (:func:`grad_shift`), subtracts the target part inside the tile (a few multiply-adds
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
        lse, dots = student_pass(features, prototypes, inv_t, chunk, targets, n_crops)
        w_acc = weights.to(lse.dtype)
        mass = (w_acc @ targets.sum(dim=2, dtype=lse.dtype)).reshape(-1)
        loss = mass * lse - (dots * w_acc[:, None, :]).sum(dim=2).reshape(-1)
        ctx.save_for_backward(features, prototypes, targets, weights, lse, mass)
        ctx.student_temp = student_temp
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        return without_autocast(PrototypeCrossEntropy._backward, ctx, grad_loss)

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
        shift, factor = grad_shift(lse, (mass * row_scale)[:, None])
        f_in, scale = scaled_features(features, inv_t)
        coef = weights.to(acc["dtype"])[:, :, None, None] * row_scale.view(n_crops, 1, b_t, 1)
        pairs = [tuple(pair) for pair in weights.nonzero().tolist()]
        g_buf = tile_buffer(rows, chunk, **acc)
        grad_f = torch.zeros(features.shape, **acc) if need_f else None
        grad_w = torch.empty_like(prototypes) if need_w else None
        for k0 in range(0, k, chunk):
            w = prototypes[k0 : k0 + chunk]
            c = w.shape[0]
            g = softmax_grad_into(tile_view(g_buf, rows, c), f_in, w, scale, shift, factor)
            q = targets[:, :, k0 : k0 + c]
            g3 = g.view(n_crops, b_t, c)
            for crop, teacher in pairs:
                g3[crop].addcmul_(q[teacher], coef[crop, teacher], value=-1)
            g_in = g if g.dtype == features.dtype else g.to(features.dtype)
            add_feature_grad(grad_f, g_in, w)
            if grad_w is not None:
                torch.mm(g_in.T, features, out=grad_w[k0 : k0 + c])
        return input_grads(features, grad_f, grad_w, 6)


class LazyTargetsCrossEntropy(torch.autograd.Function):
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
        lse = student_lse(features, prototypes, inv_t, chunk)
        pw_t, mass_t, t_shift = stream_targets(targets, prototypes)
        pw, mass, loss = target_terms(weights, pw_t, mass_t, features, lse, inv_t)
        ctx.save_for_backward(features, prototypes, weights, lse, mass, pw, t_shift)
        ctx.targets = targets
        ctx.student_temp = student_temp
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):  # type: ignore[override]
        return without_autocast(LazyTargetsCrossEntropy._backward, ctx, grad_loss)

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
        f_in, scale = scaled_features(features, inv_t)
        row_scale = grad_loss.to(lse.dtype) * inv_t
        shift, factor = grad_shift(lse, (mass * row_scale)[:, None])
        features_acc = features.to(acc["dtype"])
        # grad_W's target part: P^T X, X_t = sum_c weights[c, t] * row_scale * f (crop c)
        rf = (row_scale[:, None] * features_acc).view(n_crops, t_rows // n_teacher, -1)
        x = torch.einsum("ct,cbd->tbd", weights.to(acc["dtype"]), rf).reshape(t_rows, -1)
        fast = fast_path(features, prototypes)
        g_buf = tile_buffer(rows, chunk, **acc)
        # low precision: the target part is subtracted per tile in fp32, before rounding
        t_buf = None if fast else tile_buffer(t_rows, chunk, **acc)
        grad_f = torch.zeros(features.shape, **acc) if need_f else None
        grad_w = torch.empty_like(prototypes) if need_w else None
        for k0 in range(0, k, chunk):
            w = prototypes[k0 : k0 + chunk]
            c = w.shape[0]
            g = softmax_grad_into(tile_view(g_buf, rows, c), f_in, w, scale, shift, factor)
            add_feature_grad(grad_f, g if fast else g.to(features.dtype), w)
            if grad_w is not None and fast:
                torch.mm(g.T, features, out=grad_w[k0 : k0 + c])
            elif grad_w is not None:
                p = targets.logits_into(tile_view(t_buf, t_rows, c), k0, k0 + c)
                tile = torch.mm(g.T, features_acc)
                tile.addmm_(p.add_(t_shift[:, None]).exp_().T, x, alpha=-1)
                grad_w[k0 : k0 + c] = tile
        del g_buf, g  # free the student tile before the teacher's
        if grad_w is not None and fast:  # the target part over larger teacher tiles
            t_chunk = default_chunk_size(t_rows, k)
            t_buf = tile_buffer(t_rows, t_chunk, **acc)
            for k0 in range(0, k, t_chunk):
                c = min(t_chunk, k - k0)
                p = targets.logits_into(tile_view(t_buf, t_rows, c), k0, k0 + c)
                grad_w[k0 : k0 + c].addmm_(p.add_(t_shift[:, None]).exp_().T, x, alpha=-1)
        if grad_f is not None:
            grad_f.sub_(row_scale[:, None] * pw)
        return input_grads(features, grad_f, grad_w, 6)
