"""The data contracts shared by every component kind.

A training step flows through these types::

    DatasetAdapter  -> Sample (one image)          -> collate -> Batch (dict of stacked tensors)
    AugmentationPolicy(Batch["image"], ViewRequest) -> Views
    Backbone(Views.*) -> BackboneOutput (one forward per crop group)
    Objective.loss(StepOutputs) -> ObjectiveResult

Plugin authors implement against these names; they are part of the public API.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

import torch
from torch import Tensor, nn

# Defined without torch so that dataset adapters import it cheaply; part of this contract.
from medssl.official_splits import OfficialSplits

__all__ = [
    "DatasetAdapter",
    "OfficialSplits",
    "BackboneOutput",
    "BlockMaskSpec",
    "LearningSignals",
    "ObjectiveContext",
    "ObjectiveResult",
    "Sample",
    "StepOutputs",
    "ViewRequest",
    "Views",
    "AugmentationPolicy",
    "Backbone",
    "Objective",
]


class Sample(TypedDict, total=False):
    """One item of a dataset adapter.

    ``image`` is ``[C, H, W]`` with C in {1, 3}: ``torch.uint8``, ``torch.uint16`` or
    ``torch.float32`` scaled to [0, 1]. Adapters resize in the loader so a batch stacks.
    ``meta`` holds whitelisted metadata only (``age``, ``sex``, ``view``): never names,
    identifiers or dates. ``label`` is a float vector (multi-label) or a scalar long;
    ``mask`` is ``[H, W]`` long (segmentation classes); ``text`` a report string.
    """

    image: Tensor
    meta: dict[str, Any]
    label: Tensor
    mask: Tensor
    text: str


@runtime_checkable
class DatasetAdapter(Protocol):
    """A dataset: ``len(ds)`` and ``ds[i]`` -> :class:`Sample` (or a load failure).

    Optional attributes the evaluators read (see ``docs/writing_plugins.md``):

    - ``official_splits(**options) -> OfficialSplits | None`` (classmethod): the
      dataset's own split, from the options alone, without reading a file;
    - ``group_kind: str | None``: what groups samples (``"patient"``, ``"study"``,
      ``"source CT"``), ``None`` when the source has no such key;
    - ``groups() -> Sequence[str | None]``: the group key of every sample, in index
      order. Keys only separate probe splits: they never reach a sample, a log or a file;
    - ``task``, ``label_names``, ``target_name`` (the label column of a multi-class
      target), ``mask_names``.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class BlockMaskSpec:
    """iBOT block-mask settings (DINOv2 defaults)."""

    ratio_min: float = 0.1
    ratio_max: float = 0.5
    masked_share: float = 0.5  # share of the global crops that get a mask
    min_patches: int = 4
    aspect_min: float = 0.3


@dataclass(frozen=True, kw_only=True)
class ViewRequest:
    """What the enabled objectives need from the augmentation policy.

    The engine merges the requests of every objective with non-zero weight (``|``) and
    passes the result to the policy, so nothing unused is computed.
    """

    global_crops: bool = False
    local_crops: bool = False
    single_view: bool = False
    block_masks: BlockMaskSpec | None = None
    mae_mask_ratio: float | None = None
    text: bool = False
    patch_size: int = 14

    def __or__(self, other: ViewRequest) -> ViewRequest:
        if self.patch_size != other.patch_size:
            raise ValueError("view requests disagree on patch size")
        if self.block_masks and other.block_masks and self.block_masks != other.block_masks:
            raise ValueError("two objectives ask for different block-mask settings")
        ratios = {r for r in (self.mae_mask_ratio, other.mae_mask_ratio) if r is not None}
        if len(ratios) > 1:
            raise ValueError("two objectives ask for different MAE mask ratios")
        return ViewRequest(
            global_crops=self.global_crops or other.global_crops,
            local_crops=self.local_crops or other.local_crops,
            single_view=self.single_view or other.single_view,
            block_masks=self.block_masks or other.block_masks,
            mae_mask_ratio=ratios.pop() if ratios else None,
            text=self.text or other.text,
            patch_size=self.patch_size,
        )


@dataclass(kw_only=True)
class Views:
    """The output of an augmentation policy for one batch of ``batch_size`` images.

    Crops are stacked crop-major: ``global_crops[i * B:(i + 1) * B]`` is crop ``i`` of
    every image, as DINOv2 lays them out, so one backbone forward serves a crop group.
    Images are float32, normalised, with the channel count the policy was built for.
    """

    batch_size: int
    global_crops: Tensor | None = None  # [n_global * B, C, H, W]
    local_crops: Tensor | None = None  # [n_local * B, C, h, w]
    n_global: int = 0
    n_local: int = 0
    block_masks: Tensor | None = None  # bool [n_global * B, Hp * Wp]; True = masked
    single_view: Tensor | None = None  # [B, C, H, W] (MAE / CLIP policies)
    mae_masks: Tensor | None = None  # bool [B, Hp * Wp] for single_view, else for global crop 0
    text: list[str] | None = None


@dataclass(kw_only=True)
class BackboneOutput:
    """CLS token ``[N, D]`` and patch tokens ``[N, P, D]`` after the final norm."""

    cls: Tensor
    patch: Tensor


@dataclass(kw_only=True)
class StepOutputs:
    """Everything one training step computed once and every objective may read.

    ``student_global`` ran with ``views.block_masks`` applied when iBOT asked for them.
    ``teacher_global`` is ``None`` when no enabled objective uses a teacher.
    """

    views: Views
    student_global: BackboneOutput | None
    student_local: BackboneOutput | None
    teacher_global: BackboneOutput | None
    student: nn.Module
    progress: float  # fraction of training done, in [0, 1]
    epoch: int
    step: int
    # Set on the steps the engine diagnoses (``train.diagnostics_every``): objectives fill
    # ObjectiveResult.signals then, and only then, so other steps pay nothing.
    diagnose: bool = False


@dataclass(kw_only=True)
class LearningSignals:
    """What an objective tells the engine's learning diagnostics (``docs/diagnostics.md``).

    Filled on the steps where :attr:`StepOutputs.diagnose` is set; tensors are detached
    and read with one host transfer by the engine. Every field is optional: the engine
    judges what it is given and reports the objective ``unjudged`` without ``chance``.

    - ``chance``: the loss, in the loss's own normalisation, of a model that learned
      nothing (DINO: ``ln K``; CLIP: ``ln`` of the contrasted batch; MAE: predicting each
      image's mean patch). ``loss / chance`` near 1 for long is ``not_learning``.
    - ``teacher_probs`` ``[N, K]``: the teacher's target distributions (self-distillation):
      entropy (``uniform``), prototype usage and spread between rows (``collapsed``).
    - ``student_probs`` ``[M, K]``: the student's distributions on its own rows (entropy).
    - ``kl``: ``KL(teacher || student)`` in the loss's normalisation (the loss minus the
      teacher's entropy; 0 means the student copies a teacher that may be constant).
    - ``backbone_tokens``: backbone outputs the loss read that :class:`StepOutputs` does not
      hold (MAE's visible tokens, CLIP's own forward), for the gradient share.
    - ``values``: any other scalars, logged as ``diag/<objective>/<name>``.
    - ``hint``: the recipe keys to try when this objective does not learn, for the warning
      (``"objectives.dino.teacher_temp (lower)"``).
    """

    chance: float | Tensor | None = None
    teacher_probs: Tensor | None = None
    student_probs: Tensor | None = None
    kl: float | Tensor | None = None
    backbone_tokens: tuple[Tensor, ...] = ()
    values: dict[str, float | Tensor] = field(default_factory=dict)
    hint: str | None = None


@dataclass(kw_only=True)
class ObjectiveResult:
    loss: Tensor  # scalar, before the recipe weight
    metrics: dict[str, float] = field(default_factory=dict)
    signals: LearningSignals | None = None  # on diagnosed steps (StepOutputs.diagnose)


@dataclass(kw_only=True)
class ObjectiveContext:
    """What the engine tells an objective when it is set up."""

    embed_dim: int
    patch_size: int
    in_chans: int
    total_steps: int
    steps_per_epoch: int
    shared: dict[str, nn.Module]  # heads objectives share (iBOT reuses DINO's by default)
    world_size: int = 1
    image_size: int = 224


@runtime_checkable
class Backbone(Protocol):
    """An encoder. ``forward(x, masks)`` returns a :class:`BackboneOutput`.

    ``masks`` (bool ``[N, P]``) replaces those patch embeddings by a learned mask token
    (iBOT). ``forward_visible(x, keep)`` encodes only the patches indexed by ``keep``
    (long ``[N, P_keep]``) for MAE and returns all tokens ``[N, 1 + P_keep, D]``.
    """

    embed_dim: int
    patch_size: int
    in_chans: int

    def __call__(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput: ...

    def forward_visible(self, x: Tensor, keep: Tensor) -> Tensor: ...


@runtime_checkable
class AugmentationPolicy(Protocol):
    """Batched, on-device augmentation: ``policy(images, request, generator) -> Views``."""

    def __call__(
        self, images: Tensor, request: ViewRequest, generator: torch.Generator | None = None
    ) -> Views: ...


class Objective(nn.Module, abc.ABC):
    """Base class of SSL objectives.

    Subclasses build their heads in :meth:`setup` (the embedding size is known only
    then), say what views they need in :meth:`request`, and compute their loss from the
    shared forward pass in :meth:`loss`. An objective that keeps a teacher copy of a head
    returns ``(student_module, teacher_module)`` pairs from :meth:`ema_pairs`; the engine
    updates those with the backbone's EMA momentum. On the steps the engine diagnoses
    (:attr:`StepOutputs.diagnose`), :meth:`loss` may return :class:`LearningSignals` in
    ``ObjectiveResult.signals`` (its chance level above all) so the engine can tell
    whether it learns (``docs/diagnostics.md``).
    """

    uses_teacher: bool = False
    #: Registered names of objectives whose ``ctx.shared`` modules this one may reuse
    #: (iBOT: DINO's head). The engine sets those up first, whatever the recipe's key order.
    shares_from: tuple[str, ...] = ()

    def setup(self, ctx: ObjectiveContext) -> None:
        self.ctx = ctx

    @abc.abstractmethod
    def request(self, patch_size: int) -> ViewRequest:
        """The views (crops, masks, text) this objective reads."""

    @abc.abstractmethod
    def loss(self, out: StepOutputs) -> ObjectiveResult:
        """This objective's loss on the shared forward pass."""

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    def frozen_last_layer_params(self) -> list[nn.Parameter]:
        """Parameters whose gradient is dropped during the first epoch (DINO)."""
        return []
