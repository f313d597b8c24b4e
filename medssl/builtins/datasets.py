"""Built-in datasets (filled by their issues)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DATASETS: dict[str, Callable[..., Any]] = {}
