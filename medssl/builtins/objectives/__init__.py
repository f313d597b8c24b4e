"""Built-in SSL objectives, one module each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medssl.builtins.objectives.clip import CLIP
from medssl.builtins.objectives.dino import DINO
from medssl.builtins.objectives.distillation import Distillation
from medssl.builtins.objectives.ibot import IBOT
from medssl.builtins.objectives.koleo import KoLeo
from medssl.builtins.objectives.mae import MAE

OBJECTIVES: dict[str, Callable[..., Any]] = {
    "dino": DINO,
    "ibot": IBOT,
    "koleo": KoLeo,
    "mae": MAE,
    "clip": CLIP,
    "distillation": Distillation,
}

__all__ = ["CLIP", "DINO", "Distillation", "IBOT", "KoLeo", "MAE", "OBJECTIVES"]
