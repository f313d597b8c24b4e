"""Paired bootstrap over validation images: 95 % intervals of scores and of differences.

Every predictor of a row (the encoder, the random-weights floor, the raw-pixel floor, the
trivial floor) is scored on the *same* resamples of the validation images, so the
interval of a difference (encoder minus floor) is paired: it keeps the correlation of two
predictors that err on the same hard images (Efron & Tibshirani 1993, ch. 13 percentile
intervals). Metrics are vectorised over the resamples: ``idx [B, n]`` holds one resample
of the ``n`` validation rows per line.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from medssl.eval.base import Row

__all__ = [
    "auroc_boot",
    "accuracy_boot",
    "attach_intervals",
    "abs_err_boot",
    "dice_boot",
    "percentile_ci",
    "r2_boot",
    "resample_indices",
]


def resample_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices drawn with replacement (seeded, so reruns agree)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values (NaN draws left out)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return (float(lo), float(hi))


def auroc_boot(y: np.ndarray, score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of each resample (Mann-Whitney with average ranks, as scikit-learn's).

    ``y`` holds 0/1 or NaN (unknown: left out of that resample); a resample with one class
    only gives NaN.
    """
    yb, sb = y[idx], score[idx].astype(np.float64)
    known = ~np.isnan(yb)
    # Unknown rows rank above every known one, so the known rows' ranks are unchanged.
    ranks = rankdata(np.where(known, sb, np.inf), axis=1)
    pos = known & (yb == 1)
    n1 = pos.sum(1).astype(np.float64)
    n0 = (known & (yb == 0)).sum(1).astype(np.float64)
    r1 = np.where(pos, ranks, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), (r1 - n1 * (n1 + 1) / 2) / (n1 * n0), np.nan)


def accuracy_boot(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Share of correct predictions per resample (``pred`` already thresholded / argmax)."""
    yb = y[idx]
    known = ~np.isnan(yb) if yb.dtype.kind == "f" else np.ones(yb.shape, bool)
    hits = np.where(known, pred[idx] == yb, False).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / known.sum(1)


def abs_err_boot(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean absolute error per resample (NaN targets left out)."""
    yb, pb = y[idx], pred[idx]
    known = ~np.isnan(yb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, np.abs(pb - yb), 0.0).sum(1) / known.sum(1)


def r2_boot(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Coefficient of determination per resample (NaN targets left out; NaN without spread)."""
    yb, pb = y[idx], pred[idx]
    known = ~np.isnan(yb)
    n = known.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, yb, 0.0).sum(1, keepdims=True) / n
        ss_res = np.where(known, (yb - pb) ** 2, 0.0).sum(1)
        ss_tot = np.where(known, (yb - mean) ** 2, 0.0).sum(1)
        return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.nan)


def dice_boot(per_image: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean over the resampled images of per-image Dice ``[n]`` (NaN: class absent)."""
    d = per_image[idx]
    known = ~np.isnan(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known, d, 0.0).sum(1) / known.sum(1)


def attach_intervals(row: Row, score: np.ndarray, floors: dict[str, np.ndarray]) -> Row:
    """Fill ``row``'s 95 % interval and, per floor, its interval and the paired difference.

    ``score`` and each floor hold the metric on the same resamples; a difference is
    ``score - floor`` (lower-is-better metrics: ``floor - score``), so > 0 means the
    encoder beats that floor.
    """
    row.ci = percentile_ci(score)
    sign = 1.0 if row.higher_is_better else -1.0
    for name, values in floors.items():
        row.floor_ci[name] = percentile_ci(values)
        diff = sign * (row.score - row.floors.get(name, float("nan")))
        row.vs[name] = (float(diff), *percentile_ci(sign * (score - values)))
    return row
