"""``metadata_probe``: what frozen image features keep of whitelisted metadata.

RAD-DINO (Pérez-García et al. 2025) shows that image-only pre-training keeps patient
attributes that reports leave out, by probing age (regression: mean absolute error, R²)
and sex (AUROC) from the frozen CLS token (here: every feature mode of ``features``). Any whitelisted key can be probed (``age``, ``sex``,
``view``): numbers by ridge regression, categories by logistic regression (accuracy and
macro AUROC). Rows without the value are left out; a key with fewer than two values in
either split is skipped with a note. The floors: the same probe on random weights and on
raw pixels, and the training mean / majority class.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.eval.base import EvalContext, EvalResult, Evaluator, ProbeOptions, Row
from medssl.eval.features import FeatureSet
from medssl.eval.linear_probe import LogisticProbe
from medssl.eval.targets import Targets, plain_inputs, probe_rows

__all__ = ["MetadataProbe"]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not np.isnan(v)


class MetadataProbe(Evaluator):
    """Age (absolute error, R²), sex (AUROC) and view from frozen features; floors beside."""

    name = "metadata_probe"

    class Options(ProbeOptions):
        targets: list[Literal["age", "sex", "view"]] = Field(default_factory=lambda: ["age", "sex"])
        C: float | None = Field(None, gt=0, description="null: 3-fold CV on the train split")

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        splits = ctx.splits(o, self.name)
        tr, va = splits.train, splits.val
        probe = LogisticProbe(o.C, o.seed)
        rows: list[Row] = []
        notes: list[str] = []
        for key in o.targets:
            v_tr, v_va = tr.meta.get(key, []), va.meta.get(key, [])
            i_tr = np.array([i for i, v in enumerate(v_tr) if v is not None and v == v], int)
            i_va = np.array([i for i, v in enumerate(v_va) if v is not None and v == v], int)
            values_tr = [v_tr[i] for i in i_tr]
            if len(set(values_tr)) < 2 or len({v_va[i] for i in i_va}) < 2:
                notes.append(f"{key}: skipped (fewer than two values in train or val)")
                continue
            if all(_is_number(v) for v in values_tr):
                y_tr = np.array(values_tr, float)[:, None]
                y_va = np.array([v_va[i] for i in i_va], float)[:, None]
                t = Targets("regression", [key], y_tr, y_va)
                keep = lambda m: True  # noqa: E731
            else:
                classes = sorted({str(v) for v in values_tr})
                lookup = {c: i for i, c in enumerate(classes)}
                keep_va = np.array([str(v_va[i]) in lookup for i in i_va], bool)
                i_va = i_va[keep_va]
                y_tr = np.array([lookup[str(v)] for v in values_tr])
                y_va = np.array([lookup[str(v_va[i])] for i in i_va])
                if len(classes) == 2:
                    t = Targets(
                        "multilabel",
                        [key],
                        y_tr[:, None].astype(float),
                        y_va[:, None].astype(float),
                    )
                    keep = lambda m: m in ("auroc", "accuracy")  # noqa: E731
                else:
                    t = Targets("multiclass", classes, y_tr, y_va)
                    keep = lambda m: m in ("accuracy", "auroc")  # noqa: E731

            def inputs(
                a: FeatureSet, b: FeatureSet, mode: str | None, i_tr=i_tr, i_va=i_va
            ) -> tuple[np.ndarray, np.ndarray]:
                x_a, x_b = plain_inputs(a, b, mode)
                return x_a[i_tr], x_b[i_va]

            new = probe_rows(ctx, o, f"{self.name}:{key}", t, splits, probe, inputs, notes, keep)
            for row in new:
                row.target = key
            rows += new
        if not rows:
            raise ValueError(
                f"evaluator {self.name!r}: none of {o.targets} can be probed on "
                f"{splits.dataset} ({'; '.join(notes)})"
            )
        return EvalResult(self.name, splits.dataset, rows, len(tr), len(va), o.model_dump(), notes)
