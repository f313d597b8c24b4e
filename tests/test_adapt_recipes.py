"""recipes/adapt_lora.yaml resolves; its CPU variant validates and trains 2 steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from medssl.builtins.backbones import VisionTransformer
from medssl.config import load_recipe
from medssl.export.huggingface import export_hf_dinov2

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_adapt_lora_recipe_resolves() -> None:
    pytest.importorskip("peft")
    recipe = load_recipe(RECIPES / "adapt_lora.yaml")
    assert recipe.adaptation.lora.targets == ["qkv", "proj", "fc1", "fc2"]
    assert "lora" not in recipe.backbone.options


@pytest.mark.slow  # a training run
def test_adapt_lora_cpu_recipe_validates_and_runs(tmp_path: Path, medssl_cli: Any) -> None:
    pytest.importorskip("peft")
    torch.manual_seed(0)
    # A locally built stand-in for a released encoder: the quickstart's architecture.
    released = VisionTransformer(
        embed_dim=192, depth=4, num_heads=3, img_size=84, in_chans=1, layer_scale_init=None
    )
    folder = export_hf_dinov2(released, tmp_path / "hf", channels=1)
    overrides = [
        f"backbone.init={folder}",
        f"output_dir={tmp_path / 'run'}",
        "train.steps=2",
        "train.checkpoint_every=2",
        "train.batch_size=4",
        "augmentation.n_local_crops=2",
        "eval=[]",
    ]
    recipe = str(RECIPES / "adapt_lora_cpu.yaml")
    medssl_cli(["validate", recipe, *overrides])
    medssl_cli(["run", recipe, *overrides])
    plain = load_file(str(tmp_path / "run" / "backbone.safetensors"))
    assert "vit.blocks.0.attn.qkv.weight" in plain and not any("lora" in k for k in plain)


def test_distill_vits_recipe_resolves(tmp_path: Path) -> None:
    folder = export_hf_dinov2(
        VisionTransformer(embed_dim=48, depth=1, num_heads=2, img_size=56, in_chans=3),
        tmp_path / "teacher",
    )
    recipe = load_recipe(
        RECIPES / "distill_vits.yaml", [f"objectives.distillation.teacher={folder}"]
    )
    assert [s.name for s in recipe.enabled_objectives] == ["koleo", "distillation"]


@pytest.mark.slow  # two training runs
def test_distill_vits_cpu_recipe_runs_from_a_run_directory(
    tmp_path: Path, tiny_recipe: Path, medssl_cli: Any
) -> None:
    import yaml

    # The teacher: a medssl run of the quickstart's architecture (1 step is enough here).
    teacher = yaml.safe_load(tiny_recipe.read_text())
    teacher["backbone"].update(embed_dim=192, depth=4, num_heads=3, img_size=84)
    teacher["augmentation"].update(global_crop_size=84, local_crop_size=42)
    teacher["train"]["steps"] = 1
    tiny_recipe.write_text(yaml.safe_dump(teacher))
    medssl_cli(["run", str(tiny_recipe)])
    overrides = [
        f"objectives.distillation.teacher={tmp_path / 'run'}",
        f"output_dir={tmp_path / 'student'}",
        "train.steps=2",
        "train.batch_size=4",
        "augmentation.n_local_crops=2",
        "eval=[]",
    ]
    recipe = str(RECIPES / "distill_vits_cpu.yaml")
    medssl_cli(["validate", recipe, *overrides])
    medssl_cli(["run", recipe, *overrides])
    assert (tmp_path / "student" / "backbone.safetensors").is_file()
    # DINOv2's variant: the teacher's DINO head comes from the run's last checkpoint.
    overrides[1] = f"output_dir={tmp_path / 'student_dinov2'}"
    overrides += [
        "objectives.distillation.variant=dinov2",
        "objectives.distillation.features=both",  # the default: allowed with dinov2
        "train.log_every=1",  # a metrics row per step
    ]
    medssl_cli(["validate", recipe, *overrides])
    result = medssl_cli(["run", recipe, *overrides])
    assert (tmp_path / "student_dinov2" / "backbone.safetensors").is_file()
    rows = (tmp_path / "student_dinov2" / "metrics.csv").read_text().splitlines()
    assert "distillation/ibot" in rows[0] and len(rows) == 3, result.output
