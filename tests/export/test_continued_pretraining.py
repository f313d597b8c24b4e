"""Continued pre-training: a run exported to the HF layout starts another run, heads included."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from medssl.cli import main
from medssl.config import load_recipe
from medssl.engine.trainer import Trainer
from medssl.plugins import load_registry


def test_exported_folder_initialises_backbone_and_dino_head(tiny_recipe, tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, ["run", str(tiny_recipe)])
    assert first.exit_code == 0, first.output
    folder = tmp_path / "hf"
    # --channels 1: the grey layout round-trips bit for bit (the default RGB-ready one
    # divides the patch projection by 3 and loading sums it back, exact to rounding).
    exported = runner.invoke(
        main,
        [
            "export",
            str(tmp_path / "run"),
            "--format",
            "hf",
            "--out",
            str(folder),
            "--channels",
            "1",
        ],
    )
    assert exported.exit_code == 0, exported.output

    registry = load_registry()
    source = Trainer(
        load_recipe(tiny_recipe, [], registry), registry, resume=True, progress_bar=False
    )
    source._build()
    source._prepare_run_dir()  # loads the finished run's last checkpoint

    recipe = load_recipe(
        tiny_recipe, [f"backbone.init={folder}", f"output_dir={tmp_path / 'continued'}"], registry
    )
    trainer = Trainer(recipe, registry, progress_bar=False)
    trainer._build()
    model, reference = trainer.raw_model, source.raw_model
    # The exported encoder is the teacher; it starts both the student and the new teacher.
    for name, tensor in reference.teacher.backbone.state_dict().items():
        torch.testing.assert_close(model.student.state_dict()[name], tensor, rtol=0, atol=0)
    ref_head = reference.objectives["dino"].teacher_head.state_dict()
    for head in (model.objectives["dino"].head, model.objectives["dino"].teacher_head):
        for name, tensor in head.state_dict().items():
            torch.testing.assert_close(tensor, ref_head[name], rtol=0, atol=0)
