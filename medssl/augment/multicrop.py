"""DINOv2 multi-crop augmentation, batched on the training device.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023;
reference code ``dinov2/data/augmentations.py::DataAugmentationDINO``. Two global crops
(scale 0.32–1) and ``n_local_crops`` local crops (scale 0.05–0.32), each with a
horizontal flip (p 0.5), colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8), grayscale (p 0.2),
Gaussian blur (kernel 9, sigma 0.1–2) and, on the second global crop, solarisation.

Blur probabilities. The paper (and DINO, BYOL) blur global crop 1 always, global crop 2
with p 0.1 and local crops with p 0.5. DINOv2's released ``GaussianBlur`` wraps
``RandomApply(p=1 - p)``, so its code actually blurs with 0, 0.9 and 0.5 (dinov2 PR #411
fixes this). We follow the paper: ``blur_probs=(1.0, 0.1, 0.5)`` means *applied* with
these probabilities; ``blur_probs=(0.0, 0.9, 0.5)`` reproduces the released code.

How it differs from the per-sample CPU pipeline, and why:

* Every crop is resampled straight from the (uint8/uint16) source to its output size,
  then flipped (folded into the sampling grid), jittered, blurred and solarised at output
  resolution; nothing full-size is made but one float copy of the source.
* Resampling is bilinear without antialiasing by default; DINOv2 uses antialiased bicubic
  PIL resizing (``interpolation="bicubic"`` and ``antialias=True`` give that). Bilinear
  is ~2× cheaper in ``grid_sample``, does not overshoot, and the Gaussian blur most crops
  get anyway dominates the difference in sharpness; antialiasing costs ~3× the
  resampling on a CPU and forces one launch per crop on a GPU. Global crops shrink the
  source by at most ~2.3× and local crops ~3× from 512-px sources, so aliasing is mild.
* The colour-jitter order is drawn once per crop group and batch (as Kornia does), not
  per image as torchvision does.
* A grey (1-channel) source is processed on one channel: saturation, hue and grayscale
  leave grey images unchanged, so the views equal those of the source repeated to RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from medssl.augment import ops
from medssl.augment.base import BasePolicy, PolicyOptions, check_crop_size, check_ranges
from medssl.augment.masks import block_masks
from medssl.augment.params import bernoulli, host_generator, resized_crop_boxes, uniform
from medssl.types import ViewRequest, Views

__all__ = ["DINOv2MultiCrop", "MultiCropOptions", "MultiCropPolicy"]

Range = tuple[float, float]


class MultiCropOptions(PolicyOptions):
    """Geometry and the intensity ops shared by the multi-crop policies."""

    global_crop_size: int = Field(224, gt=0)
    local_crop_size: int = Field(98, gt=0)
    """96 in DINOv2 for patch 16; 98 is the multiple of patch 14 DINOv2 uses for ViT-*/14."""
    n_local_crops: int = Field(8, ge=0)
    global_scale: Range = (0.32, 1.0)
    local_scale: Range = (0.05, 0.32)
    ratio: Range = (3 / 4, 4 / 3)
    hflip_prob: float = Field(0.5, ge=0, le=1)
    jitter_prob: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5)
    """Blur applied to global crop 1, global crop 2, local crops (paper convention)."""
    blur_sigma: Range = (0.1, 2.0)
    blur_kernel_size: int = 9
    solarize_prob: float = Field(0.2, ge=0, le=1)
    """Solarisation of global crop 2 (DINOv2 applies none elsewhere)."""
    solarize_threshold: float = 0.5

    @model_validator(mode="after")
    def _check_ranges(self) -> MultiCropOptions:
        check_ranges(self, ("global_scale", "local_scale", "ratio", "blur_sigma"))
        for field in ("global_scale", "local_scale"):
            if getattr(self, field)[1] > 1:
                raise ValueError(f"{field} is an area share: its upper end must be <= 1")
        if not all(0 <= p <= 1 for p in self.blur_probs):
            raise ValueError(f"blur_probs must lie in [0, 1], got {self.blur_probs}")
        smallest = min(self.global_crop_size, self.local_crop_size)
        if any(self.blur_probs) and self.blur_kernel_size // 2 >= smallest:
            raise ValueError(
                f"blur_kernel_size={self.blur_kernel_size} is too large for {smallest}-px crops "
                f"(its reflect padding, kernel // 2 px, must be smaller than the crop)"
            )
        return self


class DINOv2Options(MultiCropOptions):
    """DINOv2's multi-crop options."""

    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_prob: float = Field(0.2, ge=0, le=1)


@dataclass
class CropGroup:
    """The random parameters of one crop group (global or local), crop-major."""

    boxes: Tensor  # [n, B, 4]
    flips: Tensor  # [n, B]
    jitter: Tensor  # [n * B] bool
    factors: dict[str, Tensor]  # op name -> [n * B]
    order: list[str]
    blur: Tensor  # [n * B] bool
    sigma: Tensor  # [n * B]
    solarize: Tensor  # [n * B] bool
    grayscale: Tensor  # [n * B] bool

    def to(self, device: torch.device) -> CropGroup:
        moved = {
            key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in vars(self).items()
        }
        moved["factors"] = {k: v.to(device, non_blocking=True) for k, v in self.factors.items()}
        return CropGroup(**moved)


class MultiCropPolicy(BasePolicy):
    """Global and local crops with per-crop random intensity ops; subclasses pick the ops."""

    Options: type[MultiCropOptions] = MultiCropOptions
    options: MultiCropOptions
    n_global = 2
    #: the intensity-jitter ops of this policy, each an option holding its strength
    jitter_ops: tuple[str, ...] = ("brightness", "contrast")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        ops.gaussian_kernels(torch.ones(1), self.options.blur_kernel_size)  # checks the size
        self.global_crop_size = self.options.global_crop_size
        self.local_crop_size = self.options.local_crop_size

    # -- parameters ---------------------------------------------------------------------
    def _factor_range(self, op: str) -> Range:
        strength = getattr(self.options, op)
        if op == "hue":
            return (-strength, strength)
        return (max(0.0, 1.0 - strength), 1.0 + strength)

    def _identity(self, op: str) -> float:
        return 0.0 if op == "hue" else 1.0

    def _sample_group(
        self,
        n: int,
        batch: int,
        height: int,
        width: int,
        scale: Range,
        blur_p: list[float],
        solarize_p: list[float],
        generator: torch.Generator | None,
    ) -> CropGroup:
        o = self.options
        count = n * batch
        boxes = resized_crop_boxes((n, batch), height, width, scale, o.ratio, generator)
        flips = bernoulli((n, batch), o.hflip_prob, generator)
        jitter = bernoulli((count,), o.jitter_prob, generator)
        factors = {}
        for op in self.jitter_ops:
            low, high = self._factor_range(op)
            drawn = uniform((count,), low, high, generator)
            factors[op] = torch.where(jitter, drawn, torch.full_like(drawn, self._identity(op)))
        perm = torch.randperm(len(self.jitter_ops), generator=generator, device=boxes.device)
        order = [self.jitter_ops[i] for i in perm.tolist()]
        per_crop = torch.rand((n, batch), generator=generator, device=boxes.device)
        blur = (per_crop < torch.tensor(blur_p, device=boxes.device).unsqueeze(1)).flatten()
        sigma = uniform((count,), *o.blur_sigma, generator)
        per_crop = torch.rand((n, batch), generator=generator, device=boxes.device)
        solarize = (per_crop < torch.tensor(solarize_p, device=boxes.device).unsqueeze(1)).flatten()
        grayscale = bernoulli((count,), getattr(o, "grayscale_prob", 0.0), generator)
        return CropGroup(boxes, flips, jitter, factors, order, blur, sigma, solarize, grayscale)

    # -- ops ----------------------------------------------------------------------------
    def _jitter(self, x: Tensor, op: str, factor: Tensor) -> Tensor:
        if op == "brightness":
            return ops.adjust_brightness_(x, factor)
        if op == "contrast":
            return ops.adjust_contrast_(x, factor)
        if op == "saturation":
            return ops.adjust_saturation(x, factor)
        if op == "hue":
            return ops.adjust_hue(x, factor)
        if op == "gamma":
            return ops.adjust_gamma_(x, factor)
        raise ValueError(f"{self.name}: unknown jitter op {op!r}")

    def _render(self, src: Tensor, scale: float, host: CropGroup, size: int) -> Tensor:
        # Decisions read the host copy of the parameters: no device synchronisation.
        group = host.to(src.device)
        device = src.device
        x = ops.resized_crops(
            src,
            group.boxes,
            group.flips,
            size,
            self.options.interpolation,
            scale=scale,
            antialias=self.options.antialias,
        )
        if self.options.interpolation == "bicubic":
            x.clamp_(0.0, 1.0)  # bicubic overshoots
        x = self._to_grey_if_needed(x)
        for op in group.order:
            x = self._jitter(x, op, group.factors[op])
        if x.shape[1] == 3 and bool(host.grayscale.any()):
            rows = host.grayscale.nonzero().flatten().to(device)
            x[rows] = ops.rgb_to_grey(x[rows]).expand(-1, 3, -1, -1)
        if bool(host.blur.all()):
            x = ops.gaussian_blur(x, group.sigma, self.options.blur_kernel_size)
        elif bool(host.blur.any()):
            rows = host.blur.nonzero().flatten().to(device)
            x[rows] = ops.gaussian_blur(x[rows], group.sigma[rows], self.options.blur_kernel_size)
        if bool(host.solarize.any()):
            ops.solarize_(x, host.solarize, self.options.solarize_threshold)
        return self._normalize(x)

    # -- the policy ---------------------------------------------------------------------
    def __call__(
        self,
        images: Tensor,
        request: ViewRequest,
        generator: torch.Generator | None = None,
        text: list[str] | None = None,
    ) -> Views:
        images = self._check_request(images, request)
        generator = host_generator(generator)
        o = self.options
        batch, _, height, width = images.shape
        patch = request.patch_size
        views = Views(batch_size=batch)
        needs_global = request.global_crops or request.block_masks is not None
        if needs_global:
            check_crop_size(o.global_crop_size, patch, "global_crop_size", self.name)
        if request.local_crops:
            check_crop_size(o.local_crop_size, patch, "local_crop_size", self.name)
        if request.single_view:
            check_crop_size(o.global_crop_size, patch, "global_crop_size", self.name)
        src, scale = self._float_source(images)
        if needs_global:
            group = self._sample_group(
                self.n_global,
                batch,
                height,
                width,
                o.global_scale,
                [o.blur_probs[0], o.blur_probs[1]],
                [0.0, o.solarize_prob],
                generator,
            )
            views.global_crops = self._render(src, scale, group, o.global_crop_size)
            views.n_global = self.n_global
        if request.local_crops and o.n_local_crops > 0:
            group = self._sample_group(
                o.n_local_crops,
                batch,
                height,
                width,
                o.local_scale,
                [o.blur_probs[2]] * o.n_local_crops,
                [0.0] * o.n_local_crops,
                generator,
            )
            views.local_crops = self._render(src, scale, group, o.local_crop_size)
            views.n_local = o.n_local_crops
        if request.single_view:
            views.single_view = self._plain_view(
                src, scale, o.global_crop_size, o.global_scale, o.ratio, o.hflip_prob, generator
            )
        if needs_global and request.block_masks is not None:
            # Last, so that on a GPU this CPU loop overlaps the kernels queued above.
            grid = o.global_crop_size // patch
            views.block_masks = block_masks(
                self.n_global * batch, grid, grid, request.block_masks, generator
            ).to(images.device, non_blocking=True)
        views.mae_masks = self._mae_masks(
            request, batch, o.global_crop_size, generator, images.device
        )
        views.text = self._text(request, text, batch)
        return views


class DINOv2MultiCrop(MultiCropPolicy):
    """DINOv2's multi-crop policy (registered as ``dinov2_multicrop``)."""

    Options = DINOv2Options
    options: DINOv2Options
    name = "dinov2_multicrop"
    jitter_ops = ("brightness", "contrast", "saturation", "hue")
