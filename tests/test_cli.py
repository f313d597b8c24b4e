"""The command line, through click's CliRunner."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from click.testing import CliRunner

from medssl.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_commands(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "validate", "plugins"):
        assert command in result.output
    for command in ("run", "validate", "plugins"):
        sub = runner.invoke(main, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.output


def test_plugins_lists_builtins_by_kind(runner):
    result = runner.invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "backbones" in result.output and "vit_base_patch14" in result.output
    listing = json.loads(runner.invoke(main, ["plugins", "--json"]).output)
    names = {item["name"]: item["plugin"] for item in listing["components"]["objective"]}
    assert names["dino"] == "medssl"
    assert {"dino", "ibot", "koleo", "mae", "clip"} <= set(names)


def test_validate_ok(runner, tiny_recipe):
    result = runner.invoke(main, ["validate", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["objectives.dinno.weight=1"], "unknown objective 'dinno' — did you mean 'dino'?"),
        (
            ["objectives.dino.prototypes=many"],
            "objectives.dino.prototypes: Input should be a valid integer",
        ),
        (
            ["backbone.embed_dimm=3"],
            "backbone.embed_dimm: unknown option — did you mean 'embed_dim'?",
        ),
        (["data.name=null"], "data.name: required key is missing"),
        (["objectives.clip.weight=1"], "objectives.clip: objective 'clip' needs report text"),
    ],
)
def test_validate_errors_exit_1_without_traceback(runner, tiny_recipe, overrides, expected):
    result = runner.invoke(main, ["validate", str(tiny_recipe), *overrides])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert str(tiny_recipe) in result.output


def test_run_writes_run_directory_and_resumes(runner, tiny_recipe, tmp_path):
    result = runner.invoke(main, ["run", str(tiny_recipe), "train.checkpoint_every=1"])
    assert result.exit_code == 0, result.output
    assert "diagnostics: dino: " in result.output  # each objective's state, at the end
    run_dir = tmp_path / "run"
    for name in (
        "config.yaml",
        "run.json",
        "metrics.csv",
        "loss_curves.png",
        "backbone.safetensors",
    ):
        assert (run_dir / name).is_file(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train"]["checkpoint_every"] == 1
    info = json.loads((run_dir / "run.json").read_text())
    assert info["seed"] == 0 and info["plugins"]["medssl"]
    assert info["dependencies"]["torch"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, not NaN
    assert len(list((run_dir / "checkpoints").iterdir())) == 2

    again = runner.invoke(main, ["run", str(tiny_recipe)])
    assert again.exit_code == 1 and "--resume" in again.output

    more = runner.invoke(main, ["run", str(tiny_recipe), "train.steps=3", "--resume"])
    assert more.exit_code == 0, more.output
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
