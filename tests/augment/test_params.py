"""Bulk parameter sampling."""

from __future__ import annotations

import math

import torch

from medssl.augment.params import bernoulli, resized_crop_boxes, uniform


def test_boxes_fit_and_follow_scale_and_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = resized_crop_boxes((4, 500), 60, 80, (0.05, 0.32), (3 / 4, 4 / 3), g)
    assert boxes.shape == (4, 500, 4)
    top, left, h, w = boxes.reshape(-1, 4).unbind(-1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 60).all() and (left + w <= 80).all()
    assert (boxes == boxes.round()).all()
    share = h * w / (60 * 80)
    assert share.min() > 0.03 and share.max() < 0.36  # rounding widens the range a little
    aspect = w / h
    assert aspect.min() > 0.6 and aspect.max() < 1.6
    # Positions cover the free range, not just one corner.
    assert (top / (60 - h).clamp(min=1)).std() > 0.2


def test_boxes_fall_back_to_a_centre_crop() -> None:
    # A 1×40 strip: no box of aspect 3/4..4/3 fits, so every box is the centre fallback.
    boxes = resized_crop_boxes((5,), 1, 40, (0.5, 1.0), (3 / 4, 4 / 3))
    assert (boxes == torch.tensor([0.0, 19.0, 1.0, 1.0])).all()


def test_same_generator_state_same_draws() -> None:
    a = resized_crop_boxes((3,), 50, 50, (0.3, 1.0), generator=torch.Generator().manual_seed(5))
    b = resized_crop_boxes((3,), 50, 50, (0.3, 1.0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_uniform_and_bernoulli() -> None:
    g = torch.Generator().manual_seed(0)
    u = uniform((10_000,), -2.0, 3.0, g)
    assert u.min() >= -2 and u.max() < 3 and math.isclose(u.mean().item(), 0.5, abs_tol=0.1)
    assert math.isclose(bernoulli((10_000,), 0.2, g).float().mean().item(), 0.2, abs_tol=0.02)
