"""Collapse diagnostics for self-distillation (DINO / iBOT).

Two failure modes end a DINO run quietly (Caron et al. 2021, Sec. 5.3; dinov2 issue #272):

- **uniform**: the teacher's outputs flatten towards ``1/K`` for every image, so its
  per-sample entropy nears ``log K`` and the student has nothing to match;
- **one-hot**: every image is sent to the same prototype, so the batch-mean distribution
  (prototype usage) concentrates and its entropy nears 0.

Both are read from the teacher's probabilities; the spread of the student's CLS features
(per-dimension std of the L2-normalised features, about ``1/sqrt(D)`` when healthy and 0
when collapsed, as SimSiam measures it; and the effective rank of Roy & Vetterli 2007)
shows whether the representation itself collapsed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CollapseMonitor",
    "ONE_HOT_USAGE_RATIO",
    "UNIFORM_ENTROPY_RATIO",
    "classify",
    "collapse_metrics",
    "effective_rank",
    "feature_std",
    "mean_entropy",
    "usage_entropy",
]

log = logging.getLogger(__name__)

#: Teacher outputs count as uniform when their mean per-sample entropy is at least this
#: share of ``log K``.
UNIFORM_ENTROPY_RATIO = 0.95
#: Outputs count as one-hot collapse when the entropy of the batch-mean distribution is at
#: most this share of its maximum ``log(min(K, N))`` (N rows can use at most N prototypes).
ONE_HOT_USAGE_RATIO = 0.1


def _entropy(p: Tensor) -> Tensor:
    p = p.double()
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


@torch.no_grad()
def mean_entropy(probs: Tensor) -> Tensor:
    """Mean over rows of the entropy (nats) of each row of ``probs [N, K]``."""
    return _entropy(probs).mean()


@torch.no_grad()
def usage_entropy(probs: Tensor) -> Tensor:
    """Entropy (nats) of the batch-mean distribution: how many prototypes are in use."""
    return _entropy(probs.double().mean(dim=0))


@torch.no_grad()
def feature_std(x: Tensor) -> Tensor:
    """Mean over dimensions of the std over rows of the L2-normalised features ``[N, D]``."""
    if x.shape[0] < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    return F.normalize(x.double(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(x: Tensor) -> Tensor:
    """``exp`` of the entropy of the normalised singular values of the centred ``[N, D]``."""
    if x.shape[0] < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    x = x.double()
    if not bool(torch.isfinite(x).all()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    s = torch.linalg.svdvals(x - x.mean(dim=0, keepdim=True))
    total = s.sum()
    if total <= 0:
        return torch.tensor(1.0 if x.shape[0] else float("nan"), dtype=torch.float64)
    return torch.exp(_entropy(s / total))


@torch.no_grad()
def collapse_metrics(
    teacher_probs: Tensor | None = None, student_cls: Tensor | None = None
) -> dict[str, float]:
    """The diagnostics as floats (one device sync): ``teacher_entropy`` and
    ``teacher_entropy_ratio`` (over ``log K``), ``usage_entropy`` and ``usage_ratio`` (over
    ``log min(K, N)``), ``cls_std`` and ``cls_effective_rank``."""
    names: list[str] = []
    values: list[Tensor] = []
    if teacher_probs is not None:
        n, k = teacher_probs.shape
        h, u = mean_entropy(teacher_probs), usage_entropy(teacher_probs)
        log_k = math.log(k) if k > 1 else 1.0
        log_u = math.log(min(k, n)) if min(k, n) > 1 else 1.0
        names += ["teacher_entropy", "teacher_entropy_ratio", "usage_entropy", "usage_ratio"]
        # Soft rows can make the batch mean broader than log min(K, N): clamp the ratio at 1.
        values += [h, h / log_k, u, torch.clamp(u / log_u, max=1.0)]
    if student_cls is not None:
        names += ["cls_std", "cls_effective_rank"]
        values += [feature_std(student_cls), effective_rank(student_cls)]
    if not values:
        return {}
    flat = torch.stack([v.to(torch.float64).cpu() for v in values]).tolist()
    return dict(zip(names, flat, strict=True))


def classify(metrics: Mapping[str, float]) -> str:
    """``'uniform'``, ``'one-hot'`` or ``'ok'`` from :func:`collapse_metrics` output.

    ``'one-hot'`` when ``usage_ratio <= ONE_HOT_USAGE_RATIO`` (one prototype takes the
    batch; entropy of the mean bounds every row's entropy, so the rows are sharp too),
    ``'uniform'`` when ``teacher_entropy_ratio >= UNIFORM_ENTROPY_RATIO``. Without teacher
    metrics (MAE, CLIP) it is ``'ok'``: the CLS spread is reported but not judged, since a
    randomly initialised ViT's CLS tokens barely differ between images and MAE does not
    train the CLS token, so a threshold on it would warn on healthy runs.
    """
    usage = metrics.get("usage_ratio")
    ratio = metrics.get("teacher_entropy_ratio")
    if usage is not None and usage <= ONE_HOT_USAGE_RATIO:
        return "one-hot"
    if ratio is not None and ratio >= UNIFORM_ENTROPY_RATIO:
        return "uniform"
    return "ok"


@dataclass
class CollapseMonitor:
    """Follows the diagnostics over a run; warns once a state persists; summarises.

    ``update(step, metrics)`` takes :func:`collapse_metrics` output (or any mapping with
    those keys, e.g. an objective's metrics with a prefix stripped). A warning is logged
    when the state is 'uniform' or 'one-hot' for ``patience`` consecutive updates, and
    again if it changes. ``summary()`` gives the first and last values, the share of
    updates in each state and the final state.
    """

    patience: int = 3
    history: list[tuple[int, str, dict[str, float]]] = field(default_factory=list)
    _streak: int = 0
    _warned: str | None = None

    def update(self, step: int, metrics: Mapping[str, float]) -> str:
        state = classify(metrics)
        self.history.append((step, state, dict(metrics)))
        self._streak = (
            self._streak + 1 if len(self.history) > 1 and self.history[-2][1] == state else 1
        )
        if state != "ok" and self._streak >= self.patience and self._warned != state:
            self._warned = state
            log.warning("collapse diagnostics at step %d: %s", step, self.message(state, metrics))
        elif state == "ok":
            self._warned = None
        return state

    @staticmethod
    def message(state: str, metrics: Mapping[str, float]) -> str:
        ratio = metrics.get("teacher_entropy_ratio", float("nan"))
        usage = metrics.get("usage_ratio", float("nan"))
        if state == "uniform":
            return (
                f"teacher outputs are near uniform (mean entropy {ratio:.3f} x log K): the "
                "student gets no signal. Lower the teacher temperature, raise the batch size "
                "or the number of steps, use fewer prototypes, or start from pre-trained weights"
            )
        if state == "one-hot":
            return (
                f"teacher outputs collapsed onto few prototypes (usage entropy {usage:.3f} of "
                "its maximum): check centering (mean or sinkhorn_knopp), raise the teacher "
                "temperature warm-up, or lower the learning rate"
            )
        return "ok"

    def summary(self) -> dict[str, object]:
        if not self.history:
            return {"updates": 0, "final_state": "unknown"}
        states = [s for _, s, _ in self.history]
        first, last = self.history[0], self.history[-1]
        return {
            "updates": len(states),
            "final_state": last[1],
            "share": {s: states.count(s) / len(states) for s in ("ok", "uniform", "one-hot")},
            "first": {"step": first[0], **first[2]},
            "last": {"step": last[0], **last[2]},
        }
