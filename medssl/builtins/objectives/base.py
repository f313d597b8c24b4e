"""Where the built-in objectives imported their base from; it is public now, in
:mod:`medssl.objectives`."""

from __future__ import annotations

from medssl.objectives.configured import ConfiguredObjective, check_divisible

__all__ = ["ConfiguredObjective", "check_divisible"]
