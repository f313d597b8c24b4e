"""The views picture and the ``augment-preview`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from medssl.augment import DINOv2MultiCrop, MAEView
from medssl.augment.preview import write_preview
from medssl.cli_augment import augment_preview
from medssl.types import BlockMaskSpec, ViewRequest


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=g)


def test_write_preview_draws_every_view(tmp_path: Path) -> None:
    policy = DINOv2MultiCrop(global_crop_size=16, local_crop_size=8, n_local_crops=2)
    request = ViewRequest(
        global_crops=True, local_crops=True, block_masks=BlockMaskSpec(), patch_size=4
    )
    out = write_preview(policy, _images(), tmp_path / "sub" / "views.png", request, seed=1)
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 100 and picture.shape[1] > picture.shape[0]  # 2 rows, 5 columns
    assert picture.std() > 10  # not blank


def test_write_preview_single_view_with_mae_masks(tmp_path: Path) -> None:
    request = ViewRequest(single_view=True, mae_mask_ratio=0.5, patch_size=4)
    out = write_preview(MAEView(crop_size=16), _images(), tmp_path / "mae.png", request)
    assert out.exists() and out.stat().st_size > 1000


def test_augment_preview_command(tmp_path: Path) -> None:
    from medssl.testing.pytest_plugin import TINY_RECIPE

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(dict(TINY_RECIPE, output_dir=str(tmp_path / "run"))))
    out = tmp_path / "views.png"
    result = CliRunner().invoke(
        augment_preview,
        [str(recipe), "augmentation.n_local_crops=1", "--out", str(out), "--n-images", "2"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and out.exists()
    bad = CliRunner().invoke(augment_preview, [str(recipe), "augmentation.local_crop_size=30"])
    assert bad.exit_code != 0 and "multiple of the patch size" in bad.output
