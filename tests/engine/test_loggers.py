"""train.loggers: csv, TensorBoard and MLflow (local store) from a real tiny run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medssl.cli import main
from medssl.config import RecipeError, load_recipe


def test_csv_tensorboard_and_mlflow_runs(
    tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "medssl-test")
    runner = CliRunner()
    loggers = "train.loggers=[csv,tensorboard,mlflow]"
    first = runner.invoke(main, ["run", str(tiny_recipe), loggers, "train.steps=1"])
    assert first.exit_code == 0, first.output
    # --resume continues the same tracker runs (ids kept in trackers.json).
    second = runner.invoke(main, ["run", str(tiny_recipe), loggers, "train.steps=2", "--resume"])
    assert second.exit_code == 0, second.output
    run = tmp_path / "run"
    assert (run / "metrics.csv").is_file() and (run / "trackers.json").is_file()

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("loss_dino")] == [1, 2]
    assert "loss_curves" in events.Tags()["images"]

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["medssl-test"], output_format="list")
    assert len(runs) == 1
    found = runs[0]
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    params = found.data.params
    assert params["recipe/train/batch_size"] == "4"
    assert params["recipe/backbone/name"] == "vit_patch14"
    assert params["run/medssl_version"]
    assert not any(str(tmp_path) in v for v in params.values())  # no paths
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "loss_dino")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = mlflow.MlflowClient().list_artifacts(found.info.run_id)
    assert "loss_curves.png" in {a.path for a in artifacts}


def test_a_tracker_that_is_not_installed_is_a_recipe_error(
    tiny_recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(RecipeError, match=r"train.loggers.*'wandb' needs wandb .*medssl\[wandb\]"):
        load_recipe(tiny_recipe, ["train.loggers=[csv,wandb]"])
    result = CliRunner().invoke(main, ["validate", str(tiny_recipe), "train.loggers=[wandb]"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "pip install 'medssl[wandb]'" in result.output
    with pytest.raises(RecipeError, match="train.loggers.0"):
        load_recipe(tiny_recipe, ["train.loggers=[neptune]"])


@pytest.mark.slow
def test_ablate_logs_each_variant_as_its_own_run_with_its_scores(
    tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, medssl_registry
) -> None:  # type: ignore[no-untyped-def]
    mlflow = pytest.importorskip("mlflow")
    from medssl.ablate import run_ablation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = yaml.safe_load(tiny_recipe.read_text())
    config["data"] = {"name": "synthetic", "n_images": 20, "image_size": 56}
    config["train"].update(steps=1, loggers=["csv", "mlflow"])
    config["eval"] = [{"name": "knn", "k": 3}]
    tiny_recipe.write_text(yaml.safe_dump(config))
    out = tmp_path / "koleo_study"
    run_ablation([tiny_recipe], ["objectives.koleo.weight=0,0.1"], out, medssl_registry)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["medssl"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["koleo=0", "koleo=0.1"]
    for found in runs:
        assert found.data.tags["medssl.group"] == "koleo_study"
        assert found.info.status == "FINISHED"
        metrics = found.data.metrics
        assert "loss_dino" in metrics
        auroc = [k for k in metrics if k.startswith("eval/knn/") and k.endswith("/auroc")]
        assert auroc and f"{auroc[0]}/floor_pixels" in metrics
