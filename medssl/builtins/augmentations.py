"""Built-in augmentations (filled by their issues)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medssl.augment import CLIPView, DINOv2MultiCrop, MAEView, RadDinoCXR

AUGMENTATIONS: dict[str, Callable[..., Any]] = {
    "dinov2_multicrop": DINOv2MultiCrop,
    "rad_dino_cxr": RadDinoCXR,
    "mae": MAEView,
    "clip": CLIPView,
}
