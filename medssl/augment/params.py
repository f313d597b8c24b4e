"""Random parameters of a batch, sampled in bulk from one :class:`torch.Generator`.

Policies draw every random number here (crop boxes, flips, jitter factors, blur sigmas,
solarise flags) as small CPU tensors, then move them to the images' device. A generator
on a GPU seeds a CPU one once per call (:func:`host_generator`), so decisions such as
"which crops get blurred" never wait for the device, and a seed fixes the views whatever
device runs the ops. Kornia's random modules (which read the global RNG) are not needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bernoulli", "generator_device", "host_generator", "resized_crop_boxes", "uniform"]


def generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def host_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator: ``generator`` itself, or one seeded from a device generator.

    ``None`` stays ``None`` (torch's global CPU RNG). A device generator is read once
    (one synchronisation per batch) and advances, so successive calls differ.
    """
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item()
    return torch.Generator().manual_seed(int(seed))


def uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None
) -> Tensor:
    """Uniform samples in ``[low, high)``."""
    u = torch.rand(shape, generator=generator, device=generator_device(generator))
    return low + (high - low) * u


def bernoulli(shape: tuple[int, ...], p: float, generator: torch.Generator | None) -> Tensor:
    """Bool samples, True with probability ``p``."""
    return torch.rand(shape, generator=generator, device=generator_device(generator)) < p


def resized_crop_boxes(
    shape: tuple[int, ...],
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> Tensor:
    """Boxes ``[*shape, 4]`` as ``(top, left, height, width)`` in whole source pixels.

    torchvision's ``RandomResizedCrop.get_params`` vectorised: area share uniform in
    ``scale``, aspect log-uniform in ``ratio``, up to ``tries`` attempts per box, the first
    that fits wins; boxes with no fitting attempt fall back to the largest centre crop
    with an aspect inside ``ratio``.
    """
    device = generator_device(generator)
    count = math.prod(shape)
    area = height * width * uniform((count, tries), scale[0], scale[1], generator)
    log_aspect = uniform((count, tries), math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_aspect)
    box_w = torch.round(torch.sqrt(area * aspect))
    box_h = torch.round(torch.sqrt(area / aspect))
    fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fit
    box_w = box_w.gather(1, first).squeeze(1)
    box_h = box_h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)

    # Centre-crop fallback (torchvision's rule).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = int(round(height * ratio[1])), height
    else:
        fb_w, fb_h = width, height
    box_w = torch.where(found, box_w, torch.full_like(box_w, fb_w))
    box_h = torch.where(found, box_h, torch.full_like(box_h, fb_h))

    position = torch.rand((count, 2), generator=generator, device=device)
    top = torch.floor(position[:, 0] * (height - box_h + 1)).clamp_(max=height - box_h)
    left = torch.floor(position[:, 1] * (width - box_w + 1)).clamp_(max=width - box_w)
    top = torch.where(found, top, (height - box_h) // 2)
    left = torch.where(found, left, (width - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], dim=-1).reshape(*shape, 4)
