"""Collapse diagnostics: entropies, feature spread, classification and the monitor."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from medssl.engine.diagnostics import (
    CollapseMonitor,
    classify,
    collapse_metrics,
    effective_rank,
    feature_std,
    mean_entropy,
    usage_entropy,
)

K = 64


def test_uniform_teacher() -> None:
    probs = torch.full((16, K), 1.0 / K)
    m = collapse_metrics(probs)
    assert m["teacher_entropy"] == pytest.approx(math.log(K))
    assert m["teacher_entropy_ratio"] == pytest.approx(1.0)
    assert classify(m) == "uniform"


def test_one_hot_collapse_onto_one_prototype() -> None:
    probs = torch.zeros(16, K)
    probs[:, 3] = 1.0
    m = collapse_metrics(probs)
    assert m["teacher_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert m["usage_entropy"] == pytest.approx(0.0, abs=1e-12)
    assert classify(m) == "one-hot"


def test_sharp_and_diverse_is_ok() -> None:
    probs = torch.softmax(torch.randn(16, K, generator=torch.Generator().manual_seed(0)) * 5, dim=1)
    m = collapse_metrics(probs)
    assert m["teacher_entropy_ratio"] < 0.95 and m["usage_ratio"] > 0.1
    assert classify(m) == "ok"
    # 16 distinct one-hot rows use 16 prototypes: the usage entropy is log 16, its maximum.
    distinct = torch.eye(K)[:16]
    assert usage_entropy(distinct).item() == pytest.approx(math.log(16))
    assert mean_entropy(distinct).item() == pytest.approx(0.0, abs=1e-12)
    assert classify(collapse_metrics(distinct)) == "ok"


def test_feature_spread() -> None:
    gen = torch.Generator().manual_seed(0)
    healthy = torch.randn(256, 32, generator=gen)
    collapsed = torch.randn(1, 32, generator=gen).repeat(256, 1) + 1e-9 * torch.randn(
        256, 32, generator=gen
    )
    assert feature_std(healthy).item() == pytest.approx(1 / math.sqrt(32), rel=0.1)
    assert feature_std(collapsed).item() < 1e-6
    assert effective_rank(healthy).item() > 25
    rank_one = torch.randn(256, 1, generator=gen) * torch.randn(1, 32, generator=gen)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=1e-4)  # fp32 input
    assert classify(collapse_metrics(student_cls=collapsed)) == "ok"  # reported, not judged
    assert math.isnan(effective_rank(torch.full((4, 3), math.nan)).item())
    assert math.isnan(feature_std(healthy[:1]).item())


def test_monitor_warns_after_patience_and_summarises(caplog: pytest.LogCaptureFixture) -> None:
    uniform = collapse_metrics(torch.full((8, K), 1.0 / K))
    ok = collapse_metrics(torch.eye(K)[:8])
    monitor = CollapseMonitor(patience=3)
    with caplog.at_level(logging.WARNING, logger="medssl.engine.diagnostics"):
        for step in range(2):
            monitor.update(step, uniform)
        assert not caplog.records
        monitor.update(2, uniform)
        monitor.update(3, uniform)  # warned once, not again
    assert len(caplog.records) == 1 and "near uniform" in caplog.records[0].getMessage()
    monitor.update(4, ok)
    summary = monitor.summary()
    assert summary["final_state"] == "ok" and summary["updates"] == 5
    assert summary["share"]["uniform"] == pytest.approx(0.8)
    assert summary["first"]["step"] == 0 and summary["last"]["step"] == 4
    assert CollapseMonitor().summary()["final_state"] == "unknown"
