"""Targets of a labelled split and how a probe is scored on them, floors included.

One code path scores the encoder's features, the raw-pixel floor and the trivial floor,
so the three numbers of a row are always computed the same way. Multi-label targets are
scored per finding (unknown labels, NaN, are left out of that finding) with their mean;
multi-class targets once (accuracy, macro one-vs-rest AUROC / AUPRC); regression targets
by MAE and R².
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medssl.eval.base import Row
from medssl.eval.features import Splits
from medssl.eval.probes import binary_metrics, multiclass_metrics, regression_metrics

__all__ = ["Probe", "Targets", "score_targets", "targets_of", "trivial_scores", "rows_with_floors"]

Scores = dict[str, dict[str, float]]  # target -> metric -> value


class Probe(Protocol):
    def binary(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray: ...

    def multiclass(
        self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray, n_classes: int
    ) -> np.ndarray: ...

    def regression(self, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray) -> np.ndarray: ...


@dataclass
class Targets:
    kind: str  # multilabel | multiclass | regression
    names: list[str]
    y_tr: np.ndarray
    y_va: np.ndarray
    column: str = "class"  # the row name of a multi-class target: its label column


def _infer_kind(labels: np.ndarray) -> str:
    if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
        return "multiclass"
    finite = labels[~np.isnan(labels)] if labels.dtype.kind == "f" else labels
    return "multilabel" if labels.ndim == 2 and np.isin(finite, (0, 1)).all() else "regression"


def targets_of(splits: Splits, evaluator: str) -> Targets:
    """The labels of both splits, with an error naming the evaluator when there are none."""
    y_tr, y_va = splits.train.labels, splits.val.labels
    if y_tr is None or y_va is None:
        raise ValueError(
            f"evaluator {evaluator!r}: dataset {splits.dataset} has no labels; give the "
            "evaluator a labelled data block (e.g. data: {name: demo_cxr, subset: drr})"
        )
    kind = splits.task or _infer_kind(y_tr)
    if kind == "multiclass":
        y_tr, y_va = y_tr.astype(int).reshape(-1), y_va.astype(int).reshape(-1)
        n = int(max(y_tr.max(), y_va.max())) + 1
        names = splits.label_names if len(splits.label_names) == n else [str(i) for i in range(n)]
        return Targets("multiclass", names, y_tr, y_va, splits.target_name or "class")
    y_tr, y_va = y_tr.astype(np.float64), y_va.astype(np.float64)
    if y_tr.ndim == 1:
        y_tr, y_va = y_tr[:, None], y_va[:, None]
    k = y_tr.shape[1]
    names = (
        splits.label_names if len(splits.label_names) == k else [f"target_{i}" for i in range(k)]
    )
    return Targets(kind, names, y_tr, y_va)


def score_targets(
    t: Targets, x_tr: np.ndarray, x_va: np.ndarray, probe: Probe, notes: list[str] | None = None
) -> Scores:
    """Fit ``probe`` on train, score on val, per target."""
    scores: Scores = {}
    if t.kind == "multiclass":
        n = len(t.names)
        probs = probe.multiclass(x_tr, t.y_tr, x_va, n)
        scores[t.column] = multiclass_metrics(t.y_va, probs)
        return scores
    for j, name in enumerate(t.names):
        tr, va = ~np.isnan(t.y_tr[:, j]), ~np.isnan(t.y_va[:, j])
        y_tr, y_va = t.y_tr[tr, j], t.y_va[va, j]
        if t.kind == "regression":
            if tr.sum() < 2 or va.sum() < 1:
                continue
            scores[name] = regression_metrics(y_va, probe.regression(x_tr[tr], y_tr, x_va[va]))
            continue
        if len(np.unique(y_tr)) < 2 or len(np.unique(y_va)) < 2:
            if notes is not None and f"{name}: " not in " ".join(notes):
                notes.append(f"{name}: skipped (one class only in train or val)")
            continue
        scores[name] = binary_metrics(y_va, probe.binary(x_tr[tr], y_tr, x_va[va]))
    if len(scores) > 1:
        metrics = next(iter(scores.values())).keys()
        scores["mean"] = {m: float(np.nanmean([s[m] for s in scores.values()])) for m in metrics}
    return scores


def trivial_scores(t: Targets) -> Scores:
    """Chance / majority class / training mean, scored like a probe."""

    class _Trivial:
        def binary(self, x_tr, y_tr, x_va):  # type: ignore[no-untyped-def]
            # A constant score: AUROC 0.5, AUPRC the prevalence, accuracy the majority's.
            return np.full(len(x_va), float(np.mean(y_tr) >= 0.5))

        def multiclass(self, x_tr, y_tr, x_va, n_classes):  # type: ignore[no-untyped-def]
            probs = np.zeros((len(x_va), n_classes))
            probs[:, np.bincount(y_tr, minlength=n_classes).argmax()] = 1.0
            return probs

        def regression(self, x_tr, y_tr, x_va):  # type: ignore[no-untyped-def]
            return np.full(len(x_va), float(np.mean(y_tr)))

    dummy_tr = np.zeros((len(t.y_tr), 1))
    dummy_va = np.zeros((len(t.y_va), 1))
    scores = score_targets(t, dummy_tr, dummy_va, _Trivial())
    for s in scores.values():
        if "auroc" in s:
            s["auroc"] = 0.5
    for name, s in scores.items():
        if "auprc" in s and t.kind == "multilabel" and name != "mean":
            j = t.names.index(name)
            s["auprc"] = float(np.nanmean(t.y_va[:, j]))
    if "mean" in scores:
        per = [s for name, s in scores.items() if name != "mean"]
        scores["mean"] = {m: float(np.nanmean([s[m] for s in per])) for m in scores["mean"]}
    return scores


LOWER_IS_BETTER = {"mae"}


def rows_with_floors(
    score: Scores, floors: dict[str, Scores], keep: Callable[[str], bool] = lambda m: True
) -> list[Row]:
    """Rows of ``score`` with the floors of the same target and metric beside them."""
    rows = []
    for target, metrics in score.items():
        for metric, value in metrics.items():
            if not keep(metric):
                continue
            rows.append(
                Row(
                    target,
                    metric,
                    value,
                    {
                        name: floor.get(target, {}).get(metric, float("nan"))
                        for name, floor in floors.items()
                    },
                    metric not in LOWER_IS_BETTER,
                )
            )
    return rows
