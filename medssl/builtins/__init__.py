"""medssl's own components, registered through the same hooks as any plugin.

Imports happen inside the hooks so that ``import medssl`` stays light.
"""

from __future__ import annotations

import click

from medssl import hookimpl
from medssl.hookspecs import Register


@hookimpl
def medssl_register_backbones(register: Register) -> None:
    from medssl.builtins import backbones

    for name, factory in backbones.BACKBONES.items():
        register(name, factory)


@hookimpl
def medssl_register_objectives(register: Register) -> None:
    from medssl.builtins import objectives

    for name, factory in objectives.OBJECTIVES.items():
        register(name, factory)


@hookimpl
def medssl_register_augmentations(register: Register) -> None:
    from medssl.builtins import augmentations

    for name, factory in augmentations.AUGMENTATIONS.items():
        register(name, factory)


@hookimpl
def medssl_register_datasets(register: Register) -> None:
    from medssl.builtins import datasets

    for name, factory in datasets.DATASETS.items():
        register(name, factory)


@hookimpl
def medssl_register_evaluators(register: Register) -> None:
    from medssl.builtins import evaluators

    for name, factory in evaluators.EVALUATORS.items():
        register(name, factory)


@hookimpl
def medssl_register_exporters(register: Register) -> None:
    from medssl.builtins import exporters

    for name, factory in exporters.EXPORTERS.items():
        register(name, factory)


@hookimpl
def medssl_register_commands(cli: click.Group) -> None:
    # The core commands live in medssl.cli; this hook is for plugins.
    del cli
