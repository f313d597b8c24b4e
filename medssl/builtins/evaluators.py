"""Built-in evaluators (filled by their issues)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EVALUATORS: dict[str, Callable[..., Any]] = {}
