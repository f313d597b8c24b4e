"""Measure a linear segmentation probe on frozen patch tokens, for a run and its baselines.

An interim measuring tool for this plugin's recipe while medssl's own
``segmentation_probe`` evaluator is written; it reads the recipe's ``eval`` block for its
data. Slices are split into alternating blocks of ``--block`` consecutive slices (train /
validation), so neighbouring, nearly identical slices do not leak across the split.
Reported beside the encoder: the floors a probe must beat — the average training mask
(per-pixel majority class) and a linear model on the raw pixels of each patch — and the
same architecture with random weights.

    python plugins/medssl-ct/scripts/seg_probe.py RUN_DIR [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from medssl.config import build_component, resolve_recipe
from medssl.plugins import load_registry


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, classes: int) -> list[float]:
    out = []
    for c in range(1, classes):
        p, t = pred == c, target == c
        denom = int(p.sum() + t.sum())
        out.append(2 * int((p & t).sum()) / denom if denom else float("nan"))
    return out


def fit_probe(
    feats: torch.Tensor, masks: torch.Tensor, train: torch.Tensor, classes: int, seed: int
) -> torch.Tensor:
    """Linear map per patch token, logits upsampled to the mask; returns validation predictions."""
    n, p, d = feats.shape
    grid = round(p**0.5)
    size = masks.shape[-1]
    mean = feats[train].mean(dim=(0, 1))
    std = feats[train].std(dim=(0, 1)) + 1e-6
    x = (feats - mean) / std
    torch.manual_seed(seed)
    linear = torch.nn.Linear(d, classes)
    counts = torch.bincount(masks[train].flatten(), minlength=classes).float()
    weight = (counts.sum() / (classes * counts.clamp_min(1))) ** 0.5  # soft class balance
    opt = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=1e-3)

    def logits(rows: torch.Tensor) -> torch.Tensor:
        z = linear(x[rows]).transpose(1, 2).reshape(-1, classes, grid, grid)
        return F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)

    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(logits(train), masks[train], weight=weight)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return logits(~train).argmax(dim=1)


def patch_pixels(images: torch.Tensor, patch: int) -> torch.Tensor:
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // patch) * (w // patch), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument(
        "--recipe",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "recipes" / "ct_slices_dino.yaml",
        help="recipe whose eval block names the probe data",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    recipe = yaml.safe_load(args.recipe.read_text())
    eval_block = next(b for b in recipe["eval"] if b["name"] == "segmentation_probe")
    config["eval"] = []
    registry = load_registry()
    resolved = resolve_recipe(config, registry, str(args.run_dir / "config.yaml"))
    data_cfg = dict(config, data=eval_block["data"])
    data_spec = resolve_recipe(data_cfg, registry, "eval").data
    dataset = build_component(registry, data_spec)
    samples = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([s["image"] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    classes = len(dataset.mask_names)
    train = (torch.arange(len(samples)) // args.block) % 2 == 0
    aug = config["augmentation"]
    mean = torch.tensor(aug.get("mean", [0.5])).view(1, -1, 1, 1)
    std = torch.tensor(aug.get("std", [0.25])).view(1, -1, 1, 1)
    x = (images - mean) / std

    def encoder_features(weights: Path | None, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        backbone = build_component(registry, resolved.backbone)
        if weights is not None:
            from safetensors.torch import load_file

            backbone.load_state_dict(load_file(str(weights)))
        backbone.eval()
        with torch.no_grad():
            return torch.cat([backbone(x[i : i + 16]).patch for i in range(0, len(x), 16)])

    patch = resolved.backbone.options["patch_size"]
    results: dict[str, list[float]] = {}
    val_masks = masks[~train]
    one_hot = F.one_hot(masks[train], classes).float().mean(0)  # [H, W, K]
    majority = one_hot.argmax(-1).expand_as(val_masks)
    results["floor: average training mask"] = dice_per_class(majority, val_masks, classes)
    raw = patch_pixels(x, patch)
    for seed in args.seeds:
        pred = fit_probe(raw, masks, train, classes, seed)
        results.setdefault("floor: linear on raw patch pixels", []).extend(
            dice_per_class(pred, val_masks, classes)
        )
        pred = fit_probe(encoder_features(None, seed), masks, train, classes, seed)
        results.setdefault("random weights", []).extend(dice_per_class(pred, val_masks, classes))
        feats = encoder_features(args.run_dir / "backbone.safetensors", seed)
        pred = fit_probe(feats, masks, train, classes, seed)
        results.setdefault("trained encoder", []).extend(dice_per_class(pred, val_masks, classes))
    names = dataset.mask_names[1:]
    table = {}
    for key, values in results.items():
        runs = [values[i : i + len(names)] for i in range(0, len(values), len(names))]
        per_class = [sum(r[c] for r in runs) / len(runs) for c in range(len(names))]
        mean_dice = [sum(r) / len(r) for r in runs]
        table[key] = {
            "mean_dice": sum(mean_dice) / len(mean_dice),
            "mean_dice_per_seed": mean_dice,
            **dict(zip(names, per_class, strict=True)),
        }
        print(
            f"{key:<36} mean Dice {table[key]['mean_dice']:.3f}  "
            + "  ".join(f"{n} {v:.3f}" for n, v in zip(names, per_class, strict=True))
        )
    (args.run_dir / "seg_probe.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
