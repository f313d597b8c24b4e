"""MAE against an independent re-implementation with lightly's token utilities (float64)."""

from __future__ import annotations

import pytest
import torch
from lightly.models import utils as lightly_utils

from medssl.builtins.objectives import MAE
from medssl.builtins.objectives.mae import patchify
from medssl.testing.objectives import make_step, make_views, objective_context, tiny_backbone

OPTIONS = {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


def build(**kw):
    torch.manual_seed(0)
    mae = MAE(**OPTIONS, **kw)
    mae.setup(objective_context(embed_dim=32))
    backbone = tiny_backbone(embed_dim=32)
    return mae, backbone


def lightly_style_mae(mae: MAE, backbone, images, masks, norm_pix: bool):
    """The MAE step of lightly's examples (idx_keep with the class token at 0), float64."""
    n, p = images.shape[0], mae.ctx.patch_size
    n_patches = masks.shape[1]
    idx_keep = torch.stack([(~m).nonzero().squeeze(1) for m in masks])
    idx_mask = torch.stack([m.nonzero().squeeze(1) for m in masks])
    encoded = backbone.forward_visible(images, idx_keep)
    decoded_in = mae.decoder_embed(encoded)
    cls_keep = torch.cat([torch.zeros(n, 1, dtype=torch.long), idx_keep + 1], dim=1)
    tokens = lightly_utils.repeat_token(mae.decoder.mask_token, (n, n_patches + 1))
    tokens = lightly_utils.set_at_index(tokens, cls_keep, decoded_in.type_as(tokens))
    decoded = mae.decoder(tokens)
    pred = mae.decoder_pred(lightly_utils.get_at_index(decoded, idx_mask + 1))
    target = lightly_utils.get_at_index(lightly_utils.patchify(images, p), idx_mask)
    if norm_pix:  # facebookresearch/mae models_mae.py::forward_loss
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return torch.nn.functional.mse_loss(pred, target)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_matches_reference_float64(norm_pix: bool) -> None:
    mae, backbone = build(norm_pix_loss=norm_pix)
    mae.double()
    backbone.double()
    views = make_views(mae.request(4), batch_size=3, image_size=16)
    views.single_view = views.single_view.double()
    got = mae.loss(make_step(backbone, views)).loss
    expected = lightly_style_mae(mae, backbone, views.single_view, views.mae_masks, norm_pix)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    params = [backbone.vit.patch_embed.proj.weight, mae.decoder_pred.weight]
    for a, b in zip(
        torch.autograd.grad(got, params), torch.autograd.grad(expected, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_patchify_matches_lightly() -> None:
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(patchify(x, 4), lightly_utils.patchify(x, 4))


def test_uses_global_crop_zero_without_a_single_view() -> None:
    mae, backbone = build(view="global")
    request = mae.request(4)
    assert request.global_crops and not request.single_view and request.mae_mask_ratio == 0.75
    views = make_views(request, batch_size=2, image_size=16)
    loss_global = mae.loss(make_step(backbone, views)).loss
    views.single_view = views.global_crops[:2].clone()
    views.global_crops = None
    torch.testing.assert_close(mae.loss(make_step(backbone, views)).loss, loss_global)


def test_unequal_masks_and_wrong_sizes_are_named() -> None:
    mae, backbone = build()
    views = make_views(mae.request(4), batch_size=2, image_size=16)
    views.mae_masks[0, :] = False
    with pytest.raises(ValueError, match="same number of patches"):
        mae.loss(make_step(backbone, views))
    views = make_views(mae.request(4), batch_size=2, image_size=16)
    views.mae_masks = None
    with pytest.raises(ValueError, match="mae_masks is None"):
        mae.loss(make_step(backbone, views))
    views = make_views(mae.request(4), batch_size=2, image_size=24)
    with pytest.raises(ValueError, match="decoder was built for 4x4"):
        mae.loss(make_step(backbone, views))
