"""A non-finite loss stops the run with the objective's name; the run resumes from the
last good checkpoint."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from medssl import hookimpl
from medssl.cli import main
from medssl.config import RecipeError, load_recipe
from medssl.engine.checkpoint import latest_valid_checkpoint
from medssl.engine.model import NonFiniteLossError
from medssl.engine.trainer import train
from medssl.plugins import load_registry
from medssl.types import Objective, ObjectiveResult, StepOutputs, ViewRequest


class ExplodingObjective(Objective):
    """Mean CLS activation, NaN from step ``explode_at`` on."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        explode_at: int = 2

    def __init__(self, explode_at: int = 2) -> None:
        super().__init__()
        self.explode_at = explode_at

    def request(self, patch_size: int) -> ViewRequest:
        return ViewRequest(global_crops=True, patch_size=patch_size)

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        value = out.student_global.cls.pow(2).mean()
        if out.step >= self.explode_at:
            value = value * torch.tensor(float("nan"))
        return ObjectiveResult(loss=value)


class ExplodingPlugin:
    @hookimpl
    def medssl_register_objectives(self, register):
        register("exploding", ExplodingObjective)


def test_non_finite_loss_names_objective_and_run_resumes(tiny_recipe):
    registry = load_registry([ExplodingPlugin()])
    overrides = ["objectives.exploding.weight=1", "train.checkpoint_every=1", "train.steps=4"]
    recipe = load_recipe(tiny_recipe, overrides, registry)
    with pytest.raises(NonFiniteLossError, match="objective 'exploding'.*step 2") as info:
        train(recipe, registry)
    assert info.value.objective == "exploding"
    run_dir = tiny_recipe.parent / "run"
    last = latest_valid_checkpoint(run_dir / "checkpoints")
    assert last is not None and last.name.endswith("00000002")  # steps 0 and 1 applied

    # The bad step was not applied: resuming with the objective fixed finishes the run.
    # Fixing it changes the recipe: refused with the key named unless accepted explicitly.
    fixed = load_recipe(tiny_recipe, [*overrides, "objectives.exploding.explode_at=100"], registry)
    with pytest.raises(RecipeError, match="objectives.exploding.explode_at: 2 -> 100"):
        train(fixed, registry, resume=True)
    result = train(fixed, registry, resume=True, accept_changes=True)
    assert result.steps == 4


def test_cli_reports_non_finite_loss_without_traceback(tiny_recipe, monkeypatch):
    # The CLI builds its own registry: make the one-off plugin visible through it.
    import medssl.cli_common as cli_common

    monkeypatch.setattr(cli_common, "load_registry", lambda: load_registry([ExplodingPlugin()]))
    result = CliRunner().invoke(
        main,
        [
            "run",
            str(tiny_recipe),
            "objectives.exploding.weight=1",
            "objectives.exploding.explode_at=1",
        ],
    )
    assert result.exit_code == 1
    assert "objective 'exploding' produced a non-finite loss" in result.output
    assert "--resume" in result.output and "Traceback" not in result.output
