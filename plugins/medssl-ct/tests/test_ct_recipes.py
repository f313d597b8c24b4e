"""The plugin's recipe validates, and slices (2D) and patches (3D) train end to end."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

VOLUMES = Path(__file__).parent / "fixtures" / "volumes"
RECIPE = Path(__file__).parents[1] / "recipes" / "ct_slices_dino.yaml"


def test_components_are_listed_under_the_distribution_name(medssl_cli):
    listing = json.loads(medssl_cli(["plugins", "--json"]).output)["components"]
    ours = {
        (kind, item["name"])
        for kind, items in listing.items()
        for item in items
        if item["plugin"] == "medssl-ct"
    }
    assert {
        ("dataset", "ct_volume"),
        ("augmentation", "ct_window"),
        ("backbone", "vit3d_patch16"),
        ("objective", "mae3d"),
    } <= ours


def _recipe(**changes) -> dict:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data"]["root"] = str(VOLUMES)
    recipe.pop("output_dir")  # medssl_write_recipe puts runs under tmp_path
    for block in recipe.get("eval", []):
        block["data"]["root"] = str(VOLUMES)
    recipe.update(changes)
    return recipe


def test_recipe_validates(medssl_cli, medssl_registry, medssl_write_recipe):
    recipe = _recipe()
    if "segmentation_probe" not in medssl_registry.names("evaluator"):
        recipe["eval"] = []  # medssl.eval's probe is not registered in this medssl yet
    result = medssl_cli(["validate", medssl_write_recipe(recipe)])
    assert "valid" in result.output


def test_recipe_trains_two_steps_on_ct_slices(medssl_cli, medssl_write_recipe, tmp_path):
    recipe = _recipe(eval=[])
    recipe["data"]["volumes"] = [{"image": "lung1_ct.nrrd"}]
    recipe["data"]["image_size"] = 32
    recipe["augmentation"].update(global_crop_size=32, local_crop_size=16, n_local_crops=2)
    recipe["backbone"].update(embed_dim=24, depth=1, img_size=32)
    recipe["objectives"]["dino"].update(prototypes=32, hidden_dim=32, bottleneck_dim=16)
    recipe["train"].update(batch_size=4, steps=2, warmup_epochs=0, checkpoint_every=2)
    medssl_cli(["run", medssl_write_recipe(recipe)])
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_3d_patches_train_with_dino_ibot_koleo_and_mae3d(medssl_cli, medssl_write_recipe, tmp_path):
    recipe = {
        "seed": 0,
        "data": {
            "name": "ct_volume",
            "root": str(VOLUMES),
            "volumes": [{"image": "lung1_ct.nrrd"}],
            "mode": "patch",
            "patch_voxels": 24,
            "patches_per_volume": 4,
        },
        "augmentation": {
            "name": "ct_window",
            "global_crop_size": 16,
            "local_crop_size": 8,
            "n_local_crops": 2,
        },
        "backbone": {
            "name": "vit3d_patch16",
            "patch_size": 4,
            "img_size": 16,
            "embed_dim": 24,
            "depth": 1,
            "num_heads": 2,
        },
        "objectives": {
            "dino": {"prototypes": 32, "hidden_dim": 32, "bottleneck_dim": 16},
            "ibot": {"weight": 1.0},
            "koleo": {"weight": 0.1},
            "mae3d": {"weight": 0.5, "decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 2},
        },
        "train": {"batch_size": 2, "steps": 2, "warmup_epochs": 0, "checkpoint_every": 2},
    }
    medssl_cli(["run", medssl_write_recipe(recipe)])
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    for name in ("loss_dino", "loss_ibot", "loss_koleo", "loss_mae3d"):
        assert name in metrics


def test_builtin_mae_is_2d_only(medssl_cli, medssl_write_recipe):
    """medssl's own `mae` cannot read 3D views (README: use mae3d); the run must not pass."""
    recipe = {
        "data": {
            "name": "ct_volume",
            "root": str(VOLUMES),
            "volumes": [{"image": "lung1_ct.nrrd"}],
            "mode": "patch",
            "patch_voxels": 16,
            "patches_per_volume": 2,
        },
        "augmentation": {"name": "ct_window", "global_crop_size": 16, "local_crop_size": 8},
        "backbone": {
            "name": "vit3d_patch16",
            "patch_size": 8,
            "img_size": 16,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
        },
        "objectives": {"mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}},
        "train": {"batch_size": 2, "steps": 1, "warmup_epochs": 0},
    }
    result = medssl_cli(["run", medssl_write_recipe(recipe)], expect=None)
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError)
