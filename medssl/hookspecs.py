"""Hook specifications of the ``medssl`` pluggy project.

Every ``medssl_register_*`` hook receives a ``register(name, factory)`` callable. A
factory is a class or callable taking the options of its recipe block as keyword
arguments; it may carry an ``Options`` pydantic model that validates those options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import pluggy

__all__ = [
    "Register",
    "hookspec",
    "medssl_register_augmentations",
    "medssl_register_backbones",
    "medssl_register_commands",
    "medssl_register_datasets",
    "medssl_register_evaluators",
    "medssl_register_exporters",
    "medssl_register_objectives",
]

hookspec = pluggy.HookspecMarker("medssl")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def medssl_register_backbones(register: Register) -> None:
    """Register encoders: ``register("vit_small_patch14", VisionTransformer)``."""


@hookspec
def medssl_register_objectives(register: Register) -> None:
    """Register SSL objectives (subclasses of :class:`medssl.types.Objective`)."""


@hookspec
def medssl_register_augmentations(register: Register) -> None:
    """Register augmentation policies (callables returning :class:`medssl.types.Views`)."""


@hookspec
def medssl_register_datasets(register: Register) -> None:
    """Register dataset adapters (``torch.utils.data.Dataset`` yielding samples)."""


@hookspec
def medssl_register_evaluators(register: Register) -> None:
    """Register evaluators run by ``medssl eval`` and a recipe's ``eval:`` list."""


@hookspec
def medssl_register_exporters(register: Register) -> None:
    """Register exporters used by ``medssl export --format NAME``."""


@hookspec
def medssl_register_commands(cli: click.Group) -> None:
    """Add click commands to the ``medssl`` command group."""
