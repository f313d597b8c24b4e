"""``medssl plugin new NAME``: scaffold an installable medssl plugin package.

The package it writes (from ``medssl/templates/plugin/``) is a working plugin: a
``pyproject.toml`` declaring the ``medssl`` entry point, one dataset adapter registered
through ``medssl_register_datasets``, and a test that runs medssl's dataset contract on
it. ``pip install -e "NAME[test]" && python -m pytest NAME`` passes without edits.
"""

from __future__ import annotations

import keyword
import re
from importlib import resources
from pathlib import Path

import click

from medssl import __version__

__all__ = ["plugin", "render_plugin"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


def _names(name: str) -> dict[str, str]:
    """Distribution, module, short and class names from what the user typed."""
    raw = name.strip().lower()
    if not _NAME_RE.match(raw):
        raise click.BadParameter(
            f"{name!r}: use lower-case letters, digits and single '-' or '_' "
            "(e.g. medssl-ultrasound)",
            param_hint="NAME",
        )
    dist = raw.replace("_", "-")
    module = dist.replace("-", "_")
    short = module.removeprefix("medssl_") or module
    if keyword.iskeyword(module):
        raise click.BadParameter(f"{name!r} is a Python keyword", param_hint="NAME")
    class_name = "".join(part.capitalize() for part in short.split("_")) + "Images"
    return {
        "dist": dist,
        "module": module,
        "short": short,
        "class_name": class_name,
        "medssl_version": __version__,
    }


def _render(text: str, names: dict[str, str]) -> str:
    for key, value in names.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def render_plugin(name: str, parent: Path) -> Path:
    """Write the plugin package for ``name`` under ``parent``; return its folder."""
    names = _names(name)
    target = parent / names["dist"]
    if target.exists():
        raise click.ClickException(f"{target} already exists; choose another NAME or --output")
    template = resources.files("medssl") / "templates" / "plugin"

    def copy(node, rel: Path) -> None:
        for child in node.iterdir():
            if child.name == "__pycache__":
                continue
            out_name = _render(child.name, names).removesuffix(".tmpl")
            if child.is_dir():
                copy(child, rel / out_name)
                continue
            out = target / rel / out_name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_render(child.read_text(encoding="utf-8"), names), encoding="utf-8")

    copy(template, Path())
    return target


@click.group()
def plugin() -> None:
    """Author tools for medssl plugins."""


@plugin.command("new")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to create the package in.",
)
def new(name: str, output: Path) -> None:
    """Scaffold plugin package NAME (e.g. medssl-ultrasound): pyproject with the entry
    point, one dataset adapter, one contract test."""
    output.mkdir(parents=True, exist_ok=True)
    target = render_plugin(name, output)
    names = _names(name)
    click.echo(f"created {target}")
    click.echo(f'  pip install -e "{target}[test]"   # [test]: pytest, for the last line')
    click.echo(f"  medssl plugins            # lists {names['short']}_images from {names['dist']}")
    click.echo(f"  python -m pytest {target}")
