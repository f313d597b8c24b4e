"""What every built-in policy shares: option checks, input checks, the float source.

A policy is called as ``policy(images, request, generator=None, text=None) -> Views``
(:class:`medssl.types.AugmentationPolicy`); ``text`` is the batch's report strings,
passed through to :attr:`Views.text` when the request asks for text.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import Tensor

from medssl.augment.masks import random_masks
from medssl.augment.ops import SOURCE_SCALE, normalize_into, resized_crops, rgb_to_grey
from medssl.augment.params import bernoulli, resized_crop_boxes
from medssl.types import ViewRequest

__all__ = ["BasePolicy", "PolicyOptions", "check_crop_size", "check_images", "check_ranges"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PolicyOptions(BaseModel):
    """Options every built-in policy takes."""

    model_config = ConfigDict(extra="forbid")

    channels: Literal[1, 3] = 3
    """Output channels; a 1-channel input is processed on one channel and repeated."""
    mean: tuple[float, ...] = IMAGENET_MEAN
    """Normalisation mean, one value or one per output channel."""
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    """Resampling of the resized crops (see :func:`medssl.augment.ops.resized_crops`)."""
    antialias: bool = False
    """Low-pass downscaled crops as PIL/torchvision do; resamples crop by crop on every
    device (about 3× the resampling cost on a CPU, one launch per crop on a GPU)."""

    @model_validator(mode="after")
    def _check_normalisation(self) -> PolicyOptions:
        for field in ("mean", "std"):
            values = getattr(self, field)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{field} has {len(values)} values but channels={self.channels}: give one "
                    f"value or {self.channels}"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


def check_ranges(options: BaseModel, fields: tuple[str, ...]) -> None:
    """Raise unless every ``(low, high)`` option satisfies ``0 < low <= high``."""
    for field in fields:
        low, high = getattr(options, field)
        if not 0 < low <= high:
            raise ValueError(f"{field} must satisfy 0 < low <= high, got ({low}, {high})")


def check_images(images: Any, where: str) -> Tensor:
    """Raise a clear :class:`ValueError` unless ``images`` is a ``[B, C, H, W]`` batch."""
    if not isinstance(images, Tensor):
        raise ValueError(f"{where}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(
            f"{where}: images must be a batch [B, C, H, W], got shape {tuple(images.shape)}"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(
            f"{where}: images must have 1 or 3 channels, got {images.shape[1]} "
            f"(shape {tuple(images.shape)}; channels come second)"
        )
    if images.dtype not in SOURCE_SCALE:
        raise ValueError(
            f"{where}: images must be uint8, uint16 or float32 in [0, 1], got {images.dtype}"
        )
    if images.shape[0] == 0 or min(images.shape[-2:]) < 2:
        raise ValueError(f"{where}: empty batch or image, shape {tuple(images.shape)}")
    return images


def check_crop_size(size: int, patch_size: int, option: str, where: str) -> int:
    if size % patch_size:
        raise ValueError(
            f"{where}: {option}={size} is not a multiple of the patch size {patch_size}; "
            f"use {max(patch_size, size // patch_size * patch_size)} or "
            f"{(size // patch_size + 1) * patch_size}"
        )
    return size // patch_size


class BasePolicy:
    """Shared machinery; subclasses set ``Options`` and implement ``__call__``."""

    Options: type[PolicyOptions] = PolicyOptions
    name = "policy"
    #: convert RGB input to grey whatever the output channels (grey-level policies)
    grey_only = False

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)
        self.channels: int = self.options.channels
        self.mean = self._per_channel(self.options.mean)
        self.std = self._per_channel(self.options.std)
        self._buffers: dict[tuple[Any, ...], Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def _per_channel(self, values: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(values) * self.channels if len(values) == 1 else tuple(values)

    def _float_source(self, images: Tensor) -> tuple[Tensor, float]:
        """The batch as float32 in its raw units, and the factor to [0, 1].

        Integer batches are copied into a buffer kept between calls (a fresh full-size
        float tensor costs more in page faults on the CPU than the conversion itself);
        the factor is applied at output size by :func:`~medssl.augment.ops.resized_crops`
        (a plain cast is ~4× cheaper than a cast fused with a multiply).
        """
        scale = SOURCE_SCALE[images.dtype]
        if images.dtype == torch.float32:
            return images, scale
        key = (tuple(images.shape), images.device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = torch.empty(images.shape, device=images.device)
            self._buffers = {key: buffer}
        try:
            return buffer.copy_(images), scale
        except RuntimeError:  # uint16 casts are missing on some devices/torch builds
            return buffer.copy_(images.to(torch.int32)), scale

    def _normalize(self, x: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=x.device)
        std = torch.tensor(self.std, device=x.device)
        return normalize_into(x, mean, std, self.channels)

    def _text(self, request: ViewRequest, text: list[str] | None, batch: int) -> list[str] | None:
        if text is None:
            if request.text:
                raise ValueError(
                    f"{self.name}: the request asks for text but the batch carries none; "
                    f"use a dataset that yields 'text'"
                )
            return None
        if len(text) != batch:
            raise ValueError(f"{self.name}: {len(text)} texts for a batch of {batch} images")
        return list(text)

    def _mae_masks(
        self,
        request: ViewRequest,
        batch: int,
        size: int,
        generator: torch.Generator | None,
        device: torch.device,
    ) -> Tensor | None:
        if request.mae_mask_ratio is None:
            return None
        grid = size // request.patch_size
        return random_masks(batch, grid * grid, request.mae_mask_ratio, generator).to(device)

    def _check_request(self, images: Any, request: ViewRequest) -> Tensor:
        if not isinstance(request, ViewRequest):
            raise ValueError(
                f"{self.name}: request must be a medssl.types.ViewRequest, got "
                f"{type(request).__name__}"
            )
        if request.patch_size < 1:
            raise ValueError(f"{self.name}: patch size must be positive, got {request.patch_size}")
        return check_images(images, self.name)

    def _to_grey_if_needed(self, x: Tensor) -> Tensor:
        if x.shape[1] == 3 and (self.grey_only or self.channels == 1):
            return rgb_to_grey(x)
        return x

    def _plain_view(
        self,
        src: Tensor,
        scale: float,
        size: int,
        crop_scale: tuple[float, float],
        ratio: tuple[float, float],
        hflip_prob: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """One random resized crop (and flip) per image, normalised: ``[B, C, size, size]``."""
        batch, _, height, width = src.shape
        boxes = resized_crop_boxes((1, batch), height, width, crop_scale, ratio, generator)
        flips = bernoulli((1, batch), hflip_prob, generator)
        x = resized_crops(
            src,
            boxes.to(src.device),
            flips.to(src.device),
            size,
            self.options.interpolation,
            scale=scale,
            antialias=self.options.antialias,
        )
        if self.options.interpolation == "bicubic":
            x.clamp_(0.0, 1.0)  # bicubic overshoots
        return self._normalize(self._to_grey_if_needed(x))
