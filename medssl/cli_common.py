"""What every ``medssl`` sub-command shares: the registry and recipes, failures as one line.

A leaf of the CLI: :mod:`medssl.cli` and the sub-command modules (``cli_eval``, ...)
import it, it imports none of them.
"""

from __future__ import annotations

import click

from medssl.config import RecipeError, ResolvedRecipe, load_recipe
from medssl.plugins import PluginError, Registry, load_registry

__all__ = ["cli_load_recipe", "cli_registry"]


def cli_registry() -> Registry:
    """The registry of every installed plugin; a plugin that fails is a one-line error."""
    try:
        return load_registry()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


def cli_load_recipe(recipe: str, overrides: tuple[str, ...], registry: Registry) -> ResolvedRecipe:
    """The validated recipe; an invalid one is a one-line error naming the key."""
    try:
        return load_recipe(recipe, overrides, registry)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
