"""A run directory made without training: config.yaml + backbone.safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from medssl.config import load_recipe
from medssl.testing.pytest_plugin import TINY_RECIPE

SYNTHETIC = {"name": "synthetic", "n_images": 40, "image_size": 56, "with_mask": True}


@pytest.fixture
def fake_run(tmp_path: Path, medssl_registry) -> Path:  # type: ignore[no-untyped-def]
    """The tiny recipe's backbone with seeded random weights, laid out as a run directory."""
    run = tmp_path / "run"
    run.mkdir()
    config = dict(TINY_RECIPE, output_dir=str(run), data=dict(SYNTHETIC))
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    recipe = load_recipe(run / "config.yaml", registry=medssl_registry)
    from medssl.config import build_component

    torch.manual_seed(0)
    backbone = build_component(medssl_registry, recipe.backbone)
    save_file(
        {k: v.contiguous() for k, v in backbone.state_dict().items()},
        str(run / "backbone.safetensors"),
    )
    return run
