"""GPU benchmark of the DINO loss head (issue 7): Triton vs eager vs torch.compile.

One command, under two minutes on an H100/H200::

    python benchmarks/gpu_loss_head.py [--images 102] [--k 65536] [--iters 20]

Workload as ``loss_head_workload.py`` (2 global + 8 local student crops, 2 teacher crops,
bottleneck 256, K prototypes, teacher targets included, forward + backward) under bf16
autocast, as training runs it. Reports per variant: time per step (CUDA events, median),
peak activation memory (peak allocated minus inputs, parameters and the gradients), and
achieved TFLOP/s counting the eager algorithm's matmul FLOPs (student forward + two
backward matmuls, teacher forward; the fused kernels' recomputation is not credited) as a
share of the card's dense bf16 peak. Exits 0 with a message when CUDA is not available.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from loss_head_workload import N_GLOBAL, N_LOCAL, make_inputs, make_step  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
             "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # fmt: skip


def bf16_peak(name: str) -> float | None:
    for key, value in BF16_PEAK.items():
        if key in name:
            return value
    return None


def use_triton_tiles(spec: str) -> None:
    """Set every Triton head kernel's tiles from ``BxKwWsS`` (e.g. ``128x64w8s3``), for a sweep."""
    from medssl.losses import triton_kernels as tk

    tiles, rest = spec.split("w")
    warps, stages = rest.split("s")
    block_b, block_k = (int(v) for v in tiles.split("x"))
    config = {"BLOCK_B": block_b, "BLOCK_K": block_k, "num_warps": int(warps),
              "num_stages": int(stages)}  # fmt: skip
    for dtype in list(tk._HEAD_CONFIGS):
        tk._HEAD_CONFIGS[dtype] = {name: dict(config) for name in tk._KERNELS}


def run_variant(variant: str, args, flops: float) -> dict:
    x = make_inputs(images=args.images, dim=args.dim, k=args.k, device="cuda")
    if "@" in variant:  # triton@128x64w8: the Triton path with other tiles
        use_triton_tiles(variant.split("@")[1])
    step = make_step(variant.split("@")[0], x)
    t_compile = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        x.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()
    torch.cuda.synchronize()
    t_compile = time.perf_counter() - t_compile
    times = []
    for _ in range(args.iters):
        x.zero_grad()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    x.zero_grad()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        step()
    torch.cuda.synchronize()
    grads = sum(t.grad.numel() * t.grad.element_size() for t in (x.student, x.prototypes))
    peak = torch.cuda.max_memory_allocated() - base - grads
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = float(step())
    sec = statistics.median(times)
    return {"variant": variant, "ms": sec * 1e3, "act_mib": peak / 2**20,
            "tflops": flops / sec / 1e12, "warmup_s": t_compile, "loss": loss}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=102)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=65536)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--variants", default="eager,compiled,chunked,triton,triton_lazy")
    parser.add_argument(
        "--triton-tiles", default="", help="extra Triton tiles, e.g. 128x64w8s3,64x128w4s2"
    )
    parser.add_argument("--profile", action="store_true", help="per-kernel CUDA times of triton")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the bf16 peak")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_loss_head: CUDA is not available; nothing to measure (needs an NVIDIA GPU).")
        return 0
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or bf16_peak(name)
    student_rows = (N_GLOBAL + N_LOCAL) * args.images
    teacher_rows = N_GLOBAL * args.images
    flops = 2 * args.k * args.dim * (3 * student_rows + teacher_rows)
    print(f"device: {name}; bf16 peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}")
    print(f"shape: {student_rows} student + {teacher_rows} teacher rows, D={args.dim}, "
          f"K={args.k}; {flops / 1e9:.0f} GFLOP per step (eager count)")  # fmt: skip
    from medssl.losses import triton_kernels as tk

    defaults = {dtype: {name: dict(c) for name, c in configs.items()}
                for dtype, configs in tk._HEAD_CONFIGS.items()}  # fmt: skip
    results = []
    variants = args.variants.split(",") + [f"triton@{t}" for t in args.triton_tiles.split(",") if t]
    for variant in variants:
        try:
            results.append(run_variant(variant, args, flops))
        except Exception as exc:  # report and go on: one failing variant must not hide the rest
            print(f"{variant}: failed: {type(exc).__name__}: {exc}")
    eager_ms = next((r["ms"] for r in results if r["variant"] == "eager"), None)
    print(
        "| variant | ms/step | × eager speed | activation MiB | TFLOP/s | % bf16 peak | warm-up s | loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        speed = f"{eager_ms / r['ms']:.2f}" if eager_ms else "–"
        share = f"{100 * r['tflops'] / peak:.1f}" if peak else "–"
        print(f"| {r['variant']} | {r['ms']:.3f} | {speed} | {r['act_mib']:.0f} | "
              f"{r['tflops']:.1f} | {share} | {r['warmup_s']:.1f} | {r['loss']:.5f} |")  # fmt: skip
    tk._HEAD_CONFIGS.update(defaults)
    if args.profile:
        profile_triton(args)
    return 0


def profile_triton(args) -> None:
    """Per-kernel CUDA time of one Triton step (the tiles last set), to see where time goes."""
    from torch.profiler import ProfilerActivity, profile

    x = make_inputs(images=args.images, dim=args.dim, k=args.k, device="cuda")
    step = make_step("triton", x)
    for _ in range(2):
        x.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            x.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                step()
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50)
    )


if __name__ == "__main__":
    sys.exit(main())
