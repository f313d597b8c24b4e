"""softmax_center and sinkhorn_knopp against DINOv2's formulas (float64 ground truth)."""

from __future__ import annotations

import pytest
import torch

from medssl.losses import sinkhorn_knopp, softmax_center

from . import dinov2_reference as ref

# fp32: relative error of a fp32 softmax over <= 1e3 terms; bf16: the inputs are rounded
# to bf16 first and the reference sees the same rounded values, so only fp32 arithmetic
# error remains.
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-6}


def _logits(b: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # cosine-similarity logits, as the L2-normalised DINO head produces
    return torch.rand(b, k, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 100), (33, 257)])
def test_softmax_center_matches_dinov2(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    t = _logits(*shape).to(dtype)
    center = _logits(1, shape[1], seed=1).to(dtype) * 0.1
    got = softmax_center(t, center, 0.04, impl="torch")
    want = ref.softmax_center_teacher(t.double(), center.double(), 0.04)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(got.double(), want, atol=ATOL[dtype], rtol=0)
    torch.testing.assert_close(
        softmax_center(t, None, 0.07, impl="torch").double(),
        ref.softmax_center_teacher(t.double(), 0.0, 0.07),
        atol=ATOL[dtype],
        rtol=0,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n_iter", [0, 1, 3])
def test_sinkhorn_knopp_matches_dinov2(dtype: torch.dtype, n_iter: int) -> None:
    t = _logits(19, 300).to(dtype)
    got = sinkhorn_knopp(t, 0.05, n_iter=n_iter, impl="torch")
    want = ref.sinkhorn_knopp_teacher(t.double(), 0.05, n_iter)
    torch.testing.assert_close(got.double(), want, atol=ATOL[dtype], rtol=0)
    if n_iter:
        torch.testing.assert_close(got.sum(1).double(), torch.ones(19, dtype=torch.float64))


def test_sinkhorn_knopp_low_temperature_stays_finite() -> None:
    # DINOv2's unshifted exp overflows at logits/temp > 88 in fp32; the shifted form must not
    t = _logits(8, 64) * 0.5 + 3.5  # logits / temp in [75, 100]
    assert not torch.isfinite(ref.sinkhorn_knopp_teacher(t.float(), 0.04)).all()
    got = sinkhorn_knopp(t.float(), 0.04, impl="torch")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref.sinkhorn_knopp_teacher(t, 0.04), atol=1e-5, rtol=0)


def test_bad_input_names_function_and_argument() -> None:
    with pytest.raises(ValueError, match="sinkhorn_knopp: teacher_logits must be 2-D"):
        sinkhorn_knopp(torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="softmax_center: impl must be one of"):
        softmax_center(torch.zeros(2, 3), None, 0.1, impl="cuda")
    with pytest.raises(ValueError, match="n_iter"):
        sinkhorn_knopp(torch.zeros(2, 3), 0.1, n_iter=-1)


def _sinkhorn_rank(rank: int, world: int, init_file: str, t: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Uneven shares (iBOT's masked-patch rows differ per rank): the row count is reduced too.
        out[rank] = sinkhorn_knopp(t.split([5, 7])[rank], 0.05, impl="torch")
    finally:
        dist.destroy_process_group()


def test_sinkhorn_knopp_all_reduces_across_ranks(tmp_path) -> None:
    """Two gloo ranks with 5 and 7 rows give the single-process result on all 12."""
    import torch.multiprocessing as mp

    t = _logits(12, 50)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_sinkhorn_rank, args=(2, str(tmp_path / "init"), t, out), nprocs=2, join=True)
    got = torch.cat([out[0], out[1]])
    torch.testing.assert_close(got, ref.sinkhorn_knopp_teacher(t, 0.05), atol=1e-12, rtol=0)
