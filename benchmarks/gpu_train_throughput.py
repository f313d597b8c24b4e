"""Training throughput (images/s) and peak memory of the RAD-DINO recipe on one CUDA GPU.

The model, heads, objectives (DINO + iBOT + KoLeo, 65,536 prototypes), crops (2 x 518 +
8 x 98) and precision (bf16-mixed) of ``recipes/rad_dino.yaml``, on one GPU (DDP/FSDP
across GPUs adds communication only), from random initial weights. Each timed step is
the engine's: the on-GPU augmentation policy, forward, backward, AdamW (fused), EMA.
Data loading is left out (fixed synthetic images already on the GPU).

    python benchmarks/gpu_train_throughput.py                 # batch 40 (the paper's per-GPU batch)
    python benchmarks/gpu_train_throughput.py --batch-size 16 --steps 10 --compile
    python benchmarks/gpu_train_throughput.py --lora 8          # LoRA arm (backbone.lora)

Prints one JSON line; exits 0 with a message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=40, help="images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--precision", default="bf16-mixed", choices=["32", "bf16-mixed", "16-mixed"]
    )
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument(
        "--lora", type=int, default=0, metavar="RANK", help="backbone.lora with this rank (0: off)"
    )
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "rad_dino.yaml"))
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE recipe overrides")
    parser.add_argument(
        "--allow-cpu", action="store_true", help="dry-run on the CPU (checks the script only)"
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_train_throughput: no CUDA device; nothing to measure", file=sys.stderr)
        return 0

    sys.path.insert(0, str(ROOT))
    from medssl.config import load_config, resolve_recipe
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    registry = load_registry()
    overrides = [
        "backbone.init=none",
        "train.devices=1",
        "train.num_nodes=1",
        "train.strategy=auto",
        f"train.accelerator={'cuda' if cuda else 'cpu'}",
        f"train.batch_size={args.batch_size}",
        f"train.compile={str(args.compile).lower()}",
        "train.num_workers=0",
        "output_dir=/tmp/medssl-gpu-throughput",
        *args.overrides,
    ]
    if args.lora:
        overrides += [f"backbone.lora.rank={args.lora}", f"backbone.lora.alpha={2 * args.lora}"]
    config, source = load_config(args.recipe, overrides)
    config["train"]["precision"] = args.precision  # a string, which "32" as an override is not
    size = config["data"].get("image_size", 518)
    channels = config["data"].get("channels", 1)
    config["data"] = {
        "name": "synthetic",
        "n_images": args.batch_size,
        "image_size": size,
        "channels": channels,
    }
    recipe = resolve_recipe(config, registry, source)
    trainer = Trainer(recipe, registry, progress_bar=False)
    trainer._build()
    trainer.model.train()
    device = trainer.fabric.device
    images = torch.stack([trainer.dataset[i]["image"] for i in range(args.batch_size)]).to(device)
    step = trainer.steps_per_epoch * 2  # past the frozen-prototype epoch: the full update

    def one_step() -> None:
        scheduled = trainer._set_schedules(step)
        trainer.micro_step(images, None, step, 2, last=True)
        trainer.optimizer_step(2, scheduled["momentum"])

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(args.warmup):
        one_step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    sync()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in trainer.raw_model.parameters())
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if cuda else "cpu (dry run)",
                "batch_size": args.batch_size,
                "precision": args.precision,
                "compile": args.compile,
                "crops": {
                    "global": [2, trainer.policy.global_crop_size],
                    "local": [
                        getattr(trainer.policy.options, "n_local_crops", None),
                        getattr(trainer.policy.options, "local_crop_size", None),
                    ],
                },
                "step_s": elapsed / args.steps,
                "images_per_s": args.batch_size * args.steps / elapsed,
                "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if cuda
                else None,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30
                if cuda
                else None,
                "parameters_m": params / 1e6,
                "trainable_m": sum(
                    p.numel() for p in trainer.raw_model.parameters() if p.requires_grad
                )
                / 1e6,
                "lora_rank": args.lora,
                "torch": torch.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
