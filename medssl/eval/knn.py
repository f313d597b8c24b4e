"""``knn``: weighted k-nearest-neighbour classification on frozen features.

As DINO's k-NN evaluation (Caron et al. 2021, ``eval_knn.py``; k=20, T=0.07): cosine
similarity between L2-normalised features, the k nearest training images vote with
weight ``exp(similarity / T)``. Features are centred on the training mean first, for the
encoder, the random-weights floor and the raw pixels alike; ``cls+mean_patch`` joins the
two normalised blocks. Multi-label findings get the weighted share of positive neighbours
as their score. The floors: the same k-NN on random weights, on raw downsampled pixels,
and chance.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from medssl.eval.base import EvalContext, EvalResult, Evaluator, ProbeOptions
from medssl.eval.features import FeatureSet
from medssl.eval.probes import knn_scores, normalise
from medssl.eval.targets import probe_rows, targets_of

__all__ = ["KNN", "KNNProbe", "knn_inputs"]


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


def knn_inputs(tr: FeatureSet, va: FeatureSet, mode: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Each feature block (or the raw pixels) centred on its training mean and
    L2-normalised, then side by side: the same treatment for encoder, random weights and
    pixels (uncentred features, grey images above all, are nearly parallel)."""
    pairs = zip(tr.blocks(mode), va.blocks(mode), strict=True) if mode else [(tr.pixels, va.pixels)]
    out_tr, out_va = [], []
    for a, b in pairs:
        centre = a.mean(0, keepdims=True)
        out_tr.append(normalise(a - centre))
        out_va.append(normalise(b - centre))
    return np.concatenate(out_tr, 1), np.concatenate(out_va, 1)


class KNN(Evaluator):
    """Weighted k-NN on centred, L2-normalised frozen features; floors beside."""

    name = "knn"
    needs = ("label",)

    class Options(ProbeOptions):
        k: int = Field(20, ge=1)
        temperature: float = Field(0.07, gt=0)

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        splits = ctx.splits(o, self.name)
        t = targets_of(splits, self.name)
        notes: list[str] = []
        probe = KNNProbe(o.k, o.temperature)
        rows = probe_rows(ctx, o, self.name, t, splits, probe, knn_inputs, notes)
        if not rows:
            raise ValueError(f"evaluator {self.name!r}: no target could be scored ({notes})")
        return EvalResult(
            self.name,
            splits.dataset,
            rows,
            len(splits.train),
            len(splits.val),
            o.model_dump(),
            notes,
        )
