"""Built-in SSL objectives, one module each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OBJECTIVES: dict[str, Callable[..., Any]] = {}
