"""EMA teacher update: the formula, in place, without gradient, with clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medssl.engine.ema import ema_update


def pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student).requires_grad_(False)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
        student[1].running_mean.fill_(2.0)
    return student, teacher


def test_matches_the_formula_in_place() -> None:
    student, teacher = pair()
    before = [t.clone() for t in teacher.parameters()]
    storage = [t.data_ptr() for t in teacher.parameters()]
    ema_update([(student, teacher)], momentum=0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)
    assert [t.data_ptr() for t in teacher.parameters()] == storage
    torch.testing.assert_close(teacher[1].running_mean, torch.full((3,), 2.0))


def test_momentum_bounds() -> None:
    student, teacher = pair()
    kept = [t.clone() for t in teacher.parameters()]
    ema_update([(student, teacher)], momentum=1.0)
    for t, k in zip(teacher.parameters(), kept, strict=True):
        torch.testing.assert_close(t, k)
    ema_update([(student, teacher)], momentum=0.0)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(t, s)
    with pytest.raises(ValueError, match="momentum"):
        ema_update([(student, teacher)], momentum=1.5)


def test_no_graph_is_built_and_grads_untouched() -> None:
    student, teacher = pair()
    student(torch.randn(5, 4)).sum().backward()
    grads = [p.grad.clone() for p in student.parameters()]
    ema_update([(student, teacher)], momentum=0.5)
    assert all(t.grad is None and t.grad_fn is None for t in teacher.parameters())
    for p, g in zip(student.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_several_pairs_and_mismatches() -> None:
    (s1, t1), (s2, t2) = pair(), pair()
    ema_update([(s1, t1), (s2, t2)], momentum=0.0)
    torch.testing.assert_close(t2[0].weight, s2[0].weight)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update([(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))], momentum=0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update([(nn.Linear(2, 3), nn.Linear(2, 2))], momentum=0.5)
