"""Built-in exporters (filled by their issues)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EXPORTERS: dict[str, Callable[..., Any]] = {}
