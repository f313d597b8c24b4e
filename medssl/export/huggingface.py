"""``medssl export --format hf``: a run's encoder as a Hugging Face ``Dinov2Model`` folder.

The folder layout is :mod:`medssl.export.hf_format`, loading one into a backbone
:mod:`medssl.export.hf_load`, the continued-pre-training heads :mod:`medssl.export.hf_heads`;
their public names are re-exported here, where earlier code imported them from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medssl.builtins.backbones import backbone_from_hf_folder
from medssl.eval.encoder import load_encoder
from medssl.export.hf_format import (
    HEADS_FILE,
    export_hf_dinov2,
    hf_config_for,
    hf_preprocessor_config,
    hf_to_medssl_state,
    medssl_to_hf_state,
    read_hf_folder,
    rgb_patch_embed,
)
from medssl.export.hf_heads import apply_initial_heads, heads_from_checkpoint
from medssl.export.hf_load import load_hf_dinov2_into
from medssl.export.model_card import write_model_card

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
