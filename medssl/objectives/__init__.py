"""Public building blocks for objectives, for the built-ins and for plugins alike.

- :class:`ConfiguredObjective`: an objective built as ``Factory(**options)`` and checked by
  its nested ``Options`` model, heads built in ``setup``;
- :class:`MaskedAutoencoder`: MAE's options, views, decoder and masked-patch loss for 2D
  images or 3D volumes (the built-in ``mae`` and medssl-ct's ``mae3d`` subclass it);
- :func:`patchify`: images or volumes to rows of patch pixels; :func:`sincos_3d`: a
  fixed 3D position embedding.
"""

from __future__ import annotations

from medssl.objectives.configured import ConfiguredObjective, check_divisible
from medssl.objectives.masked_autoencoder import (
    MAEOptions,
    MaskedAutoencoder,
    patchify,
    sincos_3d,
)

__all__ = [
    "ConfiguredObjective",
    "MAEOptions",
    "MaskedAutoencoder",
    "check_divisible",
    "patchify",
    "sincos_3d",
]
