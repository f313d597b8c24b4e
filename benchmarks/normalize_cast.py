"""The prototypes' weight normalisation rounded to bf16: medssl's tiled ``_divide_into``
against a division written straight into a bf16 ``out=`` (which makes a full-size fp32
intermediate)::

    python benchmarks/normalize_cast.py [--rows 65536] [--dim 256] [--pairs 15]

Alternates the two sides (A, B, A, B, ...) in one process and prints each side's median
time and the median ratio of adjacent pairs, with the load average.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from medssl.builtins.objectives.heads import _divide_into


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    v = torch.randn(args.rows, args.dim)
    denom = torch.linalg.vector_norm(v, dim=1, keepdim=True)

    def tiled() -> None:
        _divide_into(v, denom, torch.bfloat16)

    def direct() -> None:
        torch.div(v, denom, out=torch.empty(v.shape, dtype=torch.bfloat16))

    torch.testing.assert_close(
        _divide_into(v, denom, torch.bfloat16), (v / denom).to(torch.bfloat16), rtol=0, atol=0
    )
    tiled(), direct()  # warm-up
    a, b = [], []
    for _ in range(args.pairs):
        a.append(_time(tiled))
        b.append(_time(direct))
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    print(f"rows {args.rows} x dim {args.dim}, fp32 -> bf16, {args.pairs} pairs")
    print(f"tiled  median {statistics.median(a) * 1e3:.1f} ms")
    print(f"direct median {statistics.median(b) * 1e3:.1f} ms")
    print(f"tiled / direct: median ratio {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip
    print("load average:", Path("/proc/loadavg").read_text().split()[:3])


if __name__ == "__main__":
    main()
