"""The plugin's tests need the plugin installed; medssl's own test run collects this folder
too (``testpaths``), so without the plugin they are skipped with the command that adds it."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "medssl_ct",
    reason="medssl-ct is not installed: "
    "pip install -c constraints.txt --no-build-isolation -e plugins/medssl-ct",
)
