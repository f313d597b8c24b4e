"""``segmentation_probe``: a light decoder on frozen patch tokens, Dice per class.

As DINOv2's linear segmentation evaluation (Oquab et al. 2023, §7.3: a 1x1 convolution
on the frozen patch tokens, logits upsampled bilinearly to the mask size; by default its
"multilayer" reading, the patch tokens of the last 4 blocks concatenated, at an input
twice the training crop, as DINOv2 segments at a higher resolution than it trains) with
an optional small convolutional decoder (3x3 conv, GELU, 1x1 conv). On the demo DRRs the
default raised the quickstart encoder's train-CV Dice from 0.753 (last block, crop size)
to 0.791 (benchmarks/RESULTS.md, Learning quality). Dice is the mean
over the validation images that contain the class, per class. The floors: the same
decoder on the patch tokens of the recipe's backbone at its seeded initialisation, on the
raw pixel patches of the same grid, and the average training mask (the per-pixel majority
class of the training masks), as the demo dataset card states it; 95 % intervals by a
paired bootstrap over validation images.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from medssl.eval.base import EvalContext, EvalOptions, EvalResult, Evaluator, Row
from medssl.eval.bootstrap import attach_intervals, dice_boot, resample_indices

__all__ = ["SegmentationProbe", "dice_per_class", "dice_per_image", "fit_decoder"]

#: Defaults chosen by 3-fold CV inside the demo DRRs' training split
#: (benchmarks/seg_probe_design.py, benchmarks/RESULTS.md "Learning quality").
LAYERS, SCALE = 4, 2.0


def _resize_masks(masks: np.ndarray, size: int) -> Tensor:
    m = torch.from_numpy(masks.astype(np.int64))[:, None].float()
    return F.interpolate(m, size=(size, size), mode="nearest")[:, 0].long()


def fit_decoder(
    x_tr: Tensor,
    m_tr: Tensor,
    x_va: Tensor,
    n_classes: int,
    *,
    decoder: str = "linear",
    hidden: int = 64,
    epochs: int = 60,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
) -> Tensor:
    """Train on ``x_tr [N, D, Hp, Wp]`` against ``m_tr [N, S, S]``; predicted val masks."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean = x_tr.mean((0, 2, 3), keepdim=True)
    std = x_tr.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    d = x_tr.shape[1]
    model: nn.Module
    if decoder == "linear":
        model = nn.Conv2d(d, n_classes, 1)
    else:
        model = nn.Sequential(
            nn.Conv2d(d, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, n_classes, 1)
        )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    size = m_tr.shape[-1]
    n = len(x_tr)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch_size):
            logits = F.interpolate(model(x_tr[idx]), size=(size, size), mode="bilinear")
            loss = F.cross_entropy(logits, m_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        preds = [
            F.interpolate(model(x), size=(size, size), mode="bilinear").argmax(1)
            for x in x_va.split(batch_size)
        ]
    return torch.cat(preds)


def dice_per_image(pred: Tensor, true: Tensor, classes: list[int]) -> dict[int, np.ndarray]:
    """Dice of every image per class, NaN where the true mask lacks the class."""
    out = {}
    for c in classes:
        p, t = pred == c, true == c
        present = t.flatten(1).any(1)
        inter = (p & t).flatten(1).sum(1).float()
        denom = (p.flatten(1).sum(1) + t.flatten(1).sum(1)).float()
        dice = (2 * inter / denom.clamp_min(1)).double().numpy()
        out[c] = np.where(present.numpy(), dice, np.nan)
    return out


def dice_per_class(pred: Tensor, true: Tensor, classes: list[int]) -> dict[int, float]:
    """Mean Dice over the images whose true mask contains the class."""
    return {
        c: float(np.nanmean(d))
        for c, d in dice_per_image(pred, true, classes).items()
        if not np.isnan(d).all()
    }


def _with_mean(per_image: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Per class, and their mean (each image weighs in every class it contains)."""
    out = {str(c): d for c, d in per_image.items()}
    if len(per_image) > 1:
        out["mean"] = np.stack(list(per_image.values()))  # [C, n]: a mean of class means
    return out


class SegmentationProbe(Evaluator):
    """Linear (or small conv) decoder on frozen patch tokens; Dice per class with floors."""

    name = "segmentation_probe"
    needs = ("mask",)

    class Options(EvalOptions):
        decoder: Literal["linear", "conv"] = "linear"
        hidden: int = Field(64, ge=1, description="channels of the conv decoder")
        epochs: int = Field(60, ge=1)
        lr: float = Field(1e-2, gt=0)
        weight_decay: float = Field(1e-4, ge=0)
        mask_size: int = Field(64, ge=4, description="masks are compared at this size")
        layers: int = Field(
            LAYERS,
            ge=1,
            description="patch tokens of the last blocks, concatenated (DINOv2's multilayer "
            "linear probe); at most the backbone's depth, 1 for a backbone without "
            "patch_layers()",
        )
        scale: float = Field(
            SCALE,
            gt=0,
            description="input size = scale x the encoder's crop size, rounded to the patch "
            "(DINOv2 segments at a higher resolution than it trains); image_size overrides",
        )
        classes: list[str] | None = Field(
            None, description="mask classes to report; default: every class but the first"
        )

    def __call__(self, ctx: EvalContext) -> EvalResult:
        o = self.options
        size, layers = _input_size(ctx, o), _layers(ctx, o.layers)
        o = o.model_copy(update={"image_size": size})
        reading = f"input {size} px, patch tokens of the last {layers} block(s)"
        splits = ctx.splits(o, self.name, patches=True, patch_layers=layers)
        tr, va = splits.train, splits.val
        if tr.masks is None or va.masks is None:
            raise ValueError(
                f"evaluator {self.name!r}: dataset {splits.dataset} has no masks; give it a "
                "data block with masks (e.g. data: {name: demo_cxr, masks: true})"
            )
        assert tr.patches is not None and va.patches is not None
        assert tr.pixel_patches is not None and va.pixel_patches is not None
        names = list(splits.mask_names or [])
        n_classes = max(len(names), int(max(tr.masks.max(), va.masks.max())) + 1)
        names += [f"class_{c}" for c in range(len(names), n_classes)]
        if o.classes is not None:
            unknown = [c for c in o.classes if c not in names]
            if unknown:
                raise ValueError(
                    f"evaluator {self.name!r}: unknown classes {unknown}; known {names}"
                )
            classes = [names.index(c) for c in o.classes]
        else:
            classes = list(range(1, n_classes))
        m_tr, m_va = _resize_masks(tr.masks, o.mask_size), _resize_masks(va.masks, o.mask_size)
        kwargs = dict(
            decoder=o.decoder,
            hidden=o.hidden,
            epochs=o.epochs,
            lr=o.lr,
            weight_decay=o.weight_decay,
            batch_size=o.batch_size,
            seed=o.seed,
        )
        as_nchw = lambda a: torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2)  # noqa: E731
        preds = {
            "encoder": fit_decoder(
                as_nchw(tr.patches), m_tr, as_nchw(va.patches), n_classes, **kwargs
            )
        }
        random = ctx.random_splits(o, self.name, patches=True, patch_layers=layers)
        if random is not None:
            r_tr, r_va = random.train.patches, random.val.patches
            assert r_tr is not None and r_va is not None
            preds["random"] = ctx.floor(
                self.name,
                o,
                lambda: fit_decoder(as_nchw(r_tr), m_tr, as_nchw(r_va), n_classes, **kwargs),
                random=True,
            )
        preds["pixels"] = ctx.floor(
            self.name,
            o,
            lambda: fit_decoder(
                as_nchw(tr.pixel_patches), m_tr, as_nchw(va.pixel_patches), n_classes, **kwargs
            ),
        )
        freq = torch.stack([(m_tr == c).float().mean(0) for c in range(n_classes)])
        preds["trivial"] = freq.argmax(0).expand_as(m_va)
        in_train = {c for c in classes if bool((m_tr == c).any())}
        dice = {k: dice_per_image(p, m_va, classes) for k, p in preds.items()}
        scored = [c for c in classes if not np.isnan(dice["encoder"][c]).all()]
        # A class of the dataset's names that no mask of either split holds is not news.
        notes = [reading] + [
            f"{names[c]}: in the training masks but not in the validation masks"
            for c in classes
            if c not in scored and (c in in_train or o.classes is not None)
        ]
        per = {k: _with_mean({c: d[c] for c in scored}) for k, d in dice.items()}
        idx = resample_indices(len(m_va), o.bootstrap, o.seed) if o.bootstrap else None
        rows = []
        for key in per["encoder"]:
            point = {k: _dice_mean(v[key]) for k, v in per.items()}
            row = Row(
                names[int(key)] if key != "mean" else "mean",
                "dice",
                point.pop("encoder"),
                point,
            )
            if idx is not None:
                boot = {k: _dice_boot(v[key], idx) for k, v in per.items()}
                attach_intervals(row, boot.pop("encoder"), boot)
            rows.append(row)
        if not rows:
            raise ValueError(f"evaluator {self.name!r}: no class to score ({notes})")
        return EvalResult(self.name, splits.dataset, rows, len(tr), len(va), o.model_dump(), notes)


def _input_size(ctx: EvalContext, o: SegmentationProbe.Options) -> int:
    """``image_size`` when set, else ``scale`` x the encoder's crop, a multiple of the patch."""
    if o.image_size is not None:
        return o.image_size
    p = ctx.encoder.patch_size
    return max(1, round(ctx.encoder.image_size * o.scale / p)) * p


def _layers(ctx: EvalContext, asked: int) -> int:
    """How many blocks' tokens to read: ``asked``, at most the depth; 1 without the API."""
    backbone = ctx.encoder.backbone
    if not hasattr(backbone, "patch_layers"):
        return 1
    depth = len(getattr(backbone, "blocks", ())) or asked
    return min(asked, depth)


def _dice_mean(d: np.ndarray) -> float:
    """Mean Dice of a class ``[n]`` or mean of class means ``[C, n]``."""
    return float(np.mean(np.nanmean(np.atleast_2d(d), axis=1)))


def _dice_boot(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.mean([dice_boot(row, idx) for row in np.atleast_2d(d)], axis=0)
