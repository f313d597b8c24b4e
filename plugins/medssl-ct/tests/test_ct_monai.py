"""MONAI interop: vit3d -> MONAI ViT exactly, monai_vit trains, exports load into UNETR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

monai_nets = pytest.importorskip("monai.networks.nets")

from medssl_ct.monai_vit import MonaiViT3D, monai_state_of, vit3d_to_monai_state  # noqa: E402
from medssl_ct.vit3d import VisionTransformer3D  # noqa: E402

VOLUMES = Path(__file__).parent / "fixtures" / "volumes"


def _jitter(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_vit3d_converts_exactly_to_monais_vit() -> None:
    ours = _jitter(
        VisionTransformer3D(
            embed_dim=32, depth=2, num_heads=2, patch_size=4, img_size=16, layer_scale_init=0.5
        )
    )
    vit = monai_nets.ViT(
        in_channels=1,
        img_size=16,
        patch_size=4,
        hidden_size=32,
        mlp_dim=128,
        num_layers=2,
        num_heads=2,
        proj_type="conv",
        classification=True,
        spatial_dims=3,
        qkv_bias=True,
    ).eval()
    for module in vit.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = 1e-6  # vit3d's; MONAI builds 1e-5 (module docstring)
    missing, unexpected = vit.load_state_dict(
        vit3d_to_monai_state(ours.state_dict(), depth=2, in_chans=1), strict=False
    )
    assert not unexpected and all(k.startswith("classification_head") for k in missing)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        _, hidden = vit(x)
        tokens = vit.norm(hidden[-1])
        out = ours(x)
    torch.testing.assert_close(tokens[:, 0], out.cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], out.patch, atol=1e-5, rtol=0)


def _unetr_loads(weights: dict[str, torch.Tensor], kwargs: dict) -> nn.Module:
    unetr = monai_nets.UNETR(out_channels=3, feature_size=8, **kwargs)
    missing, unexpected = unetr.load_state_dict(weights, strict=False)
    assert not unexpected
    assert missing and not [k for k in missing if k.startswith("vit.")]  # decoder only
    for key, value in weights.items():
        torch.testing.assert_close(unetr.state_dict()[key], value, rtol=0, atol=0)
    return unetr


def test_vit3d_export_initialises_unetrs_encoder() -> None:
    ours = VisionTransformer3D(embed_dim=24, depth=12, num_heads=2, patch_size=16, img_size=32)
    weights, kwargs = monai_state_of(_jitter(ours))
    assert kwargs["qkv_bias"] is True and kwargs["mlp_dim"] == 96
    _unetr_loads(weights, kwargs)
    with pytest.raises(ValueError, match=r"backbone.depth=2 \(UNETR has 12 blocks\)"):
        monai_state_of(VisionTransformer3D(embed_dim=24, depth=2, num_heads=2, patch_size=16))


def test_monai_vit_masks_and_visible_patches() -> None:
    model = _jitter(
        MonaiViT3D(embed_dim=24, depth=1, num_heads=2, mlp_dim=48, patch_size=4, img_size=16)
    )
    x = torch.randn(2, 1, 16, 16, 16)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[:, :10] = True
    with torch.no_grad():
        plain, masked = model(x), model(x, masks)
        small = model(torch.randn(2, 1, 8, 8, 8))  # a local crop: position embeddings resampled
        visible = model.forward_visible(x, torch.arange(64).expand(2, -1))
    assert plain.cls.shape == (2, 24) and plain.patch.shape == (2, 64, 24)
    assert small.patch.shape == (2, 8, 24)
    assert not torch.allclose(plain.patch, masked.patch)
    torch.testing.assert_close(visible[:, 1:], plain.patch, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_monai_vit_pretrains_and_exports_to_unetr(medssl_cli, medssl_write_recipe, tmp_path):
    recipe = {
        "seed": 0,
        "data": {
            "name": "ct_volume",
            "root": str(VOLUMES),
            "volumes": [{"image": "lung1_ct.nrrd"}],
            "mode": "patch",
            "patch_voxels": 40,
            "patches_per_volume": 4,
        },
        "augmentation": {
            "name": "ct_window",
            "global_crop_size": 32,
            "local_crop_size": 16,
            "n_local_crops": 2,
        },
        "backbone": {
            "name": "monai_vit",
            "img_size": 32,
            "embed_dim": 24,
            "num_heads": 2,
            "mlp_dim": 48,
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
    run = tmp_path / "run"
    metrics = (run / "metrics.csv").read_text()
    for name in ("loss_dino", "loss_ibot", "loss_koleo", "loss_mae3d"):
        assert name in metrics
    out = tmp_path / "unetr"
    medssl_cli(["export", str(run), "--format", "monai_unetr", "--out", str(out)])
    kwargs = json.loads((out / "unetr.json").read_text())
    assert kwargs == {
        "in_channels": 1,
        "img_size": 32,
        "hidden_size": 24,
        "mlp_dim": 48,
        "num_heads": 2,
        "proj_type": "conv",
        "qkv_bias": False,
    }
    weights = load_file(str(out / "unetr_encoder.safetensors"))
    trained = load_file(str(run / "backbone.safetensors"))
    torch.testing.assert_close(
        weights["vit.blocks.11.attn.qkv.weight"], trained["vit.blocks.11.attn.qkv.weight"]
    )
    _unetr_loads(weights, kwargs)
