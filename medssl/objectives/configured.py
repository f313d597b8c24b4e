"""The base of objectives configured by a nested ``Options`` model (built-in or plugin)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel

from medssl.types import Objective

__all__ = ["ConfiguredObjective", "check_divisible"]


class ConfiguredObjective(Objective):
    """An objective built as ``Factory(**options)`` and validated by its nested ``Options``.

    Construction only validates: heads are built in :meth:`setup`, so an objective that
    is never set up (weight 0) costs nothing.
    """

    Options: ClassVar[type[BaseModel]]

    def __init__(self, **options: object) -> None:
        super().__init__()
        self.options = self.Options(**options)


def check_divisible(width: int, heads: int, width_name: str, heads_name: str) -> None:
    """Attention needs the width to split evenly over the heads."""
    if width % heads:
        raise ValueError(f"{width_name} ({width}) must be divisible by {heads_name} ({heads})")
