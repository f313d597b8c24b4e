"""The 3D ViT through medssl's backbone contract."""

from __future__ import annotations

import pytest
import torch
from medssl_ct.vit3d import BACKBONES, VisionTransformer3D

from medssl.testing.backbone import BackboneContractTests

TINY = {"embed_dim": 24, "depth": 1, "num_heads": 2, "patch_size": 4, "img_size": 8}


class TestVit3D(BackboneContractTests):
    factory = VisionTransformer3D
    options = TINY
    input_shape = (2, 1, 8, 8, 8)
    other_input_shape = (3, 1, 4, 8, 12)  # local crops: the position embedding interpolates


class TestVit3DPresetTwoChannels(BackboneContractTests):
    factory = BACKBONES["vit3d_small_patch16"]
    options = {**TINY, "in_chans": 2}
    input_shape = (2, 2, 8, 8, 8)


def test_patch_tokens_are_row_major_depth_height_width():
    model = VisionTransformer3D(**TINY).eval()
    x = torch.zeros(1, 1, 8, 8, 8)
    x[..., 4:, :4, :4] = 1.0  # the cube at (d=1, h=0, w=0): token 1 * 2 * 2 = 4
    base = model(torch.zeros_like(x)).patch[0]
    changed = model(x).patch[0]
    # With one block, the changed token moves most.
    moved = (changed - base).norm(dim=-1)
    assert int(moved.argmax()) == 4


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="img_size"):
        VisionTransformer3D(**{**TINY, "img_size": 10})
    with pytest.raises(ValueError, match="num_heads"):
        VisionTransformer3D(**{**TINY, "num_heads": 5})
