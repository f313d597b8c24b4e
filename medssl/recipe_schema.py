"""The recipe's schema: what its top level and its ``train:`` block may hold.

:class:`Recipe` checks the top level and :class:`TrainOptions` the ``train:`` block; each
component block stays a plain mapping here, checked by its factory's own ``Options`` when
:mod:`medssl.config` resolves it into a :class:`ComponentSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medssl.errors import RecipeError

__all__ = [
    "MAX_EPOCHS",
    "MAX_SEED",
    "MAX_STEPS",
    "MAX_WEIGHT",
    "ComponentSpec",
    "Recipe",
    "RecipeError",
    "ResolvedRecipe",
    "TrainOptions",
]


class _Strict(BaseModel):
    # NaN/inf pass `gt=0` checks and end in a traceback deep in training: refuse them here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: The seed seeds torch, numpy (mod 2**32) and per-epoch generators (seed * 100_003 + epoch
#: must fit torch's 64-bit seed); 32 bits leave room for all of them.
MAX_SEED = 2**32 - 1
#: Bounds no real run comes near; they turn a typo (1e308, 10**20) into one clear line.
MAX_STEPS = 10**9
MAX_WEIGHT = 1e6  # an objective's loss weight: more overflows the loss in fp16/bf16 anyway
MAX_EPOCHS = 10**6


class TrainOptions(_Strict):
    """The ``train:`` block. Defaults are DINOv2's (docs/references.md) unless noted."""

    batch_size: int = Field(32, gt=0, le=2**20, description="images per device per step")
    steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="optimiser steps; or set epochs"
    )
    epochs: int | None = Field(None, gt=0, le=MAX_EPOCHS)
    steps_per_epoch: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="defaults to the dataset length // global batch"
    )
    grad_accumulation: int = Field(
        1, gt=0, le=2**16, description="micro-batches per optimiser step"
    )
    optimizer: Literal["adamw"] = "adamw"
    base_lr: float = Field(
        0.004, gt=0, description="LR per 1024 images, scaled by sqrt(batch/1024)"
    )
    lr: float | None = Field(None, gt=0, description="absolute peak LR; overrides base_lr")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(10, ge=0, le=MAX_EPOCHS)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.04, ge=0)
    weight_decay_end: float = Field(0.4, ge=0)
    momentum_teacher: float = Field(0.992, ge=0, le=1)
    momentum_teacher_end: float = Field(1.0, ge=0, le=1)
    layerwise_decay: float = Field(0.9, gt=0, le=1)
    patch_embed_lr_mult: float = Field(0.2, ge=0)
    clip_grad: float | None = Field(3.0, gt=0)
    precision: Literal["32", "32-true", "bf16-mixed", "16-mixed"] = "32"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    accelerator: Literal["auto", "cpu", "cuda", "gpu"] = "auto"
    devices: int | Literal["auto"] = Field(
        1, description="devices per node (at most the machine's; checked when training)"
    )
    num_nodes: int = Field(1, gt=0, le=100_000)
    num_workers: int = Field(0, ge=0, le=1024, description="DataLoader worker processes")
    threads: int | None = Field(None, gt=0, le=4096, description="torch CPU threads")
    compile: bool = False
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, gt=0, le=10**6)
    log_every: int = Field(10, gt=0)
    diagnostics_every: int = Field(
        10, gt=0, description="steps between learning diagnostics (docs/diagnostics.md)"
    )
    max_failure_share: float = Field(0.05, ge=0, le=1, description="abort above this share")
    max_minutes: float | None = Field(None, gt=0, description="stop (with a checkpoint) after")
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=lambda: ["csv"],
        description="experiment trackers (medssl.engine.loggers); metrics.csv is always written",
    )

    @field_validator("loggers")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        from medssl.engine.loggers import missing_tracker_packages

        missing = missing_tracker_packages(value)
        if missing:
            raise ValueError("not installed: " + "; ".join(missing))
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # `train.precision=32` on the command line arrives as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        # Lightning's other spellings (-1, "0,1", lists) end in a long TypeError; one form.
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            return value
        raise ValueError("must be a positive number of devices per node, or auto")

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("both betas must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _one_length(self) -> TrainOptions:
        if self.steps is None and self.epochs is None:
            raise ValueError("set train.steps or train.epochs")
        return self


class ComponentSpec(BaseModel):
    """A resolved component block: its registered name and validated options."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    name: str
    key: str
    options: dict[str, Any]
    weight: float = 1.0
    source: str | None = None  # the recipe file, for error messages


class Recipe(_Strict):
    """The top level of a recipe. Component blocks are plain mappings here."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    output_dir: str = Field("runs/medssl", min_length=1)
    data: dict[str, Any]
    augmentation: dict[str, Any]
    backbone: dict[str, Any]
    objectives: dict[str, dict[str, Any]]
    train: TrainOptions
    eval: list[dict[str, Any]] = Field(default_factory=list)
    extends: str | None = None


@dataclass
class ResolvedRecipe:
    """A validated recipe: the plain config plus one :class:`ComponentSpec` per block."""

    config: dict[str, Any]
    recipe: Recipe
    source: str
    data: ComponentSpec
    augmentation: ComponentSpec
    backbone: ComponentSpec
    objectives: list[ComponentSpec]
    evaluators: list[ComponentSpec] = field(default_factory=list)
    #: ``backbone.freeze`` / ``backbone.lora`` (a :class:`medssl.engine.adapt.Adaptation`).
    adaptation: Any = None

    @property
    def train(self) -> TrainOptions:
        return self.recipe.train

    @property
    def enabled_objectives(self) -> list[ComponentSpec]:
        return [spec for spec in self.objectives if spec.weight != 0]
