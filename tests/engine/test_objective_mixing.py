"""Objectives mix from recipe overrides alone; weight 0 costs no compute at all."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from medssl import hookimpl
from medssl.config import load_recipe
from medssl.engine.trainer import Trainer, train
from medssl.plugins import load_registry
from medssl.types import Objective, ObjectiveResult, StepOutputs, ViewRequest

CALLS: dict[str, int] = {"built": 0, "loss": 0}


class CountingObjective(Objective):
    """Counts its constructions and loss calls; asks for local crops and MAE masks."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self) -> None:
        super().__init__()
        CALLS["built"] += 1

    def request(self, patch_size: int) -> ViewRequest:
        return ViewRequest(
            global_crops=True, local_crops=True, mae_mask_ratio=0.5, patch_size=patch_size
        )

    def loss(self, out: StepOutputs) -> ObjectiveResult:
        CALLS["loss"] += 1
        return ObjectiveResult(loss=out.student_global.cls.pow(2).mean())


class CountingPlugin:
    @hookimpl
    def medssl_register_objectives(self, register):
        register("counting", CountingObjective)


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.update(built=0, loss=0)


def test_weight_zero_objective_is_never_built_nor_run(tiny_recipe):
    registry = load_registry([CountingPlugin()])
    recipe = load_recipe(tiny_recipe, ["objectives.counting.weight=0"], registry)
    trainer = Trainer(recipe, registry, progress_bar=False)
    result = trainer.fit()
    assert result.steps == 2
    assert CALLS == {"built": 0, "loss": 0}
    # Nor does it shape the views: no MAE masks are made for a disabled MAE-like objective.
    assert trainer.request.mae_mask_ratio is None
    assert "counting" not in trainer.raw_model.objectives

    enabled = load_recipe(
        tiny_recipe,
        ["objectives.counting.weight=0.5", "output_dir=" + str(tiny_recipe.parent / "run2")],
        registry,
    )
    trainer = Trainer(enabled, registry, progress_bar=False)
    trainer.fit()
    assert CALLS == {"built": 1, "loss": 2}
    assert trainer.request.mae_mask_ratio == 0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["objectives.ibot.weight=1", "objectives.koleo.weight=0.1"],
        ["objectives.dino.weight=0", "objectives.mae.weight=1"],
        ["objectives.mae.weight=0.5", "objectives.koleo.weight=0.1"],
        ["objectives.dino.weight=0", "objectives.clip.weight=1", "data.with_text=true"],
    ],
)
def test_objective_combinations_from_overrides(tiny_recipe, overrides):
    small_heads = [
        "objectives.mae.decoder_dim=32",
        "objectives.mae.decoder_depth=1",
        "objectives.mae.decoder_heads=2",
        "objectives.ibot.prototypes=64",
        "objectives.ibot.hidden_dim=64",
        "objectives.ibot.bottleneck_dim=16",
        "objectives.clip.text_width=32",
        "objectives.clip.text_layers=1",
        "objectives.clip.text_heads=2",
        "objectives.clip.projection_dim=16",
        "objectives.clip.view=global",
        "objectives.mae.view=global",
    ]
    registry = load_registry()
    chosen = [o for o in small_heads if o.split(".")[1] in " ".join(overrides)]
    recipe = load_recipe(tiny_recipe, [*overrides, *chosen], registry)
    result = train(recipe, registry, progress_bar=False)
    assert result.steps == 2
    losses = {k for k in result.final_metrics if k.startswith("loss_")}
    assert losses == {f"loss_{s.name}" for s in recipe.enabled_objectives}


def test_ibot_shares_dino_head_whatever_the_recipe_order(tiny_recipe):
    text = tiny_recipe.read_text()
    # iBOT's block written before DINO's: the set-up order must not follow the YAML.
    ibot_first = text.replace(
        "objectives:\n", "objectives:\n  ibot:\n    weight: 1.0\n    prototypes: 64\n", 1
    )
    assert ibot_first != text
    tiny_recipe.write_text(ibot_first)
    registry = load_registry()
    recipe = load_recipe(tiny_recipe, [], registry)
    assert [s.name for s in recipe.enabled_objectives] == ["ibot", "dino"]
    trainer = Trainer(recipe, registry, progress_bar=False)
    assert trainer.fit().steps == 2
    ibot, dino = (trainer.raw_model.objectives[k] for k in ("ibot", "dino"))
    assert not ibot.owns_head
    assert ibot.heads == (dino.head, dino.teacher_head)
    assert list(trainer.raw_model.objectives) == ["ibot", "dino"]  # recipe order kept
