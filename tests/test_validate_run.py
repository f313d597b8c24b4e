"""`medssl validate` rejects every recipe `medssl run` would reject, and `run` keeps a
trained run whose evaluation fails (one line, exit 1)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from medssl.cli import main
from medssl.testing.pytest_plugin import TINY_RECIPE

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU machine")


def write_recipe(tmp_path: Path, **changes: object) -> Path:
    recipe = dict(copy.deepcopy(TINY_RECIPE), output_dir=str(tmp_path / "run"), **changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def unlabelled_folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def invoke(*args: object):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def assert_rejected(args: list[object], *expected: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output  # one line
    for text in expected:
        assert text in result.output, result.output


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.n_images=3"], ("train.batch_size", "fewer than one global batch")),
        (
            ["train.grad_accumulation=5"],
            ("16 images, fewer than one global batch", "5 accumulation steps"),
        ),
        (["train.steps_per_epoch=9"], ("train.steps_per_epoch=9 needs more images",)),
        (
            ["objectives.dino.head_init=/nonexistent/head.safetensors"],
            ("objectives.dino", "could not be set up", "head_init"),
        ),
        (
            [
                "augmentation.channels=3",
                "augmentation.mean=[0.5,0.5,0.5]",
                "augmentation.std=[0.25,0.25,0.25]",
            ],
            ("augmentation.channels", "3-channel views"),
        ),
        (["objectives.clip.weight=1"], ("objectives.clip", "needs report text")),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_validate_rejects_what_training_would(tmp_path, overrides, expected, command):
    """Both commands assemble the recipe alike (medssl.engine.assembly): the same line."""
    assert_rejected([command, write_recipe(tmp_path), *overrides], *expected)
    assert not (tmp_path / "run" / "checkpoints").exists()


@needs_no_cuda
def test_validate_checks_devices_against_this_machine(tmp_path):
    recipe = write_recipe(tmp_path)
    assert_rejected(["validate", recipe, "train.strategy=fsdp"], "train.strategy", "GPU-only")
    assert_rejected(["validate", recipe, "train.accelerator=cuda"], "train.devices", "a CPU")
    # A GPU recipe checked on a machine without one (a login node).
    ok = invoke("validate", recipe, "train.strategy=fsdp", "--no-device-check")
    assert ok.exit_code == 0, ok.output


def test_validate_refuses_an_output_dir_with_checkpoints_unless_resuming(tmp_path):
    recipe = write_recipe(tmp_path)
    (tmp_path / "run" / "checkpoints" / "step_00000002").mkdir(parents=True)
    assert_rejected(["validate", recipe], "output_dir", "pass --resume")
    assert invoke("validate", recipe, "--resume").exit_code == 0


@pytest.mark.parametrize(
    ("evaluators", "expected"),
    [
        ([{"name": "segmentation_probe"}], ("eval.0", "segmentation_probe", "has no masks")),
        (
            [{"name": "knn"}, {"name": "linear_probe", "data": "FOLDER"}],
            ("eval.1", "'linear_probe'", "'image_folder' has no labels"),
        ),
        ([{"name": "knn", "image_size": 50}], ("eval.0.image_size", "not a multiple")),
        (
            [{"name": "knn", "data": {"name": "synthetic", "n_images": 2}}],
            ("eval.0", "too few to split"),
        ),
        (
            [{"name": "knn", "data": {"name": "synthetic", "n_imagez": 2}}],
            ("eval.0", "eval.0.data.n_imagez", "did you mean 'n_images'"),
        ),
    ],
)
def test_validate_checks_the_eval_list_against_its_data(tmp_path, evaluators, expected):
    folder = {"name": "image_folder", "root": str(unlabelled_folder(tmp_path / "images"))}
    evaluators = [{**e, "data": folder} if e.get("data") == "FOLDER" else e for e in evaluators]
    assert_rejected(["validate", write_recipe(tmp_path, eval=evaluators)], *expected)


def test_run_rejects_an_eval_list_that_cannot_run_before_training(tmp_path):
    recipe = write_recipe(tmp_path, eval=[{"name": "segmentation_probe"}])
    assert_rejected(["run", recipe], "eval.0", "has no masks")
    assert not (tmp_path / "run").exists(), "nothing is trained for a recipe that cannot finish"


def test_run_keeps_the_trained_run_when_its_evaluation_fails(tmp_path, caplog):
    # Synthetic images carry no age or sex: only known once features are computed.
    recipe = write_recipe(tmp_path, eval=[{"name": "metadata_probe"}])
    with caplog.at_level(logging.INFO, logger="medssl"):
        result = invoke("run", recipe)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"run directory: {tmp_path / 'run'}"
    assert len(lines) == 2 and lines[1].startswith("Error: evaluation failed: ")
    assert "metadata_probe" in lines[1] and f"medssl eval {tmp_path / 'run'}" in lines[1]
    assert (tmp_path / "run" / "backbone.safetensors").is_file()
    assert list((tmp_path / "run" / "checkpoints").iterdir())
    # The progress log lines carry the elapsed time (and an ETA before the last step).
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps and "ETA" in steps[0] and "elapsed" in steps[-1], steps
