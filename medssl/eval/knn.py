"""``knn``: weighted k-nearest-neighbour classification on normalised CLS features.

As DINO's k-NN evaluation (Caron et al. 2021, ``eval_knn.py``; k=20, T=0.07): cosine
similarity between L2-normalised CLS tokens, the k nearest training images vote with
weight ``exp(similarity / T)``. Multi-label findings get the weighted share of positive
neighbours as their score. The floors: the same k-NN on raw downsampled pixels, and chance.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from medssl.eval.base import EvalContext, EvalOptions, EvalResult, Evaluator
from medssl.eval.probes import knn_scores
from medssl.eval.targets import rows_with_floors, score_targets, targets_of, trivial_scores

__all__ = ["KNN", "KNNProbe"]


class KNNProbe:
    def __init__(self, k: int, temperature: float) -> None:
        self.k, self.temperature = k, temperature

    def _scores(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray:
        return knn_scores(x_tr, y_tr, x_va, self.k, self.temperature)

    def binary(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray:
        return self._scores(x_tr, y_tr.astype(np.float64)[:, None], x_va)[:, 0]

    def multiclass(
        self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, n_classes: int
    ) -> np.ndarray:
        return self._scores(x_tr, np.eye(n_classes)[y_tr], x_va)

    def regression(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray:
        return self._scores(x_tr, y_tr.astype(np.float64)[:, None], x_va)[:, 0]


class KNN(Evaluator):
    """Weighted k-NN on L2-normalised CLS features; floors beside."""

    name = "knn"
    needs = ("label",)

    class Options(EvalOptions):
        k: int = Field(20, ge=1)
        temperature: float = Field(0.07, gt=0)
        features: Literal["cls", "cls+mean_patch"] = "cls"

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        splits = ctx.splits(o, self.name)
        t = targets_of(splits, self.name)
        notes: list[str] = []
        probe = KNNProbe(o.k, o.temperature)
        x_tr, x_va = splits.train.features(o.features), splits.val.features(o.features)
        score = score_targets(t, x_tr, x_va, probe, notes)
        # Raw pixels are centred first: uncentred grey images are all nearly parallel.
        centre = splits.train.pixels.mean(0, keepdims=True)
        pixels = ctx.floor(
            self.name,
            o,
            lambda: score_targets(
                t, splits.train.pixels - centre, splits.val.pixels - centre, probe
            ),
        )
        if not score:
            raise ValueError(f"evaluator {self.name!r}: no target could be scored ({notes})")
        return EvalResult(
            self.name,
            splits.dataset,
            rows_with_floors(score, {"pixels": pixels, "trivial": trivial_scores(t)}),
            len(splits.train),
            len(splits.val),
            o.model_dump(),
            notes,
        )
