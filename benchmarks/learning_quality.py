"""Learning quality on the demo data: do medssl's encoders learn, and as well as lightly's?

Not in CI (minutes to tens of minutes). For each seed it probes, with the quickstart
recipe's ``eval:`` list (linear probe, k-NN, segmentation probe on the demo DRRs, each
with its raw-pixel and trivial floors):

* ``random``: the quickstart backbone with random weights (seeded);
* ``quickstart``: ``recipes/quickstart.yaml`` trained ``--steps`` steps;
* ``long``: the same recipe trained ``--long-steps`` steps;
* ``medssl_dino``: ``recipes/ablations/dino.yaml`` (DINO only) at ``--steps``;
* ``lightly_dino``: the same ViT trained with lightly's DINO (``DINOTransform``,
  ``DINOProjectionHead``, ``DINOLoss``, ``update_momentum``) at the same compute: same
  steps, batch, crop sizes and counts, head size, optimiser, LR and momentum schedules.

Usage::

    python benchmarks/learning_quality.py --steps 100 --long-steps 300 --seeds 0 1 \
        --out benchmarks/results/learning_quality

Writes ``learning_quality.json`` and ``learning_quality.md`` (per condition: mean ± spread
over seeds of each headline score, with the floors) in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.config import load_recipe
from medssl.eval import encoder_from_recipe, evaluate
from medssl.eval.encoder import Encoder
from medssl.plugins import load_registry

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
DINO_ONLY = ROOT / "recipes" / "ablations" / "dino.yaml"
log = logging.getLogger("learning_quality")


def _train_medssl(recipe: Path, steps: int, seed: int, out: Path, registry: Any) -> Path:
    from medssl.engine.trainer import train

    run_dir = out / f"{recipe.stem}_{steps}_s{seed}"
    if (run_dir / "backbone.safetensors").is_file() and (run_dir / "done").is_file():
        return run_dir
    overrides = [f"train.steps={steps}", f"seed={seed}", f"output_dir={run_dir}"]
    overrides.append(f"train.checkpoint_every={steps}")
    resolved = load_recipe(recipe, overrides, registry)
    train(resolved, registry, resume_or_start=True, progress_bar=False)
    (run_dir / "done").write_text("")
    return run_dir


def _train_lightly_dino(steps: int, seed: int, registry: Any) -> torch.nn.Module:
    """The quickstart ViT trained with lightly's DINO pieces at the quickstart's compute."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.dino_transform import DINOTransform
    from lightly.utils.scheduler import cosine_schedule
    from torchvision.transforms.functional import to_pil_image

    from medssl.config import build_component
    from medssl.data import collate

    recipe = load_recipe(QUICKSTART, [f"seed={seed}"], registry)
    aug, tr = recipe.augmentation.options, recipe.train
    dino = next(s for s in recipe.objectives if s.name == "dino").options
    torch.manual_seed(seed)
    student = build_component(registry, recipe.backbone)
    teacher = copy.deepcopy(student)
    dim = student.embed_dim
    head_args = (dim, dino["hidden_dim"], dino["bottleneck_dim"], dino["prototypes"])
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
    dataset = build_component(registry, recipe.data)

    def lightly_collate(samples: list[dict[str, Any]]) -> list[torch.Tensor]:
        batch = collate(samples)
        views = [transform(to_pil_image(img).convert("RGB")) for img in batch["image"]]
        # lightly's transform is RGB; the backbone is grey (in_chans 1): average channels.
        return [
            torch.stack([v[i] for v in views]).mean(1, keepdim=True) for i in range(len(views[0]))
        ]

    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=tr.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lightly_collate,
        generator=g,
    )
    criterion = DINOLoss(
        output_dim=dino["prototypes"],
        warmup_teacher_temp_epochs=int(dino["warmup_teacher_temp_epochs"]),
        teacher_temp=dino["teacher_temp"],
    )
    params = list(student.parameters()) + list(student_head.parameters())
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
            momentum = cosine_schedule(step, steps, tr.momentum_teacher, 1.0)
            update_momentum(student, teacher, momentum)
            update_momentum(student_head, teacher_head, momentum)
            globals_ = views[:2]
            teacher_out = [teacher_head(teacher(v).cls) for v in globals_]
            student_out = [student_head(student(v).cls) for v in views]
            loss = criterion(teacher_out, student_out, epoch=epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            student_head.cancel_last_layer_gradients(current_epoch=epoch)
            torch.nn.utils.clip_grad_norm_(params, tr.clip_grad or 3.0)
            optimizer.step()
            step += 1
            if step % 20 == 0 or step == steps:
                log.info(
                    "lightly_dino seed %d step %d/%d loss %.4f", seed, step, steps, loss.item()
                )
    return teacher.eval()


def _headlines(results: list[Any]) -> dict[str, dict[str, float]]:
    out = {}
    for r in results:
        row = r.headline()
        out[f"{r.evaluator} {row.target} {row.metric}"] = {
            "score": row.score,
            "pixels": row.floors.get("pixels", math.nan),
            "trivial": row.floors.get("trivial", math.nan),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--long-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--conditions",
        nargs="+",
        default=["random", "quickstart", "long", "medssl_dino", "lightly_dino"],
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_quality"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("medssl.eval").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    registry = load_registry()
    base = load_recipe(QUICKSTART, registry=registry)
    floors: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    started = time.time()

    def probe(condition: str, seed: int, encoder: Encoder, train_s: float) -> None:
        t0 = time.time()
        results = evaluate(encoder, base.evaluators, registry, dict(base.recipe.data), floors)
        records.append(
            {
                "condition": condition,
                "seed": seed,
                "train_s": round(train_s, 1),
                "eval_s": round(time.time() - t0, 1),
                "headlines": _headlines(results),
                "results": [r.to_dict() for r in results],
            }
        )
        log.info("%s seed %d: %s", condition, seed, json.dumps(records[-1]["headlines"]))
        (args.out / "learning_quality.json").write_text(json.dumps(records, indent=2, default=str))
        # The summary is rewritten after every probe, so a stopped run keeps its table.
        (args.out / "learning_quality.md").write_text(summary(records, args, time.time() - started))

    # Condition-major, so the first conditions get every seed even if the run is stopped.
    for condition in args.conditions:
        for seed in args.seeds:
            t0 = time.time()
            if condition == "random":
                torch.manual_seed(seed)
                encoder = encoder_from_recipe(base, registry, source="random weights")
            elif condition in ("quickstart", "long", "medssl_dino"):
                recipe = DINO_ONLY if condition == "medssl_dino" else QUICKSTART
                steps = args.long_steps if condition == "long" else args.steps
                run_dir = _train_medssl(recipe, steps, seed, args.out / "runs", registry)
                resolved = load_recipe(run_dir / "config.yaml", registry=registry)
                encoder = encoder_from_recipe(resolved, registry, run_dir / "backbone.safetensors")
            elif condition == "lightly_dino":
                model = _train_lightly_dino(args.steps, seed, registry)
                encoder = encoder_from_recipe(base, registry, source="lightly DINO")
                encoder.backbone.load_state_dict(model.state_dict())
            else:
                raise SystemExit(f"unknown condition {condition!r}")
            probe(condition, seed, encoder, time.time() - t0)
    (args.out / "learning_quality.md").write_text(summary(records, args, time.time() - started))
    print((args.out / "learning_quality.md").read_text())


def summary(records: list[dict[str, Any]], args: argparse.Namespace, elapsed: float) -> str:
    conditions = list(dict.fromkeys(r["condition"] for r in records))
    metrics = list(records[0]["headlines"]) if records else []
    lines = [
        f"steps {args.steps} (long: {args.long_steps}), seeds {args.seeds}, "
        f"total {elapsed / 60:.1f} min\n",
        "| condition | " + " | ".join(metrics) + " | train s |",
        "| --- | " + " | ".join("---:" for _ in metrics) + " | ---: |",
    ]
    for c in conditions:
        rows = [r for r in records if r["condition"] == c]
        cells = []
        for m in metrics:
            values = np.array([r["headlines"][m]["score"] for r in rows])
            spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{spread}")
        train_s = np.mean([r["train_s"] for r in rows])
        lines.append(f"| {c} (n={len(rows)}) | " + " | ".join(cells) + f" | {train_s:.0f} |")
    for floor in ("pixels", "trivial"):
        cells = [f"{records[0]['headlines'][m][floor]:.3f}" for m in metrics]
        lines.append(f"| *{floor} floor* | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
