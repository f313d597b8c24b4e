"""One DINOv2 training step, medssl against lightly's DINOv2 example, same run.

ViT-S/14, DINO + iBOT + KoLeo, 65,536 prototypes, batch 8, 2 x 112 + 8 x 56 crops, one
channel, AdamW, 2 threads, fp32 and bf16-mixed (see ``train_step_workload.py`` for how
each side is built).

- Step time: pytest-benchmark, in this process, 1 warm-up round and ``ROUNDS`` rounds.
- Peak memory: each configuration in a fresh process (``train_step_workload.py
  --rounds 0``): the high-water RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after the first
  step minus the RSS once the model and optimiser are built — the step's own peak,
  including AdamW's state, which that step allocates (the same size on both sides).

    pytest benchmarks/test_bench_train_step.py --benchmark-enable -s
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from train_step_workload import BUILDERS, THREADS  # noqa: E402

ROUNDS = 2
PRECISIONS = ["32", "bf16-mixed"]
IMPLS = ["lightly", "medssl"]
TIMES: dict[tuple[str, str], float] = {}
CPU: dict[tuple[str, str], float] = {}
MEMORY: dict[tuple[str, str], float] = {}


def _memory(impl: str, precision: str) -> float:
    script = Path(__file__).with_name("train_step_workload.py")
    out = subprocess.run(
        [sys.executable, str(script), "--impl", impl, "--precision", precision, "--rounds", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_step_memory_gib"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("impl", IMPLS)
def test_train_step(benchmark, impl: str, precision: str) -> None:
    torch.set_num_threads(THREADS)
    step = BUILDERS[impl](precision)
    cpu: list[float] = []

    def timed() -> None:
        start = time.process_time()
        step()
        cpu.append(time.process_time() - start)

    benchmark.group = f"train step {precision}"
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    TIMES[(impl, precision)] = benchmark.stats.stats.median
    # CPU seconds of all threads: less sensitive than wall time to the other jobs' load.
    CPU[(impl, precision)] = statistics.median(cpu[1:])
    benchmark.extra_info["cpu_s"] = CPU[(impl, precision)]
    MEMORY[(impl, precision)] = _memory(impl, precision)
    benchmark.extra_info["peak_step_memory_gib"] = MEMORY[(impl, precision)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ratios(precision: str) -> None:
    if not all((impl, precision) in TIMES for impl in IMPLS):
        pytest.skip("run with --benchmark-enable (both implementations measured)")
    time_ratio = TIMES[("medssl", precision)] / TIMES[("lightly", precision)]
    memory_ratio = MEMORY[("medssl", precision)] / MEMORY[("lightly", precision)]
    print(
        f"\n{precision}: step medssl {TIMES[('medssl', precision)]:.2f} s, lightly "
        f"{TIMES[('lightly', precision)]:.2f} s (ratio {time_ratio:.2f}); peak step memory "
        f"medssl {MEMORY[('medssl', precision)]:.2f} GiB, lightly "
        f"{MEMORY[('lightly', precision)]:.2f} GiB (ratio {memory_ratio:.2f}); CPU s per step "
        f"medssl {CPU[('medssl', precision)]:.2f}, lightly {CPU[('lightly', precision)]:.2f}"
    )
    assert memory_ratio <= 0.8
    assert time_ratio <= 0.8
