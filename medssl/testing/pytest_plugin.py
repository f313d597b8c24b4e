"""pytest plugin (entry point ``pytest11``): fixtures for testing medssl components."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medssl.plugins import Registry, get_plugin_manager, load_registry

TINY_RECIPE = {
    "seed": 0,
    "data": {"name": "synthetic", "n_images": 16, "image_size": 64, "channels": 1},
    "augmentation": {
        "name": "dinov2_multicrop",
        "global_crop_size": 56,
        "local_crop_size": 28,
        "n_local_crops": 2,
        "channels": 1,
        "mean": [0.5],
        "std": [0.25],
    },
    "backbone": {
        "name": "vit_patch14",
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "img_size": 56,
    },
    "objectives": {
        "dino": {"weight": 1.0, "prototypes": 64, "hidden_dim": 64, "bottleneck_dim": 16}
    },
    "train": {"batch_size": 4, "steps": 2, "warmup_epochs": 0, "log_every": 1},
}


@pytest.fixture
def medssl_plugin_manager():
    """A fresh plugin manager (entry points and built-ins), not shared with other tests."""
    return get_plugin_manager()


@pytest.fixture
def medssl_registry() -> Registry:
    """A fresh component registry."""
    return load_registry()


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    """A recipe file that trains a tiny ViT with DINO for 2 steps on synthetic images."""
    recipe = dict(TINY_RECIPE, output_dir=str(tmp_path / "run"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
