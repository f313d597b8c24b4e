"""The Hugging Face ``Dinov2Model`` folder layout: weight names, configs, writing, reading.

``microsoft/rad-dino`` (Pérez-García et al. 2025) and ``facebook/dinov2-*`` ship a folder
with ``config.json`` (a ``Dinov2Config``), ``model.safetensors`` and
``preprocessor_config.json`` (a ``BitImageProcessor``: resize, centre crop, rescale,
normalise). :func:`export_hf_dinov2` writes that layout from a medssl backbone and
:func:`read_hf_folder` reads one back; :mod:`medssl.export.hf_load` loads it into a
backbone. A leaf module (it imports no other medssl component), so backbones, the
evaluators and the exporter can all use it.

Weight names. transformers 4.x and the Hub checkpoints use
``encoder.layer.N.attention.attention.{query,key,value}`` and
``attention.output.dense``; transformers 5 renames them in memory to
``attention.{q,k,v,o}_proj`` but still writes the legacy names. We write the legacy
names (loadable by both) and read either. timm fuses query/key/value into one ``qkv``
matrix in that order, so the mapping is a split / concatenation along the output rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medssl.weights import load_weights

__all__ = [
    "HEADS_FILE",
    "export_hf_dinov2",
    "hf_config_for",
    "hf_preprocessor_config",
    "hf_to_medssl_state",
    "medssl_to_hf_state",
    "read_hf_folder",
    "rgb_patch_embed",
]

HEADS_FILE = "heads.safetensors"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _block_map_hf_to_timm(legacy: bool) -> dict[str, str]:
    """Per-block parameter names (HF suffix -> timm suffix), without q/k/v."""
    out = "attention.output.dense" if legacy else "attention.o_proj"
    return {
        "norm1.weight": "norm1.weight",
        "norm1.bias": "norm1.bias",
        f"{out}.weight": "attn.proj.weight",
        f"{out}.bias": "attn.proj.bias",
        "layer_scale1.lambda1": "ls1.gamma",
        "norm2.weight": "norm2.weight",
        "norm2.bias": "norm2.bias",
        "mlp.fc1.weight": "mlp.fc1.weight",
        "mlp.fc1.bias": "mlp.fc1.bias",
        "mlp.fc2.weight": "mlp.fc2.weight",
        "mlp.fc2.bias": "mlp.fc2.bias",
        "layer_scale2.lambda1": "ls2.gamma",
    }


def _qkv_names(legacy: bool) -> tuple[str, str, str]:
    if legacy:
        return ("attention.attention.query", "attention.attention.key", "attention.attention.value")
    return ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def medssl_to_hf_state(state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """A medssl ``VisionTransformer`` state dict in the legacy Hub ``Dinov2Model`` names."""
    s = {k.removeprefix("backbone."): v for k, v in state.items()}
    embed_dim = s["vit.cls_token"].shape[-1]
    hf: dict[str, Tensor] = {
        "embeddings.cls_token": s["vit.cls_token"],
        "embeddings.mask_token": s.get("mask_token", torch.zeros(1, embed_dim)),
        "embeddings.position_embeddings": s["vit.pos_embed"],
        "embeddings.patch_embeddings.projection.weight": s["vit.patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": s["vit.patch_embed.proj.bias"],
        "layernorm.weight": s["vit.norm.weight"],
        "layernorm.bias": s["vit.norm.bias"],
    }
    q_name, k_name, v_name = _qkv_names(legacy=True)
    for i in range(depth):
        src, dst = f"vit.blocks.{i}.", f"encoder.layer.{i}."
        for hf_suffix, timm_suffix in _block_map_hf_to_timm(legacy=True).items():
            if timm_suffix.startswith("ls") and src + timm_suffix not in s:
                # A backbone without LayerScale is LayerScale with gain 1 (HF always has it).
                hf[dst + hf_suffix] = torch.ones(embed_dim)
                continue
            hf[dst + hf_suffix] = s[src + timm_suffix]
        for part in ("weight", "bias"):
            q, k, v = s[f"{src}attn.qkv.{part}"].chunk(3, dim=0)
            hf[f"{dst}{q_name}.{part}"] = q
            hf[f"{dst}{k_name}.{part}"] = k
            hf[f"{dst}{v_name}.{part}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in hf.items()}


def hf_to_medssl_state(hf: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """The reverse of :func:`medssl_to_hf_state`; reads legacy or transformers-5 names."""
    prefixes = ("dinov2.", "model.", "backbone.")
    h = {}
    for key, value in hf.items():
        for prefix in prefixes:
            if key.startswith(prefix) and not key.startswith("embeddings"):
                key = key.removeprefix(prefix)
        h[key] = value
    legacy = "encoder.layer.0.attention.attention.query.weight" in h
    if not legacy and "encoder.layer.0.attention.q_proj.weight" not in h:
        raise ValueError(
            "the weights are not a Dinov2Model: no encoder.layer.0 attention query weight "
            f"(first keys: {sorted(h)[:6]})"
        )
    out: dict[str, Tensor] = {
        "vit.cls_token": h["embeddings.cls_token"],
        "vit.pos_embed": h["embeddings.position_embeddings"],
        "vit.patch_embed.proj.weight": h["embeddings.patch_embeddings.projection.weight"],
        "vit.patch_embed.proj.bias": h["embeddings.patch_embeddings.projection.bias"],
        "vit.norm.weight": h["layernorm.weight"],
        "vit.norm.bias": h["layernorm.bias"],
    }
    if "embeddings.mask_token" in h:
        out["mask_token"] = h["embeddings.mask_token"].reshape(1, -1)
    q_name, k_name, v_name = _qkv_names(legacy)
    for i in range(depth):
        src, dst = f"encoder.layer.{i}.", f"vit.blocks.{i}."
        for hf_suffix, timm_suffix in _block_map_hf_to_timm(legacy).items():
            out[dst + timm_suffix] = h[src + hf_suffix]
        for part in ("weight", "bias"):
            out[f"{dst}attn.qkv.{part}"] = torch.cat(
                [h[f"{src}{n}.{part}"] for n in (q_name, k_name, v_name)], dim=0
            )
    return out


def hf_config_for(model: nn.Module) -> dict[str, Any]:
    """A ``Dinov2Config`` mapping describing a medssl ``VisionTransformer``."""
    vit = model.vit  # type: ignore[attr-defined]
    block = vit.blocks[0]
    has_ls = hasattr(block.ls1, "gamma")
    hidden = int(block.mlp.fc1.out_features)
    if hidden % model.embed_dim:  # type: ignore[attr-defined]
        # transformers' Dinov2MLP sizes its hidden layer as hidden_size * int mlp_ratio.
        raise ValueError(
            f"a Dinov2Model needs an integer mlp_ratio; this backbone's MLP width {hidden} is "
            f"not a multiple of embed_dim {model.embed_dim}"  # type: ignore[attr-defined]
        )
    return {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": int(model.embed_dim),  # type: ignore[attr-defined]
        "num_hidden_layers": len(vit.blocks),
        "num_attention_heads": int(block.attn.num_heads),
        "intermediate_size": hidden,
        "mlp_ratio": hidden // model.embed_dim,  # type: ignore[attr-defined]
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(vit.norm.eps),
        "image_size": int(model.img_size),  # type: ignore[attr-defined]
        "patch_size": int(model.patch_size),  # type: ignore[attr-defined]
        "num_channels": int(model.in_chans),  # type: ignore[attr-defined]
        "qkv_bias": block.attn.qkv.bias is not None,
        "layerscale_value": float(block.ls1.gamma.detach().mean()) if has_ls else 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": False,
        "use_mask_token": True,
        "apply_layernorm": True,
        "reshape_hidden_states": True,
        "torch_dtype": "float32",
    }


def hf_preprocessor_config(
    image_size: int, mean: Iterable[float], std: Iterable[float], channels: int
) -> dict[str, Any]:
    """A ``BitImageProcessor`` config as ``microsoft/rad-dino`` ships it, for our size/norm.

    RAD-DINO resizes the shortest edge to the crop size (bicubic), centre-crops, rescales
    by 1/255 and normalises; ``do_convert_rgb`` is only set for 3-channel models.
    """
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(image_size)},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": int(image_size), "width": int(image_size)},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": channels == 3,
    }


def rgb_patch_embed(weight: Tensor) -> Tensor:
    """A grey patch projection spread over R, G and B (each a third of it).

    A grey image repeated to RGB then gives the grey model's tokens: the convolution sums
    the three channels, ``sum_c (w / 3) x = w x``. Means and stds must be equal over the
    channels for that (they are: the grey value repeated).
    """
    if weight.shape[1] != 1:
        raise ValueError(f"expected a 1-channel patch projection, got {weight.shape[1]} channels")
    return weight.repeat(1, 3, 1, 1) / 3


def export_hf_dinov2(
    backbone: nn.Module,
    out_dir: str | Path,
    *,
    image_size: int | None = None,
    mean: Iterable[float] = (0.5,),
    std: Iterable[float] = (0.25,),
    heads: Mapping[str, Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
    channels: int | None = None,
) -> Path:
    """Write ``backbone`` as a ``Dinov2Model`` folder (config, weights, preprocessor).

    ``channels=3`` on a grey backbone writes an RGB-input model (:func:`rgb_patch_embed`)
    whose processor converts images to RGB, as ``microsoft/rad-dino``'s client expects;
    ``None`` keeps the backbone's own channel count. ``heads`` (DINOv2 names, e.g.
    ``dino_head.mlp.0.weight``) go to ``heads.safetensors``; ``extra`` is stored in
    ``medssl.json`` (provenance: step, recipe).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = hf_config_for(backbone)
    state = medssl_to_hf_state(backbone.state_dict(), config["num_hidden_layers"])
    own = config["num_channels"]
    if channels is not None and channels != own:
        if (own, channels) != (1, 3):
            raise ValueError(
                f"channels={channels}: a {own}-channel encoder can only be exported with its "
                f"own {own} channel(s)" + (" or as RGB (3)" if own == 1 else "")
            )
        key = "embeddings.patch_embeddings.projection.weight"
        state[key] = rgb_patch_embed(state[key])
        config["num_channels"] = 3
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if own == 1:  # one grey normalisation, as medssl.eval.encoder applies it
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    pre = hf_preprocessor_config(
        image_size or config["image_size"], mean, std, config["num_channels"]
    )
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    if heads:
        heads_state = {k: v.detach().cpu().contiguous() for k, v in heads.items()}
        save_file(heads_state, str(out / HEADS_FILE), metadata={"format": "pt"})
    if extra:
        (out / "medssl.json").write_text(json.dumps(dict(extra), indent=2, default=str) + "\n")
    return out


def read_hf_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, weights)`` of a Dinov2 folder, with errors naming the missing file."""
    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a Hugging Face model folder: no config.json "
            "(expected the layout of microsoft/rad-dino: config.json + model.safetensors)"
        )
    try:
        if config_file.stat().st_size > 1 << 20:
            raise ValueError("larger than 1 MiB")
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError included
        # The reason's class only: a decoder's message may quote the file.
        raise ValueError(
            f"{str(config_file)!r} is not a readable config.json ({type(exc).__name__})"
        ) from None
    model_type = config.get("model_type")
    if model_type not in ("dinov2", None):
        raise ValueError(
            f"{str(config_file)!r}: model_type is {model_type!r}; only 'dinov2' folders "
            "(Dinov2Model) can initialise a medssl ViT"
        )
    if config.get("use_swiglu_ffn"):
        raise ValueError(
            f"{str(config_file)!r}: SwiGLU MLPs (DINOv2 ViT-g) are not supported by the "
            "medssl ViT backbone"
        )
    weights: dict[str, Tensor] | None = None
    for name in _WEIGHT_FILES:
        file = folder / name
        if not file.is_file():
            continue
        loaded = load_weights(file, "backbone.init")
        if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
            raise ValueError(f"backbone.init: {str(file)!r} holds no state dict of tensors")
        weights = loaded
        break
    if weights is None:
        raise FileNotFoundError(
            f"{str(folder)!r} has no weights: expected one of {', '.join(_WEIGHT_FILES)} "
            "(sharded checkpoints are not supported)"
        )
    return config, weights
