"""`medssl export` writes a Hub model card (README.md) from the run, without paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medssl.cli import main
from medssl.engine.run_info import public_options
from medssl.eval import markdown_table
from medssl.eval.base import EvalResult, Row

transformers = pytest.importorskip("transformers")


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    header, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(header)


def test_export_writes_an_rgb_folder_with_a_model_card(tiny_recipe: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    trained = runner.invoke(main, ["run", str(tiny_recipe)])
    run = tmp_path / "run"
    assert trained.exit_code == 0, trained.output
    # A real evaluation's result format, with floors (running the probes is tested elsewhere).
    result = EvalResult(
        "linear_probe",
        "synthetic",
        [Row("mean", "auroc", 0.75, {"pixels": 0.6, "trivial": 0.5})],
        n_train=12,
        n_val=4,
    )
    (run / "eval.json").write_text(json.dumps({"results": [result.to_dict()]}))

    out = tmp_path / "hf"
    exported = runner.invoke(main, ["export", str(run), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert json.loads((out / "config.json").read_text())["num_channels"] == 3
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers"
    assert {"medssl", "medssl-dino", "dataset-synthetic"} <= set(meta["tags"])
    assert "license" not in meta and "# license:" in card  # left for the user
    # No paths (the recipe's output_dir is one; paths in data blocks: test below).
    assert str(tmp_path) not in card
    assert "Objectives (weight): dino (1)" in card
    assert "- steps: 2" in card and "final losses (step 2): loss_dino " in card
    row = markdown_table([result]).splitlines()[2]  # the probe's row, with its floors
    assert row.startswith("| linear_probe | mean |") and "**0.750**" in row and row in card
    assert "AutoModel.from_pretrained" in card and "convert('RGB')" in card
    assert str(tmp_path) not in (out / "medssl.json").read_text()

    grey = tmp_path / "hf_grey"
    exported = runner.invoke(main, ["export", str(run), "--out", str(grey), "--channels", "1"])
    assert exported.exit_code == 0, exported.output
    assert json.loads((grey / "config.json").read_text())["num_channels"] == 1
    assert "convert('L')" in (grey / "README.md").read_text()
    bad = runner.invoke(main, ["export", str(run), "--out", str(grey), "channels=2"])
    assert bad.exit_code != 0 and "channels must be 1 (grey) or 3 (RGB), got 2" in bad.output


def test_public_options_drop_paths() -> None:
    block = {
        "name": "folder",
        "root": "relative-name",
        "csv": "labels",
        "image_size": 224,
        "subset": "drr",
        "sources": ["/mnt/a", "/mnt/b"],
        "labels": {"file": "x.csv", "column": "finding"},
        "note": "scans.tar.gz",
    }
    assert public_options(block) == {
        "name": "folder",
        "image_size": 224,
        "subset": "drr",
        "labels": {"column": "finding"},
    }
