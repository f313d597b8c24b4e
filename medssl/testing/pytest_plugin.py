"""pytest plugin (entry point ``pytest11``): fixtures for testing medssl components.

Installed with medssl, so any project's tests (a plugin's included) get, without a
conftest:

* ``medssl_plugin_manager`` / ``medssl_registry`` — a fresh plugin manager / registry
  (entry points and built-ins), never shared between tests;
* ``medssl_registry_with`` — a registry with one-off plugins added (objects or modules
  with ``@hookimpl`` functions), for components not installed as a package;
* ``tiny_recipe`` — a recipe file that trains a tiny ViT with DINO for 2 steps on
  synthetic images; ``medssl_write_recipe`` writes any recipe mapping to a file;
* ``medssl_cli`` — runs the ``medssl`` command line in-process and checks its exit code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from medssl.plugins import Registry, get_plugin_manager, load_registry

__all__ = ["TINY_RECIPE"]

TINY_RECIPE = {
    "seed": 0,
    "data": {"name": "synthetic", "n_images": 16, "image_size": 64, "channels": 1},
    "augmentation": {
        "name": "dinov2_multicrop",
        "global_crop_size": 56,
        "local_crop_size": 28,
        "n_local_crops": 2,
        "channels": 1,
        "mean": [0.5],
        "std": [0.25],
    },
    "backbone": {
        "name": "vit_patch14",
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "img_size": 56,
    },
    "objectives": {
        "dino": {"weight": 1.0, "prototypes": 64, "hidden_dim": 64, "bottleneck_dim": 16}
    },
    "train": {"batch_size": 4, "steps": 2, "warmup_epochs": 0, "log_every": 1},
}


@pytest.fixture
def medssl_plugin_manager():
    """A fresh plugin manager (entry points and built-ins), not shared with other tests."""
    return get_plugin_manager()


@pytest.fixture
def medssl_registry() -> Registry:
    """A fresh component registry."""
    return load_registry()


@pytest.fixture
def medssl_registry_with() -> Callable[..., Registry]:
    """``medssl_registry_with(plugin, ...)``: a fresh registry with one-off plugins added."""

    def build(*plugins: Any) -> Registry:
        return load_registry(plugins)

    return build


@pytest.fixture
def medssl_write_recipe(tmp_path: Path) -> Callable[..., Path]:
    """``medssl_write_recipe(mapping, name="recipe.yaml")``: a recipe file under tmp_path.

    ``output_dir`` defaults to ``tmp_path / "run"`` so runs never write into the project.
    """

    def write(recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
        recipe = copy.deepcopy(recipe)
        recipe.setdefault("output_dir", str(tmp_path / "run"))
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe file that trains a tiny ViT with DINO for 2 steps on synthetic images."""
    recipe = dict(copy.deepcopy(TINY_RECIPE), output_dir=str(tmp_path / "run"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def medssl_cli() -> Callable[..., Any]:
    """``medssl_cli(["validate", path], expect=0)``: the command line, run in-process.

    Returns click's ``Result``; fails the test with the output when the exit code is not
    ``expect`` (``None`` accepts any).
    """
    from click.testing import CliRunner

    from medssl.cli import main

    def invoke(args: Sequence[str], expect: int | None = 0) -> Any:
        result = CliRunner().invoke(main, [str(a) for a in args])
        if expect is not None and result.exit_code != expect:
            detail = result.output
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                import traceback

                detail += "".join(traceback.format_exception(result.exception))
            pytest.fail(
                f"`medssl {' '.join(map(str, args))}` exited {result.exit_code}, expected "
                f"{expect}:\n{detail}"
            )
        return result

    return invoke
