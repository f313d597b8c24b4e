"""RGB-ready exports of grey encoders: same features through transformers and rad-dino."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.builtins.backbones import VisionTransformer
from medssl.export.huggingface import export_hf_dinov2, load_hf_dinov2_into

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
MEAN, STD = 0.4, 0.2


def _grey_vit() -> VisionTransformer:
    model = VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=56, in_chans=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _grey_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (56, 56), dtype=np.uint8), mode="L")


def _grey_input(image: Image.Image) -> torch.Tensor:
    """medssl's own normalisation of a grey image (no transformers involved)."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None, None]
    return (x - MEAN) / STD


def test_rgb_export_gives_the_grey_models_tokens(tmp_path: Path) -> None:
    ours = _grey_vit()
    folder = export_hf_dinov2(
        ours, tmp_path / "rgb", image_size=56, mean=[MEAN], std=[STD], channels=3
    )
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    assert hf.config.num_channels == 3
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert list(processor.image_mean) == [MEAN] * 3 and list(processor.image_std) == [STD] * 3
    image = _grey_image()
    pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    grey = _grey_input(image)
    with torch.no_grad():
        tokens = hf(pixel_values=pixels).last_hidden_state
        out = ours(grey)
        batch = torch.randn(3, 1, 56, 56)
        tokens_batch = hf(pixel_values=batch.expand(-1, 3, -1, -1)).last_hidden_state
        out_batch = ours(batch)
    torch.testing.assert_close(tokens[:, 0], out.cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], out.patch, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens_batch[:, 0], out_batch.cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens_batch[:, 1:], out_batch.patch, atol=ATOL, rtol=0)
    # Loading the RGB folder back into a grey backbone sums the channels: the same model.
    back = load_hf_dinov2_into(
        VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=56, in_chans=1), folder
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(batch).cls, out_batch.cls, atol=ATOL, rtol=0)


def test_rad_dino_client_reads_the_rgb_export(tmp_path: Path) -> None:
    rad_dino = pytest.importorskip("rad_dino")
    ours = _grey_vit()
    folder = export_hf_dinov2(
        ours, tmp_path / "rgb", image_size=56, mean=[MEAN], std=[STD], channels=3
    )

    class LocalRadDino(rad_dino.RadDino):
        _REPO = str(folder)  # the client loads from a Hub name or a local folder

    client = LocalRadDino()
    image = _grey_image()
    cls_token, patch_tokens = client.extract_features(image)
    with torch.no_grad():
        out = ours(_grey_input(image))
    torch.testing.assert_close(cls_token, out.cls, atol=ATOL, rtol=0)
    assert patch_tokens.shape == (1, 32, 4, 4)
    torch.testing.assert_close(
        patch_tokens.flatten(2).transpose(1, 2), out.patch, atol=ATOL, rtol=0
    )


def test_channels_1_keeps_the_grey_layout(tmp_path: Path) -> None:
    folder = export_hf_dinov2(
        _grey_vit(), tmp_path / "grey", image_size=56, mean=[MEAN], std=[STD], channels=1
    )
    assert json.loads((folder / "config.json").read_text())["num_channels"] == 1
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [MEAN] and pre["do_convert_rgb"] is False


def test_an_rgb_encoder_cannot_be_exported_grey(tmp_path: Path) -> None:
    rgb = VisionTransformer(embed_dim=32, depth=1, num_heads=2, img_size=56, in_chans=3)
    with pytest.raises(ValueError, match="3-channel encoder can only be exported with its own 3"):
        export_hf_dinov2(rgb, tmp_path / "x", channels=1)
