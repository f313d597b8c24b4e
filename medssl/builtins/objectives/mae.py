"""The built-in ``mae`` objective: :class:`medssl.objectives.MaskedAutoencoder` on 2D images.

He et al., "Masked Autoencoders Are Scalable Vision Learners" (2022); the decoder, the
views and the loss are described in :mod:`medssl.objectives.masked_autoencoder`. MAE mixes
with DINO / iBOT on the same backbone (no teacher); ``view: global`` asks for no extra view
and uses global crop 0. This module adds MAE's learning signals.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medssl.objectives.masked_autoencoder import MaskedAutoencoder, patchify
from medssl.types import LearningSignals

__all__ = ["MAE", "patchify"]


class MAE(MaskedAutoencoder):
    """Masked-autoencoder reconstruction loss on 2D images, with learning signals."""

    name = "mae"
    spatial_dims = 2

    def learning_signals(self, target: Tensor, m: Tensor, visible: Tensor) -> LearningSignals:
        return _signals(target, m, visible)


@torch.no_grad()
def _signals(target: Tensor, m: Tensor, visible: Tensor) -> LearningSignals:
    """Chance: the loss of predicting, for every hidden patch, the mean of that image's
    hidden target patches (the best prediction that ignores where a patch is and what is
    visible), in the loss's own normalisation (``norm_pix_loss`` or not)."""
    weights = m.unsqueeze(-1)
    mean = (target * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(
        1.0
    )
    per_patch = (target - mean).pow(2).mean(dim=-1)
    chance = (per_patch * m).sum() / m.sum().clamp_min(1.0)
    return LearningSignals(
        chance=chance,
        backbone_tokens=(visible,),
        hint="objectives.mae.mask_ratio (lower), objectives.mae.decoder_depth, train.lr",
    )
