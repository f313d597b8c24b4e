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

``variant: dinov2`` is DINOv2's distillation instead (Oquab et al. 2023, section 5 and
appendix: a frozen teacher, no masking, the iBOT loss on the global crops): the
teacher's own DINO and iBOT heads (``heads.safetensors`` of an exported folder, or the
teacher heads of a run's last checkpoint) give centred targets at ``teacher_temp``
(Sinkhorn-Knopp or a running mean centre); the student's freshly built heads of the same
shape (its own input width) are trained against them at ``student_temp`` -- the DINO term
on the CLS tokens with DINO's crop pairing (global crop ``i`` against teacher global crop
``j != i``, local crops against every teacher global crop), the iBOT term on every patch
token of the global crops against the teacher's token at the same place (the teacher's
grid resized to the student's when they differ). The loss is their sum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn
from typing_extensions import Self

from medssl.builtins.objectives.heads import DINOHead
from medssl.objectives.configured import ConfiguredObjective
from medssl.types import ObjectiveContext, ObjectiveResult, StepOutputs, ViewRequest

__all__ = ["Distillation", "feature_distance", "load_teacher", "load_teacher_heads"]

#: Options of each variant; setting one of the other variant's is an error.
_FEATURES_ONLY = ("features", "distance")
_DINOV2_ONLY = (
    "student_temp",
    "teacher_temp",
    "centering",
    "center_momentum",
    "sinkhorn_iterations",
    "local_crops",
    "ibot",
)


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


def load_teacher_heads(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """``{"dino": state, "ibot": state}`` of the teacher's heads (``ibot`` only when the
    teacher trained a separate iBOT head): ``heads.safetensors`` of a Hugging Face folder,
    or the teacher heads of a run directory's last valid checkpoint."""
    from medssl.export.huggingface import HEADS_FILE, heads_from_checkpoint

    path = Path(path)
    if _is_run_dir(path):
        flat = heads_from_checkpoint(path)
    elif (path / HEADS_FILE).is_file():
        from medssl.weights import load_weights

        flat = load_weights(path / HEADS_FILE, "objectives.distillation.teacher")
    else:
        flat = {}
    heads: dict[str, dict[str, Tensor]] = {}
    for name in ("dino", "ibot"):
        prefix = f"{name}_head."
        state = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        if state:
            heads[name] = state
    return heads


def head_from_state(state: dict[str, Tensor], in_dim: int | None = None) -> DINOHead:
    """A :class:`DINOHead` shaped like ``state`` (``in_dim`` replaces its input width;
    then the head is freshly initialised, else it holds ``state``)."""
    linears = sorted(
        {int(k.split(".")[1]) for k in state if k.startswith("mlp.") and k.endswith(".weight")}
    )
    first, last = state[f"mlp.{linears[0]}.weight"], state["last_layer.weight"]
    head = DINOHead(
        int(first.shape[1]) if in_dim is None else in_dim,
        prototypes=int(last.shape[0]),
        hidden_dim=int(first.shape[0]) if len(linears) > 1 else 1,
        bottleneck_dim=int(last.shape[1]),
        n_layers=len(linears),
    )
    if in_dim is None:
        head.load_state_dict(state)
    return head


class Distillation(ConfiguredObjective):
    """Distil a frozen teacher into the student: regress its (projected) CLS/patch features,
    or (``variant: dinov2``) train DINO and iBOT heads against the teacher's heads."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        teacher: str = Field(
            description="a Hugging Face Dinov2 folder or a medssl run directory (frozen)"
        )
        variant: Literal["features", "dinov2"] = Field(
            "features",
            description="features: regress the teacher's tokens (LightlyTrain); dinov2: the "
            "student's DINO/iBOT heads against the teacher heads' centred targets",
        )
        features: Literal["cls", "patch", "both"] = "both"
        distance: Literal["cosine", "smooth_l1"] = "cosine"
        # variant: dinov2
        student_temp: float = Field(0.1, gt=0)
        teacher_temp: float = Field(0.07, gt=0, description="constant: the teacher is trained")
        centering: Literal["mean", "sinkhorn_knopp"] = "sinkhorn_knopp"
        center_momentum: float = Field(0.9, ge=0, le=1)
        sinkhorn_iterations: int = Field(3, ge=1)
        local_crops: bool = Field(True, description="DINO term on the local crops too")
        ibot: bool = Field(True, description="iBOT term on the global crops' patch tokens")

        @model_validator(mode="after")
        def _variant_options(self) -> Self:
            other = _DINOV2_ONLY if self.variant == "features" else _FEATURES_ONLY
            # Not model_fields_set: a resolved recipe spells out every default.
            fields = type(self).model_fields
            wrong = [k for k in other if getattr(self, k) != fields[k].default]
            if wrong:
                raise ValueError(
                    f"{wrong[0]} is an option of variant "
                    f"{'dinov2' if self.variant == 'features' else 'features'}, not of "
                    f"variant {self.variant}"
                )
            return self

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
        local = self.options.variant == "dinov2" and self.options.local_crops
        return ViewRequest(global_crops=True, local_crops=local, patch_size=patch_size)

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
        if self.options.variant == "dinov2":
            heads = self._heads()
            if "dino" not in heads:
                raise ValueError(
                    "teacher: variant dinov2 needs the teacher's DINO head, and this teacher "
                    "has none (a Hugging Face folder needs heads.safetensors, as medssl "
                    "export writes; a run directory a checkpoint of a DINO run)"
                )
            for name, state in heads.items():
                if int(state["mlp.0.weight"].shape[1]) != int(teacher.embed_dim):
                    raise ValueError(
                        f"teacher: its {name} head takes {state['mlp.0.weight'].shape[1]}-d "
                        f"tokens but the teacher encoder gives {teacher.embed_dim}-d"
                    )

    def _load(self) -> nn.Module:
        teacher = getattr(self, "_teacher", None)
        if teacher is None:
            teacher = load_teacher(self.options.teacher).eval().requires_grad_(False)
            # Not a registered submodule: out of the optimiser, the EMA and the checkpoints.
            self.__dict__["_teacher"] = teacher
        return teacher

    def _heads(self) -> dict[str, dict[str, Tensor]]:
        heads = getattr(self, "_teacher_head_states", None)
        if heads is None:
            heads = load_teacher_heads(self.options.teacher)
            self.__dict__["_teacher_head_states"] = heads
        return heads

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        self._check(ctx.in_chans, ctx.image_size)
        if self.options.variant == "dinov2":
            self._setup_dinov2(ctx)
            return
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

    def _setup_dinov2(self, ctx: ObjectiveContext) -> None:
        heads = self._heads()
        # The teacher's heads: frozen, not submodules (out of the optimiser, EMA, checkpoints).
        teacher_heads = {
            n: head_from_state(st).eval().requires_grad_(False) for n, st in heads.items()
        }
        teacher_heads.setdefault("ibot", teacher_heads["dino"])  # iBOT shared DINO's head
        self.__dict__["_teacher_heads"] = teacher_heads
        # The student's: the teacher's shapes on the student's width, freshly initialised.
        self.dino_head = head_from_state(heads["dino"], ctx.embed_dim)
        if self.options.ibot and "ibot" in heads:
            self.ibot_head = head_from_state(heads["ibot"], ctx.embed_dim)
        if self.options.centering == "mean":
            k_dino = int(heads["dino"]["last_layer.weight"].shape[0])
            self.register_buffer("dino_center", torch.zeros(1, k_dino))
            if self.options.ibot:
                k_ibot = teacher_heads["ibot"].n_prototypes
                self.register_buffer("ibot_center", torch.zeros(1, k_ibot))

    @torch.no_grad()
    def _centred_targets(self, head: DINOHead, tokens: Tensor, center: str) -> Tensor:
        """The teacher head's probabilities of ``tokens``, centred (DINOv2's recipe)."""
        from medssl.losses import prototype_targets

        o = self.options
        if next(head.parameters()).device != tokens.device:
            head.to(tokens.device)
        feats = head.features(tokens)
        protos = head.prototypes.to(feats.dtype)
        if o.centering == "sinkhorn_knopp":
            return prototype_targets(
                feats, protos, o.teacher_temp, "sinkhorn_knopp", n_iter=o.sinkhorn_iterations
            )
        buffer: Tensor = getattr(self, center)
        probs = prototype_targets(feats, protos, o.teacher_temp, "softmax_center", buffer)
        # The running centre moves after the targets are taken, as in DINO.
        batch = feats.float().mean(0, keepdim=True) @ protos.float().T
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch)
            batch /= torch.distributed.get_world_size()
        buffer.mul_(o.center_momentum).add_(batch.to(buffer.dtype), alpha=1 - o.center_momentum)
        return probs

    def _dinov2_loss(self, out: StepOutputs) -> ObjectiveResult:
        from medssl.losses import prototype_cross_entropy

        o = self.options
        v = out.views
        b, ng = v.batch_size, v.n_global
        student = out.student_global
        assert student is not None
        local = out.student_local if o.local_crops else None
        nl = v.n_local if local is not None else 0
        n_pairs = ng * (ng - 1) + ng * nl
        if n_pairs == 0:
            raise ValueError(
                "objective 'distillation': variant dinov2 needs 2 global crops or local crops"
            )
        target = self._teacher_tokens(v.global_crops)
        heads = self.__dict__["_teacher_heads"]
        probs = self._centred_targets(heads["dino"], target.cls.float(), "dino_center")
        cls = student.cls if local is None else torch.cat([student.cls, local.cls])
        weights = torch.ones(ng + nl, ng, device=cls.device)
        weights[:ng].fill_diagonal_(0.0)  # a global crop is not scored against itself
        feats = self.dino_head.features(cls)
        protos = self.dino_head.prototypes
        dino = prototype_cross_entropy(
            feats, probs.view(ng, b, -1), protos, o.student_temp, crop_weights=weights
        ).sum() / (b * n_pairs)
        metrics = {"dino": float(dino.detach())}
        loss = dino
        if o.ibot:
            patches = _to_grid(target.patch, student.patch.shape[1])
            p_probs = self._centred_targets(
                heads["ibot"], patches.flatten(0, 1).float(), "ibot_center"
            )
            head = getattr(self, "ibot_head", self.dino_head)
            ibot = prototype_cross_entropy(
                head.features(student.patch.flatten(0, 1)),
                p_probs,
                head.prototypes,
                o.student_temp,
            ).mean()
            metrics["ibot"] = float(ibot.detach())
            loss = loss + ibot
        return ObjectiveResult(loss=loss, metrics=metrics)

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        student = out.student_global
        if student is None:
            raise ValueError("objective 'distillation': StepOutputs.student_global is None")
        if self.options.variant == "dinov2":
            return self._dinov2_loss(out)
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
