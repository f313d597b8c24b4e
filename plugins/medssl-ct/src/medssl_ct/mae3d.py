"""``mae3d``: the masked autoencoder on 3D patches.

medssl's :class:`medssl.objectives.MaskedAutoencoder` (He et al. 2022) with a 3D grid:
cubes of ``p³·C`` voxels as targets and a fixed 3D sine-cosine position embedding in the
decoder (one third of the channels per axis, as in the 3D MAEs of Chen et al. 2023,
"Masked Image Modeling Advances 3D Medical Image Analysis"). Options, decoder (lightly's
``MaskedVisionTransformerDecoderTIMM``) and loss (MSE on the hidden patches, per-patch
normalised targets) are the built-in ``mae``'s.
"""

from __future__ import annotations

from medssl.objectives import MaskedAutoencoder

__all__ = ["MAE3D"]


class MAE3D(MaskedAutoencoder):
    """Masked-autoencoder loss on 3D patches (module docstring)."""

    name = "mae3d"
    spatial_dims = 3
