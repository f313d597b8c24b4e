"""LightlyTrain's DINOv2 step time on the CPU, for the comparison in RESULTS.md.

Runs in its own environment (LightlyTrain pins its own dependencies)::

    python -m venv /tmp/lt-venv
    /tmp/lt-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly-train
    /tmp/lt-venv/bin/python benchmarks/lightly_train_step.py --steps 4

ViT-S/14 from scratch (``dinov2/vits14-notpretrained``, no download), batch 8, 2 global
crops of 112 and 8 local crops of 56, single channel, fp32, 2 threads. LightlyTrain logs
``profiling/batch_time`` (the training-step hook, data loading excluded) per step; the
median over the steps after the first is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3])
    args = parser.parse_args()

    import lightly_train

    torch.set_num_threads(2)
    batch = 8
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(batch * args.steps):
            pixels = rng.integers(0, 256, size=(128, 128), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(data / f"{i:04d}.png")
        out = Path(tmp) / "out"
        lightly_train.pretrain(
            out=str(out),
            data=str(data),
            model="dinov2/vits14-notpretrained",
            method="dinov2",
            epochs=1,
            batch_size=batch,
            num_workers=0,
            devices=1,
            accelerator="cpu",
            precision=args.precision,
            transform_args={
                "image_size": (112, 112),
                "num_channels": args.channels,
                "normalize": {"mean": [0.5] * args.channels, "std": [0.25] * args.channels},
                "local_view": {"view_size": (56, 56), "num_views": 8},
            },
            loggers={"jsonl": {"flush_logs_every_n_steps": 1}, "tensorboard": None},
            trainer_args={"log_every_n_steps": 1},
        )
        times = []
        for path in out.rglob("metrics.jsonl"):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if "profiling/batch_time" in row:
                    times.append(float(row["profiling/batch_time"]))
    later = times[1:] or times
    print(
        json.dumps(
            {
                "impl": "lightly-train",
                "version": lightly_train.__version__,
                "precision": args.precision,
                "channels": args.channels,
                "step_times_s": times,
                "step_s": statistics.median(later) if later else None,
            }
        )
    )


if __name__ == "__main__":
    main()
