"""Attention maps: the CLS row of the last block, per head, drawn over the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from medssl.builtins.backbones import VisionTransformer
from medssl.cli import main
from medssl.eval.encoder import Encoder
from medssl.visualize import cls_attention


def test_cls_attention_maps_are_per_head_distributions() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(embed_dim=32, depth=2, num_heads=4, img_size=56).eval()
    encoder = Encoder(vit, 56, (0.5,), (0.25,), "test")
    image = torch.rand(1, 70, 70)
    maps = cls_attention(encoder, image, 56)
    assert maps.shape == (4, 56, 56)
    # Upsampled by 14 (nearest), so each patch's weight fills 14x14 pixels.
    per_patch = maps[:, ::14, ::14]
    full = vit.get_last_self_attention(encoder.prepare(image[None], 56))[0, :, 0]
    torch.testing.assert_close(per_patch.flatten(1), full[:, 1:])
    assert torch.all(per_patch.flatten(1).sum(1) < 1)  # the rest goes to the CLS token
    with pytest.raises(ValueError, match="multiple of the patch size"):
        cls_attention(encoder, image, 50)


def test_visualize_command_writes_png(tmp_path: Path) -> None:
    from medssl.export.huggingface import export_hf_dinov2

    folder = export_hf_dinov2(
        VisionTransformer(embed_dim=32, depth=1, num_heads=2, img_size=56), tmp_path / "hf"
    )
    Image.fromarray((np.random.default_rng(0).random((90, 80)) * 255).astype(np.uint8)).save(
        tmp_path / "x.png"
    )
    out = tmp_path / "attn.png"
    result = CliRunner().invoke(
        main, ["visualize", str(folder), str(tmp_path / "x.png"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size[0] > 200 and img.size[1] > 100
