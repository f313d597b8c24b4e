"""The frozen encoder an evaluation reads: a run's backbone or an exported HF folder.

An :class:`Encoder` bundles the backbone with the preprocessing it was trained with
(input size, normalisation, channels), taken from the run's augmentation block or from
the folder's ``preprocessor_config.json``, so features are computed the way the encoder
saw images during training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.config import ResolvedRecipe, build_component
from medssl.plugins import Registry

__all__ = [
    "Encoder",
    "encoder_from_recipe",
    "is_hf_folder",
    "load_encoder",
    "random_encoder",
    "to_unit_float",
]


@dataclass
class Encoder:
    """A frozen backbone plus its preprocessing."""

    backbone: nn.Module
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        return int(self.backbone.in_chans)  # type: ignore[attr-defined]

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_size)  # type: ignore[attr-defined]

    def prepare(self, images: Tensor, size: int | None = None) -> Tensor:
        """Dataset images (any dtype, 1 or 3 channels) -> normalised backbone input."""
        size = size or self.image_size
        x = to_unit_float(images)
        if x.shape[1] != self.in_chans:
            x = x.mean(1, keepdim=True) if self.in_chans == 1 else x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        mean = torch.tensor(_per_channel(self.mean, self.in_chans)).view(1, -1, 1, 1)
        std = torch.tensor(_per_channel(self.std, self.in_chans)).view(1, -1, 1, 1)
        return (x - mean) / std


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return list(values)
    if len(values) == 1:
        return list(values) * channels
    if channels == 1:  # an RGB normalisation for a grey model: the grey mean of the channels
        return [sum(values) / len(values)]
    raise ValueError(f"normalisation has {len(values)} values for {channels} channels")


def to_unit_float(images: Tensor) -> Tensor:
    """uint8 / uint16 / float images -> float32 in [0, 1] (the :class:`Sample` contract)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if images.dtype == torch.uint16 or images.dtype == torch.int32:
        return images.float() / 65535.0
    return images.float()


def is_hf_folder(path: str | Path) -> bool:
    path = Path(path)
    return (
        path.is_dir()
        and (path / "config.json").is_file()
        and not (path / "backbone.safetensors").is_file()
    )


def _policy_preprocessing(recipe: ResolvedRecipe, registry: Registry, backbone: nn.Module) -> Any:
    try:
        policy = build_component(registry, recipe.augmentation)
    except Exception:  # an unbuildable policy should not stop an evaluation
        policy = None
    size = getattr(policy, "global_crop_size", None) or recipe.augmentation.options.get(
        "global_crop_size"
    )
    size = int(size or backbone.img_size)  # type: ignore[attr-defined]
    mean = tuple(getattr(policy, "mean", None) or recipe.augmentation.options.get("mean") or (0.5,))
    std = tuple(getattr(policy, "std", None) or recipe.augmentation.options.get("std") or (0.25,))
    return size, mean, std


def encoder_from_recipe(
    recipe: ResolvedRecipe,
    registry: Registry,
    weights: str | Path | None = None,
    source: str | None = None,
) -> Encoder:
    """The recipe's backbone with ``weights`` (a backbone.safetensors), or random weights."""
    spec = recipe.backbone.model_copy(update={"options": {**recipe.backbone.options}})
    if weights is not None and "init" in spec.options:
        spec.options["init"] = "none"
    backbone = build_component(registry, spec)
    if weights is not None:
        from medssl.weights import load_weights

        state = load_weights(weights, "backbone weights")
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{weights}: the weights do not fit the recipe's backbone "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
    size, mean, std = _policy_preprocessing(recipe, registry, backbone)
    backbone.eval().requires_grad_(False)
    return Encoder(
        backbone,
        size,
        mean,
        std,
        source or (str(weights) if weights else "random weights"),
        {"backbone": spec.name, **{k: v for k, v in spec.options.items() if k != "init"}},
    )


def random_encoder(recipe: ResolvedRecipe, registry: Registry) -> Encoder:
    """The recipe's backbone at its seeded initialisation: what training starts from
    (the trainer seeds torch with ``seed`` before building it), never a pre-trained start.
    The random-weights floor of every probe."""
    spec = recipe.backbone.model_copy(update={"options": {**recipe.backbone.options}})
    if "init" in spec.options:
        spec.options["init"] = "none"
    seed = recipe.recipe.seed
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        backbone = build_component(registry, spec)
    size, mean, std = _policy_preprocessing(recipe, registry, backbone)
    backbone.eval().requires_grad_(False)
    info = {"backbone": spec.name, **spec.options, "seed": seed}
    return Encoder(backbone, size, mean, std, f"random weights (seed {seed})", info)


def _hf_encoder(folder: Path) -> Encoder:
    from medssl.builtins.backbones import backbone_from_hf_folder

    backbone = backbone_from_hf_folder(folder)
    backbone.eval().requires_grad_(False)
    size, mean, std = backbone.img_size, (0.5,), (0.25,)
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        conf = json.loads(pre.read_text())
        crop = conf.get("crop_size") or {}
        size = int(crop.get("height") or (conf.get("size") or {}).get("shortest_edge") or size)
        mean = tuple(conf.get("image_mean") or mean)
        std = tuple(conf.get("image_std") or std)
    return Encoder(backbone, int(size), mean, std, str(folder), {"format": "hf"})


def load_encoder(source: str | Path, recipe: ResolvedRecipe | None, registry: Registry) -> Encoder:
    """A run directory (``backbone.safetensors`` + its recipe) or an HF Dinov2 folder."""
    path = Path(source)
    if is_hf_folder(path):
        return _hf_encoder(path)
    weights = path / "backbone.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is neither a run directory (no backbone.safetensors: did the run "
            "save a checkpoint?) nor a Hugging Face Dinov2 folder (no config.json)"
        )
    if recipe is None:
        raise ValueError(f"evaluating {str(path)!r} needs its recipe (config.yaml)")
    return encoder_from_recipe(recipe, registry, weights, source=str(path))
