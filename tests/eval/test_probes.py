"""Probe arithmetic: k-NN voting, scoring with floors, Dice and the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medssl.eval.linear_probe import LogisticProbe
from medssl.eval.probes import knn_scores
from medssl.eval.segmentation import dice_per_class, fit_decoder
from medssl.eval.targets import (
    Targets,
    predict_targets,
    rows_with_floors,
    score_targets,
    trivial_predictions,
    trivial_scores,
)


def test_knn_votes_with_nearest_neighbours_and_ignores_unknown_labels() -> None:
    x_tr = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y_tr = np.array([[1.0, np.nan], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    scores = knn_scores(x_tr, y_tr, np.array([[1.0, 0.05], [0.05, 1.0]]), k=2, temperature=0.07)
    assert scores[0, 0] == 1.0 and scores[1, 0] == 0.0
    assert scores[0, 1] == 0.0  # only the neighbour with a known label counts
    assert scores[1, 1] == 1.0


def _informative(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.4).astype(float)
    x = np.concatenate([y + 0.3 * rng.standard_normal((n, k)), rng.standard_normal((n, 5))], 1)
    return x, y


def test_linear_probe_scores_beat_trivial_floor_on_informative_features() -> None:
    x_tr, y_tr = _informative(120, 3, 0)
    x_va, y_va = _informative(60, 3, 1)
    y_tr[:10, 0] = np.nan  # unknown labels are left out, not read as negatives
    t = Targets("multilabel", ["a", "b", "c"], y_tr, y_va)
    notes: list[str] = []
    score = score_targets(t, x_tr, x_va, LogisticProbe(None, 0), notes)
    trivial = trivial_scores(t)
    assert set(score) == {"a", "b", "c", "mean"} and not notes
    assert score["mean"]["auroc"] > 0.95
    assert trivial["a"]["auroc"] == 0.5
    assert trivial["a"]["auprc"] == np.mean(y_va[:, 0])
    preds = predict_targets(t, x_tr, x_va, LogisticProbe(None, 0))
    rows = rows_with_floors(t, preds, {"trivial": trivial_predictions(t)}, n_boot=200)
    assert {r.metric for r in rows} == {"auroc", "auprc", "accuracy"}
    assert all("trivial" in r.floors for r in rows)
    mean_auroc = next(r for r in rows if (r.target, r.metric) == ("mean", "auroc"))
    assert mean_auroc.vs["trivial"][1] > 0.3  # far above chance: the paired interval says so


def test_single_class_target_is_skipped_with_a_note() -> None:
    x_tr, y_tr = _informative(40, 2, 0)
    y_tr[:, 1] = 0.0
    t = Targets("multilabel", ["a", "b"], y_tr, y_tr.copy())
    notes: list[str] = []
    score = score_targets(t, x_tr, x_tr, LogisticProbe(1.0, 0), notes)
    assert set(score) == {"a"} and "b: skipped" in notes[0]


def test_multiclass_and_regression_targets() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = np.eye(3)[y] + 0.2 * rng.standard_normal((90, 3))
    mc = score_targets(
        Targets("multiclass", ["p", "q", "r"], y[:60], y[60:]),
        x[:60],
        x[60:],
        LogisticProbe(None, 0),
    )
    assert mc["class"]["accuracy"] > 0.9
    value = x @ np.array([1.0, 2.0, 3.0])
    reg = Targets("regression", ["v"], value[:60, None], value[60:, None])
    out = score_targets(reg, x[:60], x[60:], LogisticProbe(None, 0))
    assert out["v"]["r2"] > 0.95
    assert trivial_scores(reg)["v"]["r2"] <= 0.0


def test_dice_per_class_counts_only_images_with_the_class() -> None:
    true = torch.zeros(2, 4, 4, dtype=torch.long)
    true[0, :2] = 1
    pred = torch.zeros_like(true)
    pred[0, :1] = 1  # half of class 1 found: Dice 2*4/(4+8)
    pred[1, 0, 0] = 1  # a false positive where class 1 is absent: not averaged in
    dice = dice_per_class(pred, true, [1, 2])
    assert dice.keys() == {1} and dice[1] == pytest.approx(2 * 4 / 12)


def test_linear_decoder_learns_masks_encoded_in_patch_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    grid = (torch.rand(24, 4, 4, generator=g) < 0.5).long()
    masks = grid.repeat_interleave(4, 1).repeat_interleave(4, 2)  # 16x16 from the 4x4 grid
    feats = torch.nn.functional.one_hot(grid, 2).permute(0, 3, 1, 2).float()
    feats = feats + 0.1 * torch.randn(feats.shape, generator=g)
    pred = fit_decoder(feats[:16], masks[:16], feats[16:], 2, epochs=40, lr=0.05, seed=0)
    assert dice_per_class(pred, masks[16:], [1])[1] > 0.8
