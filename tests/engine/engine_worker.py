"""Training runs for the engine tests: a deterministic view policy, recipes, a recorder.

Importable from the tests (``from .engine_worker import ...``) and runnable as a script,
``python engine_worker.py CONFIG.json OUT_DIR``, which is how the DDP test starts a run:
Fabric's launcher then re-runs this same command line for the other ranks.

The equivalence tests need views that depend on the images alone (the real policies draw
from a per-rank generator by design), so :class:`FixedViews` builds them from resizes
and flips, and picks iBOT/MAE masks from the image content.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from medssl import hookimpl
from medssl.config import resolve_recipe
from medssl.engine.trainer import Trainer
from medssl.plugins import Registry, load_registry
from medssl.types import ViewRequest, Views


def _patch_scores(x: Tensor, patch: int) -> Tensor:
    """Mean intensity of each patch, ``[N, P]``, with a tiny index ramp so ties never occur."""
    scores = F.avg_pool2d(x.mean(1, keepdim=True), patch).flatten(1)
    return scores + torch.arange(scores.shape[1], device=x.device) * 1e-6


def _top_k_mask(scores: Tensor, k: int) -> Tensor:
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, scores.topk(k, dim=1).indices, True)


class FixedViews:
    """Global crops: the image resized, and flipped; local crops: smaller resizes.

    iBOT block masks hide the ``ibot_patches`` brightest patches of every global crop, MAE
    masks the ``ratio`` brightest of global crop 0 — the same count in every image, so the
    per-rank normalisations (iBOT's masked-token Sinkhorn-Knopp) see equal shares.
    """

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        global_crop_size: int = Field(56, gt=0)
        local_crop_size: int = Field(28, gt=0)
        n_local_crops: int = Field(2, ge=0)
        ibot_patches: int = Field(4, ge=1)
        channels: int = 1

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)
        self.channels = self.options.channels
        self.global_crop_size = self.options.global_crop_size

    def __call__(
        self,
        images: Tensor,
        request: ViewRequest,
        generator: torch.Generator | None = None,
        text: list[str] | None = None,
    ) -> Views:
        o = self.options
        x = (images.float() - 0.5) / 0.25
        batch = x.shape[0]
        g = F.interpolate(x, size=(o.global_crop_size,) * 2, mode="bilinear", align_corners=False)
        views = Views(batch_size=batch, global_crops=torch.cat([g, g.flip(-1)]), n_global=2)
        if request.local_crops and o.n_local_crops:
            small = F.interpolate(
                x, size=(o.local_crop_size,) * 2, mode="bilinear", align_corners=False
            )
            locals_ = [small.flip(-1) if i % 2 else small for i in range(o.n_local_crops)]
            views.local_crops = torch.cat(locals_)
            views.n_local = o.n_local_crops
        scores = _patch_scores(views.global_crops, request.patch_size)
        if request.block_masks is not None:
            views.block_masks = _top_k_mask(scores, o.ibot_patches)
        if request.mae_mask_ratio is not None:
            first = scores[:batch]
            views.mae_masks = _top_k_mask(first, round(request.mae_mask_ratio * first.shape[1]))
        return views


class FixedViewsPlugin:
    """A one-off plugin registering :class:`FixedViews` as ``fixed_views``."""

    @hookimpl
    def medssl_register_augmentations(self, register: Any) -> None:
        register("fixed_views", FixedViews)


def registry() -> Registry:
    return load_registry([FixedViewsPlugin()])


TINY_BACKBONE = {
    "name": "vit_patch14",
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "img_size": 56,
    # No LayerScale: with DINOv2's 1e-5 init every image has nearly the same CLS token at
    # the start, and batch-wide normalisations (Sinkhorn-Knopp) would be untestable.
    "layer_scale_init": None,
}
HEAD = {"prototypes": 64, "hidden_dim": 48, "bottleneck_dim": 16, "freeze_last_layer_epochs": 0}


def recipe(
    output_dir: Path | str,
    objectives: dict[str, Any],
    train: dict[str, Any],
    n_images: int = 8,
    augmentation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "seed": 3,
        "output_dir": str(output_dir),
        "data": {"name": "synthetic", "n_images": n_images, "image_size": 64, "channels": 1},
        "augmentation": augmentation or {"name": "fixed_views"},
        "backbone": dict(TINY_BACKBONE),
        "objectives": objectives,
        "train": {"warmup_epochs": 0, "log_every": 1, "lr": 1e-3, **train},
    }


class RecordingTrainer(Trainer):
    """Keeps the gradients of the first optimiser step (after DDP's all-reduce)."""

    first_grads: dict[str, Tensor]

    def _build(self) -> None:
        super()._build()
        self.first_grads = {}
        names = {id(p): n for n, p in self.raw_model.named_parameters()}

        def keep(optimizer: torch.optim.Optimizer, *args: Any) -> None:
            if self.first_grads:
                return
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self.first_grads[names[id(p)]] = p.grad.detach().clone()

        self.optimizer.optimizer.register_step_pre_hook(keep)


def train(config: dict[str, Any], reg: Registry | None = None) -> RecordingTrainer:
    reg = reg or registry()
    resolved = resolve_recipe(config, reg, "engine_worker")
    trainer = RecordingTrainer(resolved, reg, progress_bar=False)
    trainer.fit()
    return trainer


def main(config_path: str, out_dir: str) -> None:
    from safetensors.torch import save_file

    trainer = train(json.loads(Path(config_path).read_text()))
    out = Path(out_dir)
    rank = trainer.fabric.global_rank
    state = {k: v.contiguous() for k, v in trainer.raw_model.state_dict().items()}
    save_file(state, str(out / f"rank{rank}_state.safetensors"))
    save_file(trainer.first_grads, str(out / f"rank{rank}_grads.safetensors"))
    info = {
        "rank": rank,
        "world_size": trainer.fabric.world_size,
        "policy_seed": trainer.generator.initial_seed(),
        "torch_seed": torch.initial_seed(),
        "process_group": trainer.fabric.strategy.__class__.__name__,
        "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(*sys.argv[1:3])
