"""mae3d: the masked autoencoder on 3D patches with the 3D ViT."""

from __future__ import annotations

import pytest
import torch
from medssl_ct.mae3d import MAE3D
from medssl_ct.vit3d import VisionTransformer3D
from medssl_ct.window import CTWindow

from medssl.objectives import patchify, sincos_3d
from medssl.types import ObjectiveContext, StepOutputs, ViewRequest

OPTIONS = {"decoder_dim": 24, "decoder_depth": 1, "decoder_heads": 2, "mask_ratio": 0.5}


def setup_step(seed: int = 0):
    torch.manual_seed(seed)
    backbone = VisionTransformer3D(embed_dim=24, depth=1, num_heads=2, patch_size=4, img_size=8)
    objective = MAE3D(**OPTIONS)
    objective.setup(
        ObjectiveContext(
            embed_dim=24,
            patch_size=4,
            in_chans=1,
            total_steps=10,
            steps_per_epoch=5,
            shared={},
            image_size=8,
        )
    )
    policy = CTWindow(global_crop_size=8, local_crop_size=4)
    request = objective.request(4)
    assert request == ViewRequest(single_view=True, mae_mask_ratio=0.5, patch_size=4)
    images = torch.rand(2, 1, 12, 12, 12)
    views = policy(images, request, torch.Generator().manual_seed(seed))
    out = StepOutputs(
        views=views,
        student_global=None,
        student_local=None,
        teacher_global=None,
        student=backbone,
        progress=0.0,
        epoch=0,
        step=0,
    )
    return objective, backbone, out


def test_loss_is_finite_and_trains_the_backbone():
    objective, backbone, out = setup_step()
    result = objective.loss(out)
    assert result.loss.ndim == 0 and torch.isfinite(result.loss)
    result.loss.backward()
    assert backbone.patch_embed.proj.weight.grad.abs().sum() > 0
    assert objective.decoder_pred.weight.grad is not None


def test_deterministic():
    a = setup_step(3)[0].loss(setup_step(3)[2]).loss
    objective, _, out = setup_step(3)
    torch.testing.assert_close(objective.loss(out).loss, a, rtol=0, atol=0)


def test_patchify_layout_on_volumes():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4, 4)
    cubes = patchify(x, 2)
    assert cubes.shape == (1, 8, 16)
    # The first cube, channel-last: voxel (0, 0, 0) of channel 0, then of channel 1.
    assert cubes[0, 0, :2].tolist() == [0.0, 64.0]


def test_sincos_3d_distinguishes_positions():
    emb = sincos_3d(24, 3)
    assert emb.shape == (27, 24)
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 0


def test_2d_views_are_refused_clearly():
    objective, backbone, out = setup_step()
    out.views.single_view = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="mae3d.*volumes"):
        objective.loss(out)
    out.views.single_view = torch.rand(2, 1, 8, 8, 8)
    out.views.mae_masks = None
    with pytest.raises(ValueError, match="mae_masks"):
        objective.loss(out)
