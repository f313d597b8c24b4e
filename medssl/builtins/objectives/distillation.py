"""Feature distillation from a frozen teacher encoder (``objectives.distillation``).

The feature-regression variant of LightlyTrain's distillation: the student's CLS and/or
patch tokens of each global crop, through a trained linear projection to the teacher's
width, regress the frozen teacher's tokens of the same crop, by cosine distance
(``1 - cos``) or smooth L1 (``torch.nn.functional.smooth_l1_loss``, beta 1), averaged over
tokens. When the two token grids differ (another patch size), the teacher's patch tokens
are resized bilinearly to the student's grid (as LightlyTrain does). The teacher is a
Hugging Face Dinov2 folder or a medssl run directory, loaded once, kept out of the
optimiser, the EMA and the checkpoints, and run once per step without gradients under
the step's precision; its features are not kept past the step. It mixes with DINO, iBOT
and KoLeo like any objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from medssl.objectives.configured import ConfiguredObjective
from medssl.types import ObjectiveContext, ObjectiveResult, StepOutputs, ViewRequest

__all__ = ["Distillation", "feature_distance", "load_teacher"]


def feature_distance(student: Tensor, teacher: Tensor, kind: str) -> Tensor:
    """Mean over tokens (rows of ``[..., D]``) of ``1 - cos`` or of smooth L1 (beta 1,
    summed over the channels, as a per-token distance)."""
    student, teacher = student.float(), teacher.float()
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "smooth_l1":
        per_channel = F.smooth_l1_loss(student, teacher, reduction="none", beta=1.0)
        return per_channel.sum(-1).mean()
    raise ValueError(f"unknown distance {kind!r}")


def _is_run_dir(path: Path) -> bool:
    return (path / "backbone.safetensors").is_file() and (path / "config.yaml").is_file()


def load_teacher(path: str | Path) -> nn.Module:
    """The encoder of a Hugging Face Dinov2 folder or of a medssl run directory."""
    path = Path(path)
    if _is_run_dir(path):
        from medssl.config import load_recipe
        from medssl.eval.encoder import encoder_from_recipe
        from medssl.plugins import load_registry

        registry = load_registry()
        recipe = load_recipe(path / "config.yaml", [], registry)
        return encoder_from_recipe(recipe, registry, path / "backbone.safetensors").backbone
    from medssl.builtins.backbones import backbone_from_hf_folder

    return backbone_from_hf_folder(path)


class Distillation(ConfiguredObjective):
    """Regress a frozen teacher's CLS/patch features from the student's (projected)."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        teacher: str = Field(
            description="a Hugging Face Dinov2 folder or a medssl run directory (frozen)"
        )
        features: Literal["cls", "patch", "both"] = "both"
        distance: Literal["cosine", "smooth_l1"] = "cosine"

        @field_validator("teacher")
        @classmethod
        def _exists(cls, value: str) -> str:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ValueError(f"teacher folder {value!r} does not exist")
            if not ((path / "config.json").is_file() or _is_run_dir(path)):
                raise ValueError(
                    f"{value!r} is neither a Hugging Face Dinov2 folder (config.json) nor a "
                    "medssl run directory (backbone.safetensors + config.yaml)"
                )
            return str(path)

    def request(self, patch_size: int) -> ViewRequest:
        return ViewRequest(global_crops=True, patch_size=patch_size)

    def check_backbone(self, backbone: nn.Module, image_size: int) -> None:
        """Errors ``medssl validate`` raises before any step (and :meth:`setup` again)."""
        self._check(int(backbone.in_chans), image_size)

    def _check(self, in_chans: int, image_size: int) -> None:
        teacher = self._load()
        if teacher.in_chans != in_chans:
            raise ValueError(
                f"teacher: the teacher takes {teacher.in_chans}-channel images but the "
                f"student's views have {in_chans} (backbone.in_chans)"
            )
        if image_size % teacher.patch_size:
            raise ValueError(
                f"teacher: the global crops ({image_size} px) are not a multiple of the "
                f"teacher's patch size {teacher.patch_size}; its token grid cannot be mapped"
            )

    def _load(self) -> nn.Module:
        teacher = getattr(self, "_teacher", None)
        if teacher is None:
            teacher = load_teacher(self.options.teacher).eval().requires_grad_(False)
            # Not a registered submodule: out of the optimiser, the EMA and the checkpoints.
            self.__dict__["_teacher"] = teacher
        return teacher

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        self._check(ctx.in_chans, ctx.image_size)
        width = int(self._load().embed_dim)
        # Only the projections the loss uses: an unused one would stall DDP.
        if self.options.features in ("cls", "both"):
            self.cls_proj = nn.Linear(ctx.embed_dim, width)
        if self.options.features in ("patch", "both"):
            self.patch_proj = nn.Linear(ctx.embed_dim, width)

    @torch.no_grad()
    def _teacher_tokens(self, crops: Tensor) -> Any:
        teacher = self._load()
        param = next(teacher.parameters())
        if param.device != crops.device:
            # Not a submodule, so Fabric did not move it with the model.
            teacher.to(crops.device)
        # Autocast (mixed precision) applies as to the student; a "true" half precision
        # run hands over half-precision crops to this fp32 copy.
        return teacher(crops.to(param.dtype) if crops.is_floating_point() else crops)

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        student = out.student_global
        if student is None:
            raise ValueError("objective 'distillation': StepOutputs.student_global is None")
        target = self._teacher_tokens(out.views.global_crops)
        metrics: dict[str, float] = {}
        terms = []
        if self.options.features in ("cls", "both"):
            term = feature_distance(self.cls_proj(student.cls), target.cls, self.options.distance)
            terms.append(term)
            metrics["cls"] = float(term.detach())
        if self.options.features in ("patch", "both"):
            teacher_patch = _to_grid(target.patch, student.patch.shape[1])
            term = feature_distance(
                self.patch_proj(student.patch), teacher_patch, self.options.distance
            )
            terms.append(term)
            metrics["patch"] = float(term.detach())
        return ObjectiveResult(loss=torch.stack(terms).mean(), metrics=metrics)


def _to_grid(tokens: Tensor, n_patches: int) -> Tensor:
    """Patch tokens ``[N, P, D]`` of a square grid resized bilinearly to ``n_patches``."""
    if tokens.shape[1] == n_patches:
        return tokens
    n, p, d = tokens.shape
    side, target = round(p**0.5), round(n_patches**0.5)
    grid = tokens.transpose(1, 2).reshape(n, d, side, side).float()
    grid = F.interpolate(grid, size=(target, target), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2).to(tokens.dtype)
