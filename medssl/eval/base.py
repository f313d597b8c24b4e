"""What every evaluator shares: options, the evaluation context, results with floors.

An evaluator is a registered component: a class with a pydantic ``Options`` model whose
instance is called with an :class:`EvalContext` and returns an :class:`EvalResult`. Each
score row carries its *floors* — the same probe on raw downsampled pixels and a trivial
predictor (chance, majority class, mean value, average training mask) — so a number is
never read alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from medssl.eval.encoder import Encoder
from medssl.eval.features import Splits, load_splits
from medssl.plugins import Registry

__all__ = ["EvalContext", "EvalOptions", "EvalResult", "Evaluator", "Row"]


class EvalOptions(BaseModel):
    """Options every evaluator takes (its data and how to split and preprocess it)."""

    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any] | None = Field(
        None, description="a dataset block to evaluate on; default: the recipe's data block"
    )
    split: Literal["auto", "dataset", "random"] = Field(
        "auto",
        description="'auto': the dataset's own train/val split when it has one (its 'split' option)",
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held out by a random split")
    seed: int = 0
    image_size: int | None = Field(
        None, gt=0, description="input size; default: the encoder's training crop size"
    )
    batch_size: int = Field(32, gt=0)
    max_images: int | None = Field(None, gt=1, description="cap per split (speed)")
    pixel_size: int = Field(32, ge=2, description="side of the raw-pixel floor's input")


@dataclass
class Row:
    """One score with its floors (``pixels``: same probe on raw pixels; ``trivial``)."""

    target: str
    metric: str
    score: float
    floors: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = True


@dataclass
class EvalResult:
    evaluator: str
    dataset: str
    rows: list[Row]
    n_train: int = 0
    n_val: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> Row | None:
        """The row a summary shows: the mean over targets when there is one."""
        for row in self.rows:
            if row.target == "mean":
                return row
        return self.rows[0] if self.rows else None


@dataclass
class EvalContext:
    """What an evaluator gets: the frozen encoder, the default data and a feature cache."""

    encoder: Encoder
    registry: Registry
    default_data: dict[str, Any] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    floor_cache: dict[str, Any] = field(default_factory=dict)

    def floor(self, name: str, opts: EvalOptions, compute: Callable[[], Any]) -> Any:
        """A floor depends on the data, split and probe, not on the encoder: computed once
        per ``floor_cache`` (shared across encoders by ``medssl ablate`` and benchmarks)."""
        e = self.encoder
        key = json.dumps(
            [name, opts.model_dump(), self.default_data, e.image_size, e.mean, e.std, e.in_chans],
            sort_keys=True,
            default=str,
        )
        if key not in self.floor_cache:
            self.floor_cache[key] = compute()
        return self.floor_cache[key]

    def splits(self, opts: EvalOptions, name: str, *, patches: bool = False) -> Splits:
        block = opts.data if opts.data is not None else self.default_data
        if block is None:
            raise ValueError(f"evaluator {name!r}: no data block (set its 'data:' option)")
        return load_splits(
            self.encoder,
            self.registry,
            block,
            where=f"eval {name}.data",
            split=opts.split,
            val_fraction=opts.val_fraction,
            seed=opts.seed,
            image_size=opts.image_size,
            batch_size=opts.batch_size,
            patches=patches,
            pixel_size=opts.pixel_size,
            max_images=opts.max_images,
            cache=self.cache,
        )


class Evaluator:
    """Base class: stores the validated options; subclasses implement ``__call__``."""

    name = "evaluator"
    Options: type[EvalOptions] = EvalOptions
    #: Sample keys the evaluator reads ("label", "mask"): `medssl validate` checks that
    #: its data has them before a run trains.
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)

    def __call__(self, ctx: EvalContext) -> EvalResult:  # pragma: no cover - abstract
        raise NotImplementedError
