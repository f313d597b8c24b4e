"""The plugin's tests need the plugin installed; medssl's own test run collects this folder
too (``testpaths``), so without the plugin each module is skipped with the command that
installs it (a skip raised here would stop the whole run: pytest loads this file first)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import medssl_ct  # noqa: F401
except ModuleNotFoundError:
    INSTALL = (
        "medssl-ct is not installed: "
        "pip install -c constraints.txt --no-build-isolation -e plugins/medssl-ct"
    )

    class _NotInstalled(pytest.Module):
        def collect(self):  # type: ignore[no-untyped-def]
            pytest.skip(INSTALL)

    def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module:
        return _NotInstalled.from_parent(parent, path=module_path)
