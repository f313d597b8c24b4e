"""The GPU scripts under benchmarks/ still run: their CPU dry runs, so they do not rot
between the sessions that have a GPU to run them on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_train_throughput_dry_run_on_the_cpu() -> None:
    proc = _run("benchmarks/gpu_train_throughput.py", "--allow-cpu", "--recipe",
                "recipes/quickstart.yaml", "--batch-size", "2", "--steps", "1", "--warmup", "1",
                "--precision", "32")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu (dry run)" and result["images_per_s"] > 0


@pytest.mark.slow
def test_kernel_check_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    proc = _run("benchmarks/gpu_check_kernels.py", env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all passed" in proc.stdout and "FAIL" not in proc.stdout


@pytest.mark.parametrize("script", ["benchmarks/gpu_loss_head.py", "benchmarks/gpu_augment.py"])
def test_gpu_benchmarks_exit_cleanly_without_cuda(script: str) -> None:
    proc = _run(script, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA is not available" in proc.stdout
