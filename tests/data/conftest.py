"""Fixtures of the data tests: the real scans, and a private key store (helpers: data_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "pydicom-data-1.0.0").is_dir():
        pytest.skip(f"real scans not found at {path} (set MEDSSL_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def pydicom_data(shared_data: Path) -> Path:
    return shared_data / "pydicom-data-1.0.0"


@pytest.fixture(autouse=True)
def _key_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the secrets of keyed file names out of the user's home during tests."""
    store = tmp_path_factory.mktemp("keys")
    monkeypatch.setenv("MEDSSL_KEY_DIR", str(store))
    monkeypatch.delenv("MEDSSL_KEY_FILE", raising=False)
    monkeypatch.delenv("MEDSSL_SHOW_PATHS", raising=False)
    return store
