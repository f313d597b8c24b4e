"""Frozen features of a dataset, split into train / validation.

The dataset comes from a data block (the evaluator's own ``data:`` or the recipe's); how
it is split (official, by patient, random) is chosen and checked by
:mod:`medssl.eval.splits`. Alongside the encoder's CLS and
patch tokens each :class:`FeatureSet` keeps the raw downsampled pixels (the floors'
input), the labels, masks and whitelisted metadata.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from medssl.eval.encoder import Encoder, to_unit_float
from medssl.eval.splits import SplitInfo, choose_split
from medssl.plugins import Registry

log = logging.getLogger(__name__)

__all__ = [
    "FEATURE_MODES",
    "FeatureSet",
    "Splits",
    "build_dataset",
    "extract",
    "load_splits",
    "split_datasets",
]

#: What a classification probe can read; the first is the headline (as DINOv2).
FEATURE_MODES = ("cls+mean_patch", "cls", "mean_patch")


@dataclass
class FeatureSet:
    """Features and targets of one split (numpy, rows aligned)."""

    cls: np.ndarray  # [N, D]
    mean_patch: np.ndarray  # [N, D]
    pixels: np.ndarray  # [N, s*s] grey pixels in [0, 1], downsampled (floors)
    patches: np.ndarray | None = None  # [N, Hp, Wp, D]
    pixel_patches: np.ndarray | None = None  # [N, Hp, Wp, C*p*p] raw patches (seg floor)
    labels: np.ndarray | None = None  # [N, K] multilabel / [N] multiclass / [N] or [N, K] float
    masks: np.ndarray | None = None  # [N, H, W] uint8
    meta: dict[str, list[Any]] = field(default_factory=dict)
    failures: int = 0

    def __len__(self) -> int:
        return int(self.cls.shape[0])

    def take(self, index: np.ndarray) -> FeatureSet:
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return replace(
            self,
            cls=self.cls[index],
            mean_patch=self.mean_patch[index],
            pixels=self.pixels[index],
            patches=pick(self.patches),
            pixel_patches=pick(self.pixel_patches),
            labels=pick(self.labels),
            masks=pick(self.masks),
            meta={k: [v[i] for i in index] for k, v in self.meta.items()},
        )

    def blocks(self, which: str) -> list[np.ndarray]:
        """The feature blocks of ``which`` ('cls', 'mean_patch', 'cls+mean_patch')."""
        named = {"cls": self.cls, "mean_patch": self.mean_patch}
        parts = which.split("+")
        if not parts or any(p not in named for p in parts) or len(set(parts)) < len(parts):
            raise ValueError(f"features must be one of {list(FEATURE_MODES)}, got {which!r}")
        return [named[p] for p in parts]

    def features(self, which: str) -> np.ndarray:
        """``which``'s blocks side by side (DINOv2's linear evaluation concatenates them)."""
        return np.concatenate(self.blocks(which), axis=1)


@dataclass
class Splits:
    train: FeatureSet
    val: FeatureSet
    dataset: str  # a readable description of the data and the split
    task: str | None
    label_names: list[str]
    mask_names: list[str] | None
    split: SplitInfo | None = None  # kind, group counts, any warning (medssl.eval.splits)
    target_name: str | None = None  # the column of a multi-class label


def build_dataset(registry: Registry, block: dict[str, Any], where: str) -> Dataset:
    """Validate a data block with its adapter's ``Options`` and build it, as a recipe's
    blocks are (:func:`medssl.config.validate_block`, :func:`medssl.config.build_component`)."""
    from medssl.config import RecipeError, build_component, validate_block

    if isinstance(block, dict) and block.get("name") is None:
        raise RecipeError(
            "required key is missing (the dataset to evaluate on)", None, f"{where}.name"
        )
    return build_component(registry, validate_block(registry, "dataset", block, where, ""))


@torch.no_grad()
def extract(
    encoder: Encoder,
    dataset: Dataset,
    *,
    image_size: int | None = None,
    batch_size: int = 32,
    patches: bool = False,
    pixel_size: int = 32,
    patch_layers: int = 1,
) -> FeatureSet:
    """Run the frozen encoder over ``dataset`` (skipping images that fail to load);
    ``patch_layers`` > 1: the patch tokens of the last blocks, concatenated per token."""
    from medssl.data import collate

    size = image_size or encoder.image_size
    p = encoder.patch_size
    if size % p:
        raise ValueError(f"evaluation image_size {size} is not a multiple of the patch size {p}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    cls, mean_patch, pix, toks, pix_toks, labels, masks = [], [], [], [], [], [], []
    meta: dict[str, list[Any]] = {}
    failures = 0
    backbone = encoder.backbone
    device = next(backbone.parameters()).device
    if patches and patch_layers > 1 and not hasattr(backbone, "patch_layers"):
        raise ValueError(
            f"patch tokens of {patch_layers} blocks need a backbone with patch_layers(); "
            f"{type(backbone).__name__} has none (set the evaluator's layers: 1)"
        )
    for batch in loader:
        failures += len(batch.get("failures") or [])
        if "image" not in batch:
            continue
        images = batch["image"]
        x = encoder.prepare(images, size)
        out = backbone(x.to(device))
        cls.append(out.cls.float().cpu())
        mean_patch.append(out.patch.float().mean(1).cpu())
        grey = to_unit_float(images).mean(1, keepdim=True)
        pix.append(F.adaptive_avg_pool2d(grey, pixel_size).flatten(1))
        if patches:
            hp = wp = size // p
            tok = out.patch
            if patch_layers > 1:
                tok = torch.cat(backbone.patch_layers(x.to(device), patch_layers), -1)
            toks.append(tok.float().cpu().reshape(len(x), hp, wp, -1).half())
            # The same grid of raw pixels: the segmentation floor's input.
            raw = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)
            pix_toks.append(raw.reshape(len(x), hp, wp, -1).half())
        if "label" in batch:
            labels.append(
                batch["label"].float() if batch["label"].is_floating_point() else batch["label"]
            )
        if "mask" in batch:
            masks.append(batch["mask"].to(torch.uint8))
        for key, values in (batch.get("meta") or {}).items():
            meta.setdefault(key, []).extend(values)
    if not cls:
        raise ValueError("no image of the evaluation dataset could be loaded")
    cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
    return FeatureSet(
        cls=cat(cls),
        mean_patch=cat(mean_patch),
        pixels=cat(pix),
        patches=cat(toks),
        pixel_patches=cat(pix_toks),
        labels=cat(labels),
        masks=cat(masks),
        meta=meta,
        failures=failures,
    )


def _subsample(fs: FeatureSet, max_images: int | None, seed: int) -> FeatureSet:
    if max_images is None or len(fs) <= max_images:
        return fs
    index = np.sort(np.random.default_rng(seed).permutation(len(fs))[:max_images])
    return fs.take(index)


def split_datasets(
    registry: Registry,
    block: dict[str, Any],
    where: str,
    split: str = "auto",
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Dataset, Dataset, Dataset, SplitInfo]:
    """``(train, val, reference, info)`` of ``block`` as a probe splits it
    (:func:`medssl.eval.splits.choose_split`); ``reference`` carries the labels."""
    name = block.get("name")
    factory = registry.get("dataset", str(name)).factory if name is not None else None
    return choose_split(
        factory,
        block,
        lambda b: build_dataset(registry, b, where),
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        where=where,
    )


def load_splits(
    encoder: Encoder,
    registry: Registry,
    block: dict[str, Any],
    *,
    where: str,
    split: str = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    image_size: int | None = None,
    batch_size: int = 32,
    patches: bool = False,
    pixel_size: int = 32,
    max_images: int | None = None,
    cache: dict[str, Any] | None = None,
    patch_layers: int = 1,
) -> Splits:
    """Train / validation features of ``block`` (see the module docstring); cached per block."""
    cache = {} if cache is None else cache
    key = json.dumps(
        [block, split, val_fraction, seed, image_size, pixel_size, max_images, patch_layers],
        sort_keys=True,
        default=str,
    )
    hit = cache.get(key)
    if hit is not None and (not patches or hit.train.patches is not None):
        return hit
    kwargs = dict(
        image_size=image_size,
        batch_size=batch_size,
        patches=patches,
        pixel_size=pixel_size,
        patch_layers=patch_layers,
    )
    name = block.get("name")
    train_ds, val_ds, reference, info = split_datasets(
        registry, block, where, split, val_fraction=val_fraction, seed=seed
    )
    train = _subsample(extract(encoder, train_ds, **kwargs), max_images, seed)
    val = _subsample(extract(encoder, val_ds, **kwargs), max_images, seed + 1)
    described = f"{name} ({info.kind} split)"
    result = Splits(
        train=train,
        val=val,
        dataset=described,
        task=getattr(reference, "task", None),
        label_names=list(getattr(reference, "label_names", None) or []),
        mask_names=getattr(reference, "mask_names", None),
        split=info,
        target_name=getattr(reference, "target_name", None),
    )
    cache[key] = result
    return result
