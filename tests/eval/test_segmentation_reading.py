"""What the segmentation probe reads: the last blocks' patch tokens, at a larger input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medssl.builtins.backbones import VisionTransformer
from medssl.config import load_recipe
from medssl.eval import run_evaluators
from medssl.eval.encoder import Encoder
from medssl.eval.features import extract


def _vit(depth: int) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(embed_dim=32, depth=depth, num_heads=2, img_size=28).eval()


def test_patch_layers_are_the_last_blocks_through_the_final_norm() -> None:
    vit = _vit(3)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        layers = vit.patch_layers(x, 3)
        last = vit(x).patch
    assert [t.shape for t in layers] == [(2, 4, 32)] * 3
    torch.testing.assert_close(layers[-1], last)
    assert not torch.allclose(layers[0], layers[-1])
    # each block's tokens go through the final LayerNorm (no affine change at init)
    assert layers[0].mean(-1).abs().max() < 1e-4
    with pytest.raises(ValueError, match=r"n=4 is not in 1\.\.3"):
        vit.patch_layers(x, 4)


def test_extract_concatenates_the_blocks_tokens_per_position() -> None:
    vit = _vit(2)
    encoder = Encoder(vit, 28, (0.5,), (0.25,), "test")
    data = [{"image": torch.rand(1, 28, 28)} for _ in range(3)]
    one = extract(encoder, data, patches=True)
    two = extract(encoder, data, patches=True, patch_layers=2, image_size=56)
    assert one.patches.shape == (3, 2, 2, 32)
    assert two.patches.shape == (3, 4, 4, 64)  # a 56-px input: 4x4 tokens of 2 x 32
    with torch.no_grad():
        x = encoder.prepare(torch.stack([d["image"] for d in data]), 56)
        first = vit.patch_layers(x, 2)[0].reshape(3, 4, 4, 32)
    torch.testing.assert_close(
        torch.from_numpy(two.patches[..., :32]).float(), first, atol=2e-3, rtol=0
    )


def test_extract_names_a_backbone_without_block_tokens() -> None:
    class Plain(torch.nn.Module):
        patch_size, in_chans = 14, 1

        def forward(self, x):  # type: ignore[no-untyped-def]
            raise AssertionError("not reached")

    encoder = Encoder(Plain(), 28, (0.5,), (0.25,), "test")
    torch.nn.Module.register_parameter(encoder.backbone, "w", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match="patch_layers"):
        extract(encoder, [{"image": torch.rand(1, 28, 28)}], patches=True, patch_layers=2)


def test_segmentation_probe_says_what_it_read(fake_run: Path, medssl_registry) -> None:  # type: ignore[no-untyped-def]
    def probe(options: dict) -> dict:  # type: ignore[type-arg]
        evals = [{"name": "segmentation_probe", "epochs": 2, "mask_size": 28, **options}]
        recipe = load_recipe(
            fake_run / "config.yaml", [f"eval={json.dumps(evals)}"], medssl_registry
        )
        return run_evaluators(fake_run, recipe, medssl_registry)["results"][0]

    # The tiny recipe: 56-px crops, one block. The defaults read 2 x the crop, and as many
    # of the last blocks as the backbone has.
    default = probe({})
    assert default["notes"][0] == "input 112 px, patch tokens of the last 1 block(s)"
    assert default["rows"][0]["floors"].keys() == {"random", "pixels", "trivial"}
    scaled = probe({"scale": 1.0, "layers": 1})
    assert scaled["notes"][0] == "input 56 px, patch tokens of the last 1 block(s)"
    fixed = probe({"image_size": 84, "scale": 3.0})
    assert fixed["notes"][0].startswith("input 84 px")
