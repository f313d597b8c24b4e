"""Learning diagnostics: is each objective learning, at chance, or collapsed?

Every formula and threshold here is stated, with its source, in ``docs/diagnostics.md``.

On the steps the engine diagnoses (``train.diagnostics_every``) each objective returns
:class:`medssl.types.LearningSignals` (its chance level, teacher and student
distributions); :func:`learning_signals` turns them, and each objective's share of the
gradient at the backbone's output tokens, into floats with one host transfer;
:class:`LearningMonitor` follows them over the run, gives each objective a state
(``learning``, ``not_learning``, ``collapsed``, ``uniform``, or ``unjudged`` without a
chance level), warns when an objective enters a bad state and summarises the run
(``diagnostics.json``).

Self-distillation fails in two quiet ways (Caron et al. 2021, Sec. 5.3 and Fig. 7): the
teacher's outputs flatten to uniform (entropy ``ln K``), or become the same for every
image (one prototype dominates; ``KL(teacher || student)`` then falls to 0). In both the
student's loss sits at or near ``ln K``, the cross-entropy of a uniform guess
(facebookresearch/dino#43: a loss stuck at 8.3178 = ln 4096).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.types import LearningSignals, ObjectiveResult, StepOutputs

__all__ = [
    "CHANCE_TOLERANCE",
    "CONSTANT_SPREAD",
    "LearningMonitor",
    "NOT_LEARNING_STEPS",
    "ONE_HOT_USAGE_RATIO",
    "STATES",
    "UNIFORM_ENTROPY_RATIO",
    "collapse_metrics",
    "effective_rank",
    "feature_std",
    "final_lines",
    "gradient_shares",
    "learning_signals",
    "mean_entropy",
    "row_spread",
    "usage_entropy",
]

log = logging.getLogger(__name__)

#: Teacher outputs count as uniform when their mean per-row entropy is at least this share
#: of ``ln K``.
UNIFORM_ENTROPY_RATIO = 0.95
#: One-hot collapse: the entropy of the batch-mean teacher distribution is at most this
#: share of its maximum ``ln min(K, N)`` (N rows can use at most N prototypes).
ONE_HOT_USAGE_RATIO = 0.1
#: Constant teacher: the mean total-variation distance of the teacher's rows from their
#: batch mean is at most this (0: every image gets the same target).
CONSTANT_SPREAD = 0.01
#: A loss is at chance when ``abs(loss / chance - 1) <= CHANCE_TOLERANCE``, below it
#: (learning) under ``1 - CHANCE_TOLERANCE``.
CHANCE_TOLERANCE = 0.02
#: A condition becomes the objective's state once it held on every diagnosed step over
#: this many steps (or a fifth of the run, when that is shorter).
NOT_LEARNING_STEPS = 50
#: Rows of a distribution the signals read at most (iBOT's masked tokens can be
#: thousands x 65,536 prototypes): evenly spaced rows beyond this.
MAX_ROWS = 256

STATES = ("learning", "not_learning", "collapsed", "uniform", "unjudged", "undecided")
_BAD = ("not_learning", "collapsed", "uniform")


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
def row_spread(probs: Tensor) -> Tensor:
    """Mean total-variation distance of the rows of ``probs`` from their mean (0: constant)."""
    p = probs.double()
    return 0.5 * (p - p.mean(dim=0, keepdim=True)).abs().sum(dim=1).mean()


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


def _teacher_tensors(probs: Tensor) -> dict[str, Tensor]:
    n, k = probs.shape
    log_k = math.log(k) if k > 1 else 1.0
    log_u = math.log(min(k, n)) if min(k, n) > 1 else 1.0
    h, u = mean_entropy(probs), usage_entropy(probs)
    return {
        "teacher_entropy": h,
        "teacher_entropy_ratio": h / log_k,
        "usage_entropy": u,
        # Soft rows can make the batch mean broader than ln min(K, N): clamp at 1.
        "usage_ratio": torch.clamp(u / log_u, max=1.0),
        "teacher_spread": row_spread(probs),
        # Prototypes that are the teacher's first choice for at least one row.
        "prototypes_used": (torch.bincount(probs.argmax(dim=1), minlength=k) > 0).sum(),
    }


@torch.no_grad()
def collapse_metrics(
    teacher_probs: Tensor | None = None, student_cls: Tensor | None = None
) -> dict[str, float]:
    """Teacher entropy, prototype usage, row spread (of ``teacher_probs [N, K]``) and the
    spread of ``student_cls [N, D]`` (``cls_std``, ``cls_effective_rank``), as floats."""
    values: dict[str, Tensor] = {}
    if teacher_probs is not None:
        values.update(_teacher_tensors(teacher_probs))
    if student_cls is not None:
        values["cls_std"] = feature_std(student_cls)
        values["cls_effective_rank"] = effective_rank(student_cls)
    return _to_floats(values)


def _to_floats(values: Mapping[str, Tensor | float]) -> dict[str, float]:
    """One host transfer for every tensor (each ``.item()`` is a device sync on CUDA)."""
    tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
    out = {k: float(v) for k, v in values.items() if not isinstance(v, Tensor)}
    if tensors:
        flat = torch.stack(
            [v.detach().reshape(()).to("cpu", torch.float64) for v in tensors.values()]
        )
        out.update(zip(tensors, flat.tolist(), strict=True))
    return out


def _rows(x: Tensor) -> Tensor:
    if x.shape[0] <= MAX_ROWS:
        return x
    index = torch.linspace(0, x.shape[0] - 1, MAX_ROWS, device=x.device).long()
    return x.index_select(0, index)


def _backbone_tokens(out: StepOutputs, results: Mapping[str, ObjectiveResult]) -> list[Tensor]:
    tokens = []
    for output in (out.student_global, out.student_local):
        if output is not None:
            tokens += [output.cls, output.patch]
    for result in results.values():
        if result.signals is not None:
            tokens += list(result.signals.backbone_tokens)
    return [t for t in tokens if t.requires_grad]


def gradient_shares(
    weighted_losses: Mapping[str, Tensor], tokens: list[Tensor]
) -> dict[str, Tensor]:
    """``|grad_tokens(w_i L_i)| / |grad_tokens(sum_j w_j L_j)|`` for each objective ``i``.

    The gradients are taken at the backbone's output tokens (``torch.autograd.grad`` with
    those tokens as inputs runs the heads' backward only, never the backbone's), the
    cheap point that MGDA-UB (Sener & Koltun 2018) uses for the shared representation.
    Shares can sum to more than 1 where objectives pull in opposite directions.
    """
    if not tokens:
        return {}
    grads: dict[str, list[Tensor | None]] = {}
    for name, loss in weighted_losses.items():
        if loss.requires_grad:
            grads[name] = list(
                torch.autograd.grad(loss, tokens, retain_graph=True, allow_unused=True)
            )
    total: list[Tensor | None] = [None] * len(tokens)
    norms: dict[str, Tensor] = {}
    for name, per_token in grads.items():
        squares = []
        for i, g in enumerate(per_token):
            if g is None:
                continue
            g = g.float()
            squares.append(g.square().sum())
            total[i] = g if total[i] is None else total[i] + g
        norms[name] = torch.stack(squares).sum().sqrt() if squares else torch.zeros(())
    parts = [t.square().sum() for t in total if t is not None]
    if not parts:
        return {}
    whole = torch.stack(parts).sum().sqrt().clamp_min(1e-30)
    return {name: norm / whole for name, norm in norms.items()}


@torch.no_grad()
def _objective_tensors(loss: Tensor, signals: LearningSignals) -> dict[str, Tensor | float]:
    values: dict[str, Tensor | float] = {}
    if signals.chance is not None:
        chance = signals.chance
        values["chance"] = chance
        values["loss_ratio"] = loss.detach().double() / chance
    if signals.teacher_probs is not None:
        values.update(_teacher_tensors(_rows(signals.teacher_probs.detach())))
    if signals.student_probs is not None:
        student = _rows(signals.student_probs.detach())
        k = student.shape[1]
        values["student_entropy_ratio"] = mean_entropy(student) / (math.log(k) if k > 1 else 1.0)
    if signals.kl is not None:
        values["kl"] = signals.kl
    values.update(signals.values)
    return values


def learning_signals(
    results: Mapping[str, ObjectiveResult], weights: Mapping[str, float], out: StepOutputs
) -> dict[str, dict[str, float]]:
    """Every objective's signals as floats (one host transfer), keyed by objective; the
    backbone's CLS spread under ``"backbone"``. Call before the backward (the gradient
    shares need the graph)."""
    weighted = {name: r.loss * weights[name] for name, r in results.items()}
    shares = gradient_shares(weighted, _backbone_tokens(out, results))
    flat: dict[str, Tensor | float] = {}
    for name, result in results.items():
        if result.signals is not None:
            for key, value in _objective_tensors(result.loss, result.signals).items():
                flat[f"{name}/{key}"] = value
        if name in shares:
            flat[f"{name}/grad_share"] = shares[name]
    if out.student_global is not None:
        cls = out.student_global.cls.detach().float()
        flat["backbone/cls_std"] = feature_std(cls)
        flat["backbone/cls_effective_rank"] = effective_rank(cls)
    nested: dict[str, dict[str, float]] = {}
    for key, value in _to_floats(flat).items():
        name, signal = key.split("/", 1)
        nested.setdefault(name, {})[signal] = value
    return nested


def hints(results: Mapping[str, ObjectiveResult]) -> dict[str, str | None]:
    """Each objective's own advice (``LearningSignals.hint``) for the warnings."""
    return {name: r.signals.hint if r.signals is not None else None for name, r in results.items()}


def condition(values: Mapping[str, float]) -> str:
    """What one diagnosed step shows: ``uniform``, ``collapsed``, ``at_chance`` (within
    the tolerance), ``above_chance``, ``below_chance`` or ``unjudged`` (no chance level
    and no teacher)."""
    ratio = values.get("teacher_entropy_ratio")
    if ratio is not None and ratio >= UNIFORM_ENTROPY_RATIO:
        return "uniform"
    usage, spread = values.get("usage_ratio"), values.get("teacher_spread")
    if (usage is not None and usage <= ONE_HOT_USAGE_RATIO) or (
        spread is not None and spread <= CONSTANT_SPREAD
    ):
        return "collapsed"
    loss_ratio = values.get("loss_ratio_window", values.get("loss_ratio"))
    if loss_ratio is None or not math.isfinite(loss_ratio):
        return "unjudged"
    if loss_ratio < 1.0 - CHANCE_TOLERANCE:
        return "below_chance"
    return "at_chance" if loss_ratio <= 1.0 + CHANCE_TOLERANCE else "above_chance"


_STATE_OF = {
    "uniform": "uniform",
    "collapsed": "collapsed",
    "at_chance": "not_learning",
    # Every model starts above chance (random predictions are sharper than uniform and
    # wrong): only staying there for twice the window is not learning.
    "above_chance": "not_learning",
    "below_chance": "learning",
    "unjudged": "unjudged",
}


def _streak(cond: str | None) -> str | None:
    return "not_below_chance" if cond in ("at_chance", "above_chance") else cond


@dataclass
class _Track:
    state: str = "undecided"
    since: int | None = None  # the step at which the state was declared
    condition: str | None = None
    streak_start: int | None = None
    hint: str | None = None
    last: dict[str, float] = field(default_factory=dict)
    ratios: list[list[float]] = field(default_factory=list)  # [step, loss / chance]


class LearningMonitor:
    """Follows every objective's signals over a run; gives each a state; warns; summarises.

    A bad condition (at chance, uniform, collapsed) becomes the state once it has held on
    every diagnosed step spanning ``window`` steps (``NOT_LEARNING_STEPS``, or a fifth of
    the run when shorter; twice that for a loss above chance, where every run starts); a
    loss below chance is ``learning`` at once (at and above chance count as one streak). A
    warning is logged when an objective enters a bad state.
    """

    def __init__(self, total_steps: int, window: int | None = None) -> None:
        self.window = (
            window if window is not None else max(1, min(NOT_LEARNING_STEPS, total_steps // 5))
        )
        self.tracks: dict[str, _Track] = {}
        self.history: list[list[Any]] = []  # [step, {objective: state}]
        self.warnings: list[str] = []
        self.backbone: dict[str, float] = {}

    def update(
        self,
        step: int,
        signals: Mapping[str, Mapping[str, float]],
        hints: Mapping[str, str | None] | None = None,
    ) -> dict[str, str]:
        hints = hints or {}
        states = {}
        for name, values in signals.items():
            if name == "backbone":
                self.backbone = dict(values)
                continue
            track = self.tracks.setdefault(name, _Track())
            track.hint = hints.get(name) or track.hint
            values = self._smoothed(track, step, values)
            track.last = dict(values)
            cond = condition(values)
            if _streak(cond) != _streak(track.condition):  # at and above chance: one streak
                track.streak_start = step
            track.condition = cond
            new = _STATE_OF[cond]
            start = step if track.streak_start is None else track.streak_start
            held = step - start >= self.window * (2 if cond == "above_chance" else 1)
            if new in _BAD and not held:
                new = track.state  # not yet long enough: the previous state stands
            if new != track.state:
                track.state, track.since = new, step
                if new in _BAD:
                    message = self.message(name, new, values, track.hint, self.window)
                    self.warnings.append(f"step {step}: {message}")
                    log.warning("learning diagnostics at step %d: %s", step, message)
            states[name] = track.state
        self.history.append([step, states])
        return states

    def _smoothed(self, track: _Track, step: int, values: Mapping[str, float]) -> dict[str, float]:
        """``loss_ratio_window``: the mean loss / chance over the diagnosed steps of the last
        ``window`` steps (one batch's loss is noisy); the states judge that mean."""
        out = dict(values)
        ratio = values.get("loss_ratio")
        if ratio is None or not math.isfinite(ratio):
            return out
        track.ratios = [r for r in track.ratios if r[0] > step - self.window] + [[step, ratio]]
        out["loss_ratio_window"] = sum(r[1] for r in track.ratios) / len(track.ratios)
        return out

    @staticmethod
    def message(
        name: str, state: str, values: Mapping[str, float], hint: str | None, window: int
    ) -> str:
        key = f"objectives.{name}"
        advice = f"; try {hint}" if hint else ""
        if state == "uniform":
            return (
                f"objective {name!r}: the teacher's outputs are near uniform (entropy "
                f"{values.get('teacher_entropy_ratio', math.nan):.3f} x ln K), so the student "
                "gets no signal. Likely: a teacher temperature too high for this many "
                "prototypes, or a deep head on features that barely differ between images"
                f"{advice}, or train.lr; pre-trained weights (backbone.init) help most"
            )
        if state == "collapsed":
            return (
                f"objective {name!r}: the teacher gives (nearly) the same target for every "
                f"image (usage {values.get('usage_ratio', math.nan):.3f} of its maximum, rows "
                f"{values.get('teacher_spread', math.nan):.3f} apart). Likely: centring too "
                f"weak ({key}.centering=sinkhorn_knopp), a teacher temperature too low, or a "
                f"learning rate too high{advice}, or a lower train.lr"
            )
        chance = values.get("chance", math.nan)
        ratio = values.get("loss_ratio_window", math.nan)
        within = not ratio > 1.0 + CHANCE_TOLERANCE
        where = "within" if within else "more than"
        side, steps = ("of", window) if within else ("above", 2 * window)
        return (
            f"objective {name!r}: not learning: its loss stayed {where} "
            f"{CHANCE_TOLERANCE:.0%} {side} its chance level {chance:.4g} (loss / chance "
            f"{ratio:.3f}, mean over the last {window} steps) for {steps} steps or more. "
            "Likely: "
            "targets the model cannot yet predict from these features, a learning rate too "
            f"low or too high, or too few steps{advice}, or train.lr / train.steps"
        )

    def observe(self, step: int, model: Any) -> dict[str, float]:
        """Update from ``model.last_signals`` / ``last_hints`` (what :class:`SSLModel` kept
        of the diagnosed step; cleared here) and return them as ``diag/...`` metrics."""
        signals, model.last_signals = model.last_signals, {}
        if not signals:
            return {}
        self.update(step, signals, model.last_hints)
        metrics = {
            f"diag/{name}/{key}": value
            for name, values in signals.items()
            for key, value in values.items()
        }
        for name, track in self.tracks.items():
            if name in signals and "loss_ratio_window" in track.last:
                metrics[f"diag/{name}/loss_ratio_window"] = track.last["loss_ratio_window"]
        return metrics

    def summary(self) -> dict[str, Any]:
        objectives = {}
        for name, t in self.tracks.items():
            prefix = f"step {t.since}: objective {name!r}:"
            warning = next((w for w in self.warnings if w.startswith(prefix)), None)
            objectives[name] = {
                "state": t.state,
                "since_step": t.since,
                "condition": t.condition,
                "warning": warning if t.state in _BAD else None,
                "last": t.last,
            }
        return {
            "final_state": {name: t.state for name, t in self.tracks.items()},
            "healthy": not any(t.state in _BAD for t in self.tracks.values()),
            "objectives": objectives,
            "backbone": self.backbone,
            "warnings": list(self.warnings),
            "updates": len(self.history),
            "thresholds": {
                "uniform_entropy_ratio": UNIFORM_ENTROPY_RATIO,
                "one_hot_usage_ratio": ONE_HOT_USAGE_RATIO,
                "constant_spread": CONSTANT_SPREAD,
                "chance_tolerance": CHANCE_TOLERANCE,
                "window_steps": self.window,
            },
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "tracks": {name: vars(t).copy() for name, t in self.tracks.items()},
            "history": [list(h) for h in self.history],
            "warnings": list(self.warnings),
            "backbone": dict(self.backbone),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "tracks" not in state:  # a checkpoint from before the per-objective states
            return
        self.window = int(state["window"])
        self.tracks = {name: _Track(**t) for name, t in state["tracks"].items()}
        self.history = [list(h) for h in state["history"]]
        self.warnings = list(state["warnings"])
        self.backbone = dict(state["backbone"])


def final_lines(summary: Mapping[str, Any]) -> list[str]:
    """What ``medssl run`` prints at the end: each objective's state, then the warning of
    each objective whose final state is bad."""
    objectives = summary.get("objectives") or {}
    lines = [
        f"diagnostics: {name}: {o['state']}"
        + (f" (since step {o['since_step']})" if o.get("warning") else "")
        for name, o in objectives.items()
    ]
    return lines + [f"warning: {o['warning']}" for o in objectives.values() if o.get("warning")]
