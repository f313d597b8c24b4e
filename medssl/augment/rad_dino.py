"""The RAD-DINO chest X-ray multi-crop policy.

Pérez-García et al., "Exploring Scalable Medical Image Encoders Beyond Text
Supervision", Nature Machine Intelligence 2025. The paper trains with DINOv2's recipe on
chest radiographs; which augmentations it changed is not public, so this policy keeps
DINOv2's multi-crop geometry, blur and solarisation (see
:mod:`medssl.augment.multicrop`) and replaces the colour ops by grey-level ones:

* brightness and contrast (as DINOv2, 0.4 each) and gamma (0.7–1.5, the range of
  exposure/window differences between radiographs), in random order with p 0.8;
  no hue, saturation or grayscale: an RGB input is converted to grey first.
* No vertical flip (radiographs are acquired upright). Horizontal flip is off by default:
  mirroring a chest radiograph moves the heart to the right (situs inversus), mirrors
  the lead laterality markers and swaps left/right findings, which downstream tasks
  (lung zones, device position, laterality of findings) need to keep; set
  ``hflip_prob=0.5`` for DINOv2's behaviour.
* Normalisation with the released ``microsoft/rad-dino`` preprocessor (mean 0.5307,
  std 0.2583 on every channel); 3 output channels by default, as that model's patch
  embedding expects (a grey image repeated).
* Global crops are 224 px by default (DINOv2's first stage); the flagship recipe sets
  ``global_crop_size: 518``, the released model's resolution.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from medssl.augment.base import check_ranges
from medssl.augment.multicrop import MultiCropOptions, MultiCropPolicy, Range

__all__ = ["RAD_DINO_MEAN", "RAD_DINO_STD", "RadDinoCXR"]

RAD_DINO_MEAN = 0.5307
RAD_DINO_STD = 0.2583


class RadDinoOptions(MultiCropOptions):
    """The chest X-ray policy's options (grey-level jitter)."""

    mean: tuple[float, ...] = (RAD_DINO_MEAN,)
    std: tuple[float, ...] = (RAD_DINO_STD,)
    hflip_prob: float = Field(0.0, ge=0, le=1)
    gamma: Range = (0.7, 1.5)
    """Range of the gamma exponent applied when jitter fires."""

    @model_validator(mode="after")
    def _check_gamma(self) -> RadDinoOptions:
        check_ranges(self, ("gamma",))
        return self


class RadDinoCXR(MultiCropPolicy):
    """Grey-level DINOv2 multi-crop for chest radiographs (registered as ``rad_dino_cxr``)."""

    Options = RadDinoOptions
    options: RadDinoOptions
    name = "rad_dino_cxr"
    jitter_ops = ("brightness", "contrast", "gamma")
    grey_only = True

    def _factor_range(self, op: str) -> Range:
        return self.options.gamma if op == "gamma" else super()._factor_range(op)
