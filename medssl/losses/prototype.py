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

This module checks the arguments and dispatches; the torch path's autograd functions are
in :mod:`medssl.losses.chunked_head`, their tile arithmetic in :mod:`medssl.losses.tiles`,
the Triton path in :mod:`medssl.losses.triton_kernels`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.losses.chunked_head import LazyTargetsCrossEntropy, PrototypeCrossEntropy
from medssl.losses.dispatch import acc_dtype, check_2d, resolve_impl
from medssl.losses.sinkhorn import global_max, sinkhorn_normalize_
from medssl.losses.targets import PrototypeTargets, sinkhorn_shifts
from medssl.losses.tiles import default_chunk_size, logits_into, scaled_features

__all__ = [
    "PrototypeTargets",
    "default_chunk_size",
    "prototype_cross_entropy",
    "prototype_targets",
]

CENTERINGS = ("softmax_center", "sinkhorn_knopp", "none")


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
            return LazyTargetsCrossEntropy.apply(
                student_features, prototypes, crop_weights, float(student_temp), chunk, lazy
            )
        return PrototypeCrossEntropy.apply(
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
    f_in, scale = scaled_features(teacher_features, inv_t)
    if center is None:
        neg_c = torch.zeros(1, k, dtype=dtype, device=out.device)
    else:
        neg_c = center.reshape(1, k).to(dtype) * -inv_t
    for k0 in range(0, k, chunk):
        w = prototypes[k0 : k0 + chunk]
        logits_into(out[:, k0 : k0 + chunk], f_in, w, scale, neg_c[:, k0 : k0 + chunk])
    if centering == "sinkhorn_knopp":
        out.sub_(global_max(out)).exp_()
        return sinkhorn_normalize_(out, n_iter)
    out.sub_(out.amax(dim=1, keepdim=True)).exp_()
    return out.div_(out.sum(dim=1, keepdim=True))
