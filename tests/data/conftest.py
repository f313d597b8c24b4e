"""Shared helpers of the data tests: the real scans and tiny image writers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"


def shared_data_dir() -> Path:
    return Path(os.environ.get("MEDSSL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "pydicom-data-1.0.0").is_dir():
        pytest.skip(f"real scans not found at {path} (set MEDSSL_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def pydicom_data(shared_data: Path) -> Path:
    return shared_data / "pydicom-data-1.0.0"


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def gradient(height: int, width: int, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, top, width, dtype=np.float64)[None].repeat(height, 0)
    return np.round(ramp).astype(dtype)


@pytest.fixture(autouse=True)
def _key_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the secrets of keyed file names out of the user's home during tests."""
    store = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("MEDSSL_KEY_DIR", str(store))
    monkeypatch.delenv("MEDSSL_KEY_FILE", raising=False)
    monkeypatch.delenv("MEDSSL_SHOW_PATHS", raising=False)
    return store
