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

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medssl.eval.encoder import Encoder
from medssl.eval.features import Splits, load_splits
from medssl.plugins import Registry

__all__ = [
    "EvalContext",
    "EvalOptions",
    "EvalResult",
    "Evaluator",
    "FeatureMode",
    "ProbeOptions",
    "Row",
]


class EvalOptions(BaseModel):
    """Options every evaluator takes (its data and how to split and preprocess it)."""

    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any] | None = Field(
        None, description="a dataset block to evaluate on; default: the recipe's data block"
    )
    split: Literal["auto", "official", "patient", "random", "dataset"] = Field(
        "auto",
        description="'auto': official where the dataset has one, else by patient where it "
        "has a group key, else random ('dataset': former name of 'official')",
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="held out by a patient or random split"
    )
    seed: int = 0
    image_size: int | None = Field(
        None, gt=0, description="input size; default: the encoder's training crop size"
    )
    batch_size: int = Field(32, gt=0)
    max_images: int | None = Field(None, gt=1, description="cap per split (speed)")
    pixel_size: int = Field(32, ge=2, description="side of the raw-pixel floor's input")
    bootstrap: int = Field(
        1000, ge=0, description="paired bootstrap resamples of the val images (95% CIs); 0: none"
    )
    random_floor: bool = Field(
        True, description="also probe the recipe's backbone at its seeded initialisation"
    )


FeatureMode = Literal["cls+mean_patch", "cls", "mean_patch"]


class ProbeOptions(EvalOptions):
    """Options of the classification probes: which frozen features they read."""

    features: list[FeatureMode] = Field(
        default_factory=lambda: ["cls+mean_patch", "cls", "mean_patch"],
        description="feature modes, each probed and reported; the first is the headline "
        "(DINOv2's linear evaluation: CLS token + mean patch token)",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("features")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) < len(value):
            raise ValueError(f"features must be distinct and not empty, got {value}")
        return value


@dataclass
class Row:
    """One score with its floors and their paired bootstrap comparison.

    ``floors``: ``random`` (the same probe on the recipe's backbone at its seeded
    initialisation), ``pixels`` (the same probe on raw pixels), ``trivial``. ``ci`` and
    ``floor_ci`` are 95 % intervals; ``vs[floor] = (difference, lo, hi)`` is the paired
    difference from that floor (> 0: the encoder is better, whatever the metric's direction).
    """

    target: str
    metric: str
    score: float
    floors: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = True
    features: str = ""
    ci: tuple[float, float] | None = None
    floor_ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    vs: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def below(self, floor: str) -> bool:
        """Whether the score does not beat ``floor``: its paired interval reaches 0 or below
        (or, without an interval, the point difference is <= 0)."""
        if floor in self.vs:
            diff, lo, _ = self.vs[floor]
            return bool(lo <= 0) if lo == lo else bool(diff <= 0)
        value = self.floors.get(floor, float("nan"))
        if value != value:
            return False
        return self.score <= value if self.higher_is_better else self.score >= value


@dataclass
class EvalResult:
    evaluator: str
    dataset: str
    rows: list[Row]
    n_train: int = 0
    n_val: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: how the data was split (``SplitInfo.to_dict()``: kind, group counts, warning)
    split: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> Row | None:
        """The row a summary shows: the mean over targets when there is one, read from the
        first feature mode (``cls+mean_patch`` by default)."""
        first = self.rows[0].features if self.rows else ""
        for row in self.rows:
            if row.target == "mean" and row.features == first:
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
    random_encoder: Encoder | None = None
    """The recipe's backbone at its seeded initialisation (the random-weights floor)."""
    random_cache: dict[str, Any] = field(default_factory=dict)
    #: the split of the last :meth:`splits` call, attached to the evaluator's result
    last_split: dict[str, Any] | None = None

    def floor(
        self, name: str, opts: EvalOptions, compute: Callable[[], Any], *, random: bool = False
    ) -> Any:
        """A floor depends on the data, split and probe, not on the encoder: computed once
        per ``floor_cache`` (shared across encoders by ``medssl ablate`` and benchmarks).
        The random-weights floor also depends on the backbone and seed (``random=True``)."""
        e = self.encoder
        ident: Any = self.random_encoder.info if random and self.random_encoder else None
        key = json.dumps(
            [name, opts.model_dump(), self.default_data, e.image_size, e.mean, e.std, e.in_chans]
            + ([ident] if random else []),
            sort_keys=True,
            default=str,
        )
        if key not in self.floor_cache:
            self.floor_cache[key] = compute()
        return self.floor_cache[key]

    def random_splits(
        self, opts: EvalOptions, name: str, *, patches: bool = False, patch_layers: int = 1
    ) -> Splits | None:
        """The random-weights encoder's features of the same data (None: no such floor)."""
        if self.random_encoder is None or not opts.random_floor:
            return None
        return self.splits(opts, name, patches=patches, random=True, patch_layers=patch_layers)

    def splits(
        self,
        opts: EvalOptions,
        name: str,
        *,
        patches: bool = False,
        random: bool = False,
        patch_layers: int = 1,
    ) -> Splits:
        block = opts.data if opts.data is not None else self.default_data
        if block is None:
            raise ValueError(f"evaluator {name!r}: no data block (set its 'data:' option)")
        encoder = self.random_encoder if random and self.random_encoder else self.encoder
        splits = load_splits(
            encoder,
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
            cache=self.random_cache if random else self.cache,
            patch_layers=patch_layers,
        )
        self.last_split = splits.split.to_dict() if splits.split is not None else None
        return splits


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
