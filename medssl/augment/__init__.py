"""Batched augmentation policies that run on the training device.

The loader decodes and resizes; a policy turns the stacked batch into the views the
enabled objectives ask for (:class:`medssl.types.ViewRequest` -> :class:`medssl.types.Views`):
DINOv2 multi-crop, the RAD-DINO chest X-ray variant, MAE and CLIP single views, iBOT block
masks and MAE random masks. Random parameters come from one ``torch.Generator``.
"""

from __future__ import annotations

from medssl.augment.masks import (
    block_mask,
    block_mask_3d,
    block_masks,
    block_masks_nd,
    random_masks,
)
from medssl.augment.multicrop import DINOv2MultiCrop, MultiCropPolicy
from medssl.augment.rad_dino import RadDinoCXR
from medssl.augment.single_view import CLIPView, MAEView, SingleViewPolicy

__all__ = [
    "CLIPView",
    "DINOv2MultiCrop",
    "MAEView",
    "MultiCropPolicy",
    "RadDinoCXR",
    "SingleViewPolicy",
    "block_mask",
    "block_mask_3d",
    "block_masks",
    "block_masks_nd",
    "random_masks",
]
