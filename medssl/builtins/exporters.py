"""Built-in exporters (``medssl export --format NAME``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medssl.export.huggingface import HFExporter

EXPORTERS: dict[str, Callable[..., Any]] = {"hf": HFExporter}
