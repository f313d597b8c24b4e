"""Stopping a run cleanly: the SIGTERM/SIGINT flag, every rank's agreement, exit codes.

A run stopped by a signal (SLURM pre-emption, Ctrl-C) or by ``train.max_minutes`` saves a
checkpoint and ends with an exit code a requeue script can tell from a finish or an error.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EXIT_OUT_OF_TIME",
    "RunResult",
    "StopFlag",
    "agree_stop",
    "stop_exit_code",
    "stop_on_signals",
    "stop_reason",
]


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    stopped_early: bool = False
    final_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that stopped the run early, if one did


#: Exit code of ``medssl run`` stopped by ``train.max_minutes`` with a checkpoint saved
#: (EX_TEMPFAIL); a run stopped by signal N exits with 128 + N (143 for SIGTERM), as a
#: shell reports it, so SLURM requeue scripts can tell a stop from a finish (0) or an error (1).
EXIT_OUT_OF_TIME = 75


def stop_exit_code(result: RunResult) -> int:
    """The exit code documented for ``result``: 0 when it finished."""
    if not result.stopped_early:
        return 0
    return 128 + result.stop_signal if result.stop_signal else EXIT_OUT_OF_TIME


class StopFlag:
    """Set by SIGTERM/SIGINT (what SLURM pre-emption and Ctrl-C send)."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.signal = signum


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """A :class:`StopFlag` that SIGTERM and SIGINT set instead of killing the process."""
    flag = StopFlag()
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, flag)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            pass
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def agree_stop(fabric: Any, signalled: bool, out_of_time: bool) -> tuple[bool, bool]:
    """Stop every rank when any rank is told to (SLURM may signal only some), so no
    rank waits forever in a collective that the others left."""
    if fabric.world_size == 1:
        return signalled, out_of_time
    import torch.distributed as dist

    flags = torch.tensor([float(signalled), float(out_of_time)], device=fabric.device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def stop_reason(own_signal: int | None, signalled: bool) -> tuple[str, int | None]:
    """Why the run stops, for the log, and the signal its exit code reports: SIGTERM's
    when another rank was signalled (so a SLURM requeue sees a pre-emption)."""
    if own_signal:
        return f"signal {signal.Signals(own_signal).name}", own_signal
    if signalled:
        return "a signal to another rank", int(signal.SIGTERM)
    return "train.max_minutes", None
