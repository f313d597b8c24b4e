"""Batched augmentation ops with per-sample parameters, working at output resolution.

Every op takes its random parameters as tensors (one value per sample), so a policy
samples them in bulk from one :class:`torch.Generator` and applies them in one pass.
The photometric ops follow torchvision's definitions (which DINOv2 uses): brightness
multiplies, contrast and saturation blend with the grey mean / grey image, hue rotates in
HSV (through Kornia), solarise inverts above a threshold, blur is a separable Gaussian with
reflect padding. In-place variants end in ``_`` and save an allocation (and its page
faults on the CPU) per pass.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math

import kornia.enhance
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SOURCE_SCALE",
    "adjust_brightness_",
    "adjust_contrast_",
    "adjust_gamma_",
    "adjust_hue",
    "adjust_saturation",
    "gaussian_blur",
    "gaussian_kernels",
    "normalize_into",
    "resized_crops",
    "rgb_to_grey",
    "solarize_",
]

#: Multiplier from a source dtype to [0, 1].
SOURCE_SCALE: dict[torch.dtype, float] = {
    torch.uint8: 1.0 / 255.0,
    torch.uint16: 1.0 / 65535.0,
    torch.float32: 1.0,
}

_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL


def _per_sample(values: Tensor, ndim: int = 4) -> Tensor:
    return values.reshape(-1, *([1] * (ndim - 1)))


def resized_crops(
    source: Tensor,
    boxes: Tensor,
    flips: Tensor,
    size: int,
    mode: str = "bilinear",
    backend: str = "auto",
    scale: float = 1.0,
    antialias: bool = False,
) -> Tensor:
    """Crop boxes out of ``source`` and resample each straight to ``size`` × ``size``.

    ``source`` is ``[B, C, H, W]`` float, multiplied by ``scale`` on output (so an integer
    source copied to float as is reaches [0, 1] here, at output size); ``boxes`` is ``[n, B, 4]`` as ``(top, left,
    height, width)`` in whole source pixels and ``flips`` ``[n, B]`` bool (horizontal
    flip). Returns a contiguous crop-major ``[n * B, C, size, size]``. No source pixel is
    touched that no crop needs and nothing full-size is made.

    Both backends sample at pixel centres (``align_corners=False``), i.e. torchvision's
    ``resized_crop`` without antialiasing; they differ only at crop borders (``"grid"``
    may blend in the pixel just outside a box, ``"loop"`` clamps to the box):

    * ``"grid"``: one ``grid_sample`` for every crop of a group (their grids stacked along
      the height), the flip folded into the grid. One launch: the choice on a GPU.
    * ``"loop"``: ``F.interpolate`` per crop (separable, precomputed weights: ~7× less
      work per pixel than ``grid_sample`` on a CPU), crops spread over
      ``torch.get_num_threads()`` Python threads (the op releases the GIL; one plane
      would run on one core).
    * ``"auto"``: ``"grid"`` on CUDA, ``"loop"`` elsewhere.

    ``antialias=True`` low-passes downscaled crops as PIL and torchvision do (DINOv2's
    CPU pipeline); only ``"loop"`` can, so ``"auto"`` picks it on every device then.
    """
    if backend == "auto":
        backend = "grid" if source.is_cuda and not antialias else "loop"
    if antialias and backend != "loop":
        raise ValueError("antialiased resampling needs the 'loop' backend")
    if backend == "grid":
        return _resized_crops_grid(source, boxes, flips, size, mode, scale)
    if backend == "loop":
        return _resized_crops_loop(source, boxes, flips, size, mode, scale, antialias)
    raise ValueError(f"unknown resampling backend {backend!r}; use 'auto', 'grid' or 'loop'")


def _resized_crops_grid(
    source: Tensor, boxes: Tensor, flips: Tensor, size: int, mode: str, scale: float
) -> Tensor:
    n, batch = boxes.shape[:2]
    height, width = source.shape[-2:]
    top, left, box_h, box_w = boxes.to(source.dtype).unbind(-1)
    sign = 1.0 - 2.0 * flips.to(source.dtype)
    # Output pixel centres in [-1, 1], mapped affinely into the box (align_corners=False).
    base = (torch.arange(size, device=source.device, dtype=source.dtype) * 2 + 1) / size - 1
    grid_x = (sign * box_w / width)[..., None] * base + ((2 * left + box_w) / width - 1)[..., None]
    grid_y = (box_h / height)[..., None] * base + ((2 * top + box_h) / height - 1)[..., None]
    grid = torch.stack(
        torch.broadcast_tensors(grid_x[:, :, None, :], grid_y[:, :, :, None]), dim=-1
    )  # [n, B, size, size, 2]
    # -> [B, n * size, size, 2]: one call samples every crop of an image.
    grid = grid.transpose(0, 1).reshape(batch, n * size, size, 2)
    out = F.grid_sample(source, grid, mode=mode, padding_mode="border", align_corners=False)
    channels = source.shape[1]
    out = out.view(batch, channels, n, size, size).permute(2, 0, 1, 3, 4)
    contiguous = source.new_empty(n, batch, channels, size, size)
    torch.mul(out, scale, out=contiguous)  # one pass: reorders crop-major and scales
    return contiguous.view(n * batch, channels, size, size)


@functools.lru_cache(maxsize=4)
def _thread_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="medssl-crops")


def _resized_crops_loop(
    source: Tensor,
    boxes: Tensor,
    flips: Tensor,
    size: int,
    mode: str,
    scale: float,
    antialias: bool = False,
) -> Tensor:
    n, batch = boxes.shape[:2]
    channels = source.shape[1]
    out = source.new_empty(n * batch, channels, size, size)
    rows = boxes.to(torch.int64).reshape(n * batch, 4).tolist()
    flipped = flips.reshape(-1).tolist()

    def run(indices: range) -> None:
        for k in indices:
            top, left, box_h, box_w = rows[k]
            crop = source[k % batch, :, top : top + box_h, left : left + box_w].unsqueeze(0)
            resized = F.interpolate(
                crop, size=(size, size), mode=mode, align_corners=False, antialias=antialias
            )[0]
            torch.mul(resized.flip(-1) if flipped[k] else resized, scale, out=out[k])

    workers = max(1, min(torch.get_num_threads(), 8))
    if workers == 1 or n * batch < 2 * workers:
        run(range(n * batch))
    else:
        chunks = [range(i, n * batch, workers) for i in range(workers)]
        for future in [_thread_pool(workers).submit(run, chunk) for chunk in chunks]:
            future.result()
    return out


def rgb_to_grey(x: Tensor) -> Tensor:
    """Luma of ``[N, 3, H, W]`` as ``[N, 1, H, W]``."""
    r, g, b = x.unbind(1)
    return (_GREY_WEIGHTS[0] * r + _GREY_WEIGHTS[1] * g + _GREY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness_(x: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * factor, 0, 1)`` in place (torchvision's brightness)."""
    return x.mul_(_per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the per-image grey mean, in place (torchvision's contrast)."""
    grey = x if x.shape[1] == 1 else rgb_to_grey(x)
    mean = grey.mean(dim=(1, 2, 3))
    factor = factor.to(x.dtype)
    shift = _per_sample((1 - factor) * mean)
    return torch.addcmul(shift, x, _per_sample(factor), out=x).clamp_(0.0, 1.0)


def adjust_gamma_(x: Tensor, gamma: Tensor) -> Tensor:
    """``x ** gamma`` per image, in place (x in [0, 1])."""
    return x.clamp_(min=0.0).pow_(_per_sample(gamma))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend an RGB batch with its grey image (torchvision's saturation)."""
    if x.shape[1] == 1:
        return x  # a grey image has no saturation to change
    return kornia.enhance.adjust_saturation_with_gray_subtraction(x, factor.to(x.dtype))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` turns (torchvision's unit, in [-0.5, 0.5])."""
    if x.shape[1] == 1:
        return x
    return kornia.enhance.adjust_hue(x, shift.to(x.dtype) * (2 * math.pi))


def solarize_(x: Tensor, apply: Tensor, threshold: float = 0.5) -> Tensor:
    """Invert the pixels ``>= threshold`` of the images where ``apply`` is True, in place.

    Only the flagged images are read and written.
    """
    rows = apply.to(torch.bool).nonzero().flatten().to(x.device)  # synchronises on a GPU
    if rows.numel():
        picked = x[rows]
        x[rows] = torch.where(picked >= threshold, 1.0 - picked, picked)
    return x


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``[N, kernel_size]``, one per sigma."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"blur kernel size must be a positive odd number, got {kernel_size}")
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, dtype=sigma.dtype, device=sigma.device)
    weights = torch.exp(-(offsets**2) / (2 * sigma.unsqueeze(1) ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int = 9) -> Tensor:
    """Separable Gaussian blur with one sigma per image and reflect padding.

    The batch is folded into the channel axis and blurred with a depthwise (grouped)
    convolution: one launch per axis for the whole batch, each image with its own kernel.
    Measured on 2 CPU cores it beats Kornia's ``gaussian_blur2d`` with tensor sigmas by
    up to 4× on 96-px crops.
    """
    n, channels, height, width = x.shape
    half = kernel_size // 2
    if min(height, width) <= half:
        raise ValueError(
            f"blur kernel {kernel_size} needs crops larger than {half} px, got {height}×{width}"
        )
    kernel = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(channels, 0)
    # Pad once: blurring the reflected columns vertically equals reflecting the blurred ones.
    folded = F.pad(x.reshape(1, n * channels, height, width), (half,) * 4, mode="reflect")
    folded = F.conv2d(folded, kernel.view(n * channels, 1, kernel_size, 1), groups=n * channels)
    folded = F.conv2d(folded, kernel.view(n * channels, 1, 1, kernel_size), groups=n * channels)
    return folded.view(n, channels, height, width)


def normalize_into(x: Tensor, mean: Tensor, std: Tensor, channels: int) -> Tensor:
    """``(x - mean) / std`` with ``channels`` output channels, in one pass.

    A 1-channel ``x`` broadcasts into a 3-channel output here, so grey images are
    processed on one channel and only the final write is three times as wide.
    """
    scale = (1.0 / std).view(1, -1, 1, 1)
    shift = (-mean / std).view(1, -1, 1, 1)
    n, _, height, width = x.shape
    out = x.new_empty(n, channels, height, width)
    return torch.addcmul(shift, x, scale, out=out)
