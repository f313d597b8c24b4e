"""Evaluators end to end on a run directory: eval.json / eval.md with floors, CLI, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from medssl.cli import main
from medssl.config import load_recipe
from medssl.eval import run_evaluators


def _recipe(run: Path, registry, evals: list[dict]):  # type: ignore[no-untyped-def]
    return load_recipe(run / "config.yaml", [f"eval={json.dumps(evals)}"], registry)


def test_run_evaluators_writes_scores_with_floors(fake_run: Path, medssl_registry) -> None:  # type: ignore[no-untyped-def]
    evals = [
        {"name": "linear_probe", "C": 1.0},
        {"name": "knn", "k": 5},
        {"name": "segmentation_probe", "epochs": 3, "mask_size": 28},
        {"name": "linear_probe", "features": "cls+mean_patch", "C": 1.0},
    ]
    payload = run_evaluators(fake_run, _recipe(fake_run, medssl_registry, evals), medssl_registry)
    saved = json.loads((fake_run / "eval.json").read_text())
    assert saved == json.loads(json.dumps(payload))
    names = [r["evaluator"] for r in saved["results"]]
    assert names == ["linear_probe", "knn", "segmentation_probe", "linear_probe"]
    for result in saved["results"]:
        assert result["n_train"] == 32 and result["n_val"] == 8  # 80/20 of 40 synthetic images
        for row in result["rows"]:
            assert set(row["floors"]) == {"random", "pixels", "trivial"}
            assert 0.0 <= row["score"] <= 1.0
            assert set(row["vs"]) <= {"random", "pixels", "trivial"}
    seg = saved["results"][2]["rows"]
    assert [r["target"] for r in seg] == ["disc"] and seg[0]["metric"] == "dice"
    table = (fake_run / "eval.md").read_text()
    assert "raw pixels" in table and "random weights" in table and "trivial" in table
    # 3 metrics x (3 default feature modes + 1)
    assert table.count("| linear_probe |") == 12


def test_metadata_probe_on_manifest_with_age_and_sex(
    tmp_path: Path, fake_run: Path, medssl_registry
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    rows = ["path,age,sex,split"]
    for i in range(40):
        age, sex = int(rng.integers(20, 90)), "F" if i % 2 else "M"
        image = np.full((28, 28), age * 2, np.uint8)  # brightness encodes age
        image[:, :14] = 200 if sex == "F" else 40  # the left half encodes sex
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{age},{sex},{'val' if i % 5 == 0 else 'train'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = {
        "name": "csv_manifest",
        "root": str(tmp_path),
        "manifest": "m.csv",
        "meta_columns": {"age": "age", "sex": "sex"},
        "split_column": "split",
        "image_size": 28,
    }
    recipe = _recipe(
        fake_run,
        medssl_registry,
        [{"name": "metadata_probe", "data": data, "targets": ["age", "sex", "view"]}],
    )
    result = run_evaluators(fake_run, recipe, medssl_registry)["results"][0]
    assert result["dataset"] == "csv_manifest (official split)"
    assert result["split"]["names"] == ["train", "val"] and result["split"]["group"] is None
    assert (result["n_train"], result["n_val"]) == (32, 8)
    got = {(r["target"], r["metric"]): r for r in result["rows"]}
    assert set(got) == {("age", "abs_err"), ("age", "r2"), ("sex", "auroc"), ("sex", "accuracy")}
    assert got[("age", "r2")]["floors"]["pixels"] > 0.9  # a linear function of the pixels
    assert got[("sex", "auroc")]["floors"]["trivial"] == 0.5
    assert any("view: skipped" in note for note in result["notes"])


def test_unlabelled_data_names_the_evaluator(
    fake_run: Path, tmp_path: Path, medssl_registry
) -> None:  # type: ignore[no-untyped-def]
    for i in range(6):
        Image.fromarray(np.full((16, 16), i * 30, np.uint8)).save(tmp_path / f"u{i}.png")
    (tmp_path / "u.csv").write_text("path\n" + "".join(f"u{i}.png\n" for i in range(6)))
    data = {"name": "csv_manifest", "root": str(tmp_path), "manifest": "u.csv", "image_size": 28}
    recipe = _recipe(fake_run, medssl_registry, [{"name": "linear_probe", "data": data}])
    with pytest.raises(ValueError, match="evaluator 'linear_probe'.*no labels"):
        run_evaluators(fake_run, recipe, medssl_registry)


def test_bad_evaluator_option_fails_validation(fake_run: Path, medssl_registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ValueError, match=r"eval\.0\.featurs: unknown option — did you mean 'features'"
    ):
        _recipe(fake_run, medssl_registry, [{"name": "linear_probe", "featurs": "cls"}])


def test_eval_cli_on_run_and_on_exported_folder(fake_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["eval", str(fake_run), "-e", "knn"])
    assert result.exit_code == 0, result.output
    assert "| knn |" in result.output and "raw pixels" in result.output
    assert result.output.count("| knn |") == 9  # the table once: 3 metrics x 3 feature modes
    first = json.loads((fake_run / "eval.json").read_text())["results"][0]["rows"]

    hf = tmp_path / "hf"
    result = runner.invoke(main, ["export", str(fake_run), "--format", "hf", "--out", str(hf)])
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in hf.iterdir()
    }
    out = tmp_path / "hf_eval"
    args = [
        "eval",
        str(hf),
        "--recipe",
        str(fake_run / "config.yaml"),
        "-e",
        "knn",
        "--out",
        str(out),
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    again = json.loads((out / "eval.json").read_text())["results"][0]["rows"]
    # Same weights and preprocessing through the HF folder: the same k-NN scores.
    assert [r["score"] for r in again] == pytest.approx([r["score"] for r in first], abs=1e-6)

    result = runner.invoke(main, ["eval", str(hf)])
    assert result.exit_code != 0 and "--recipe" in result.output


def test_medssl_run_evaluates_after_training(tiny_recipe: Path) -> None:
    config = yaml.safe_load(tiny_recipe.read_text())
    config["data"] = {"name": "synthetic", "n_images": 24, "image_size": 56}
    config["eval"] = [{"name": "knn", "k": 3}]
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["run", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    saved = json.loads((Path(config["output_dir"]) / "eval.json").read_text())
    assert saved["results"][0]["evaluator"] == "knn"
