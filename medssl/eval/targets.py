"""Targets of a labelled split and how a probe is scored on them, floors included.

One code path scores the encoder's features, the raw-pixel floor and the trivial floor,
so the three numbers of a row are always computed the same way. Multi-label targets are
scored per finding (unknown labels, NaN, are left out of that finding) with their mean;
multi-class targets once (accuracy, macro one-vs-rest AUROC / AUPRC); regression targets
by MAE and R².
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from medssl.eval.base import EvalContext, ProbeOptions, Row
from medssl.eval.bootstrap import (
    abs_err_boot,
    accuracy_boot,
    attach_intervals,
    auroc_boot,
    r2_boot,
    resample_indices,
)
from medssl.eval.features import FeatureSet, Splits
from medssl.eval.probes import binary_metrics, multiclass_metrics, regression_metrics

__all__ = [
    "Probe",
    "Targets",
    "plain_inputs",
    "predict_targets",
    "probe_rows",
    "rows_with_floors",
    "score_targets",
    "scores_of",
    "targets_of",
    "trivial_predictions",
    "trivial_scores",
]

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


Predictions = dict[str, np.ndarray]  # target -> validation predictions (rows of y_va)


def predict_targets(
    t: Targets, x_tr: np.ndarray, x_va: np.ndarray, probe: Probe, notes: list[str] | None = None
) -> Predictions:
    """Fit ``probe`` on train, predict every validation row, per target.

    A multi-label finding is fit on its known training labels (NaN: unknown) and skipped,
    with a note, when train or val holds one class only.
    """
    if t.kind == "multiclass":
        return {t.column: probe.multiclass(x_tr, t.y_tr, x_va, len(t.names))}
    preds: Predictions = {}
    for j, name in enumerate(t.names):
        tr, va = ~np.isnan(t.y_tr[:, j]), ~np.isnan(t.y_va[:, j])
        y_tr = t.y_tr[tr, j]
        if t.kind == "regression":
            if tr.sum() >= 2 and va.sum() >= 1:
                preds[name] = probe.regression(x_tr[tr], y_tr, x_va)
            continue
        if len(np.unique(y_tr)) < 2 or len(np.unique(t.y_va[va, j])) < 2:
            if notes is not None and f"{name}: " not in " ".join(notes):
                notes.append(f"{name}: skipped (one class only in train or val)")
            continue
        preds[name] = probe.binary(x_tr[tr], y_tr, x_va)
    return preds


def _column(t: Targets, name: str) -> np.ndarray:
    return t.y_va[:, t.names.index(name)]


def scores_of(t: Targets, preds: Predictions) -> Scores:
    """Point metrics of ``preds`` (scikit-learn), per target, with their mean."""
    scores: Scores = {}
    for name, p in preds.items():
        if t.kind == "multiclass":
            scores[name] = multiclass_metrics(t.y_va, p)
            continue
        y = _column(t, name)
        known = ~np.isnan(y)
        metrics = regression_metrics if t.kind == "regression" else binary_metrics
        scores[name] = metrics(y[known], p[known])
    if len(scores) > 1:
        metrics = next(iter(scores.values())).keys()
        scores["mean"] = {m: float(np.nanmean([s[m] for s in scores.values()])) for m in metrics}
    return scores


def score_targets(
    t: Targets, x_tr: np.ndarray, x_va: np.ndarray, probe: Probe, notes: list[str] | None = None
) -> Scores:
    """Fit ``probe`` on train, score on val, per target."""
    return scores_of(t, predict_targets(t, x_tr, x_va, probe, notes))


def boot_scores(
    t: Targets, preds: Predictions, idx: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Each metric of :func:`scores_of` (but AUPRC) on every resample ``idx [B, n_val]``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, p in preds.items():
        if t.kind == "multiclass":
            per_class = [
                auroc_boot((t.y_va == k).astype(np.float64), p[:, k], idx)
                for k in range(p.shape[1])
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # resamples missing a class
                auroc = np.nanmean(per_class, axis=0)
            y = t.y_va.astype(np.float64)
            out[name] = {"auroc": auroc, "accuracy": accuracy_boot(y, p.argmax(1) * 1.0, idx)}
            continue
        y = _column(t, name)
        if t.kind == "regression":
            out[name] = {"abs_err": abs_err_boot(y, p, idx), "r2": r2_boot(y, p, idx)}
            continue
        out[name] = {
            "auroc": auroc_boot(y, p, idx),
            "accuracy": accuracy_boot(y, (p >= 0.5) * 1.0, idx),
        }
    if len(out) > 1:
        metrics = next(iter(out.values())).keys()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["mean"] = {m: np.nanmean([b[m] for b in out.values()], axis=0) for m in metrics}
    return out


def trivial_predictions(t: Targets) -> Predictions:
    """Chance / majority class / training mean as constant predictions of every row."""
    n = len(t.y_va)
    if t.kind == "multiclass":
        probs = np.zeros((n, len(t.names)))
        probs[:, np.bincount(t.y_tr, minlength=len(t.names)).argmax()] = 1.0
        return {t.column: probs}
    preds: Predictions = {}
    for j, name in enumerate(t.names):
        y_tr = t.y_tr[~np.isnan(t.y_tr[:, j]), j]
        if len(y_tr):
            # A constant score: AUROC 0.5, AUPRC the prevalence, accuracy the majority's.
            value = float(np.mean(y_tr)) if t.kind == "regression" else float(np.mean(y_tr) >= 0.5)
            preds[name] = np.full(n, value)
    return preds


def trivial_scores(t: Targets) -> Scores:
    """Chance / majority class / training mean, scored like a probe."""
    preds = trivial_predictions(t)
    return scores_of(t, {k: v for k, v in preds.items() if k in _scorable(t, preds)})


def _scorable(t: Targets, preds: Predictions) -> set[str]:
    if t.kind != "multilabel":
        return set(preds)
    ok = set()
    for name in preds:
        y = _column(t, name)
        if len(np.unique(y[~np.isnan(y)])) == 2:
            ok.add(name)
    return ok


LOWER_IS_BETTER = {"abs_err"}


def rows_with_floors(
    t: Targets,
    preds: Predictions,
    floors: dict[str, Predictions],
    *,
    features: str = "",
    keep: Callable[[str], bool] = lambda m: True,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Rows of ``preds``' scores with every floor's score of the same target and metric,
    95 % intervals and paired differences from each floor (``n_boot`` resamples)."""
    floors = {k: {n: p for n, p in f.items() if n in preds} for k, f in floors.items()}
    score = scores_of(t, preds)
    floor_scores = {k: scores_of(t, f) for k, f in floors.items()}
    boot = floor_boot = None
    if n_boot > 0:
        idx = resample_indices(len(t.y_va), n_boot, seed)
        boot = boot_scores(t, preds, idx)
        floor_boot = {k: boot_scores(t, f, idx) for k, f in floors.items()}
    rows = []
    for target, metrics in score.items():
        for metric, value in metrics.items():
            if not keep(metric):
                continue
            row = Row(
                target,
                metric,
                value,
                {k: fs.get(target, {}).get(metric, float("nan")) for k, fs in floor_scores.items()},
                metric not in LOWER_IS_BETTER,
                features=features,
            )
            if boot is not None and floor_boot is not None and metric in boot.get(target, {}):
                attach_intervals(
                    row,
                    boot[target][metric],
                    {k: b[target][metric] for k, b in floor_boot.items() if target in b},
                )
            rows.append(row)
    return rows


#: (train, val, feature mode or None for the raw pixels) -> (x_train, x_val)
Inputs = Callable[[FeatureSet, FeatureSet, str | None], tuple[np.ndarray, np.ndarray]]


def plain_inputs(tr: FeatureSet, va: FeatureSet, mode: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The features as they are (a linear probe standardises them itself)."""
    return (tr.features(mode), va.features(mode)) if mode else (tr.pixels, va.pixels)


def probe_rows(
    ctx: EvalContext,
    opts: ProbeOptions,
    key: str,
    t: Targets,
    splits: Splits,
    probe: Probe,
    inputs: Inputs,
    notes: list[str],
    keep: Callable[[str], bool] = lambda m: True,
) -> list[Row]:
    """Every feature mode of ``opts`` probed, beside the random-weights, raw-pixel and
    trivial floors, all fed through the same ``inputs`` and ``probe``."""
    random = ctx.random_splits(opts, key.split(":")[0])
    pixels = ctx.floor(
        key, opts, lambda: predict_targets(t, *inputs(splits.train, splits.val, None), probe)
    )
    trivial = trivial_predictions(t)
    rows: list[Row] = []
    for mode in opts.features:
        preds = predict_targets(t, *inputs(splits.train, splits.val, mode), probe, notes)
        floors: dict[str, Predictions] = {}
        if random is not None:
            floors["random"] = ctx.floor(
                f"{key}:{mode}",
                opts,
                lambda mode=mode: predict_targets(
                    t, *inputs(random.train, random.val, mode), probe
                ),
                random=True,
            )
        floors.update(pixels=pixels, trivial=trivial)
        rows += rows_with_floors(
            t, preds, floors, features=mode, keep=keep, n_boot=opts.bootstrap, seed=opts.seed
        )
    return rows
