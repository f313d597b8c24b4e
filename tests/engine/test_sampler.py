"""The rank-aware, resumable sampler."""

from __future__ import annotations

from medssl.engine.sampler import EpochSampler


def test_ranks_are_disjoint_and_global_batches_do_not_depend_on_the_world_size() -> None:
    size, batch = 20, 2
    single = list(EpochSampler(size, seed=1))
    ranks = [list(EpochSampler(size, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    for k in range(size // (2 * batch)):
        together = ranks[0][k * batch : (k + 1) * batch] + ranks[1][k * batch : (k + 1) * batch]
        assert sorted(together) == sorted(single[2 * k * batch : 2 * (k + 1) * batch])


def test_epochs_reshuffle_and_start_resumes_mid_epoch() -> None:
    sampler = EpochSampler(12, seed=0, rank=1, world_size=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1 and len(epoch0) == len(sampler) == 4
    sampler.set_epoch(1, start=3)
    assert list(sampler) == epoch1[3:] and len(sampler) == 1


def test_uneven_tail_is_dropped() -> None:
    shares = [list(EpochSampler(7, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]
