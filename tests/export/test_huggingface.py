"""medssl <-> Hugging Face Dinov2 round trips on tiny models built locally."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medssl.builtins.backbones import VisionTransformer
from medssl.export.huggingface import (
    HEADS_FILE,
    apply_initial_heads,
    export_hf_dinov2,
    load_hf_dinov2_into,
)

transformers = pytest.importorskip("transformers")

# Same weights, same float32 arithmetic order up to kernel choice: we ask for 1e-5.
ATOL = 1e-5


def _jitter(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its init so LayerScale, biases and tokens all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _tiny_vit(**kw: object) -> VisionTransformer:
    opts = dict(embed_dim=32, depth=2, num_heads=2, img_size=56, in_chans=1)
    opts.update(kw)
    return _jitter(VisionTransformer(**opts))  # type: ignore[arg-type]


def _tiny_hf(tmp_path: Path, channels: int = 1, name: str = "hf") -> tuple[Path, object]:
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=56,
        patch_size=14,
        num_channels=channels,
    )
    model = _jitter(transformers.Dinov2Model(config), seed=1)
    folder = tmp_path / name
    model.save_pretrained(folder)
    return folder, model


def test_export_loads_as_dinov2_model_with_same_tokens(tmp_path: Path) -> None:
    ours = _tiny_vit()
    folder = export_hf_dinov2(ours, tmp_path / "out", image_size=56, mean=[0.4], std=[0.2])
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(hf).__name__ == "Dinov2Model"
    x = torch.randn(3, 1, 56, 56)
    with torch.no_grad():
        out = ours(x)
        tokens = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(tokens[:, 0], out.cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(tokens[:, 1:], out.patch, atol=ATOL, rtol=0)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert processor.crop_size == {"height": 56, "width": 56}
    assert list(processor.image_mean) == [0.4] and list(processor.image_std) == [0.2]


def test_hf_folder_initialises_backbone_with_same_tokens(tmp_path: Path) -> None:
    folder, hf = _tiny_hf(tmp_path)
    ours = VisionTransformer(
        embed_dim=32, depth=2, num_heads=2, img_size=56, in_chans=1, init=str(folder)
    )
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        tokens = hf(pixel_values=x).last_hidden_state
        out = ours.eval()(x)
    torch.testing.assert_close(out.cls, tokens[:, 0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.patch, tokens[:, 1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(ours.mask_token, hf.embeddings.mask_token)


def test_transformers5_weight_names_load_too(tmp_path: Path) -> None:
    folder, hf = _tiny_hf(tmp_path)
    # transformers 5 names the attention q_proj/k_proj/v_proj/o_proj in memory.
    save_file(
        {k: v.contiguous() for k, v in hf.state_dict().items()}, str(folder / "model.safetensors")
    )
    assert "encoder.layer.0.attention.q_proj.weight" in load_file(str(folder / "model.safetensors"))
    ours = VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=56, init=str(folder))
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval()(x).cls, hf(pixel_values=x).last_hidden_state[:, 0], atol=ATOL, rtol=0
        )


def test_rgb_folder_into_grey_backbone_sums_the_channels(tmp_path: Path) -> None:
    folder, hf = _tiny_hf(tmp_path, channels=3)
    ours = load_hf_dinov2_into(
        VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=56, in_chans=1), folder
    ).eval()
    grey = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        tokens = hf(pixel_values=grey.expand(-1, 3, -1, -1)).last_hidden_state
        torch.testing.assert_close(ours(grey).cls, tokens[:, 0], atol=ATOL, rtol=0)


def test_other_size_resamples_position_embeddings(tmp_path: Path) -> None:
    folder, _ = _tiny_hf(tmp_path)
    ours = VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=84, init=str(folder))
    assert ours.vit.pos_embed.shape == (1, 1 + 6 * 6, 32)


def test_mismatched_architecture_names_the_key(tmp_path: Path) -> None:
    folder, _ = _tiny_hf(tmp_path)
    with pytest.raises(ValueError, match=r"backbone.depth=1 .* num_hidden_layers=2"):
        VisionTransformer(embed_dim=32, depth=1, num_heads=2, img_size=56, init=str(folder))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_dinov2_into(_tiny_vit(), tmp_path)


def test_heads_travel_with_the_folder(tmp_path: Path) -> None:
    from medssl.builtins.objectives.dino import DINO
    from medssl.types import ObjectiveContext

    def dino() -> DINO:
        obj = DINO(prototypes=16, hidden_dim=24, bottleneck_dim=8)
        obj.setup(
            ObjectiveContext(
                embed_dim=32,
                patch_size=14,
                in_chans=1,
                total_steps=10,
                steps_per_epoch=5,
                shared={},
            )
        )
        return obj

    source = dino()
    heads = {f"dino_head.{k}": v for k, v in _jitter(source.head).state_dict().items()}
    folder = export_hf_dinov2(_tiny_vit(), tmp_path / "out", heads=heads)
    assert (folder / HEADS_FILE).is_file()
    backbone = load_hf_dinov2_into(
        VisionTransformer(embed_dim=32, depth=2, num_heads=2, img_size=56), folder
    )
    target = dino()
    assert apply_initial_heads(backbone, {"dino": target}) == ["dino"]
    for head in (target.head, target.teacher_head):
        torch.testing.assert_close(head.last_layer.weight, source.head.last_layer.weight)
    wrong = DINO(prototypes=8, hidden_dim=24, bottleneck_dim=8)
    wrong.setup(
        ObjectiveContext(
            embed_dim=32, patch_size=14, in_chans=1, total_steps=10, steps_per_epoch=5, shared={}
        )
    )
    with pytest.raises(ValueError, match="objectives.dino"):
        apply_initial_heads(backbone, {"dino": wrong})
