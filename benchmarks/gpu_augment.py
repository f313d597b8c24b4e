"""GPU throughput of the multi-crop policies (source images per second, 10 views each).

Goal (issue 4): at least 5,000 source images/s on one H100, so the augmentation is never
the bottleneck of ViT-B/14 training (~500–680 images/s). Run on a CUDA machine::

    python benchmarks/gpu_augment.py                       # batch 256, uint8 512² grey
    python benchmarks/gpu_augment.py --batch 512 --json out.json

``--device cpu`` runs the same code path on the CPU (a smoke test, not a figure).
The same measurement runs in ``benchmarks/test_bench_augment.py::test_gpu_dinov2_multicrop``
(skipped without CUDA).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from medssl.augment import DINOv2MultiCrop, RadDinoCXR
from medssl.types import BlockMaskSpec, ViewRequest

POLICIES = {"dinov2_multicrop": DINOv2MultiCrop, "rad_dino_cxr": RadDinoCXR}


def smooth_images(batch: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(0)
    coarse = torch.rand((batch, 1, size // 8, size // 8), generator=g, device=device)
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    if dtype == torch.uint16:
        return (x * 65535).round().to(torch.int32).to(torch.uint16)
    return x


def measure(
    policy_name: str = "dinov2_multicrop",
    batch: int = 256,
    iters: int = 20,
    size: int = 512,
    device: str = "cuda",
    dtype: str = "uint8",
    channels: int = 3,
    local_crop_size: int = 96,
    patch_size: int = 16,
    masks: bool = True,
) -> dict[str, Any]:
    """Images per second of one policy on ``[batch, 1, size, size]`` batches."""
    dev = torch.device(device)
    images = smooth_images(batch, size, dev, getattr(torch, dtype))
    policy = POLICIES[policy_name](local_crop_size=local_crop_size, channels=channels)
    request = ViewRequest(
        global_crops=True,
        local_crops=True,
        block_masks=BlockMaskSpec() if masks else None,
        patch_size=patch_size,
    )
    generator = torch.Generator(device=dev).manual_seed(0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):
        policy(images, request, generator)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        views = policy(images, request, generator)
    sync()
    seconds = time.perf_counter() - start
    assert views.global_crops is not None and views.local_crops is not None
    return {
        "policy": policy_name,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "batch": batch,
        "source": f"{dtype} 1×{size}×{size}",
        "views": f"2×224 + 8×{local_crop_size}, {channels} channels",
        "block_masks": masks,
        "images_per_s": round(batch * iters / seconds, 1),
        "ms_per_batch": round(seconds / iters * 1e3, 2),
        "peak_memory_gib": (
            round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=sorted(POLICIES), default="dinov2_multicrop")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["uint8", "uint16", "float32"], default="uint8")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3)
    parser.add_argument("--no-masks", action="store_true")
    parser.add_argument("--json", help="Also write the results here.")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_augment: CUDA is not available; nothing to measure (or pass --device cpu).")
        return
    results = [
        measure(
            args.policy,
            batch,
            args.iters,
            device=args.device,
            dtype=args.dtype,
            channels=args.channels,
            masks=not args.no_masks,
        )
        for batch in sorted({args.batch, max(1, args.batch // 4)})
    ]
    for result in results:
        print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
