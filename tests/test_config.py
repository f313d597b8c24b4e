"""Recipes: extends, overrides, validation and every error message."""

from __future__ import annotations

import textwrap
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from medssl import hookimpl
from medssl.config import RecipeError, build_component, load_config, load_recipe
from medssl.plugins import load_registry


class Toy:
    """A component whose options are validated by its own model."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 3
        mode: Literal["a", "b"] = "a"
        root: str

    def __init__(self, size: int = 3, mode: str = "a", root: str = "") -> None:
        if size == 13:
            raise ValueError("size 13 is unlucky")
        self.size, self.mode, self.root = size, mode, root


class ToyPlugin:
    @hookimpl
    def medssl_register_datasets(self, register):
        register("toy_data", Toy)

    @hookimpl
    def medssl_register_objectives(self, register):
        register("toy_loss", Toy)
        register("other_loss", Toy)

    @hookimpl
    def medssl_register_augmentations(self, register):
        register("toy_aug", Toy)


BASE = """
    seed: 1
    output_dir: runs/x
    data: {name: toy_data, root: /data}
    augmentation: {name: toy_aug, root: a}
    backbone: {name: vit_patch14, embed_dim: 32, depth: 1, num_heads: 2, img_size: 56}
    objectives:
      toy_loss: {weight: 1.0, root: r}
    train: {batch_size: 4, steps: 10}
"""


@pytest.fixture
def registry():
    return load_registry([ToyPlugin()])


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(BASE))
    return path


def test_loads_and_validates(recipe, registry):
    resolved = load_recipe(recipe, registry=registry)
    assert resolved.data.name == "toy_data"
    assert resolved.data.options == {"size": 3, "mode": "a", "root": "/data"}
    assert resolved.train.batch_size == 4
    assert [s.name for s in resolved.enabled_objectives] == ["toy_loss"]
    toy = build_component(registry, resolved.data)
    assert isinstance(toy, Toy) and toy.root == "/data"


def test_overrides_and_new_objective_from_overrides(recipe, registry):
    resolved = load_recipe(
        recipe,
        [
            "train.batch_size=8",
            "objectives.toy_loss.weight=0",
            "objectives.other_loss.weight=0.5",
            "objectives.other_loss.root=q",
            "data.size=5",
        ],
        registry,
    )
    assert resolved.train.batch_size == 8
    assert load_recipe(recipe, ["train.precision=32"], registry).train.precision == "32"
    assert resolved.data.options["size"] == 5
    assert [(s.name, s.weight) for s in resolved.enabled_objectives] == [("other_loss", 0.5)]


def test_extends_merges_base(tmp_path, recipe, registry):
    child = tmp_path / "child.yaml"
    child.write_text("extends: recipe.yaml\ntrain: {steps: 3}\ndata: {size: 7}\n")
    resolved = load_recipe(child, registry=registry)
    assert resolved.train.steps == 3 and resolved.train.batch_size == 4
    assert resolved.data.options["size"] == 7 and resolved.data.options["root"] == "/data"


def test_naming_another_component_starts_its_block_afresh(tmp_path, recipe, registry):
    child = tmp_path / "child.yaml"
    child.write_text("extends: recipe.yaml\ndata: {name: toy_data, root: /other}\n")
    assert load_recipe(child, registry=registry).data.options["root"] == "/other"
    # Switching the dataset drops the old block's options instead of leaking them.
    resolved = load_recipe(recipe, ["data.name=synthetic", "data.n_images=8"], registry)
    assert resolved.data.name == "synthetic"
    assert resolved.data.options["n_images"] == 8 and "root" not in resolved.data.options


def test_extends_loop_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="loop"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["objectives.dinno.weight=1"], r"objectives\.dinno\.name: unknown objective 'dinno'"),
        (
            ["data.name=toy_dta"],
            r"data\.name: unknown dataset 'toy_dta' — did you mean 'toy_data'\?",
        ),
        (["data.size=abc"], r"data\.size: Input should be a valid integer.*'abc'"),
        (["data.sise=4"], r"data\.sise: unknown option — did you mean 'size'\?"),
        (["data.mode=c"], r"data\.mode: Input should be 'a' or 'b'"),
        (["train.batch_size=-1"], r"train\.batch_size: Input should be greater than 0"),
        (["train.bach_size=2"], r"train\.bach_size: unknown option — did you mean 'batch_size'\?"),
        (
            ["objectives.toy_loss.weight=x"],
            r"objectives\.toy_loss\.weight: weight must be a number",
        ),
        (["objectives.toy_loss.weight=0"], r"objectives: every objective has weight 0"),
        (["colour=red"], r"colour: unknown option"),
    ],
)
def test_error_messages_name_file_key_and_expectation(recipe, registry, overrides, expected):
    with pytest.raises(RecipeError, match=expected) as info:
        load_recipe(recipe, overrides, registry)
    assert str(info.value).startswith(str(recipe))


def test_missing_required_key(tmp_path, registry):
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent(BASE).replace(
            "data: {name: toy_data, root: /data}", "data: {name: toy_data}"
        )
    )
    with pytest.raises(RecipeError, match=r"data\.root: required key is missing"):
        load_recipe(path, registry=registry)
    path.write_text(textwrap.dedent(BASE).replace("train: {batch_size: 4, steps: 10}\n", ""))
    with pytest.raises(RecipeError, match=r"train: required key is missing"):
        load_recipe(path, registry=registry)


def test_missing_name_and_length(tmp_path, registry):
    path = tmp_path / "r.yaml"
    path.write_text(
        textwrap.dedent(BASE).replace("data: {name: toy_data, root: /data}", "data: {root: /data}")
    )
    with pytest.raises(RecipeError, match=r"data\.name: required key is missing"):
        load_recipe(path, registry=registry)
    path.write_text(textwrap.dedent(BASE).replace("steps: 10", "log_every: 2"))
    with pytest.raises(RecipeError, match="set train.steps or train.epochs"):
        load_recipe(path, registry=registry)


def test_bad_yaml_and_bad_override(tmp_path, recipe):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(RecipeError, match="cannot parse YAML"):
        load_config(bad)
    with pytest.raises(RecipeError, match="not KEY=VALUE"):
        load_config(recipe, ["justakey"])
    with pytest.raises(RecipeError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_build_component_error_names_block_and_plugin(recipe, registry):
    resolved = load_recipe(recipe, ["data.size=13"], registry)
    with pytest.raises(
        RecipeError, match=r"data: dataset 'toy_data' \(from plugin 'ToyPlugin'\).*unlucky"
    ):
        build_component(registry, resolved.data)
