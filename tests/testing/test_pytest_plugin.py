"""The fixtures medssl's pytest plugin (entry point pytest11) gives every project."""

from __future__ import annotations

import pytest
import yaml

from medssl import hookimpl
from medssl.testing.pytest_plugin import TINY_RECIPE


class OneOff:
    @hookimpl
    def medssl_register_datasets(self, register):
        register("one_off_dataset", dict)


def test_registry_fixtures_are_fresh(medssl_registry, medssl_plugin_manager, medssl_registry_with):
    assert "vit_patch14" in medssl_registry.names("backbone")
    assert medssl_plugin_manager.get_plugin("medssl") is not None
    with_plugin = medssl_registry_with(OneOff())
    assert with_plugin.get("dataset", "one_off_dataset").provider.name == "OneOff"
    assert "one_off_dataset" not in medssl_registry.names("dataset")


def test_write_recipe_keeps_runs_under_tmp_path(medssl_write_recipe, tmp_path):
    path = medssl_write_recipe(TINY_RECIPE, name="r.yaml")
    written = yaml.safe_load(path.read_text())
    assert path == tmp_path / "r.yaml"
    assert written["output_dir"] == str(tmp_path / "run")
    assert "output_dir" not in TINY_RECIPE  # the shared mapping is not modified
    explicit = medssl_write_recipe({**TINY_RECIPE, "output_dir": "elsewhere"}, name="e.yaml")
    assert yaml.safe_load(explicit.read_text())["output_dir"] == "elsewhere"


def test_tiny_recipe_validates_through_medssl_cli(tiny_recipe, medssl_cli):
    result = medssl_cli(["validate", tiny_recipe])
    assert "valid" in result.output


def test_medssl_cli_fails_the_test_on_an_unexpected_exit_code(medssl_cli, tiny_recipe):
    with pytest.raises(pytest.fail.Exception, match="exited 1, expected 0"):
        medssl_cli(["validate", tiny_recipe, "backbone.name=no_such_backbone"])
    result = medssl_cli(["validate", tiny_recipe, "backbone.name=no_such_backbone"], expect=1)
    assert "no_such_backbone" in result.output
