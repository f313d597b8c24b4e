"""Forward + backward time of a ViT-S/14 in training mode with DINOv2's subset stochastic
depth against timm's multiply-by-zero DropPath (same model, same rate)::

    python benchmarks/drop_path_speed.py [--rate 0.3] [--batch 32] [--size 112]

Alternates the two twice and prints the best of 3 steps for each.
"""

from __future__ import annotations

import argparse
import time

import torch

import medssl.builtins.backbones as backbones


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vit = backbones.VisionTransformer(embed_dim=384, depth=12, num_heads=6, patch_size=14,
                                      img_size=args.size, drop_path_rate=args.rate).train()  # fmt: skip
    x = torch.randn(args.batch, 1, args.size, args.size)

    def step() -> None:
        out = vit(x)
        (out.cls.sum() + out.patch.sum()).backward()

    default = backbones._SUBSET_DROP_RATE
    results: dict[str, list[float]] = {}
    for label, threshold in [("timm DropPath", float("inf")), ("subset", default)] * 2:
        backbones._SUBSET_DROP_RATE = threshold
        step()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - t0)
        results.setdefault(label, []).append(best)
    backbones._SUBSET_DROP_RATE = default
    for label, times in results.items():
        print(f"{label}: " + ", ".join(f"{t:.3f} s" for t in times))


if __name__ == "__main__":
    main()
