"""What the learning diagnostics add to the quickstart's step time::

    python benchmarks/diagnostics_overhead.py [--rounds 3] [--steps 21] [--skip 1]

Each round trains ``recipes/quickstart.yaml`` (no probes) twice, each in a fresh process:
once as shipped (``on``: signals, gradient shares, states on every
``train.diagnostics_every``-th step) and once with the diagnostics switched off (``off``:
no step is diagnosed). The order alternates between rounds. A process times its steps
after the first ``--skip`` up to the one before the last (which is always diagnosed), the
mean over them, logging and metrics included as ``medssl run`` does them: with the
defaults steps 2-20, of which step 20 is diagnosed (the quickstart's rate, one in
``train.diagnostics_every`` = 20). The figure is the median over rounds of ``on / off``,
with the load average before and after.

``--paired N`` instead times, in one process, N pairs of the same training step (one
batch, its views fixed, no optimiser step) without and with diagnosis, alternating, and
prints the median extra time of a diagnosed step over a plain one, and that divided by
``train.diagnostics_every``: the share it adds to the mean step time; and the time of the
engine's part alone (``learning_signals``). Times are CPU seconds of the process
(``time.process_time``, all threads), which other jobs on a shared machine do not inflate
as they do wall time. Cheaper than the rounds, but it leaves out logging.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, steps: int, skip: int, out_dir: str) -> None:
    """Train in this process; print the mean seconds per step after ``skip`` steps."""
    from medssl.config import load_recipe
    from medssl.engine import diagnostics
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    if mode == "off":
        # Never diagnose: the model computes no signal, the monitor sees nothing.
        Trainer.diagnose_step = property(lambda self: False, lambda self, value: None)  # type: ignore[assignment]
        diagnostics.LearningMonitor.observe = lambda self, step, model: {}  # type: ignore[method-assign]
    stamps: list[float] = []
    step = Trainer.optimizer_step

    def timed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        step(self, *args, **kwargs)
        stamps.append(time.perf_counter())

    Trainer.optimizer_step = timed  # type: ignore[method-assign]
    registry = load_registry()
    overrides = [f"output_dir={out_dir}", "eval=[]", f"train.steps={steps}"]
    resolved = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides, registry)
    Trainer(resolved, registry, progress_bar=False).fit()
    per_step = (stamps[-2] - stamps[skip - 1]) / (len(stamps) - 1 - skip)
    print(json.dumps({"mode": mode, "seconds_per_step": per_step}))


def paired(n: int) -> None:
    """Median extra seconds of a diagnosed step over a plain one, same batch and views."""
    import torch

    from medssl.config import load_recipe
    from medssl.engine import diagnostics
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    # The engine's part of a diagnosed step, timed on its own (robust on a busy machine).
    engine_times: list[float] = []
    signals = diagnostics.learning_signals

    def timed_signals(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.process_time()
        out = signals(*args, **kwargs)
        engine_times.append(time.process_time() - start)
        return out

    diagnostics.learning_signals = timed_signals  # type: ignore[assignment]
    registry = load_registry()
    with tempfile.TemporaryDirectory() as tmp:
        resolved = load_recipe(
            ROOT / "recipes" / "quickstart.yaml", [f"output_dir={tmp}", "eval=[]"], registry
        )
        trainer = Trainer(resolved, registry, progress_bar=False)
        trainer._build()
        batch = next(iter(trainer.loader))
        images = trainer.fabric.to_device(batch["image"])
        with torch.no_grad():
            views = trainer.policy(images, trainer.request, trainer.generator)
        every = resolved.train.diagnostics_every
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(2 * n + 2):
            # pairs alternate their order: plain first, then diagnosed first
            diagnose = bool(i % 2) if (i // 2) % 2 == 0 else not i % 2
            trainer.diagnose_step = diagnose
            start = time.process_time()
            trainer.forward_backward(views, 20, 1, last=True)  # past the prototype freeze
            if diagnose:  # what the loop does with the signals
                trainer.raw_model.last_signals = {}
            trainer.optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # the first pair warms up
                times[diagnose].append(time.process_time() - start)
    plain = statistics.median(times[False])
    extra = statistics.median(d - p for d, p in zip(times[True], times[False], strict=True))
    print(f"plain step {plain:.4f} s, diagnosed step +{extra:.4f} s (median of {n} pairs)")
    print("(CPU seconds of this process, all threads: what other jobs on the machine do not add)")
    engine = statistics.median(engine_times[1:])  # the first call warms up linalg
    print(
        f"learning_signals (gradient shares, entropies, one host transfer): {engine:.4f} s "
        f"(median of {len(engine_times) - 1}; first call {engine_times[0]:.4f} s), "
        f"{engine / every / plain:.2%} of the mean step"
    )
    print(
        f"added to the mean step time at train.diagnostics_every={every}: "
        f"{extra / every / plain:.2%}"
    )


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--skip", type=int, default=1)
    parser.add_argument("--paired", type=int, default=0, help="N pairs in one process")
    parser.add_argument("--child", choices=["on", "off"])
    parser.add_argument("--out-dir")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.skip, args.out_dir)
        return
    print(f"load average before: {_load()}")
    if args.paired:
        paired(args.paired)
        print(f"load average after: {_load()}")
        return
    ratios = []
    for i in range(args.rounds):
        order = ["on", "off"] if i % 2 == 0 else ["off", "on"]
        times = {}
        for mode in order:
            with tempfile.TemporaryDirectory() as tmp:
                command = [sys.executable, __file__, "--child", mode, "--out-dir", tmp]
                command += ["--steps", str(args.steps), "--skip", str(args.skip)]
                proc = subprocess.run(command, capture_output=True, text=True, check=True)
                times[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"]
        ratios.append(times["on"] / times["off"])
        print(
            f"round {i + 1} ({' then '.join(order)}): on {times['on']:.4f} s/step, "
            f"off {times['off']:.4f} s/step, on / off {ratios[-1]:.4f}",
            flush=True,
        )
    print(f"load average after: {_load()}")
    print(f"median on / off over {len(ratios)} rounds: {statistics.median(ratios):.4f}")


if __name__ == "__main__":
    main()
