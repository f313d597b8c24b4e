"""Built-in augmentations (filled by their issues)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

AUGMENTATIONS: dict[str, Callable[..., Any]] = {}
