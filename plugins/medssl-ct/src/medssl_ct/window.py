"""``ct_window``: random CT windowing with multi-crop, on 2D slices or 3D patches.

A radiologist reads one CT in several windows (level/width in Hounsfield units): lung,
mediastinum, bone, brain (values: Radiopaedia, "Windowing (CT)"; Hofer, *CT Teaching
Manual*). Colour jitter, the intensity augmentation of DINOv2's multi-crop, has no
meaning on CT; a random window around such presets is the CT counterpart: each crop
picks a preset, jitters its level and width, and maps that window to [0, 1]. Invariance
across windows of one anatomy is what the SSL objective then learns.

Geometry follows DINOv2's multi-crop (Oquab et al. 2023, ``DataAugmentationDINO``): two
global crops and ``n_local_crops`` local crops, random resized crops with a horizontal
flip, laid out crop-major (:class:`medssl.types.Views`). The same code serves slices
``[B, C, H, W]`` and 3D patches ``[B, C, D, H, W]`` (``affine_grid`` + ``grid_sample``,
trilinear in 3D); the crop scale is a share of the area or of the volume.

Input: samples of ``ct_volume`` with ``intensity: hu``, i.e. HU encoded linearly over
``hu_range`` into [0, 1]. Masks: iBOT block masks on the patch grid (rectangles in 2D,
cuboids in 3D) and MAE random masks, when the request asks for them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from medssl.augment import block_masks_nd, random_masks
from medssl.types import ViewRequest, Views
from medssl_ct.volume import HU_RANGE, decode_hu

__all__ = ["CTWindow", "WINDOW_PRESETS"]

#: (level, width) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

Range = tuple[float, float]


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


class CTWindow:
    """Random CT windows around presets, with DINOv2-style multi-crop (module docstring)."""

    name = "ct_window"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        channels: Literal[1, 3] = 1
        mean: tuple[float, ...] = (0.5,)
        std: tuple[float, ...] = (0.25,)
        presets: list[str] = Field(
            default_factory=lambda: ["lung", "mediastinum", "bone"],
            description=f"window presets to draw from: {', '.join(WINDOW_PRESETS)}",
        )
        custom_presets: dict[str, tuple[float, float]] = Field(
            default_factory=dict, description="more presets: name -> (level, width) in HU"
        )
        level_jitter: float = Field(0.1, ge=0, description="level += U(-j, j) * width")
        width_jitter: float = Field(0.25, ge=0, description="width *= (1 + j) ** U(-1, 1)")
        multi_window: bool = Field(
            False, description="3 channels from 1: channel k in preset k (else repeated)"
        )
        global_crop_size: int = Field(64, gt=0)
        local_crop_size: int = Field(32, gt=0)
        n_local_crops: int = Field(4, ge=0)
        global_scale: Range = (0.35, 1.0)
        local_scale: Range = (0.1, 0.35)
        ratio: Range = (3 / 4, 4 / 3)
        hflip_prob: float = Field(0.5, ge=0, le=1)
        noise_prob: float = Field(0.2, ge=0, le=1)
        noise_hu: float = Field(20.0, ge=0, description="Gaussian noise std (HU), before windowing")
        hu_range: Range = HU_RANGE

        @model_validator(mode="after")
        def _check(self) -> CTWindow.Options:
            known = {**WINDOW_PRESETS, **self.custom_presets}
            unknown = [p for p in self.presets if p not in known]
            if unknown or not self.presets:
                raise ValueError(
                    f"presets {unknown or '[]'}: choose from {', '.join(sorted(known))} "
                    "(or add custom_presets)"
                )
            for name, (_, width) in self.custom_presets.items():
                if width <= 0:
                    raise ValueError(f"custom preset {name!r} has width {width}; must be > 0")
            for field in ("mean", "std"):
                if len(getattr(self, field)) not in (1, self.channels):
                    raise ValueError(f"{field} needs 1 or {self.channels} values")
            if any(s <= 0 for s in self.std):
                raise ValueError(f"std must be positive, got {self.std}")
            for field in ("global_scale", "local_scale", "ratio"):
                lo, hi = getattr(self, field)
                if not 0 < lo <= hi:
                    raise ValueError(f"{field} must be (low, high) with 0 < low <= high")
            if self.global_scale[1] > 1 or self.local_scale[1] > 1:
                raise ValueError("crop scales are shares of the image: at most 1")
            if self.multi_window and self.channels != 3:
                raise ValueError("multi_window makes 3 channels: set channels: 3")
            return self

    def __init__(self, **options: Any) -> None:
        self.options = o = self.Options(**options)
        self.channels = o.channels
        self.global_crop_size = o.global_crop_size
        known = {**WINDOW_PRESETS, **o.custom_presets}
        self._presets = torch.tensor([known[p] for p in o.presets], dtype=torch.float32)

    def __repr__(self) -> str:
        return f"CTWindow({self.options!r})"

    # -- checks --------------------------------------------------------------------------
    def _check(self, images: Any, request: Any) -> Tensor:
        if not isinstance(request, ViewRequest):
            raise ValueError(
                f"{self.name}: request must be a medssl.types.ViewRequest, got "
                f"{type(request).__name__}"
            )
        if not isinstance(images, Tensor):
            raise ValueError(f"{self.name}: images must be a torch.Tensor, got {type(images)}")
        if images.ndim not in (4, 5):
            raise ValueError(
                f"{self.name}: images must be slices [B, C, H, W] or patches [B, C, D, H, W], "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.float32:
            raise ValueError(
                f"{self.name}: images must be float32 HU encoded in [0, 1] (ct_volume with "
                f"intensity: hu), got {images.dtype}"
            )
        c = images.shape[1]
        if c not in (1, self.channels):
            raise ValueError(
                f"{self.name}: images have {c} channels; expected 1 or channels={self.channels} "
                f"(a 2.5D slab of {self.channels} slices)"
            )
        if images.shape[0] == 0 or min(images.shape[2:]) < 2:
            raise ValueError(f"{self.name}: empty batch or image, shape {tuple(images.shape)}")
        for option in ("global_crop_size", "local_crop_size"):
            size = getattr(self.options, option)
            if size % request.patch_size:
                raise ValueError(
                    f"{self.name}: {option}={size} is not a multiple of the patch size "
                    f"{request.patch_size}"
                )
        return images

    # -- random parameters ---------------------------------------------------------------
    def _thetas(
        self, count: int, dims: int, scale: Range, generator: torch.Generator | None
    ) -> Tensor:
        """Affine maps ``[count, dims, dims + 1]`` (output -> input, normalised coords)."""
        o = self.options
        device = _device(generator)

        def rand(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device=device)

        share = scale[0] + (scale[1] - scale[0]) * rand(count, 1)
        log_ratio = math.log(o.ratio[0]) + (math.log(o.ratio[1]) - math.log(o.ratio[0])) * rand(
            count, dims
        )
        log_ratio = log_ratio - log_ratio.mean(dim=1, keepdim=True)  # keeps the volume
        sides = (share ** (1 / dims) * torch.exp(log_ratio)).clamp_(max=1.0)
        centres = (1 - sides) * (2 * rand(count, dims) - 1)  # inside [-1, 1]
        flips = rand(count) < o.hflip_prob
        theta = torch.zeros(count, dims, dims + 1, device=device)
        for axis in range(dims):  # axis 0 is width (x) in affine_grid's convention
            theta[:, axis, axis] = sides[:, axis]
            theta[:, axis, dims] = centres[:, axis]
        theta[:, 0, 0] = torch.where(flips, -theta[:, 0, 0], theta[:, 0, 0])
        return theta

    def _windows(self, count: int, channels: int, generator: torch.Generator | None) -> Tensor:
        """``[count, channels, 2]`` (low, high) in HU."""
        o = self.options
        device = _device(generator)
        n = len(self._presets)
        if o.multi_window:
            pick = torch.arange(channels, device=device).remainder(n).expand(count, channels)
        else:
            pick = torch.randint(0, n, (count, 1), generator=generator, device=device)
            pick = pick.expand(count, channels)
        base = self._presets.to(device)[pick]  # [count, channels, 2]
        u = 2 * torch.rand((count, channels, 2), generator=generator, device=device) - 1
        width = base[..., 1] * (1 + o.width_jitter) ** u[..., 1]
        level = base[..., 0] + o.level_jitter * base[..., 1] * u[..., 0]
        return torch.stack([level - width / 2, level + width / 2], dim=-1)

    # -- rendering -------------------------------------------------------------------------
    def _crops(
        self, src: Tensor, n: int, size: int, scale: Range, generator: torch.Generator | None
    ) -> Tensor:
        o = self.options
        batch, c = src.shape[:2]
        dims = src.ndim - 2
        count = n * batch
        theta = self._thetas(count, dims, scale, generator).to(src.device)
        out_channels = self.channels if c == 1 else c
        windows = self._windows(count, out_channels, generator).to(src.device)
        gdev = _device(generator)
        noisy = torch.rand(count, generator=generator, device=gdev) < o.noise_prob
        noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gdev).item())
        source = src.repeat(n, *([1] * (src.ndim - 1)))  # crop-major: row r is image r % B
        grid = F.affine_grid(theta, [count, c, *([size] * dims)], align_corners=False)
        raw = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        hu = decode_hu(raw, o.hu_range)
        if bool(noisy.any()):
            g = torch.Generator(device=src.device).manual_seed(noise_seed)
            noise = torch.randn(hu.shape, generator=g, device=src.device) * o.noise_hu
            hu = hu + noise * noisy.to(src.device).view(-1, *([1] * (hu.ndim - 1)))
        view = [count, out_channels] + [1] * dims
        low = windows[..., 0].view(view)
        high = windows[..., 1].view(view)
        x = ((hu - low) / (high - low)).clamp_(0.0, 1.0)  # 1 channel broadcasts to 3 here
        mean = torch.tensor(self._per_channel(o.mean), device=src.device).view(1, -1, *[1] * dims)
        std = torch.tensor(self._per_channel(o.std), device=src.device).view(1, -1, *[1] * dims)
        return ((x - mean) / std).contiguous()

    def _per_channel(self, values: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(values) * self.channels if len(values) == 1 else tuple(values)

    def __call__(
        self,
        images: Tensor,
        request: ViewRequest,
        generator: torch.Generator | None = None,
        text: list[str] | None = None,
    ) -> Views:
        images = self._check(images, request)
        if request.text:
            raise ValueError(f"{self.name}: CT volumes carry no report text")
        o = self.options
        batch = images.shape[0]
        dims = images.ndim - 2
        views = Views(batch_size=batch)
        grid = (o.global_crop_size // request.patch_size,) * dims
        if request.global_crops or request.block_masks is not None:
            views.global_crops = self._crops(
                images, 2, o.global_crop_size, o.global_scale, generator
            )
            views.n_global = 2
            if request.block_masks is not None:
                views.block_masks = block_masks_nd(
                    2 * batch, grid, request.block_masks, generator
                ).to(images.device)
        if request.local_crops and o.n_local_crops > 0:
            views.local_crops = self._crops(
                images, o.n_local_crops, o.local_crop_size, o.local_scale, generator
            )
            views.n_local = o.n_local_crops
        if request.single_view:
            views.single_view = self._crops(
                images, 1, o.global_crop_size, o.global_scale, generator
            )
        if request.mae_mask_ratio is not None:
            views.mae_masks = random_masks(
                batch, math.prod(grid), request.mae_mask_ratio, generator
            ).to(images.device)
        return views
