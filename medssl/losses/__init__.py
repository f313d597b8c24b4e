"""Functional SSL losses: DINO / iBOT centring and cross-entropy, KoLeo, fused prototype heads.

Every function takes ``impl="auto" | "torch" | "triton"`` (see :mod:`medssl.losses.dispatch`).
Each is tested against the formulas of facebookresearch/dinov2 (``dinov2/loss``) and, where
it computes the same loss, against lightly's.
"""

from __future__ import annotations

from medssl.losses.centering import sinkhorn_knopp, softmax_center
from medssl.losses.cross_entropy import soft_cross_entropy
from medssl.losses.koleo import koleo
from medssl.losses.prototype import prototype_cross_entropy, prototype_targets
from medssl.losses.targets import PrototypeTargets

__all__ = [
    "PrototypeTargets",
    "koleo",
    "prototype_cross_entropy",
    "prototype_targets",
    "sinkhorn_knopp",
    "soft_cross_entropy",
    "softmax_center",
]
