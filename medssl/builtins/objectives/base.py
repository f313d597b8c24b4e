"""The former home of the objectives' base, kept for code that imported it from here:
:class:`ConfiguredObjective` and :func:`check_divisible` are public in
:mod:`medssl.objectives`."""

from __future__ import annotations

from medssl.objectives.configured import ConfiguredObjective, check_divisible

__all__ = ["ConfiguredObjective", "check_divisible"]
