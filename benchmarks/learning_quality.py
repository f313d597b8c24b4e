"""Learning quality on the demo DRRs: does the quickstart encoder beat its random start?

Not in CI (tens of minutes on 2 cores). Each *condition* is ``recipes/quickstart.yaml``
with recipe overrides (``CONDITIONS``), trained ``--steps`` steps for every seed into
``--runs/{condition}_{steps}_s{seed}`` (a finished run directory is reused, not retrained).
Every encoder is compared with **its own random start**: the same backbone at the same
seed's initialisation, probed identically. Probes (frozen features of all 480 DRRs at the
recipe's 84-px crop size):

* ``linear``: standardised features -> logistic regression, C by 3-fold CV on the training
  rows only (:mod:`medssl.eval.probes`), per finding (effusion, consolidation,
  pneumothorax, cardiomegaly), mean AUROC. Features ``cls+mean_patch`` (the headline, as
  DINOv2's linear evaluation), ``cls``, ``mean_patch``; the raw-pixel floor (32x32) beside.
* ``knn``: k=20, T=0.07 on centred, L2-normalised ``cls+mean_patch`` blocks (the same
  treatment for pixels).
* ``seg``: linear 1x1 decoder on the patch tokens as ``segmentation_probe`` reads them by
  default (the last blocks concatenated, at a larger input than the crop: its ``LAYERS``
  and ``SCALE``), mean Dice of lung and heart at 64 px; floors: the average training
  mask and the raw pixel patches of the same grid.

Protocols (which rows train a probe, which are scored):

* ``split``: the dataset's own random split (384 train / 96 val) — the reported numbers;
* ``heldout``: leave-one-source-CT-out (train on two CTs, score the third; the three
  folds' predictions pooled, 480 images) — a probe cannot read the patient;
* ``cv``: 3-fold cross-validation *inside the training split* (pooled out-of-fold
  predictions of the 384 training images; segmentation: one 2/3-1/3 fold). Settings are
  chosen on this protocol only, never on the validation images.

Intervals: a paired bootstrap over the scored images (1,000 resamples, the same resamples
for every condition, seed and floor); the mean over seeds is bootstrapped as one
statistic, so "Δ vs random [lo, hi]" is the interval of the seed-mean difference.

Usage::

    python benchmarks/learning_quality.py --conditions quickstart literature --seeds 0 1 2 \\
        --steps 250 --out benchmarks/results/learning_quality

Writes ``learning_quality.json`` and ``learning_quality.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.config import load_recipe
from medssl.eval.bootstrap import dice_boot, percentile_ci, resample_indices
from medssl.eval.encoder import Encoder, encoder_from_recipe, random_encoder
from medssl.eval.features import FeatureSet, build_dataset, extract
from medssl.eval.knn import KNNProbe, knn_inputs
from medssl.eval.linear_probe import LogisticProbe
from medssl.eval.segmentation import dice_per_image, fit_decoder
from medssl.eval.targets import Targets, boot_scores, plain_inputs, predict_targets, scores_of
from medssl.plugins import load_registry

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
DEMO = ROOT / "data" / "demo"
FINDINGS = ["effusion", "consolidation", "pneumothorax", "cardiomegaly"]
log = logging.getLogger("learning_quality")
HEADLINE = "linear:cls+mean_patch:split"

#: Recipe overrides of each condition, relative to recipes/quickstart.yaml as committed.
#: ``literature``: the settings chest-X-ray MAE work and small-data DINO work suggest
#: (Xiao et al. WACV 2023: mask ratio 0.9, crops 0.5-1; unnormalised pixel targets and
#: weak photometric jitter keep the intensity patterns the demo findings are made of).
CONDITIONS: dict[str, list[str]] = {
    "quickstart": [],
    "literature": [
        "objectives.mae.norm_pix_loss=false",
        "objectives.mae.mask_ratio=0.9",
        "augmentation.global_scale=[0.5,1.0]",
        "augmentation.brightness=0.1",
        "augmentation.contrast=0.1",
        "augmentation.gamma=[0.9,1.1]",
    ],
}


def _train(condition: str, steps: int, seed: int, runs: Path, registry: Any) -> Path:
    """``medssl run`` of the quickstart with the condition's overrides (reused when done)."""
    run_dir = runs / f"{condition}_{steps}_s{seed}"
    if (run_dir / "backbone.safetensors").is_file() and (run_dir / "done").is_file():
        return run_dir
    if condition in LIGHTLY:
        return _train_lightly_run(condition, steps, seed, run_dir, registry)
    if condition not in CONDITIONS:
        raise SystemExit(f"{run_dir} is not there and {condition!r} is not in CONDITIONS")
    _train_medssl(condition, steps, seed, run_dir, registry)
    (run_dir / "done").write_text("")
    return run_dir


def _train_medssl(condition: str, steps: int, seed: int, run_dir: Path, registry: Any) -> Any:
    """``medssl run`` of the quickstart with the condition's overrides; the resolved recipe."""
    from medssl.engine.trainer import train

    overrides = [
        *CONDITIONS[condition],
        f"train.steps={steps}",
        f"seed={seed}",
        f"output_dir={run_dir}",
        f"train.checkpoint_every={steps}",
        "eval=[]",
    ]
    resolved = load_recipe(QUICKSTART, overrides, registry)
    train(resolved, registry, resume_or_start=True, progress_bar=False)
    return resolved


class _Clock:
    """Wall time of the steps after the first ``skip`` (lazy initialisation excluded)."""

    def __init__(self, skip: int = 20) -> None:
        self.skip, self.t0, self.steps = skip, 0.0, 0

    def tick(self, step: int) -> None:
        if step == self.skip:
            self.t0 = time.perf_counter()
        self.steps = step

    def per_step(self) -> float:
        return (time.perf_counter() - self.t0) / max(self.steps - self.skip, 1)


def _lightly_loop(
    name: str,
    steps: int,
    seed: int,
    recipe: Any,
    dataset: Any,
    collate_fn: Any,
    params: list[torch.nn.Parameter],
    step_fn: Any,
    clock: _Clock | None = None,
) -> None:
    """The quickstart's optimiser (AdamW, its lr, weight decay, one-epoch linear warm-up
    then lightly's cosine schedule, gradient clipping) around ``step_fn(views, step, epoch)``,
    which returns the loss; ``after_backward(epoch)`` on it, when there, runs before the
    optimiser step."""
    from lightly.utils.scheduler import cosine_schedule

    tr = recipe.train
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tr.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        generator=g,
    )
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
    per_epoch = len(loader)
    warmup = int(tr.warmup_epochs * per_epoch)
    step = 0
    while step < steps:
        for views in loader:
            if step >= steps:
                break
            epoch = step // per_epoch
            lr = (
                tr.lr * (step + 1) / warmup
                if step < warmup
                else cosine_schedule(step - warmup, max(steps - warmup, 1), tr.lr, tr.min_lr)
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = step_fn(views, step, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            after = getattr(step_fn, "after_backward", None)
            if after is not None:
                after(epoch)
            torch.nn.utils.clip_grad_norm_(params, tr.clip_grad or 3.0)
            optimizer.step()
            step += 1
            if clock is not None:
                clock.tick(step)
            if step % 20 == 0 or step == steps:
                log.info("%s seed %d step %d/%d loss %.4f", name, seed, step, steps, loss.item())


def _lightly_start(seed: int, registry: Any) -> tuple[Any, torch.nn.Module, Any]:
    """The quickstart recipe, its ViT at the seed's initialisation (the same random start
    as the quickstart's and :func:`random_encoder`'s), and the demo DRR training split."""
    from medssl.config import build_component

    recipe = load_recipe(QUICKSTART, [f"seed={seed}"], registry)
    torch.manual_seed(seed)
    backbone = build_component(registry, recipe.backbone)
    return recipe, backbone, build_component(registry, recipe.data)


def _train_lightly_dino(
    steps: int, seed: int, registry: Any, clock: _Clock | None = None
) -> torch.nn.Module:
    """The quickstart ViT trained with lightly's DINO pieces (projection heads, loss,
    multi-crop transform, momentum update) with the quickstart's crops, heads and
    optimiser; returns the teacher, as DINO evaluates it."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform
    from lightly.utils.scheduler import cosine_schedule
    from torchvision.transforms.functional import to_pil_image

    from medssl.data import collate

    recipe, student, dataset = _lightly_start(seed, registry)
    aug, tr = recipe.augmentation.options, recipe.train
    dino = next(s for s in recipe.objectives if s.name == "dino").options
    teacher = copy.deepcopy(student)
    head_args = (student.embed_dim, dino["hidden_dim"], dino["bottleneck_dim"], dino["prototypes"])
    student_head = DINOProjectionHead(*head_args, freeze_last_layer=1)
    teacher_head = DINOProjectionHead(*head_args)
    teacher_head.load_state_dict(student_head.state_dict())
    deactivate_requires_grad(teacher)
    deactivate_requires_grad(teacher_head)
    transform = DINOTransform(
        global_crop_size=aug["global_crop_size"],
        global_crop_scale=tuple(aug.get("global_scale", (0.32, 1.0))),
        local_crop_size=aug["local_crop_size"],
        local_crop_scale=tuple(aug.get("local_scale", (0.05, 0.32))),
        n_local_views=aug["n_local_crops"],
        normalize={"mean": [0.5] * 3, "std": [0.25] * 3},
    )

    def lightly_collate(samples: list[dict[str, Any]]) -> list[torch.Tensor]:
        batch = collate(samples)
        views = [transform(to_pil_image(img).convert("RGB")) for img in batch["image"]]
        # lightly's transform is RGB; the backbone is grey (in_chans 1): average channels.
        return [
            torch.stack([v[i] for v in views]).mean(1, keepdim=True) for i in range(len(views[0]))
        ]

    criterion = DINOLoss(
        output_dim=dino["prototypes"],
        warmup_teacher_temp_epochs=int(dino["warmup_teacher_temp_epochs"]),
        teacher_temp=dino["teacher_temp"],
    )

    def step_fn(views: list[torch.Tensor], step: int, epoch: int) -> torch.Tensor:
        momentum = cosine_schedule(step, steps, tr.momentum_teacher, 1.0)
        update_momentum(student, teacher, momentum)
        update_momentum(student_head, teacher_head, momentum)
        teacher_out = [teacher_head(teacher(v).cls) for v in views[:2]]
        student_out = [student_head(student(v).cls) for v in views]
        return criterion(teacher_out, student_out, epoch=epoch)

    step_fn.after_backward = lambda epoch: student_head.cancel_last_layer_gradients(epoch)  # type: ignore[attr-defined]
    params = list(student.parameters()) + list(student_head.parameters())
    _lightly_loop(
        "lightly_dino", steps, seed, recipe, dataset, lightly_collate, params, step_fn, clock
    )
    return teacher.eval()


def _train_lightly_mae(
    steps: int, seed: int, registry: Any, clock: _Clock | None = None
) -> torch.nn.Module:
    """The quickstart ViT trained as lightly's MAE example does (He et al. 2022): lightly's
    ``MAETransform`` (one random resized crop at the quickstart's global size and scale,
    horizontal flip), ``random_token_mask`` (the CLS token always kept), the encoder on the
    kept tokens only (medssl's ``forward_visible``), lightly's decoder
    (``MaskedVisionTransformerDecoderTIMM`` with ``repeat_token`` / ``set_at_index`` /
    ``get_at_index``) at the quickstart's MAE sizes and mask ratio, and MSE on the masked
    patches' raw pixels (``patchify``), as lightly's example (no per-patch normalisation)."""
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
    from lightly.transforms.mae_transform import MAETransform
    from torchvision.transforms.functional import to_pil_image

    from medssl.data import collate

    recipe, backbone, dataset = _lightly_start(seed, registry)
    aug = recipe.augmentation.options
    mae = next(s for s in recipe.objectives if s.name == "mae").options
    size, patch = aug["global_crop_size"], backbone.patch_size
    grid = size // patch
    embed = torch.nn.Linear(backbone.embed_dim, mae["decoder_dim"])
    decoder = MaskedVisionTransformerDecoderTIMM(
        num_patches=grid * grid,
        embed_dim=mae["decoder_dim"],
        depth=mae["decoder_depth"],
        num_heads=mae["decoder_heads"],
        mlp_ratio=4.0,
    )
    predict = torch.nn.Linear(mae["decoder_dim"], patch * patch * backbone.in_chans)
    transform = MAETransform(
        input_size=size,
        min_scale=float(aug.get("global_scale", (0.32, 1.0))[0]),
        normalize={"mean": [0.5], "std": [0.25]},
    )

    def lightly_collate(samples: list[dict[str, Any]]) -> torch.Tensor:
        batch = collate(samples)
        return torch.stack([transform(to_pil_image(img))[0] for img in batch["image"]])

    def step_fn(images: torch.Tensor, step: int, epoch: int) -> torch.Tensor:
        n = images.shape[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(n, grid * grid + 1), mask_ratio=mae["mask_ratio"]
        )
        # idx_* count the CLS token as 0 (kept first); medssl's forward_visible takes
        # patch indices and prepends the CLS token itself.
        encoded = backbone.forward_visible(images, idx_keep[:, 1:] - 1)
        tokens = utils.repeat_token(decoder.mask_token, (n, grid * grid + 1))
        tokens = utils.set_at_index(tokens, idx_keep, embed(encoded).type_as(tokens))
        decoded = decoder.decode(decoder.add_pos_embed(tokens))
        pred = predict(utils.get_at_index(decoded, idx_mask))
        target = utils.get_at_index(utils.patchify(images, patch), idx_mask - 1)
        return torch.nn.functional.mse_loss(pred, target)

    params = [
        *backbone.parameters(),
        *embed.parameters(),
        *(p for p in decoder.parameters() if p.requires_grad),
        *predict.parameters(),
    ]
    _lightly_loop(
        "lightly_mae", steps, seed, recipe, dataset, lightly_collate, params, step_fn, clock
    )
    return backbone.eval()


#: lightly arms: the same backbone, crops and optimiser, lightly's objective pieces.
LIGHTLY = {"lightly_dino": _train_lightly_dino, "lightly_mae": _train_lightly_mae}


def _train_lightly_run(condition: str, steps: int, seed: int, run_dir: Path, registry: Any) -> Path:
    """A lightly arm saved as a run directory (the quickstart's config + the weights)."""
    import yaml
    from safetensors.torch import save_file

    t0 = time.time()
    model = LIGHTLY[condition](steps, seed, registry)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = load_recipe(QUICKSTART, [f"seed={seed}", "eval=[]"], registry)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved.config, sort_keys=False))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / "backbone.safetensors"))
    (run_dir / "done").write_text(f"{time.time() - t0:.0f} s\n")
    return run_dir


def _seconds_per_step(condition: str, steps: int, registry: Any) -> float:
    """Steady-state seconds per training step of one arm (steps after the 20th), seed 0,
    in this process: the quickstart through medssl's trainer (its logged throughput
    windows, data loading and diagnostics included), a lightly arm through its loop."""
    if condition in LIGHTLY:
        clock = _Clock()
        LIGHTLY[condition](steps, 0, registry, clock)
        return clock.per_step()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # One checkpoint at the end, after the last timed window.
        resolved = _train_medssl(condition, steps, 0, Path(tmp) / "run", registry)
        with open(Path(tmp) / "run" / "metrics.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("images_per_s")]
    batch = resolved.train.batch_size
    windows = [batch / float(r["images_per_s"]) for r in rows if int(r["step"]) > 20]
    return float(np.mean(windows))


def calibrate(arms: list[str], rounds: int, steps: int, threads: int) -> dict[str, Any]:
    """Equal wall-clock: alternate fresh processes (quickstart, arm 1, ..., quickstart, ...),
    each timing ``steps`` steps; per lightly arm the median over rounds of the ratio to the
    quickstart round next to it (before it for the first arm, after it for the others)."""
    import subprocess
    import sys

    order = ["quickstart"]
    for _ in range(rounds):
        order += [*arms, "quickstart"] if len(arms) > 1 else [arms[0], "quickstart"]
    timed: list[tuple[str, float, list[str]]] = []
    for arm in order:
        load = open("/proc/loadavg").read().split()[:3]
        cmd = [sys.executable, __file__, "--clock-one", arm, "--clock-steps", str(steps)]
        out = subprocess.run(
            [*cmd, "--threads", str(threads)], check=True, capture_output=True, text=True
        ).stdout
        sec = float(out.strip().splitlines()[-1])
        log.info("clock %s: %.3f s/step (load %s)", arm, sec, " ".join(load))
        timed.append((arm, sec, load))
    ratios: dict[str, list[float]] = {a: [] for a in arms}
    for i, (arm, sec, _) in enumerate(timed):
        if arm == "quickstart":
            continue
        # The adjacent quickstart round: before the first arm of a cycle, after the others.
        j = i - 1 if timed[i - 1][0] == "quickstart" else i + 1
        while timed[j][0] != "quickstart":
            j += 1
        ratios[arm].append(timed[j][1] / sec)
    return {
        "rounds": [{"arm": a, "s_per_step": s, "load": ld} for a, s, ld in timed],
        "ratio_quickstart_to_arm": {a: float(np.median(r)) for a, r in ratios.items()},
        "ratios": ratios,
        "steps_per_round": steps,
    }


def _demo_rows() -> list[dict[str, str]]:
    with open(DEMO / "manifest.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "drr"]


def _features(encoder: Encoder, registry: Any) -> FeatureSet:
    """Frozen features, pixels, labels and masks of every demo DRR, in manifest order; the
    patch tokens (and the raw pixel patches of the same grid) as the segmentation probe
    reads them by default: the last ``LAYERS`` blocks at ``SCALE`` x the crop size."""
    from dataclasses import replace

    from medssl.eval.segmentation import LAYERS, SCALE

    block = {"name": "demo_cxr", "subset": "drr", "masks": True, "image_size": 112}
    dataset = build_dataset(registry, block, "learning_quality")
    fs = extract(encoder, dataset, batch_size=64)
    p = encoder.patch_size
    size = max(1, round(encoder.image_size * SCALE / p)) * p
    layers = min(LAYERS, len(encoder.backbone.blocks))  # type: ignore[arg-type]
    seg = extract(
        encoder, dataset, batch_size=64, patches=True, image_size=size, patch_layers=layers
    )
    return replace(fs, patches=seg.patches, pixel_patches=seg.pixel_patches, masks=seg.masks)


def _protocols(rows: list[dict[str, str]]) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    split = np.array([r["split"] for r in rows])
    source = np.array([r["source"] for r in rows])
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    folds = np.array_split(np.random.default_rng(0).permutation(train), 3)
    return {
        "split": [(train, val)],
        "heldout": [
            (np.flatnonzero(source != s), np.flatnonzero(source == s)) for s in np.unique(source)
        ],
        "cv": [(np.setdiff1d(train, f), np.sort(f)) for f in folds],
    }


def _pooled(
    fs: FeatureSet,
    folds: list[tuple[np.ndarray, np.ndarray]],
    probe: Any,
    inputs: Any,
    mode: str | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Out-of-fold predictions of every scored row (the folds' validation rows, pooled)."""
    scored = np.concatenate([va for _, va in folds])
    preds = {f: np.full(len(scored), np.nan) for f in FINDINGS}
    at = 0
    for tr, va in folds:
        t = Targets(
            "multilabel", FINDINGS, fs.labels[tr].astype(float), fs.labels[va].astype(float)
        )
        x_tr, x_va = inputs(fs.take(tr), fs.take(va), mode)
        for name, p in predict_targets(t, x_tr, x_va, probe).items():
            preds[name][at : at + len(va)] = p
        at += len(va)
    return scored, preds


def _seg_dice(fs: FeatureSet, tr: np.ndarray, va: np.ndarray, source: str, seed: int) -> np.ndarray:
    """Per-image mean Dice of lung and heart (64 px) of a linear decoder, [n_va]."""
    from medssl.eval.segmentation import _resize_masks

    m_tr, m_va = _resize_masks(fs.masks[tr], 64), _resize_masks(fs.masks[va], 64)
    nchw = lambda a: torch.from_numpy(a.astype(np.float32)).permute(0, 3, 1, 2)  # noqa: E731
    if source == "average_mask":
        freq = torch.stack([(m_tr == c).float().mean(0) for c in range(3)])
        pred = freq.argmax(0).expand_as(m_va)
    else:
        x = fs.patches if source == "tokens" else fs.pixel_patches
        pred = fit_decoder(nchw(x[tr]), m_tr, nchw(x[va]), 3, seed=seed)
    per = dice_per_image(pred, m_va, [1, 2])
    return np.nanmean(np.stack([per[1], per[2]]), axis=0)


def probe_encoder(
    fs: FeatureSet, rows: list[dict[str, str]], floors: bool = False
) -> dict[str, Any]:
    """Every probe x protocol of one encoder (``floors``: of the raw pixels and the
    average training mask instead): ``{probe:features:protocol: {rows, preds | dice}}``."""
    out: dict[str, Any] = {}
    protocols = _protocols(rows)
    modes: list[str | None] = [None] if floors else ["cls+mean_patch", "cls", "mean_patch"]
    for proto, folds in protocols.items():
        for mode in modes if proto == "split" else modes[:1]:
            scored, preds = _pooled(fs, folds, LogisticProbe(None, 0), plain_inputs, mode)
            out[f"linear:{mode or 'pixels'}:{proto}"] = {"rows": scored, "preds": preds}
    scored, preds = _pooled(fs, protocols["split"], KNNProbe(20, 0.07), knn_inputs, modes[0])
    out[f"knn:{modes[0] or 'pixels'}:split"] = {"rows": scored, "preds": preds}
    (tr, va), (_, cv_va) = protocols["split"][0], protocols["cv"][0]
    sources = ["pixel_patches", "average_mask"] if floors else ["tokens"]
    for proto, (a, b) in {"split": (tr, va), "cv": (np.setdiff1d(tr, cv_va), cv_va)}.items():
        for s in sources:
            name = {"pixel_patches": "pixels", "average_mask": "average_mask"}.get(s, "tokens")
            out[f"seg:{name}:{proto}"] = {"rows": b, "dice": _seg_dice(fs, a, b, s, 0)}
    return out


def _convert(value: Any, leaf: Any) -> Any:
    if isinstance(value, dict):
        return {k: _convert(v, leaf) for k, v in value.items()}
    return leaf(value)


def _to_json(result: dict[str, Any]) -> dict[str, Any]:
    return _convert(result, lambda v: np.asarray(v).tolist())


def _from_json(result: dict[str, Any]) -> dict[str, Any]:
    out = _convert(result, lambda v: np.asarray(v, float))
    for entry in out.values():
        entry["rows"] = entry["rows"].astype(int)
    return out


class NotCached(Exception):
    """``--summary-only`` met an encoder that has not been probed yet."""


def _cached(cache: Path, name: str, compute: Any, only_cached: bool = False) -> dict[str, Any]:
    path = cache / f"{name}.json"
    if path.is_file():
        return _from_json(json.loads(path.read_text()))
    if only_cached:
        raise NotCached(name)
    t0 = time.time()
    result = compute()
    path.write_text(json.dumps(_to_json(result)))
    log.info("probed %s in %.0f s", name, time.time() - t0)
    return _from_json(_to_json(result))


def _metric(entry: dict[str, Any], labels: np.ndarray, idx: np.ndarray) -> tuple[float, np.ndarray]:
    """(point value, value on every resample): mean AUROC over findings, or mean Dice."""
    if "dice" in entry:
        d = entry["dice"]
        return float(np.nanmean(d)), dice_boot(d, idx)
    y = labels[entry["rows"]].astype(float)
    t = Targets("multilabel", FINDINGS, y, y)
    preds = {k: v for k, v in entry["preds"].items() if not np.isnan(v).all()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scores_of(t, preds)["mean"]["auroc"], boot_scores(t, preds, idx)["mean"]["auroc"]


def summarise(
    probed: dict[str, dict[str, dict[str, Any]]],
    randoms: dict[int, dict[str, Any]],
    floors: dict[str, Any],
    labels: np.ndarray,
    n_boot: int,
    reference: str | None = None,
) -> dict[str, Any]:
    """Per condition and probe key: seed-mean score, its interval, and the paired
    seed-mean difference from the random start with its interval; floors beside; with a
    ``reference`` condition, the paired seed-mean difference from it (``vs_reference``,
    over the seeds both have)."""
    summary: dict[str, Any] = {}
    for condition, seeds in probed.items():
        entry: dict[str, Any] = {"seeds": sorted(seeds)}
        keys = next(iter(seeds.values())).keys()
        for key in keys:
            n = len(next(iter(seeds.values()))[key]["rows"])
            idx = resample_indices(n, n_boot, seed=0)
            points, boots, r_points, r_boots = [], [], [], []
            for seed, result in seeds.items():
                p, b = _metric(result[key], labels, idx)
                rp, rb = _metric(randoms[seed][key], labels, idx)
                points.append(p), boots.append(b), r_points.append(rp), r_boots.append(rb)
            score, rand = np.mean(boots, 0), np.mean(r_boots, 0)
            probe, _, proto = key.split(":")
            floor_key = {"seg": "seg:{}:" + proto}.get(probe, f"{probe}:pixels:{proto}")
            row = {
                "score": float(np.mean(points)),
                "ci": percentile_ci(score),
                "per_seed": [round(p, 4) for p in points],
                "random": float(np.mean(r_points)),
                "vs_random": (
                    float(np.mean(points) - np.mean(r_points)),
                    *percentile_ci(score - rand),
                ),
            }
            for name in ["pixels", "average_mask"] if probe == "seg" else ["pixels"]:
                fk = floor_key.format(name) if probe == "seg" else floor_key
                if fk in floors:
                    fp, fb = _metric(floors[fk], labels, idx)
                    row[name] = fp
                    row[f"vs_{name}"] = (float(np.mean(points) - fp), *percentile_ci(score - fb))
            ref = probed.get(reference or "", {})
            common = sorted(set(ref) & set(seeds))
            if condition != reference and common and key in ref[common[0]]:
                own = [_metric(seeds[sd][key], labels, idx) for sd in common]
                other = [_metric(ref[sd][key], labels, idx) for sd in common]
                diff = np.mean([b for _, b in own], 0) - np.mean([b for _, b in other], 0)
                row["reference"] = float(np.mean([p for p, _ in other]))
                row["vs_reference"] = (
                    float(np.mean([p for p, _ in own]) - row["reference"]),
                    *percentile_ci(diff),
                )
            entry[key] = row
        summary[condition] = entry
    return summary


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    return f"{row['score']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"


def _delta(row: dict[str, Any] | None, floor: str = "random") -> str:
    if row is None or f"vs_{floor}" not in row:
        return "—"
    d, lo, hi = row[f"vs_{floor}"]
    mark = "" if lo > 0 else " ✗"
    return f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}"


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"{meta['steps']} steps, seeds {meta['seeds']}; {meta['when']}; load average "
        f"{meta['load']}. Mean over seeds [95 % paired "
        "bootstrap interval]; Δ: seed-mean difference from the same seeds' random start "
        "(✗: interval reaches 0).",
        "",
        "| condition | linear AUROC, split | Δ vs random | linear AUROC, held-out CT | Δ vs random "
        "| seg Dice, split | Δ vs random | Δ vs average mask | k-NN AUROC, split | Δ vs random "
        "| linear AUROC, train CV (selection) | seg Dice, train CV |",
        "| --- " + "| ---: " * 11 + "|",
    ]
    for c, e in summary.items():
        lin, held = e.get("linear:cls+mean_patch:split"), e.get("linear:cls+mean_patch:heldout")
        seg, knn = e.get("seg:tokens:split"), e.get("knn:cls+mean_patch:split")
        cv, seg_cv = e.get("linear:cls+mean_patch:cv"), e.get("seg:tokens:cv")
        lines.append(
            f"| {c} (n={len(e['seeds'])}) | {_cell(lin)} | {_delta(lin)} | {_cell(held)} | "
            f"{_delta(held)} | {_cell(seg)} | {_delta(seg)} | {_delta(seg, 'average_mask')} | "
            f"{_cell(knn)} | {_delta(knn)} | {_cell(cv)} | {_cell(seg_cv)} |"
        )
    first = next(iter(summary.values()), {})
    if first:
        lin, held = (
            first.get("linear:cls+mean_patch:split", {}),
            first.get("linear:cls+mean_patch:heldout", {}),
        )
        seg, knn = first.get("seg:tokens:split", {}), first.get("knn:cls+mean_patch:split", {})
        lines += [
            "",
            f"Floors: raw pixels linear {lin.get('pixels', float('nan')):.3f} (split) / "
            f"{held.get('pixels', float('nan')):.3f} (held-out CT), k-NN {knn.get('pixels', float('nan')):.3f}, "
            f"segmentation {seg.get('pixels', float('nan')):.3f}; average training mask Dice "
            f"{seg.get('average_mask', float('nan')):.3f}; chance AUROC 0.500.",
            "",
            "Feature modes, linear AUROC on the split (Δ vs the random start):",
            "",
            "| condition | cls+mean_patch | cls | mean_patch |",
            "| --- | ---: | ---: | ---: |",
        ]
        for c, e in summary.items():
            cells = [
                f"{_cell(e.get(f'linear:{m}:split'))}, Δ {_delta(e.get(f'linear:{m}:split'))}"
                for m in ("cls+mean_patch", "cls", "mean_patch")
            ]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    compared = {c: e for c, e in summary.items() if "vs_reference" in e.get(HEADLINE, {})}
    if compared:
        keys = [HEADLINE, "linear:cls+mean_patch:heldout", "seg:tokens:split"]
        keys.append("knn:cls+mean_patch:split")
        lines += [
            "",
            f"Paired difference, condition − `{meta.get('reference')}` (seed means over the "
            "seeds both have, 95 % interval); ▲: the condition's mean is more than 0.01 "
            f"above `{meta.get('reference')}`'s (a loss for it), ▼: more than 0.01 below:",
            "",
            "| condition | linear AUROC, split | linear AUROC, held-out CT | seg Dice, split "
            "| k-NN AUROC, split |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for c, e in compared.items():
            cells = []
            for k in keys:
                d, lo, hi = e[k]["vs_reference"]
                mark = " ▲" if d > 0.01 else " ▼" if d < -0.01 else ""
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}")
            lines.append(f"| {c} (n={len(e['seeds'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", nargs="+", default=["quickstart", "literature"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "learning_quality")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_quality"
    )
    parser.add_argument("--no-train", action="store_true", help="only probe finished runs")
    parser.add_argument(
        "--summary-only", action="store_true", help="only tabulate the probes already cached"
    )
    parser.add_argument(
        "--steps-for",
        nargs="*",
        default=[],
        metavar="CONDITION=STEPS",
        help="a condition's own step count (the lightly arms at equal wall-clock)",
    )
    parser.add_argument(
        "--reference", help="also report each condition's paired difference from this one"
    )
    parser.add_argument(
        "--clock",
        nargs="+",
        metavar="ARM",
        help="only calibrate equal wall-clock of these arms against the quickstart",
    )
    parser.add_argument("--clock-rounds", type=int, default=3)
    parser.add_argument("--clock-steps", type=int, default=60)
    parser.add_argument("--clock-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.clock_one:
        print(_seconds_per_step(args.clock_one, args.clock_steps, load_registry()))
        return
    if args.clock:
        result = calibrate(args.clock, args.clock_rounds, args.clock_steps, args.threads)
        result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        result["threads"] = args.threads
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "clock.json").write_text(json.dumps(result, indent=2) + "\n")
        for arm, ratio in result["ratio_quickstart_to_arm"].items():
            print(f"{arm}: {ratio:.3f} x the quickstart's steps per second")
        return
    steps_for = {c: int(n) for c, n in (kv.split("=", 1) for kv in args.steps_for)}
    cache = args.out / "probes"
    cache.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    rows = _demo_rows()
    started = time.time()
    base = load_recipe(QUICKSTART, ["eval=[]"], registry)
    pixel_fs: list[FeatureSet] = []

    def encoder_features(encoder: Encoder) -> FeatureSet:
        fs = _features(encoder, registry)
        if len(fs) != len(rows):
            raise SystemExit(f"{len(fs)} DRRs loaded, the manifest lists {len(rows)}")
        pixel_fs[:] = [fs]
        return fs

    probed: dict[str, dict[int, Any]] = {}
    randoms: dict[int, Any] = {}
    for condition in args.conditions:
        for seed in args.seeds:
            steps = steps_for.get(condition, args.steps)
            run_dir = args.runs / f"{condition}_{steps}_s{seed}"
            if args.no_train and not (run_dir / "done").is_file():
                continue
            run_dir = _train(condition, steps, seed, args.runs, registry)
            resolved = load_recipe(run_dir / "config.yaml", ["eval=[]"], registry)
            weights = run_dir / "backbone.safetensors"
            try:
                if seed not in randoms:
                    randoms[seed] = _cached(
                        cache,
                        f"random_s{seed}",
                        lambda resolved=resolved: probe_encoder(
                            encoder_features(random_encoder(resolved, registry)), rows
                        ),
                        args.summary_only,
                    )
                probed.setdefault(condition, {})[seed] = _cached(
                    cache,
                    run_dir.name,
                    lambda resolved=resolved, weights=weights: probe_encoder(
                        encoder_features(encoder_from_recipe(resolved, registry, weights)), rows
                    ),
                    args.summary_only,
                )
            except NotCached as exc:
                log.info("not probed yet: %s", exc)
    try:
        floors = _cached(
            cache,
            "floors",
            lambda: probe_encoder(
                pixel_fs[0] if pixel_fs else encoder_features(random_encoder(base, registry)),
                rows,
                floors=True,
            ),
            args.summary_only,
        )
    except NotCached:
        floors = {}
    labels = _features_labels(rows)
    summary = summarise(probed, randoms, floors, labels, args.bootstrap, args.reference)
    meta = {
        "steps": {c: steps_for.get(c, args.steps) for c in args.conditions},
        "seeds": args.seeds,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": open("/proc/loadavg").read().split()[:3],
        "probe_min": round((time.time() - started) / 60, 1),
        "reference": args.reference,
    }
    (args.out / "learning_quality.json").write_text(
        json.dumps({"meta": meta, "summary": summary}, indent=2, default=float) + "\n"
    )
    (args.out / "learning_quality.md").write_text(markdown(summary, meta))
    print((args.out / "learning_quality.md").read_text())


def _features_labels(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f]) for f in FINDINGS] for r in rows])


if __name__ == "__main__":
    main()
