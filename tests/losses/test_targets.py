"""PrototypeTargets (lazy teacher targets) against the dense targets and DINOv2's formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import PrototypeTargets, prototype_cross_entropy, prototype_targets
from medssl.losses.targets import sinkhorn_shifts

from . import dinov2_reference as ref

CENTERINGS = ("softmax_center", "sinkhorn_knopp", "none")


def _unit(rows: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(rows, d, generator=g, dtype=torch.float64), dim=-1)


def _reference(z: torch.Tensor, centering: str, center: torch.Tensor | None, temp: float):
    if centering == "sinkhorn_knopp":
        return ref.sinkhorn_knopp_teacher(z, temp)
    return ref.softmax_center_teacher(z, 0.0 if center is None else center, temp)


@pytest.mark.parametrize("centering", CENTERINGS)
@pytest.mark.parametrize("chunk_size", [64, 1000])
def test_materialized_targets_match_dinov2(centering: str, chunk_size: int) -> None:
    g = torch.Generator().manual_seed(0)
    t, w = _unit(10, 16, g), _unit(300, 16, g)
    center = torch.rand(300, generator=g, dtype=torch.float64) * 0.2
    center = center if centering == "softmax_center" else None
    lazy = prototype_targets(t, w, 0.04, centering=centering, center=center, lazy=True,
                             chunk_size=chunk_size)  # fmt: skip
    assert isinstance(lazy, PrototypeTargets) and lazy.shape == (10, 300) and lazy.dim() == 2
    want = _reference(t @ w.T, centering, center, 0.04)
    torch.testing.assert_close(lazy.materialize(), want, atol=1e-12, rtol=0)


def test_sinkhorn_iterations_and_shift_rules() -> None:
    g = torch.Generator().manual_seed(1)
    t, w = _unit(6, 8, g), _unit(40, 8, g)
    base = PrototypeTargets(t, w, 1 / 0.05)
    for n_iter in (0, 1, 5):
        got = sinkhorn_shifts(base, n_iter, chunk=16).materialize()
        torch.testing.assert_close(got, ref.sinkhorn_knopp_teacher(t @ w.T, 0.05, n_iter),
                                   atol=1e-12, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="no shifts"):
        sinkhorn_shifts(sinkhorn_shifts(base, 1, chunk=16), 1, chunk=16)


def test_view_groups_rows_like_a_tensor() -> None:
    g = torch.Generator().manual_seed(2)
    lazy = PrototypeTargets(_unit(10, 8, g), _unit(30, 8, g), 10.0)
    grouped = lazy.view(2, 5, -1)
    assert grouped.shape == (2, 5, 30) and grouped.dim() == 3 and grouped.detach() is grouped
    assert lazy.view(2, -1, 30).groups == 2 and grouped.view(10, -1).groups == 1
    assert grouped.materialize().shape == (2, 5, 30)
    with pytest.raises(ValueError, match="cannot be viewed as"):
        lazy.view(3, -1, 30)
    with pytest.raises(ValueError, match="cannot be viewed as"):
        lazy.view(2, 4, -1)


# fp64 exact; fp32: the tiles' fp32 arithmetic; bf16 (autocast-style casts): the same
# bf16 logits on both sides, so only the summation order differs.
# bf16: the dense path takes its target dots on the matmul-rounded logits tiles and
# rounds each gradient tile once (as eager autocast), the lazy path's are exact products
# with the targets: they differ by bf16 rounding (2^-8 of logits up to 10, grads in bf16).
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("centering", CENTERINGS)
def test_cross_entropy_with_lazy_targets_matches_dense(dtype, centering) -> None:
    """Loss and both gradients equal the dense path's, DINO pairing (2 teacher crops)."""
    g = torch.Generator().manual_seed(3)
    t, w, f = _unit(10, 16, g), _unit(257, 16, g), _unit(15, 16, g)
    center = torch.rand(257, generator=g, dtype=torch.float64) * 0.1
    kw = {"centering": centering, "chunk_size": 64,
          "center": center.to(dtype) if centering == "softmax_center" else None}  # fmt: skip
    dense = prototype_targets(t.to(dtype), w.to(dtype), 0.04, **kw)
    lazy = prototype_targets(t.to(dtype), w.to(dtype), 0.04, lazy=True, **kw)
    weights = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    row_w = torch.rand(15, generator=g, dtype=torch.float64)
    results = []
    for probs in (dense.view(2, 5, -1), lazy.view(2, 5, -1)):
        fr, wr = f.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
        loss = prototype_cross_entropy(fr, probs, wr, 0.1, impl="torch", chunk_size=64,
                                       crop_weights=weights)  # fmt: skip
        grads = torch.autograd.grad((loss * row_w.to(loss.dtype)).sum(), (fr, wr))
        results.append((loss, *grads))
    for got, want in zip(results[1], results[0], strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype], rtol=0)


def test_cross_entropy_with_lazy_targets_one_sided_and_bad_shape() -> None:
    g = torch.Generator().manual_seed(4)
    t, w, f = _unit(4, 8, g), _unit(50, 8, g), _unit(8, 8, g)
    lazy = prototype_targets(t, w, 0.05, centering="sinkhorn_knopp", lazy=True)
    wr = w.clone().requires_grad_()
    loss = prototype_cross_entropy(f, lazy, wr, 0.1, impl="torch", chunk_size=16)
    want = ref.ibot_patch_token_loss(f @ w.T, lazy.materialize().repeat(2, 1), 0.1)
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=0)
    (gw,) = torch.autograd.grad(loss.sum(), wr)
    assert gw.shape == w.shape and torch.isfinite(gw).all()
    with pytest.raises(ValueError, match="does not fit"):
        prototype_cross_entropy(f[:7], lazy, w, 0.1, impl="torch")


def _lazy_sinkhorn_rank(rank: int, world: int, init_file: str, t, w, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = t.split([5, 7])[rank]  # uneven shares, as iBOT's masked patches per rank
        lazy = prototype_targets(rows, w, 0.05, centering="sinkhorn_knopp", lazy=True,
                                 chunk_size=16)  # fmt: skip
        out[rank] = lazy.materialize()
    finally:
        dist.destroy_process_group()


def test_lazy_sinkhorn_all_reduces_across_ranks(tmp_path) -> None:
    """Two gloo ranks with 5 and 7 rows give the single-process result on all 12."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(5)
    t, w = _unit(12, 8, g), _unit(50, 8, g)
    out = mp.Manager().dict()
    mp.spawn(_lazy_sinkhorn_rank, args=(2, str(tmp_path / "init"), t, w, out), nprocs=2,
             join=True)  # fmt: skip
    got = torch.cat([out[0], out[1]])
    torch.testing.assert_close(got, ref.sinkhorn_knopp_teacher(t @ w.T, 0.05), atol=1e-12, rtol=0)
