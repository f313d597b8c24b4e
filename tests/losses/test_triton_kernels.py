"""Runs the Triton kernel checks under the Triton interpreter, in a fresh process.

Triton reads ``TRITON_INTERPRET`` when kernels are defined, so the checks
(``triton_interpreter_checks.py``) cannot share this process: another test may already
have imported the kernels without it, and setting it here would leak into other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from medssl.losses import prototype_cross_entropy  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_under_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/losses/triton_interpreter_checks.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="interpreter enabled"
)
def test_triton_on_cpu_without_interpreter_is_a_clear_error() -> None:
    f = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        prototype_cross_entropy(f, torch.zeros(2, 8), torch.zeros(8, 4), 0.1, impl="triton")
