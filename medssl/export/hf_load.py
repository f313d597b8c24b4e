"""Loading a Hugging Face ``Dinov2Model`` folder into a medssl ``VisionTransformer``.

Continued pre-training and distillation start from released weights this way
(``backbone.init``); the folder is read by :func:`medssl.export.hf_format.read_hf_folder`.

Position embeddings. Both models keep a learned table for ``image_size`` and resize it
for other input sizes, but differently: timm (medssl's backbone) resamples the patch grid
to the target grid with ``F.interpolate(mode="bicubic", antialias=True)`` (PyTorch's
anti-aliased bicubic kernel, PIL-like, a=-0.5), transformers'
``Dinov2Embeddings.interpolate_pos_encoding`` with plain bicubic (a=-0.75, no
anti-aliasing; transformers 4.x used a scale factor with a +0.1 offset instead of the
target size). The kernels differ even when upsampling. At the native ``image_size`` neither resamples and the tokens agree
(tests/export asserts 1e-5 absolute on CLS and patch tokens; measured 0 on CPU float32
for a random 2-block ViT). At other sizes they differ: for a jittered 32-wide 2-block ViT
built for 56 px and run at 84 px we measured max abs differences of 1e-3 on the CLS token
and 3e-2 on patch tokens, so compare the two at the native size (or export with
``img_size`` set to the size you will run at).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medssl.export.hf_format import HEADS_FILE, hf_to_medssl_state, read_hf_folder, rgb_patch_embed
from medssl.weights import load_weights

log = logging.getLogger(__name__)

__all__ = ["load_hf_dinov2_into"]


def _check_architecture(model: nn.Module, config: Mapping[str, Any], where: str) -> None:
    wanted = {
        "hidden_size": ("embed_dim", int(model.embed_dim)),  # type: ignore[attr-defined]
        "num_hidden_layers": ("depth", len(model.vit.blocks)),  # type: ignore[attr-defined]
        "num_attention_heads": ("num_heads", int(model.vit.blocks[0].attn.num_heads)),  # type: ignore[attr-defined]
        "patch_size": ("patch_size", int(model.patch_size)),  # type: ignore[attr-defined]
    }
    bad = [
        f"backbone.{ours}={value} but the folder has {key}={config.get(key)}"
        for key, (ours, value) in wanted.items()
        if config.get(key) is not None and int(config[key]) != value
    ]
    hidden = model.vit.blocks[0].mlp.fc1.out_features  # type: ignore[attr-defined]
    theirs = _mlp_hidden(config)
    if theirs is not None and theirs != hidden:
        bad.append(f"the backbone's MLP width is {hidden} (mlp_ratio) but the folder's is {theirs}")
    if bad:
        raise ValueError(f"backbone.init {where!r} does not fit this backbone: " + "; ".join(bad))


def _mlp_hidden(config: Mapping[str, Any]) -> int | None:
    """The MLP width transformers builds: ``hidden_size * mlp_ratio`` (not intermediate_size)."""
    if config.get("hidden_size") is None:
        return None
    return int(int(config["hidden_size"]) * config.get("mlp_ratio", 4))


def _fit_patch_embed(weight: Tensor, in_chans: int, where: str) -> Tensor:
    """Adapt the patch projection's input channels (3 -> 1 sums them, 1 -> 3 splits)."""
    have = weight.shape[1]
    if have == in_chans:
        return weight
    if have == 3 and in_chans == 1:
        log.info("%s: summing the 3-channel patch projection into 1 channel", where)
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_chans == 3:
        log.info("%s: spreading the 1-channel patch projection over 3 channels", where)
        return rgb_patch_embed(weight)
    raise ValueError(f"backbone.init {where!r}: {have} input channels, backbone has {in_chans}")


def _fit_pos_embed(pos: Tensor, target: Tensor, where: str) -> Tensor:
    if pos.shape == target.shape:
        return pos
    from timm.layers import resample_abs_pos_embed

    grid = int(math.isqrt(target.shape[1] - 1))
    log.info(
        "%s: resampling position embeddings from %d to %d patches",
        where,
        pos.shape[1] - 1,
        target.shape[1] - 1,
    )
    return resample_abs_pos_embed(pos, (grid, grid), num_prefix_tokens=1)


def load_hf_dinov2_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a Hugging Face Dinov2 folder into a medssl ``VisionTransformer`` in place.

    The architecture must match (sizes are named in the error). Position embeddings are
    resampled when the folder was trained at another size, and a 3-channel patch
    projection is summed into a 1-channel one (timm's ``adapt_input_conv``). When the
    folder has ``heads.safetensors``, its tensors are kept as ``model.initial_heads``.
    """
    where = str(path)
    config, weights = read_hf_folder(path)
    _check_architecture(model, config, where)
    depth = len(model.vit.blocks)  # type: ignore[attr-defined]
    state = hf_to_medssl_state(weights, depth)
    own = model.state_dict()
    state["vit.patch_embed.proj.weight"] = _fit_patch_embed(
        state["vit.patch_embed.proj.weight"],
        int(model.in_chans),
        where,  # type: ignore[attr-defined]
    )
    state["vit.pos_embed"] = _fit_pos_embed(state["vit.pos_embed"], own["vit.pos_embed"], where)
    if "vit.blocks.0.ls1.gamma" not in own:
        gammas = [k for k in state if k.endswith((".ls1.gamma", ".ls2.gamma"))]
        if any(not torch.allclose(state[k], torch.ones_like(state[k])) for k in gammas):
            raise ValueError(
                f"backbone.init {where!r} has LayerScale weights but the backbone was built "
                "without LayerScale (backbone.layer_scale_init=null); set a value"
            )
        for k in gammas:
            del state[k]
    state.setdefault("mask_token", own["mask_token"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"backbone.init {where!r} does not fit this backbone "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    heads_file = Path(path).expanduser() / HEADS_FILE
    if heads_file.is_file():
        model.initial_heads = load_weights(heads_file, "backbone.init")  # type: ignore[attr-defined]
        log.info("%s: found %s (%d tensors)", where, HEADS_FILE, len(model.initial_heads))
    return model
