"""Medical image data: readers, dataset adapters, robust loading and ``prepare``.

Readers turn DICOM, NIfTI / NRRD slices and PNG / JPEG (8 or 16 bit) into ``[C, H, W]``
float32 in [0, 1]. Adapters (registered as datasets) yield :class:`medssl.types.Sample`
dicts; :func:`collate` stacks them and carries load failures to a
:class:`LoadFailures` tracker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562): parsing a label table must not import torch, which the
# sample-loading modules need (``medssl validate --data-only``).
_LAZY: dict[str, str] = {
    "CHEXPERT_OBSERVATIONS": "medssl.data.chexpert",
    "CheXpert": "medssl.data.chexpert",
    "CommonOptions": "medssl.data.base",
    "CsvManifest": "medssl.data.manifest",
    "DataFileError": "medssl.data.files",
    "DemoCXR": "medssl.data.demo",
    "DicomReadError": "medssl.data.dicom",
    "FileDataset": "medssl.data.base",
    "ImageFolder": "medssl.data.folder",
    "LoadFailure": "medssl.data.robust",
    "LoadFailures": "medssl.data.robust",
    "META_KEYS": "medssl.data.base",
    "ManifestPathError": "medssl.data.robust",
    "MimicCxrJpg": "medssl.data.mimic",
    "NIHChestXray14": "medssl.data.nih",
    "NIH_FINDINGS": "medssl.data.nih",
    "NonFiniteError": "medssl.data.files",
    "ReadSettings": "medssl.data.readers",
    "Record": "medssl.data.base",
    "SyntheticImages": "medssl.data.synthetic",
    "TooManyLoadFailures": "medssl.data.robust",
    "UnsupportedFormatError": "medssl.data.readers",
    "VolumeReadError": "medssl.data.volumes",
    "collate": "medssl.data.robust",
    "data_key": "medssl.data.keys",
    "dataset_secret": "medssl.data.keys",
    "default_demo_root": "medssl.data.demo",
    "describe_error": "medssl.data.robust",
    "read_dicom": "medssl.data.dicom",
    "read_image": "medssl.data.readers",
    "read_volume_slice": "medssl.data.volumes",
    "resize_and_crop": "medssl.data.transforms",
}

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "CheXpert",
    "CommonOptions",
    "CsvManifest",
    "DataFileError",
    "DemoCXR",
    "DicomReadError",
    "FileDataset",
    "ImageFolder",
    "LoadFailure",
    "LoadFailures",
    "META_KEYS",
    "ManifestPathError",
    "MimicCxrJpg",
    "NIHChestXray14",
    "NIH_FINDINGS",
    "NonFiniteError",
    "ReadSettings",
    "Record",
    "SyntheticImages",
    "TooManyLoadFailures",
    "UnsupportedFormatError",
    "VolumeReadError",
    "collate",
    "data_key",
    "dataset_secret",
    "default_demo_root",
    "describe_error",
    "read_dicom",
    "read_image",
    "read_volume_slice",
    "resize_and_crop",
]

if TYPE_CHECKING:
    from medssl.data.base import META_KEYS, CommonOptions, FileDataset, Record
    from medssl.data.chexpert import CHEXPERT_OBSERVATIONS, CheXpert
    from medssl.data.demo import DemoCXR, default_demo_root
    from medssl.data.dicom import DicomReadError, read_dicom
    from medssl.data.files import DataFileError, NonFiniteError
    from medssl.data.folder import ImageFolder
    from medssl.data.keys import data_key, dataset_secret
    from medssl.data.manifest import CsvManifest
    from medssl.data.mimic import MimicCxrJpg
    from medssl.data.nih import NIH_FINDINGS, NIHChestXray14
    from medssl.data.readers import ReadSettings, UnsupportedFormatError, read_image
    from medssl.data.robust import (
        LoadFailure,
        LoadFailures,
        ManifestPathError,
        TooManyLoadFailures,
        collate,
        describe_error,
    )
    from medssl.data.synthetic import SyntheticImages
    from medssl.data.transforms import resize_and_crop
    from medssl.data.volumes import VolumeReadError, read_volume_slice


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
