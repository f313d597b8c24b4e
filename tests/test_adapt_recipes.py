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


@pytest.mark.slow  # ~20 s on an idle 2-core CPU
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
