"""Teacher targets that are never materialised: ``[B, K]`` probabilities as a formula.

DINO's and iBOT's teacher probabilities are ``p[b, k] = exp(z[b, k] / temp + a[k] + c[b])``
with ``z = features @ prototypes.T``: softmax centring has ``a = -center / temp`` and ``c``
the row normaliser; Sinkhorn-Knopp (SwAV; DINOv2's ``sinkhorn_knopp_teacher``) rescales rows
and columns, so after any number of iterations ``a`` and ``c`` are the logs of its column
and row scaling vectors. :class:`PrototypeTargets` keeps the ``[B, D]`` features, the
prototypes and those two vectors (a few hundred KiB at K = 65,536) instead of the
``[B, K]`` matrix (51 MiB for 204 teacher rows), and yields tiles of it on demand;
:func:`medssl.losses.prototype_cross_entropy` streams over them. Sinkhorn-Knopp's vectors
come from streaming passes over the logits (one per iteration), all-reduced as DINOv2
all-reduces its sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.distributed as dist
from torch import Tensor

from medssl.losses.dispatch import acc_dtype

__all__ = ["PrototypeTargets", "sinkhorn_shifts"]

_TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class PrototypeTargets:
    """Teacher probabilities ``exp(features @ prototypes.T * inv_temp + col_shift[k] + row_shift[b])``.

    ``row_shift=None`` means each row is normalised to sum to 1 (a softmax), with the
    normaliser computed where the rows are streamed. ``groups`` teacher crops: rows are
    ``[groups, B_t]`` crop-major, like a ``[T, B_t, K]`` tensor of targets. Behaves like a
    detached tensor where :func:`~medssl.losses.prototype_cross_entropy` needs it
    (``shape``, ``dim()``, ``view(T, B_t, -1)``, ``detach()``); ``materialize()`` gives the
    dense tensor.
    """

    features: Tensor  # [rows, D]
    prototypes: Tensor  # [K, D]
    inv_temp: float
    col_shift: Tensor | None = None  # [K], acc dtype
    row_shift: Tensor | None = None  # [rows], acc dtype
    groups: int = 1

    requires_grad = False

    @property
    def rows(self) -> int:
        return self.features.shape[0]

    @property
    def shape(self) -> torch.Size:
        k = self.prototypes.shape[0]
        if self.groups == 1:
            return torch.Size((self.rows, k))
        return torch.Size((self.groups, self.rows // self.groups, k))

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def dtype(self) -> torch.dtype:
        return acc_dtype(self.features)

    def dim(self) -> int:
        return len(self.shape)

    def detach(self) -> PrototypeTargets:
        return self

    def view(self, *shape: int) -> PrototypeTargets:
        """``view(T, B_t, -1)`` (or ``view(rows, -1)``): group the rows into T crops."""
        groups = shape[0] if len(shape) == 3 else 1
        if (
            len(shape) not in (2, 3)
            or groups < 1
            or self.rows % groups
            or (len(shape) == 3 and shape[1] not in (-1, self.rows // groups))
        ):
            raise ValueError(
                f"PrototypeTargets of {self.rows} rows cannot be viewed as {tuple(shape)}"
            )
        return replace(self, groups=groups)

    def logits_into(self, out: Tensor, k0: int, k1: int) -> Tensor:
        """``out = features @ prototypes[k0:k1].T * inv_temp + col_shift[k0:k1]`` (acc dtype)."""
        w = self.prototypes[k0:k1]
        feats = self._scaled_features
        if feats is not None and w.dtype == out.dtype:
            # 1/temp folded into the features and the shift into the matmul: one pass
            if self.col_shift is None:
                return torch.mm(feats, w.T, out=out)
            return torch.addmm(self.col_shift[None, k0:k1], feats, w.T, out=out)
        out.copy_(self.features @ w.T)  # low precision matmul, the rest in the acc dtype
        out.mul_(self.inv_temp)
        if self.col_shift is not None:
            out.add_(self.col_shift[k0:k1])
        return out

    @cached_property
    def _scaled_features(self) -> Tensor | None:
        """``features * inv_temp`` when the features are in the acc dtype (once per object)."""
        if self.features.dtype != self.dtype:
            return None
        return self.features * self.inv_temp

    def materialize(self, chunk: int = 8192) -> Tensor:
        """The dense probabilities, ``[rows, K]`` (or ``[T, B_t, K]``), in the acc dtype."""
        k = self.prototypes.shape[0]
        out = torch.empty(self.rows, k, dtype=self.dtype, device=self.device)
        for k0 in range(0, k, chunk):
            self.logits_into(out[:, k0 : k0 + chunk], k0, min(k0 + chunk, k))
        if self.row_shift is None:
            out = torch.softmax(out, dim=1)
        else:
            out.add_(self.row_shift[:, None]).exp_()
        return out.view(self.shape)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sinkhorn_shifts(base: PrototypeTargets, n_iter: int, chunk: int) -> PrototypeTargets:
    """``base`` (no shifts) with the column and row shifts of Sinkhorn-Knopp.

    DINOv2's iteration on ``Q = exp(z / temp)``: ``Q /= sum(Q)``, then ``n_iter`` times make
    each prototype's column sum ``1/K`` and each sample's row sum ``1/B_total`` (sums
    all-reduced across ranks), finally ``Q *= B_total``. Written as
    ``Q = s * v[b] * E[b, k] * u[k]`` with ``E = exp(z / temp - M)`` (M the global max, for
    range), each iteration is one streaming pass: a tile's column sums give its ``u``, which
    its row sums need at once. Sums are clamped at the smallest normal float as
    :func:`medssl.losses.sinkhorn.sinkhorn_normalize_` does.
    """
    if base.col_shift is not None or base.row_shift is not None:
        raise ValueError("sinkhorn_shifts: base targets must have no shifts yet")
    rows, k = base.rows, base.prototypes.shape[0]
    dtype, device = base.dtype, base.device
    distributed = _distributed()
    tile = torch.empty(rows * min(chunk, k), dtype=dtype, device=device)

    def exp_tile(k0: int, k1: int, shift: float) -> Tensor:
        z = base.logits_into(tile[: rows * (k1 - k0)].view(rows, k1 - k0), k0, k1)
        return z.sub_(shift).exp_()

    # pass 0: the global max and the total of exp(z - max), online over the tiles
    z_max = torch.tensor(-math.inf, dtype=dtype, device=device)
    total = torch.zeros((), dtype=dtype, device=device)
    for k0 in range(0, k, chunk):
        k1 = min(k0 + chunk, k)
        z = base.logits_into(tile[: rows * (k1 - k0)].view(rows, k1 - k0), k0, k1)
        new_max = torch.maximum(z_max, z.max())
        total = total * torch.exp(z_max - new_max) + z.sub_(new_max).exp_().sum()
        z_max = new_max
    b_total = torch.tensor(float(rows), dtype=dtype, device=device)
    if distributed:
        global_max = z_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
        total = total * torch.exp(z_max - global_max)
        z_max = global_max
        dist.all_reduce(total)
        dist.all_reduce(b_total)
    shift = float(z_max)
    s = 1.0 / total
    u = torch.ones(k, dtype=dtype, device=device)
    v = torch.ones(rows, dtype=dtype, device=device)
    for _ in range(n_iter):
        row_sums = torch.zeros(rows, dtype=dtype, device=device)
        for k0 in range(0, k, chunk):
            k1 = min(k0 + chunk, k)
            e = exp_tile(k0, k1, shift)
            col = (v @ e) * s * u[k0:k1]  # this tile's column sums of the current Q
            if distributed:
                dist.all_reduce(col)
            u[k0:k1] /= col.clamp_min_(_TINY) * k
            row_sums.addmv_(e, u[k0:k1])
        v /= (row_sums * s * v).clamp_min_(_TINY) * b_total
    col_shift = u.log_()
    row_shift = v.log_() + torch.log(s * b_total) - shift
    return replace(base, col_shift=col_shift, row_shift=row_shift)
