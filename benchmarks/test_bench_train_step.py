"""One DINOv2 training step, medssl against lightly's DINOv2 example, same run.

ViT-S/14, DINO + iBOT + KoLeo, 65,536 prototypes, batch 8, 2 x 112 + 8 x 56 crops, one
channel, AdamW, 2 threads, fp32 and bf16-mixed (see ``train_step_workload.py`` for how
each side is built).

- Step time: pytest-benchmark, in this process, 1 warm-up round and ``ROUNDS`` rounds
  (median: one round slowed by another job moves it little).
- Peak memory: each configuration in a fresh process (``train_step_workload.py
  --rounds 0``), the first step's own peak, including AdamW's state, which that step
  allocates (the same size on both sides): the peak of the bytes PyTorch's CPU allocator
  holds above the start of the step (profiler memory events; what the ratio uses), and,
  beside it, the high-water RSS (``ru_maxrss``) minus the RSS once the model and optimiser
  are built (glibc's history moves it by hundreds of MiB).

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

ROUNDS = 4
PRECISIONS = ["32", "bf16-mixed"]
IMPLS = ["lightly", "medssl"]
TIMES: dict[tuple[str, str], float] = {}
CPU: dict[tuple[str, str], float] = {}
MEMORY: dict[tuple[str, str], float] = {}
RSS: dict[tuple[str, str], float] = {}


def _memory(impl: str, precision: str) -> dict[str, float]:
    script = Path(__file__).with_name("train_step_workload.py")
    out = subprocess.run(
        [sys.executable, str(script), "--impl", impl, "--precision", precision, "--rounds", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


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
    memory = _memory(impl, precision)
    MEMORY[(impl, precision)] = memory["peak_tensor_memory_gib"]
    RSS[(impl, precision)] = memory["peak_step_memory_gib"]
    benchmark.extra_info["peak_tensor_memory_gib"] = MEMORY[(impl, precision)]
    benchmark.extra_info["peak_step_rss_gib"] = RSS[(impl, precision)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ratios(precision: str) -> None:
    if not all((impl, precision) in TIMES for impl in IMPLS):
        pytest.skip("run with --benchmark-enable (both implementations measured)")
    time_ratio = TIMES[("medssl", precision)] / TIMES[("lightly", precision)]
    memory_ratio = MEMORY[("medssl", precision)] / MEMORY[("lightly", precision)]
    print(
        f"\n{precision}: step medssl {TIMES[('medssl', precision)]:.2f} s, lightly "
        f"{TIMES[('lightly', precision)]:.2f} s (ratio {time_ratio:.2f}); peak step tensor "
        f"memory medssl {MEMORY[('medssl', precision)]:.3f} GiB, lightly "
        f"{MEMORY[('lightly', precision)]:.3f} GiB (ratio {memory_ratio:.2f}); peak step RSS "
        f"medssl {RSS[('medssl', precision)]:.2f} GiB, lightly "
        f"{RSS[('lightly', precision)]:.2f} GiB; CPU s per step "
        f"medssl {CPU[('medssl', precision)]:.2f}, lightly {CPU[('lightly', precision)]:.2f}"
    )
    assert memory_ratio <= 0.8
    assert time_ratio <= 0.8
