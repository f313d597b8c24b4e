"""Built-in dataset adapters (see :mod:`medssl.data`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medssl.data import (
    CheXpert,
    CsvManifest,
    DemoCXR,
    ImageFolder,
    MimicCxrJpg,
    NIHChestXray14,
    SyntheticImages,
)
from medssl.data.streaming import StreamingShards

DATASETS: dict[str, Callable[..., Any]] = {
    "image_folder": ImageFolder,
    "csv_manifest": CsvManifest,
    "nih_chestxray14": NIHChestXray14,
    "chexpert": CheXpert,
    "mimic_cxr_jpg": MimicCxrJpg,
    "synthetic": SyntheticImages,
    "demo_cxr": DemoCXR,
    "streaming": StreamingShards,
}
