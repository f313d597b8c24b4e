"""Which linear segmentation probe design to use, chosen on the training split only.

Not in CI. For the given run directories (and each one's random start), frozen patch
tokens of the demo DRRs are read at several input sizes (the 84-px training crop and
larger: DINOv2's linear segmentation evaluates at a higher resolution than its crops) and
from the last block or the last ``k`` blocks concatenated (DINOv2's "multilayer" linear
variant, Oquab et al. 2023, §7.3; each block's tokens through the final norm:
``VisionTransformer.patch_layers``). A linear 1x1 decoder
(:func:`medssl.eval.segmentation.fit_decoder`) is scored by 3-fold cross-validation
*inside the training split* (pooled out-of-fold per-image mean Dice of lung and heart at
64 px); the validation images play no part. Beside: the average-training-mask floor and
the ceiling of a perfect map at each token grid (the true mask averaged to the grid,
then upsampled bilinearly like the decoder's logits), which bounds any token-grid decoder.

Usage::

    python benchmarks/seg_probe_design.py RUN_DIR [RUN_DIR ...] --sizes 84 112 168 \\
        --layers 1 4 --out benchmarks/results/learning_quality/seg_design.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medssl.config import load_recipe
from medssl.eval.encoder import Encoder, encoder_from_recipe, random_encoder
from medssl.eval.features import build_dataset
from medssl.eval.segmentation import _resize_masks, dice_per_image, fit_decoder
from medssl.plugins import load_registry

ROOT = Path(__file__).resolve().parents[1]
MASK = 64


def _cv_folds() -> list[tuple[np.ndarray, np.ndarray]]:
    """The learning-quality script's 3 CV folds inside the training split (same rows)."""
    with open(ROOT / "data" / "demo" / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "drr"]
    train = np.flatnonzero(np.array([r["split"] for r in rows]) == "train")
    folds = np.array_split(np.random.default_rng(0).permutation(train), 3)
    return [(np.setdiff1d(train, f), np.sort(f)) for f in folds]


@torch.no_grad()
def tokens(encoder: Encoder, images: torch.Tensor, size: int, layers: int) -> torch.Tensor:
    """Patch tokens ``[N, layers * D, Hp, Wp]`` of the last ``layers`` blocks (final norm)."""
    grid = size // encoder.patch_size
    chunks = []
    for batch in images.split(64):
        picked = encoder.backbone.patch_layers(encoder.prepare(batch, size), layers)  # type: ignore[operator]
        x = torch.cat(picked, -1).reshape(len(batch), grid, grid, -1)
        chunks.append(x.permute(0, 3, 1, 2).float())
    return torch.cat(chunks)


def _dice(pred: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    per = dice_per_image(pred, true, [1, 2])
    return np.nanmean(np.stack([per[1], per[2]]), axis=0)


def cv_dice(x: torch.Tensor, masks: torch.Tensor, folds: list[Any]) -> float:
    scores = []
    for tr, va in folds:
        pred = fit_decoder(x[tr], masks[tr], x[va], 3, seed=0)
        scores.append(_dice(pred, masks[va]))
    return float(np.mean(np.concatenate(scores)))


def ceiling(masks: torch.Tensor, grid: int) -> float:
    """Dice of the true masks' one-hot averaged to ``grid`` and upsampled bilinearly."""
    onehot = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    small = F.adaptive_avg_pool2d(onehot, grid)
    pred = F.interpolate(small, size=masks.shape[-2:], mode="bilinear").argmax(1)
    return float(np.mean(_dice(pred, masks)))


def average_mask(masks: torch.Tensor, folds: list[Any]) -> float:
    """The floor: each fold's per-pixel majority class of its training masks."""
    scores = []
    for tr, va in folds:
        freq = torch.stack([(masks[tr] == c).float().mean(0) for c in range(3)])
        scores.append(_dice(freq.argmax(0).expand(len(va), -1, -1), masks[va]))
    return float(np.mean(np.concatenate(scores)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--sizes", nargs="+", type=int, default=[84, 112, 168])
    parser.add_argument("--layers", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry()
    block = {"name": "demo_cxr", "subset": "drr", "masks": True, "image_size": 112}
    dataset = build_dataset(registry, block, "seg_probe_design")
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([torch.as_tensor(it["image"]) for it in items])
    masks = _resize_masks(np.stack([np.asarray(it["mask"]) for it in items]), MASK)
    folds = _cv_folds()
    cv_rows = np.concatenate([va for _, va in folds])
    result: dict[str, Any] = {
        "protocol": "3-fold CV inside the training split, linear 1x1 decoder, Dice at 64 px",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": open("/proc/loadavg").read().split()[:3],
        "average_mask": average_mask(masks, folds),
        "ceiling": {f"{s // 14}x{s // 14}": ceiling(masks[cv_rows], s // 14) for s in args.sizes},
        "runs": {},
    }
    for run in args.runs:
        resolved = load_recipe(run / "config.yaml", ["eval=[]"], registry)
        encoders = {
            "trained": encoder_from_recipe(resolved, registry, run / "backbone.safetensors"),
            "random": random_encoder(resolved, registry),
        }
        for name, enc in encoders.items():
            for size in args.sizes:
                for k in args.layers:
                    t0 = time.time()
                    x = tokens(enc, images, size, k)
                    d = cv_dice(x, masks, folds)
                    key = f"{run.name}:{name}:{size}px:last{k}"
                    result["runs"][key] = d
                    print(f"{key}: {d:.4f} ({time.time() - t0:.0f} s)", flush=True)
                    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
