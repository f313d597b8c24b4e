"""Medical image data: readers, dataset adapters, robust loading and ``prepare``.

Readers turn DICOM, NIfTI / NRRD slices and PNG / JPEG (8 or 16 bit) into ``[C, H, W]``
float32 in [0, 1]. Adapters (registered as datasets) yield :class:`medssl.types.Sample`
dicts; :func:`collate` stacks them and carries load failures to a
:class:`LoadFailures` tracker.
"""

from __future__ import annotations

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

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "META_KEYS",
    "NIH_FINDINGS",
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
    "ManifestPathError",
    "MimicCxrJpg",
    "NIHChestXray14",
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
