"""The DINO / iBOT projection head (Caron et al. 2021; Oquab et al. 2023).

Layout of ``DINOHead`` in facebookresearch/dinov2 (``dinov2/layers/dino_head.py``): an MLP
``in -> hidden -> ... -> bottleneck`` with GELU, L2 normalisation, then a weight-normalised
linear layer without bias onto K prototypes whose gain is fixed at 1. With gain 1 the last
layer is ``x @ normalize(V).T``, so this module keeps the raw weight ``V`` and hands the
normalised rows (the *prototypes*) to :mod:`medssl.losses`, whose fused head never
materialises the ``[B, K]`` logits. Parameter names follow DINOv2 (``mlp.0``, ``mlp.2``,
``mlp.4``; ``last_layer.weight`` is DINOv2's ``last_layer.weight_v``).

The normalisation of the ``[K, bottleneck_dim]`` last layer (65,536 x 256 in DINOv2) is a
few passes over 64 MiB, and DINO and iBOT each need it on the student and the teacher
head: inside :meth:`DINOHead.step_cache` it is computed once per head and step, and its
backward is one projection instead of autograd's generic division backward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOHead", "build_teacher_head", "normalize_rows"]

_EPS = 1e-12  # F.normalize's default, which the head has always used


class _NormalizeRows(torch.autograd.Function):
    """``v / max(|v|, eps)`` row-wise, as ``F.normalize(v, dim=1)``, with a fused backward,
    optionally written straight in a lower ``dtype`` (the normalise-then-cast of autocast).

    Autograd's backward of ``F.normalize`` differentiates a broadcast division (quotient
    and divisor terms, a reduction over the broadcast) in about six passes over the matrix
    and as many fresh ``[K, D]`` tensors; the closed form ``(g - w <g, w>) / |v|`` (``w``
    the output) takes three passes and allocates only the result. With a lower output
    dtype, the full-precision normalised matrix never exists: the backward uses ``v``
    itself (``w <g, w> = v <g, v> / |v|^2``) and works in place in the gradient's upcast.
    """

    @staticmethod
    def forward(ctx, v: Tensor, dtype: torch.dtype) -> Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        denom = norm.clamp_min(_EPS)
        ctx.same_dtype = dtype == v.dtype
        w = v / denom if ctx.same_dtype else _divide_into(v, denom, dtype)
        ctx.save_for_backward(w if ctx.same_dtype else v, denom, norm >= _EPS)
        return w

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        w_or_v, denom, unclamped = ctx.saved_tensors
        if not ctx.same_dtype:
            grad = grad.to(w_or_v.dtype)  # a new tensor of this function's own: in place
        # Row dot products as a batch of 1 x D @ D x 1 products: no [K, D] temporary (a
        # fresh 64 MiB tensor costs more in page faults than its arithmetic on the CPU).
        dot = torch.bmm(grad.unsqueeze(1), w_or_v.unsqueeze(2)).squeeze(2)
        # Rows whose norm was clamped to eps were divided by a constant: no projection.
        dot = dot * unclamped
        if ctx.same_dtype:
            return torch.addcmul(grad, w_or_v, dot, value=-1).div_(denom), None
        return grad.addcmul_(w_or_v, dot / denom.square(), value=-1).div_(denom), None


_TILE_BYTES = 4 * 2**20


def _divide_into(v: Tensor, denom: Tensor, dtype: torch.dtype) -> Tensor:
    """``(v / denom).to(dtype)``, through a small reused tile in ``v``'s dtype: computed
    in full precision, rounded once on the store, without a full-size intermediate (a
    division with a lower-precision ``out=`` makes one; times in benchmarks/RESULTS.md,
    "Rounding the normalised prototypes to bf16")."""
    out = torch.empty(v.shape, dtype=dtype, device=v.device)
    rows = max(1, _TILE_BYTES // max(1, v.shape[1] * v.element_size()))
    tile = torch.empty(min(rows, v.shape[0]), v.shape[1], dtype=v.dtype, device=v.device)
    for r0 in range(0, v.shape[0], rows):
        part = tile[: min(rows, v.shape[0] - r0)]
        torch.div(v[r0 : r0 + rows], denom[r0 : r0 + rows], out=part)
        out[r0 : r0 + rows].copy_(part)
    return out


def normalize_rows(v: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """L2-normalise the rows of a 2-D ``v`` (``F.normalize(v, dim=1)``, cheaper backward),
    in ``dtype`` (default ``v``'s; the same values as normalising then casting)."""
    if v.dim() != 2:
        raise ValueError(f"normalize_rows: expected a 2-D tensor, got shape {tuple(v.shape)}")
    return _NormalizeRows.apply(v, dtype or v.dtype)


class DINOHead(nn.Module):
    """MLP + L2 norm + weight-normalised prototypes.

    ``features(x)`` returns the L2-normalised bottleneck ``[N, bottleneck_dim]``;
    ``prototypes`` the weight-normalised last layer ``[K, bottleneck_dim]``;
    ``forward(x)`` the logits ``features(x) @ prototypes.T`` (eager; tests and small K).
    """

    def __init__(
        self,
        in_dim: int,
        prototypes: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"DINOHead: n_layers must be >= 1, got {n_layers}")
        for name, value in (
            ("in_dim", in_dim),
            ("prototypes", prototypes),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
        ):
            if value < 1:
                raise ValueError(f"DINOHead: {name} must be >= 1, got {value}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, prototypes, bias=False)
        self.in_dim = in_dim
        self.n_prototypes = prototypes
        self.bottleneck_dim = bottleneck_dim
        self._caching = False
        self._cached: dict[tuple[bool, torch.dtype | None], Tensor] = {}
        self.apply(_init_weights)

    def features(self, x: Tensor) -> Tensor:
        """L2-normalised bottleneck features (eps as DINOv2: 1e-6 in fp16, else 1e-12)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        return F.normalize(x, dim=-1, p=2, eps=eps)

    @property
    def prototypes(self) -> Tensor:
        """Weight-normalised last layer ``[K, bottleneck_dim]`` (gain fixed at 1).

        Inside :meth:`step_cache` computed once (per grad mode) and reused: the weight does
        not change within a forward pass, and gradients of every use add up in the one
        normalisation's backward.
        """
        if not self._caching:
            return normalize_rows(self.last_layer.weight)
        key = (torch.is_grad_enabled(), None)
        cached = self._cached.get(key)
        if cached is None:
            cached = self._cached[key] = normalize_rows(self.last_layer.weight)
        return cached

    def prototypes_as(self, dtype: torch.dtype) -> Tensor:
        """:attr:`prototypes` in ``dtype`` (the autocast dtype of the head's matmuls),
        normalised straight into it (no full-precision copy is kept alive).

        Inside :meth:`step_cache` it is cached too, as autocast caches the casts of leaf
        weights: DINO and iBOT share one bf16 copy per head and step, and the gradients of
        their uses add up in that copy before one backward.
        """
        weight = self.last_layer.weight
        if dtype == weight.dtype:
            return self.prototypes
        if not self._caching:
            return normalize_rows(weight, dtype)
        key = (torch.is_grad_enabled(), dtype)
        cached = self._cached.get(key)
        if cached is None:
            cached = self._cached[key] = normalize_rows(weight, dtype)
        return cached

    @contextmanager
    def step_cache(self) -> Iterator[None]:
        """Share :attr:`prototypes` between the objectives of one forward pass.

        The engine opens it around the objectives' losses and closes it before the
        backward and the optimiser step, which change the weight; closing drops the cached
        tensors (what the backward needs stays in the autograd graph).
        """
        self._caching = True
        try:
            yield
        finally:
            self._caching = False
            self._cached.clear()

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x) @ self.prototypes.T


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_teacher_head(student: DINOHead) -> DINOHead:
    """A separately built head holding a copy of ``student``'s state, without gradients.

    Built fresh and loaded from the state dict rather than deep-copied, so heads that do
    not survive ``copy.deepcopy`` (lightly's) are handled the same way.
    """
    teacher = DINOHead(
        student.in_dim,
        prototypes=student.n_prototypes,
        hidden_dim=_hidden_dim(student),
        bottleneck_dim=student.bottleneck_dim,
        n_layers=sum(isinstance(m, nn.Linear) for m in student.mlp),
    )
    teacher.load_state_dict(student.state_dict())
    teacher.to(next(student.parameters()).device)
    teacher.requires_grad_(False)
    return teacher


def _hidden_dim(head: DINOHead) -> int:
    first = head.mlp[0]
    assert isinstance(first, nn.Linear)
    # With one layer the hidden size is unused; any positive value rebuilds the same head.
    return first.out_features if len(head.mlp) > 1 else 1


def load_dinov2_head(head: DINOHead, path: str, prefix: str = "dino_head") -> None:
    """Load a head saved by facebookresearch/dinov2 (or by medssl) from ``path``.

    Accepts ``.safetensors`` or ``.pth``/``.pt`` files (read with ``weights_only=True``):
    a bare head state dict, or a checkpoint whose keys carry ``{prefix}.``, optionally under
    ``teacher.`` / ``student.`` (the teacher's head is preferred, as DINOv2 evaluates the
    teacher), or nested under a ``"teacher"`` / ``"model"`` entry. The weight-normalised last
    layer may be stored as ``weight_g``/``weight_v`` (``torch.nn.utils.weight_norm``) or
    ``parametrizations.weight.original0/1``; its gain must be 1, as DINOv2 fixes it.
    """
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"head_init: {path!r} is not a file")
    from medssl.weights import load_weights

    raw: object = load_weights(file, "head_init")
    if isinstance(raw, dict):
        for key in ("teacher", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict):
        raise ValueError(f"head_init: {path!r} holds no state dict")
    state = _head_entries(raw, prefix)
    if not state:
        raise ValueError(f"head_init: {path!r} has no '{prefix}.*' (or bare head) entries")
    gain = state.pop(
        "last_layer.weight_g", state.pop("last_layer.parametrizations.weight.original0", None)
    )
    if gain is not None and not torch.allclose(
        gain.float(), torch.ones_like(gain, dtype=torch.float32)
    ):
        raise ValueError(
            f"head_init: {path!r} has a last-layer gain other than 1; medssl's head fixes it "
            "at 1 as DINOv2 does"
        )
    for old in ("last_layer.weight_v", "last_layer.parametrizations.weight.original1"):
        if old in state:
            state["last_layer.weight"] = state.pop(old)
    try:
        head.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"head_init: {path!r} does not fit this head: {exc}") from exc


def _head_entries(raw: dict, prefix: str) -> dict[str, Tensor]:
    for outer in ("teacher.", "student.", ""):
        start = f"{outer}{prefix}."
        found = {k[len(start) :]: v for k, v in raw.items() if k.startswith(start)}
        if found:
            return found
    if any(k.startswith(("mlp.", "last_layer.")) for k in raw):
        return {k: v for k, v in raw.items() if k.startswith(("mlp.", "last_layer."))}
    return {}
