"""Linear and k-NN probes on frozen features, and their metrics (scikit-learn).

Linear probes standardise the features and fit an L2-regularised logistic (or ridge)
regression; with ``C=None`` the strength is chosen by 3-fold cross-validation on the
training split only, the same way for the encoder's features and for the raw-pixel floor.
The k-NN classifier follows DINO's evaluation (Caron et al. 2021, ``eval_knn.py``):
cosine similarity of L2-normalised features, the k nearest training images vote with
weight ``exp(similarity / T)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "binary_metrics",
    "fit_binary",
    "fit_multiclass",
    "fit_regression",
    "knn_scores",
    "multiclass_metrics",
    "normalise",
    "regression_metrics",
]

_CS = np.logspace(-3, 1, 5)
_ALPHAS = np.logspace(-2, 4, 7)


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # Convergence warnings of lbfgs on tiny probes are noise, not information.
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)

    return wrapper


def _classifier(c: float | None, seed: int, n_train: int) -> Any:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if c is None and n_train >= 12:
        model = LogisticRegressionCV(Cs=_CS, cv=3, max_iter=2000, random_state=seed)
    else:
        model = LogisticRegression(C=c or 1.0, max_iter=2000, random_state=seed)
    return make_pipeline(StandardScaler(), model)


@_quiet
def fit_binary(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, c: float | None, seed: int
) -> np.ndarray:
    """P(y=1) on the validation rows."""
    model = _classifier(c, seed, len(y_tr)).fit(x_tr, y_tr.astype(int))
    return model.predict_proba(x_va)[:, 1]


@_quiet
def fit_multiclass(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, c: float | None, seed: int, n_classes: int
) -> np.ndarray:
    """Class probabilities ``[N_val, n_classes]`` (classes absent from train get 0)."""
    model = _classifier(c, seed, len(y_tr)).fit(x_tr, y_tr)
    probs = np.zeros((len(x_va), n_classes))
    probs[:, model.classes_.astype(int)] = model.predict_proba(x_va)
    return probs


@_quiet
def fit_regression(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, alpha: float | None
) -> np.ndarray:
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = RidgeCV(alphas=_ALPHAS) if alpha is None else Ridge(alpha=alpha)
    return make_pipeline(StandardScaler(), model).fit(x_tr, y_tr).predict(x_va)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = y.astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auroc": float(roc_auc_score(y, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float(np.mean((p >= 0.5) == y)),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, and macro one-vs-rest AUROC / AUPRC over the classes present in ``y``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    aurocs, auprcs = [], []
    for k in range(probs.shape[1]):
        yk = (y == k).astype(int)
        if 0 < yk.sum() < len(yk):
            aurocs.append(roc_auc_score(yk, probs[:, k]))
            auprcs.append(average_precision_score(yk, probs[:, k]))
    return {
        "auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
        "auprc": float(np.mean(auprcs)) if auprcs else float("nan"),
        "accuracy": float(np.mean(probs.argmax(1) == y)),
    }


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, r2_score

    # 'abs_err', not 'mae': beside the MAE objective that name would mislead.
    return {"abs_err": float(mean_absolute_error(y, pred)), "r2": float(r2_score(y, pred))}


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_scores(
    x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, k: int, temperature: float
) -> np.ndarray:
    """Weighted neighbour votes: ``[N_val, K]`` for one-hot / multi-hot ``y_tr [N, K]``.

    Multi-label targets may hold NaN (unknown); each column averages only the neighbours
    that have a value, so the result is a score in [0, 1] per column.
    """
    sim = normalise(x_va.astype(np.float64)) @ normalise(x_tr.astype(np.float64)).T
    k = min(k, x_tr.shape[0])
    top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)  # [N_val, k]
    neigh = y_tr[top]  # [N_val, k, K]
    known = ~np.isnan(neigh)
    votes = np.where(known, neigh, 0.0) * weights[..., None]
    norm = (known * weights[..., None]).sum(1)
    return votes.sum(1) / np.maximum(norm, 1e-12)
