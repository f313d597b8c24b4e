"""`medssl eval EXPORT_DIR data.*=...`: an exported folder evaluated without a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from medssl.cli import main

from .conftest import SYNTHETIC


def test_exported_folder_evaluates_from_its_own_preprocessing(
    fake_run: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    data = [
        f"data.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SYNTHETIC.items()
    ]
    ran = runner.invoke(main, ["eval", str(fake_run), "-e", "knn"])
    assert ran.exit_code == 0, ran.output
    on_run = json.loads((fake_run / "eval.json").read_text())["results"][0]["rows"]
    hf = tmp_path / "hf"
    exported = runner.invoke(main, ["export", str(fake_run), "--format", "hf", "--out", str(hf)])
    assert exported.exit_code == 0, exported.output

    out = tmp_path / "hf_eval"
    result = runner.invoke(main, ["eval", str(hf), *data, "eval.0.name=knn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "eval.json").read_text())
    assert payload["encoder"]["format"] == "hf"
    rows = payload["results"][0]["rows"]
    # The folder's preprocessor_config.json gives the run's size and normalisation.
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in on_run], abs=1e-6)

    default = runner.invoke(main, ["eval", str(hf), *data, "--out", str(tmp_path / "lp")])
    assert default.exit_code == 0, default.output
    results = json.loads((tmp_path / "lp" / "eval.json").read_text())["results"]
    assert [r["evaluator"] for r in results] == ["linear_probe"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "give the data to evaluate on (e.g. data.name=image_folder"),
        (["data.name=synthetic", "train.steps=3"], "only data.* and eval.* apply, not train"),
        (["data.name=synthetic", "data.n_imagez=3"], "data.n_imagez: unknown option"),
        (["data.name=synthetic", "eval.0.name=knnn"], "eval.0.name: unknown evaluator 'knnn'"),
    ],
)
def test_folder_without_recipe_errors_are_one_line(
    fake_run: Path, tmp_path: Path, args: list[str], expected: str
) -> None:
    hf = tmp_path / "hf"
    assert CliRunner().invoke(main, ["export", str(fake_run), "--out", str(hf)]).exit_code == 0
    result = CliRunner().invoke(main, ["eval", str(hf), *args])
    assert result.exit_code == 1 and expected in result.output, result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1
