"""Helpers of the data tests: where the fixtures are, and tiny image writers.

A module of its own, not ``conftest.py``: two test folders have a ``conftest.py`` (this
one and the CT plugin's), and ``from data_helpers import ...`` would take whichever pytest
imported last.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"


def pydicom_test_file(name: str) -> Path:
    """A small DICOM file shipped inside pydicom's wheel (``pydicom/data/test_files``):
    always present where medssl is installed, unlike the real scans of
    :func:`shared_data_dir`. Read from the folder, never through pydicom's downloader."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    assert path.is_file(), f"pydicom's wheel has no test file {name}"
    return path


def shared_data_dir() -> Path:
    return Path(os.environ.get("MEDSSL_SHARED_DATA", REPO.parent / "shared" / "data"))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def gradient(height: int, width: int, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, width, dtype=np.float64)[None].repeat(height, 0)
    return np.round(ramp).astype(dtype)
