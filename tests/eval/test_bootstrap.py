"""The paired bootstrap: vectorised metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medssl.eval.base import Row
from medssl.eval.bootstrap import (
    abs_err_boot,
    attach_intervals,
    auroc_boot,
    dice_boot,
    percentile_ci,
    r2_boot,
    resample_indices,
)


def test_auroc_of_hand_picked_resamples() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    idx = np.array([[0, 1, 2, 3], [0, 0, 2, 3], [1, 1, 2, 2], [0, 2, 2, 2], [0, 0, 1, 1]])
    # all 4: 3 of 4 pairs ordered; only the two lowest negatives: 1; 0.6 above 0.4: 0;
    # one negative below three equal positives: 1; no positive: undefined.
    got = auroc_boot(y, s, idx)
    assert got[:4].tolist() == [0.75, 1.0, 0.0, 1.0] and np.isnan(got[4])


def test_auroc_counts_ties_as_half_and_skips_unknown_labels() -> None:
    y = np.array([0.0, 0.0, 1.0, 1.0, np.nan])
    s = np.array([0.5, 0.5, 0.5, 0.9, 0.0])
    # positive 0.5 ties both negatives (2 x 0.5), positive 0.9 beats both: 3 / 4
    assert auroc_boot(y, s, np.arange(5)[None])[0] == 0.75


def test_auroc_agrees_with_scikit_learn_on_random_resamples() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(40) < 0.4).astype(float)
    s = np.round(rng.random(40) + 0.5 * y, 1)  # rounded: ties inside and across classes
    idx = resample_indices(40, 50, seed=1)
    got = auroc_boot(y, s, idx)
    for row, value in zip(idx, got, strict=True):
        if len(np.unique(y[row])) == 2:
            assert value == pytest.approx(roc_auc_score(y[row], s[row]))


def test_percentile_interval_by_hand() -> None:
    values = np.arange(41) / 40  # 0, 0.025, ..., 1
    # 2.5th and 97.5th percentiles of 41 values: positions 1 and 39 exactly
    assert percentile_ci(values) == pytest.approx((0.025, 0.975))
    assert np.isnan(percentile_ci(np.array([np.nan, np.nan]))).all()  # no defined resample
    assert percentile_ci(np.array([np.nan, 0.5, 0.5])) == (0.5, 0.5)  # undefined ones left out


def test_paired_difference_interval_by_hand() -> None:
    row = Row("mean", "auroc", 0.75, {"random": 0.5})
    attach_intervals(row, np.array([0.75, 1.0, 0.0, 1.0]), {"random": np.full(4, 0.5)})
    diff, lo, hi = row.vs["random"]
    # differences [0.25, 0.5, -0.5, 0.5], sorted [-0.5, 0.25, 0.5, 0.5]; linear
    # interpolation at positions 3 * 0.025 and 3 * 0.975
    assert diff == 0.25
    assert lo == pytest.approx(-0.5 + 0.075 * 0.75) and hi == pytest.approx(0.5)
    assert row.ci == pytest.approx((0.0 + 0.075 * 0.75, 1.0))
    assert row.below("random")  # the interval of the difference reaches below 0
    better = Row("age", "abs_err", 2.0, {"pixels": 3.0}, higher_is_better=False)
    attach_intervals(better, np.array([2.0, 2.1, 1.9]), {"pixels": np.array([3.0, 3.2, 2.9])})
    assert better.vs["pixels"][0] == 1.0 and better.vs["pixels"][1] > 0
    assert not better.below("pixels")


def test_regression_and_dice_resamples() -> None:
    y = np.array([1.0, 2.0, 3.0, np.nan])
    pred = np.array([1.5, 2.0, 2.0, 9.0])
    idx = np.array([[0, 1, 2, 3], [0, 0, 3, 3]])
    assert abs_err_boot(y, pred, idx).tolist() == [0.5, 0.5]
    assert r2_boot(y, pred, idx)[0] == pytest.approx(1 - 1.25 / 2.0)
    assert np.isnan(r2_boot(y, pred, idx)[1])  # one known value twice: no spread
    dice = np.array([0.8, np.nan, 0.4])
    assert dice_boot(dice, np.array([[0, 1, 2], [1, 1, 2]])).tolist() == pytest.approx([0.6, 0.4])
