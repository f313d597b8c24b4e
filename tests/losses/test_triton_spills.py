"""The Triton head kernels compile for sm_90 at their configured tiles without spilling.

Compiles with Triton's own ptxas on the CPU (no GPU needed); see benchmarks/triton_spills.py.
Spills (local-memory traffic) made the prototype-gradient kernel the slowest on an H200.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
        reason="the interpreter's kernels are not the compiled ones",
    ),
]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    ("kernel", "lazy"),
    [("lse", False), ("features", False), ("prototypes", False), ("targets", False),
     ("logits", False), ("prototypes", True), ("targets", True)],
)  # fmt: skip
def test_head_kernel_fits_registers_and_shared_memory(
    kernel: str, lazy: bool, dtype: torch.dtype
) -> None:
    from triton_spills import report

    r = report(kernel, dtype, arch=90, dim=256, lazy=lazy)
    assert r["spill_bytes"] == 0, r
    assert r["shared_bytes"] <= 232448, r  # an H100/H200's shared memory per block
