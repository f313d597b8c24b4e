"""Single-view policies: one random resized crop (and flip) per image.

* ``mae`` — He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022:
  ``RandomResizedCrop(224, scale=(0.2, 1.0))`` and a horizontal flip; the random patch
  masks (``ViewRequest.mae_mask_ratio``) come with the view.
* ``clip`` — Radford et al., 2021 / OpenCLIP's training transform:
  ``RandomResizedCrop(224, scale=(0.9, 1.0))``, no flip (reports name sides: "left
  lower lobe"), the batch's text passed through.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from medssl.augment.base import BasePolicy, PolicyOptions, check_crop_size, check_ranges
from medssl.augment.params import host_generator
from medssl.types import ViewRequest, Views

__all__ = ["CLIPView", "MAEView", "SingleViewPolicy"]


class SingleViewOptions(PolicyOptions):
    crop_size: int = Field(224, gt=0)
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> SingleViewOptions:
        check_ranges(self, ("scale", "ratio"))
        if self.scale[1] > 1:
            raise ValueError("scale is an area share: its upper end must be <= 1")
        return self


class SingleViewPolicy(BasePolicy):
    """A random resized crop and flip per image, normalised; masks and text on request."""

    Options: type[SingleViewOptions] = SingleViewOptions
    options: SingleViewOptions

    @property
    def global_crop_size(self) -> int:
        """The view's size (the engine reads it as the image size)."""
        return self.options.crop_size

    def __call__(
        self,
        images: Tensor,
        request: ViewRequest,
        generator: torch.Generator | None = None,
        text: list[str] | None = None,
    ) -> Views:
        images = self._check_request(images, request)
        generator = host_generator(generator)
        if request.global_crops or request.local_crops or request.block_masks is not None:
            raise ValueError(
                f"{self.name}: this policy makes one view per image, but the request asks "
                f"for multi-crop views (global/local crops or block masks); use "
                f"dinov2_multicrop or rad_dino_cxr"
            )
        o = self.options
        check_crop_size(o.crop_size, request.patch_size, "crop_size", self.name)
        batch = images.shape[0]
        src, scale = self._float_source(images)
        view = self._plain_view(src, scale, o.crop_size, o.scale, o.ratio, o.hflip_prob, generator)
        return Views(
            batch_size=batch,
            single_view=view,
            mae_masks=self._mae_masks(request, batch, o.crop_size, generator, images.device),
            text=self._text(request, text, batch),
        )


class MAEView(SingleViewPolicy):
    """MAE's view (registered as ``mae``)."""

    name = "mae"


class CLIPOptions(SingleViewOptions):
    scale: tuple[float, float] = (0.9, 1.0)
    hflip_prob: float = Field(0.0, ge=0, le=1)


class CLIPView(SingleViewPolicy):
    """CLIP's view (registered as ``clip``)."""

    Options = CLIPOptions
    name = "clip"
