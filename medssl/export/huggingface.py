"""The Hugging Face ``Dinov2Model`` folder layout, both ways.

``microsoft/rad-dino`` (Pérez-García et al. 2025) and ``facebook/dinov2-*`` ship a folder
with ``config.json`` (a ``Dinov2Config``), ``model.safetensors`` and
``preprocessor_config.json`` (a ``BitImageProcessor``: resize, centre crop, rescale,
normalise). :func:`export_hf_dinov2` writes that layout from a medssl backbone;
:func:`load_hf_dinov2_into` loads such a folder into one, so continued pre-training can
start from released weights.

Weight names. transformers 4.x and the Hub checkpoints use
``encoder.layer.N.attention.attention.{query,key,value}`` and
``attention.output.dense``; transformers 5 renames them in memory to
``attention.{q,k,v,o}_proj`` but still writes the legacy names. We write the legacy
names (loadable by both) and read either. timm fuses query/key/value into one ``qkv``
matrix in that order, so the mapping is a split / concatenation along the output rows.

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

The DINO head. A folder may carry ``heads.safetensors`` (written by medssl's export from
the run's last checkpoint: the teacher's ``dino_head.*`` / ``ibot_head.*`` with DINOv2's
parameter names). :func:`load_hf_dinov2_into` keeps those tensors on the backbone as
``model.initial_heads``; :func:`apply_initial_heads` loads them into the objectives' heads
once those exist.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from medssl.weights import load_weights

log = logging.getLogger(__name__)

__all__ = [
    "HEADS_FILE",
    "apply_initial_heads",
    "export_hf_dinov2",
    "hf_config_for",
    "hf_preprocessor_config",
    "load_hf_dinov2_into",
    "rgb_patch_embed",
    "medssl_to_hf_state",
    "hf_to_medssl_state",
    "read_hf_folder",
    "backbone_from_hf_folder",
    "heads_from_checkpoint",
    "HFExporter",
]

HEADS_FILE = "heads.safetensors"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# --------------------------------------------------------------------------- name mapping


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


# --------------------------------------------------------------------------- configs


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


# --------------------------------------------------------------------------- export


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


# --------------------------------------------------------------------------- import


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


def apply_initial_heads(backbone: nn.Module, objectives: Mapping[str, nn.Module]) -> list[str]:
    """Load ``backbone.initial_heads`` into the objectives' student and teacher heads.

    ``heads.safetensors`` holds ``<objective>_head.<param>`` tensors (``dino_head``,
    ``ibot_head``). Returns the names of the heads loaded; a head whose shapes differ
    (another number of prototypes) raises with the objective named.
    """
    heads: Mapping[str, Tensor] | None = getattr(backbone, "initial_heads", None)
    if not heads:
        return []
    loaded = []
    for name, objective in objectives.items():
        prefix = f"{name}_head."
        state = {k.removeprefix(prefix): v for k, v in heads.items() if k.startswith(prefix)}
        if not state:
            continue
        for attr in ("head", "teacher_head"):
            head = getattr(objective, attr, None)
            if head is None:
                continue
            try:
                head.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"objectives.{name}: the initial {prefix[:-1]} from {HEADS_FILE} does not "
                    f"fit the head of this recipe: {exc}"
                ) from None
        loaded.append(name)
    return loaded


def backbone_from_hf_folder(path: str | Path) -> nn.Module:
    """A medssl ``VisionTransformer`` built from a Dinov2 folder's config and weights."""
    from medssl.builtins.backbones import VisionTransformer

    config, _ = read_hf_folder(path)
    embed = int(config["hidden_size"])
    model = VisionTransformer(
        embed_dim=embed,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        patch_size=int(config["patch_size"]),
        img_size=int(config["image_size"]),
        in_chans=int(config.get("num_channels", 3)),
        mlp_ratio=float(config.get("mlp_ratio", 4)),
        layer_scale_init=float(config.get("layerscale_value", 1.0)),
    )
    return load_hf_dinov2_into(model, path)


# --------------------------------------------------------------------------- exporter


def heads_from_checkpoint(run_dir: str | Path) -> dict[str, Tensor]:
    """The teacher heads of a run's last valid checkpoint, as ``<objective>_head.*``."""
    from medssl.engine.checkpoint import latest_valid_checkpoint

    latest = latest_valid_checkpoint(Path(run_dir) / "checkpoints")
    if latest is None:
        return {}
    heads: dict[str, Tensor] = {}
    for key, value in load_weights(latest / "model.safetensors", "checkpoint").items():
        parts = key.split(".")
        # objectives.<name>.teacher_head.<param...>: the teacher is what continued
        # pre-training starts from, as the exported backbone is the teacher's.
        if len(parts) > 3 and parts[0] == "objectives" and parts[2] == "teacher_head":
            heads[f"{parts[1]}_head." + ".".join(parts[3:])] = value
    return heads


class HFExporter:
    """Export a run's encoder as a Hugging Face ``Dinov2Model`` folder (RAD-DINO's layout).

    A grey (1-channel) encoder is written RGB-ready by default (:func:`rgb_patch_embed`),
    as RGB clients such as ``microsoft/rad-dino``'s convert every image to RGB;
    ``channels=1`` keeps it grey. The folder gets a model card (``README.md``).
    """

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        include_heads: bool = Field(
            True, description="also write the teacher's DINO/iBOT heads to heads.safetensors"
        )
        channels: int = Field(
            3, description="input channels of the exported model (3: RGB-ready, 1: grey)"
        )

        @field_validator("channels")
        @classmethod
        def _one_or_three(cls, value: int) -> int:
            if value not in (1, 3):
                raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {value}")
            return value

    def __init__(self, include_heads: bool = True, channels: int = 3) -> None:
        self.include_heads = include_heads
        self.channels = channels

    def __call__(
        self, run_dir: str | Path, out_dir: str | Path, recipe: Any, registry: Any
    ) -> Path:
        from medssl.eval.encoder import load_encoder
        from medssl.export.model_card import write_model_card

        encoder = load_encoder(run_dir, recipe, registry)
        heads = heads_from_checkpoint(run_dir) if self.include_heads else None
        source = getattr(recipe, "source", None)
        folder = export_hf_dinov2(
            encoder.backbone,
            out_dir,
            image_size=encoder.image_size,
            mean=encoder.mean,
            std=encoder.std,
            heads=heads,
            # Names, not paths: a folder may be shared, and paths can carry patient data.
            extra={
                "exported_from": Path(run_dir).resolve().name,
                "recipe": Path(source).name if source else None,
            },
            channels=self.channels,
        )
        write_model_card(
            folder,
            run_dir,
            name=Path(run_dir).resolve().name,
            grey_source=encoder.in_chans == 1,
        )
        return folder
