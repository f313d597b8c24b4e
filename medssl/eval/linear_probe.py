"""``linear_probe``: logistic regression on frozen CLS features (RAD-DINO's main evaluation).

Pérez-García et al. 2025 evaluate RAD-DINO with linear probes on the frozen CLS token
(and, as DINOv2 does, on the CLS token concatenated with the mean patch token). Multi-label
findings are probed one by one (AUROC, AUPRC, accuracy at 0.5) with their mean; a
multi-class label once; a regression label (e.g. the cardiothoracic ratio) by ridge
regression (MAE, R²). The floors: the same probe on raw downsampled pixels, and chance.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from medssl.eval.base import EvalContext, EvalOptions, EvalResult, Evaluator
from medssl.eval.probes import fit_binary, fit_multiclass, fit_regression
from medssl.eval.targets import rows_with_floors, score_targets, targets_of, trivial_scores

__all__ = ["LinearProbe", "LogisticProbe"]


class LogisticProbe:
    """Standardised features -> logistic / ridge regression (see :mod:`medssl.eval.probes`)."""

    def __init__(self, c: float | None, seed: int) -> None:
        self.c, self.seed = c, seed

    def binary(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray:
        return fit_binary(x_tr, y_tr, x_va, self.c, self.seed)

    def multiclass(
        self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, n_classes: int
    ) -> np.ndarray:
        return fit_multiclass(x_tr, y_tr, x_va, self.c, self.seed, n_classes)

    def regression(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray:
        return fit_regression(x_tr, y_tr, x_va, None if self.c is None else 1.0 / self.c)


class LinearProbe(Evaluator):
    """Linear probe on frozen CLS (or CLS + mean patch) features; floors beside."""

    name = "linear_probe"
    needs = ("label",)

    class Options(EvalOptions):
        features: Literal["cls", "cls+mean_patch"] = "cls"
        C: float | None = Field(
            None, gt=0, description="inverse L2 strength; null: 3-fold CV on the train split"
        )

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        splits = ctx.splits(o, self.name)
        t = targets_of(splits, self.name)
        notes: list[str] = []
        probe = LogisticProbe(o.C, o.seed)
        x_tr, x_va = splits.train.features(o.features), splits.val.features(o.features)
        score = score_targets(t, x_tr, x_va, probe, notes)
        pixels = ctx.floor(
            self.name,
            o,
            lambda: score_targets(t, splits.train.pixels, splits.val.pixels, probe),
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
