"""Peak memory (and time per step) of LoRA against full continued pre-training, on the CPU.

Each arm is a fresh process running the quickstart recipe (its data, crops, objectives and
batch) for a few steps; ``--backbone base`` swaps in a ViT-B/14 (768-d, 12 blocks), the
size LoRA is for. The arms alternate (full, lora, full, lora, ...) so drifting machine load
hits both alike; the result is the median of the per-pair peak-RSS ratios. Peak RSS is the
child's ``ru_maxrss`` (Linux, whole process); "above import" subtracts the RSS measured
after ``import torch, medssl, lightning_fabric`` in the same process: library code common
to both arms, which training cannot save.

    python benchmarks/lora_memory.py --backbone base --pairs 3
    python benchmarks/lora_memory.py --backbone quickstart --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BACKBONES = {
    "quickstart": [],
    "base": ["backbone.embed_dim=768", "backbone.depth=12", "backbone.num_heads=12"],
}


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(args: argparse.Namespace) -> None:
    # Fabric's import (torch._dynamo, sympy, ... ≈ 290 MiB of RSS) happens in both arms;
    # peft adds ≈ 33 MiB after it, which the LoRA arm pays above the baseline.
    import lightning_fabric
    import torch  # noqa: F401

    from medssl.config import load_recipe
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    lightning_fabric.Fabric(accelerator="cpu", devices=1)
    baseline = _rss_kib()
    with tempfile.TemporaryDirectory() as out:
        overrides = [
            f"output_dir={out}",
            f"train.steps={args.steps}",
            f"train.checkpoint_every={args.steps}",
            f"train.batch_size={args.batch}",
            "train.threads=2",
            "eval=[]",
            *BACKBONES[args.backbone],
        ]
        if args.arm == "lora":
            overrides += [f"backbone.lora.rank={args.rank}", f"backbone.lora.alpha={2 * args.rank}"]
        registry = load_registry()
        recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", overrides, registry)
        trainer = Trainer(recipe, registry, progress_bar=False)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"arm": args.arm, "peak_kib": peak, "baseline_kib": baseline, "s": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="base")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--arm", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        child(args)
        return
    rows = []
    for i in range(args.pairs):
        pair = {}
        for arm in ("full", "lora") if i % 2 == 0 else ("lora", "full"):
            cmd = [sys.executable, __file__, "--arm", arm]
            cmd += ["--backbone", args.backbone, "--steps", str(args.steps)]
            cmd += ["--batch", str(args.batch), "--rank", str(args.rank)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if proc.returncode:
                sys.exit(f"{arm} run failed:\n{proc.stderr[-2000:]}")
            pair[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(pair[arm]), flush=True)
        rows.append(pair)
    ratio = statistics.median(p["lora"]["peak_kib"] / p["full"]["peak_kib"] for p in rows)
    above = statistics.median(
        (p["lora"]["peak_kib"] - p["lora"]["baseline_kib"])
        / (p["full"]["peak_kib"] - p["full"]["baseline_kib"])
        for p in rows
    )
    time_ratio = statistics.median(p["lora"]["s"] / p["full"]["s"] for p in rows)
    mib = {a: statistics.median(p[a]["peak_kib"] for p in rows) / 1024 for a in ("full", "lora")}
    print(
        f"backbone {args.backbone}, batch {args.batch}, {args.steps} steps, rank {args.rank}, "
        f"{args.pairs} pairs: peak RSS full {mib['full']:.0f} MiB, lora {mib['lora']:.0f} MiB; "
        f"median ratio lora/full {ratio:.2f} (above import {above:.2f}); "
        f"time ratio {time_ratio:.2f}; load {open('/proc/loadavg').read().split()[:3]}"
    )


if __name__ == "__main__":
    main()
