"""Recipes: YAML + ``KEY=VALUE`` overrides (OmegaConf), validated with pydantic.

A recipe may extend another with ``extends: other.yaml`` (a path relative to the recipe).
The top level is checked by :class:`Recipe`; each component block (``data``,
``augmentation``, ``backbone``, every objective and evaluator) is then checked by the
``Options`` model of the factory its ``name`` resolves to, so every error names the file,
the key path and what was expected.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medssl.plugins import Registry, UnknownComponentError

__all__ = [
    "RecipeError",
    "Recipe",
    "TrainOptions",
    "ComponentSpec",
    "ResolvedRecipe",
    "load_recipe",
    "resolve_recipe",
    "build_component",
    "validate_block",
]


class RecipeError(ValueError):
    """A recipe is invalid; the message names the file and the key path."""

    def __init__(self, message: str, source: str | None = None, key: str | None = None) -> None:
        self.source = source
        self.key = key
        # Messages built from pydantic errors already start with their key path.
        prefix = key if key and not message.startswith((f"{key}:", f"{key}.")) else None
        where = ": ".join(part for part in (source, prefix) if part)
        super().__init__(f"{where}: {message}" if where else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainOptions(_Strict):
    """The ``train:`` block. Defaults are DINOv2's (REFERENCE.md) unless noted."""

    batch_size: int = Field(32, gt=0, description="images per device per step")
    steps: int | None = Field(None, gt=0, description="optimiser steps; or set epochs")
    epochs: int | None = Field(None, gt=0)
    steps_per_epoch: int | None = Field(
        None, gt=0, description="defaults to the dataset length // global batch"
    )
    grad_accumulation: int = Field(1, gt=0, description="micro-batches per optimiser step")
    optimizer: Literal["adamw"] = "adamw"
    base_lr: float = Field(
        0.004, gt=0, description="LR per 1024 images, scaled by sqrt(batch/1024)"
    )
    lr: float | None = Field(None, gt=0, description="absolute peak LR; overrides base_lr")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(10, ge=0)
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
    devices: int | str = 1
    num_nodes: int = Field(1, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    threads: int | None = Field(None, gt=0, description="torch CPU threads")
    compile: bool = False
    checkpoint_every: int = Field(100, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(3, gt=0)
    log_every: int = Field(10, gt=0)
    diagnostics_every: int = Field(
        10, gt=0, description="steps between learning diagnostics (docs/diagnostics.md)"
    )
    max_failure_share: float = Field(0.05, ge=0, le=1, description="abort above this share")
    max_minutes: float | None = Field(None, gt=0, description="stop (with a checkpoint) after")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        # `train.precision=32` on the command line arrives as an int.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

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

    seed: int = 0
    output_dir: str = "runs/medssl"
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

    @property
    def train(self) -> TrainOptions:
        return self.recipe.train

    @property
    def enabled_objectives(self) -> list[ComponentSpec]:
        return [spec for spec in self.objectives if spec.weight != 0]


#: Blocks whose options belong to the component they name: naming another component in a
#: child recipe or an override starts that block afresh instead of merging foreign options.
COMPONENT_BLOCKS = ("data", "augmentation", "backbone")


def _merge(base: DictConfig, child: DictConfig) -> DictConfig:
    merged = OmegaConf.merge(base, child)
    for key in COMPONENT_BLOCKS:
        new = child.get(key)
        old = base.get(key)
        if (
            isinstance(new, DictConfig)
            and isinstance(old, DictConfig)
            and new.get("name") is not None
            and new.get("name") != old.get("name")
        ):
            merged[key] = new
    return merged


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise RecipeError(f"recipes extend each other in a loop: {chain}", str(path))
    try:
        conf = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as exc:
        raise RecipeError(f"cannot parse YAML: {exc}", str(path)) from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise RecipeError(f"cannot parse YAML: {exc}", str(path)) from None
    if not isinstance(conf, DictConfig):
        raise RecipeError("a recipe must be a mapping at the top level", str(path))
    base = conf.get("extends")
    if base:
        base_path = (path.parent / str(base)).resolve()
        parent = _load_yaml(base_path, (*seen, path.resolve()))
        conf = _merge(parent, conf)
        conf.extends = None
    return conf


def _parse_overrides(overrides: Sequence[str], source: str) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not KEY=VALUE", source)
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"bad override: {exc}", source) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """The merged plain mapping of a recipe file and its overrides (not validated)."""
    path = Path(path)
    source = str(path)
    conf = _load_yaml(path)
    if overrides:
        conf = _merge(conf, _parse_overrides(overrides, source))
    try:
        plain = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as exc:
        raise RecipeError(f"cannot resolve interpolation: {exc}", source) from None
    assert isinstance(plain, dict)
    return plain, source


def _loc(prefix: str, loc: Sequence[Any]) -> str:
    return ".".join([prefix, *(str(p) for p in loc)]) if prefix else ".".join(map(str, loc))


def _pydantic_error(
    exc: ValidationError, source: str, prefix: str, known: Sequence[str]
) -> RecipeError:
    lines = []
    first_key = None
    for err in exc.errors():
        key = _loc(prefix, err["loc"])
        first_key = first_key or key
        if err["type"] == "extra_forbidden":
            unknown = str(err["loc"][-1]) if err["loc"] else ""
            close = difflib.get_close_matches(unknown, list(known), n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else ""
            expected = f"; valid options: {', '.join(sorted(known))}" if not close else ""
            lines.append(f"{key}: unknown option{hint}{expected}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            got = err.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            lines.append(f"{key}: {err['msg']}{got_text}")
    return RecipeError("; ".join(lines), source, first_key)


def validate_block(
    registry: Registry, kind: str, block: Any, key: str, source: str, *, weighted: bool = False
) -> ComponentSpec:
    """One component block (``{name: ..., <options>}``) checked against the ``kind``
    registered under its name: its ``Options`` validated, errors raised as
    :class:`RecipeError` naming ``source`` and the key path ``key``."""
    if not isinstance(block, dict):
        raise RecipeError(f"expected a mapping with a 'name' key, got {block!r}", source, key)
    block = dict(block)
    weight = 1.0
    if weighted:
        weight = block.pop("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise RecipeError(f"weight must be a number, got {weight!r}", source, f"{key}.weight")
        if weight < 0:
            raise RecipeError(f"weight must be >= 0, got {weight}", source, f"{key}.weight")
    name = block.pop("name", None)
    if name is None:
        raise RecipeError(f"required key is missing (the {kind} to use)", source, f"{key}.name")
    try:
        component = registry.get(kind, str(name))
    except UnknownComponentError as exc:
        raise RecipeError(str(exc), source, f"{key}.name") from None
    model = component.options_model
    if model is None:
        options = block
    else:
        try:
            options = model.model_validate(block).model_dump()
        except ValidationError as exc:
            raise _pydantic_error(exc, source, key, list(model.model_fields)) from None
    return ComponentSpec(
        kind=kind, name=str(name), key=key, options=options, weight=float(weight), source=source
    )


def resolve_recipe(config: dict[str, Any], registry: Registry, source: str) -> ResolvedRecipe:
    """Validate a merged recipe mapping against the registry's components."""
    try:
        recipe = Recipe.model_validate(config)
    except ValidationError as exc:
        known = list(Recipe.model_fields)
        if any(err["loc"][:1] == ("train",) for err in exc.errors()):
            known = list(TrainOptions.model_fields)
        raise _pydantic_error(exc, source, "", known) from None
    objectives = []
    for key, block in recipe.objectives.items():
        block = {"name": key, **(block or {})}
        objectives.append(
            validate_block(registry, "objective", block, f"objectives.{key}", source, weighted=True)
        )
    if not any(spec.weight for spec in objectives):
        raise RecipeError("every objective has weight 0: nothing to train", source, "objectives")
    evaluators = [
        validate_block(registry, "evaluator", block, f"eval.{i}", source)
        for i, block in enumerate(recipe.eval)
    ]
    return ResolvedRecipe(
        config=config,
        recipe=recipe,
        source=source,
        data=validate_block(registry, "dataset", recipe.data, "data", source),
        augmentation=validate_block(
            registry, "augmentation", recipe.augmentation, "augmentation", source
        ),
        backbone=validate_block(registry, "backbone", recipe.backbone, "backbone", source),
        objectives=objectives,
        evaluators=evaluators,
    )


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> ResolvedRecipe:
    """Load, merge, override and validate a recipe file."""
    if registry is None:
        from medssl.plugins import load_registry

        registry = load_registry()
    config, source = load_config(path, overrides)
    return resolve_recipe(config, registry, source)


def build_component(registry: Registry, spec: ComponentSpec, **extra: Any) -> Any:
    """Instantiate a validated block; errors name the block and the plugin providing it."""
    component = registry.get(spec.kind, spec.name)
    try:
        return component.factory(**spec.options, **extra)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise RecipeError(
            f"{spec.kind} {spec.name!r} (from plugin {component.provider.name!r}) could not be "
            f"built: {exc}",
            spec.source,
            spec.key,
        ) from exc
