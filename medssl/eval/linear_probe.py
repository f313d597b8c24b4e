"""``linear_probe``: logistic regression on frozen features (RAD-DINO's main evaluation).

Pérez-García et al. 2025 evaluate RAD-DINO with linear probes on the frozen CLS token;
DINOv2's linear evaluation concatenates the CLS token with the mean patch token, and
MAE / I-JEPA probe pooled patch tokens. One run reports all three (``features``; the
first, ``cls+mean_patch``, is the headline). Multi-label findings are probed one by one
(AUROC, AUPRC, accuracy at 0.5) with their mean; a multi-class label once; a regression
label (e.g. the cardiothoracic ratio) by ridge regression (mean absolute error, R²). The
floors: the same probe on the recipe's backbone at its seeded initialisation, on raw
downsampled pixels, and chance; each with a paired bootstrap interval.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from medssl.eval.base import EvalContext, EvalResult, Evaluator, ProbeOptions
from medssl.eval.probes import fit_binary, fit_multiclass, fit_regression
from medssl.eval.targets import plain_inputs, probe_rows, targets_of

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
    """Linear probe on frozen CLS / mean-patch / CLS + mean-patch features; floors beside."""

    name = "linear_probe"
    needs = ("label",)

    class Options(ProbeOptions):
        C: float | None = Field(
            None, gt=0, description="inverse L2 strength; null: 3-fold CV on the train split"
        )

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        splits = ctx.splits(o, self.name)
        t = targets_of(splits, self.name)
        notes: list[str] = []
        probe = LogisticProbe(o.C, o.seed)
        rows = probe_rows(ctx, o, self.name, t, splits, probe, plain_inputs, notes)
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
