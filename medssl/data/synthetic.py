"""``synthetic``: procedural images for tests and smoke runs (no files).

Sample ``i`` is a pure function of ``(seed, i)``: a sinusoidal grating whose frequency
encodes the class (``i % num_classes``), at a random orientation and phase, plus one
bright disc (the optional mask) and noise. A linear probe can learn the class; an
encoder must be orientation-invariant to do so with few features.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SyntheticImages"]


class SyntheticImages:
    """Deterministic procedural images with a class label (and optional mask / text).

    A map-style dataset; torch is imported by ``__getitem__`` only, so registering the
    built-in datasets stays free of torch (``medssl validate --data-only``).
    """

    task = "multiclass"
    mask_names = ["background", "disc"]

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        n_images: int = Field(64, ge=1)
        image_size: int = Field(64, ge=8)
        channels: Literal[1, 3] = 1
        num_classes: int = Field(4, ge=1)
        seed: int = 0
        with_mask: bool = False
        with_text: bool = False

    def __init__(self, **options: Any) -> None:
        self.options = self.Options(**options)
        self.image_size = self.options.image_size
        self.channels = self.options.channels
        self.label_names = [f"class_{c}" for c in range(self.options.num_classes)]
        self.has_mask = self.options.with_mask
        self.has_text = self.options.with_text

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {
            "has_text": bool(options.get("with_text", False)),
            "has_mask": bool(options.get("with_mask", False)),
        }

    @property
    def num_classes(self) -> int:
        return self.options.num_classes

    @property
    def num_mask_classes(self) -> int | None:
        return 2 if self.has_mask else None

    def __len__(self) -> int:
        return self.options.n_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        import torch

        opts = self.options
        g = torch.Generator().manual_seed(opts.seed * 1_000_003 + index)
        size, label = opts.image_size, index % opts.num_classes
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij"
        )
        angle = float(torch.rand((), generator=g)) * math.pi
        phase = float(torch.rand((), generator=g)) * 2 * math.pi
        freq = 2.0 + 2.0 * label
        coord = xx * math.cos(angle) + yy * math.sin(angle)
        grating = 0.5 + 0.25 * torch.sin(math.pi * freq * coord + phase)
        cy, cx = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
        radius = 0.15 + 0.2 * float(torch.rand((), generator=g))
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        image = torch.where(disc, torch.full_like(grating, 0.95), grating)
        image = image + 0.03 * torch.randn(size, size, generator=g)
        image = image.clamp(0, 1)[None].expand(opts.channels, size, size).contiguous()
        sample: dict[str, Any] = {
            "image": image,
            "meta": {"age": None, "sex": None, "view": None},
            "label": torch.tensor(label, dtype=torch.long),
        }
        if opts.with_mask:
            sample["mask"] = disc.long()
        if opts.with_text:
            where = ("upper" if cy < 0 else "lower") + (" left" if cx < 0 else " right")
            sample["text"] = f"grating of frequency {label} with a disc in the {where}"
        return sample
