"""The plugin manager: entry points, built-ins through the same hooks, blocking, duplicates."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from medssl import hookimpl
from medssl.plugins import (
    KINDS,
    PluginError,
    UnknownComponentError,
    get_plugin_manager,
    load_registry,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PLUGIN = Path(__file__).parent / "fixtures" / "plugins" / "medssl-example"


def _install_fake_dist(site: Path, dist: str, module: str, source: str, ep_name: str) -> None:
    """Lay out a package the way pip installs it: module + dist-info with entry_points.txt."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[medssl]\n{ep_name} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    for name in list(sys.modules):
        if name.startswith("fakeplug"):
            del sys.modules[name]


GOOD_PLUGIN = """
    from medssl import hookimpl

    class Thing:
        '''A dataset from a plugin.'''
        def __init__(self, size: int = 1):
            self.size = size

    @hookimpl
    def medssl_register_datasets(register):
        register("plugin_thing", Thing)
"""


def test_builtins_register_through_hooks():
    registry = load_registry()
    assert "vit_small_patch14" in registry.names("backbone")
    component = registry.get("backbone", "vit_base_patch14")
    assert component.provider.name == "medssl"
    # The built-ins are an ordinary pluggy plugin of the manager.
    pm = get_plugin_manager()
    assert pm.get_plugin("medssl") is not None
    assert set(KINDS) == {
        "backbone",
        "objective",
        "augmentation",
        "dataset",
        "evaluator",
        "exporter",
    }


def test_entry_point_plugin_is_loaded_with_its_distribution_name(site):
    _install_fake_dist(site, "fakeplug-dist", "fakeplug_good", GOOD_PLUGIN, "good")
    registry = load_registry()
    component = registry.get("dataset", "plugin_thing")
    assert component.provider.name == "fakeplug-dist"
    assert component.provider.version == "1.2.3"
    assert component.factory(size=3).size == 3


def test_disable_plugins_by_name_and_autoload(site, monkeypatch):
    _install_fake_dist(site, "fakeplug-dist", "fakeplug_good", GOOD_PLUGIN, "good")
    monkeypatch.setenv("MEDSSL_DISABLE_PLUGINS", "fakeplug-dist")
    registry = load_registry()
    assert "plugin_thing" not in registry.names("dataset")
    assert registry.load_report.blocked == ["fakeplug-dist"]
    monkeypatch.setenv("MEDSSL_DISABLE_PLUGINS", "good")  # the entry-point name works too
    assert "plugin_thing" not in load_registry().names("dataset")
    monkeypatch.delenv("MEDSSL_DISABLE_PLUGINS")
    monkeypatch.setenv("MEDSSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = load_registry()
    assert "plugin_thing" not in registry.names("dataset")
    assert "vit_small_patch14" in registry.names("backbone")  # built-ins still there


def test_broken_plugin_is_reported_by_distribution_name(site, caplog):
    _install_fake_dist(
        site, "fakeplug-broken", "fakeplug_broken", "import no_such_module_xyz\n", "broken"
    )
    registry = load_registry()
    assert "fakeplug-broken" in registry.load_report.failed
    assert "no_such_module_xyz" in registry.load_report.failed["fakeplug-broken"]
    assert any("fakeplug-broken" in rec.getMessage() for rec in caplog.records)
    with pytest.raises(UnknownComponentError, match="failed to import: fakeplug-broken"):
        registry.get("dataset", "nothing_like_this")


def test_duplicate_names_are_an_error_naming_both_plugins(site):
    duplicate = """
        from medssl import hookimpl

        @hookimpl
        def medssl_register_backbones(register):
            register("vit_small_patch14", object)
    """
    _install_fake_dist(site, "fakeplug-dupe", "fakeplug_dupe", duplicate, "dupe")
    with pytest.raises(PluginError) as info:
        load_registry()
    message = str(info.value)
    assert "'vit_small_patch14'" in message
    assert "'medssl'" in message and "'fakeplug-dupe'" in message


def test_fresh_manager_per_call_keeps_tests_isolated():
    class OneOff:
        @hookimpl
        def medssl_register_objectives(self, register):
            register("one_off_objective", dict)

    with_plugin = load_registry([OneOff()])
    assert "one_off_objective" in with_plugin.names("objective")
    assert "one_off_objective" not in load_registry().names("objective")
    assert get_plugin_manager() is not get_plugin_manager()


def test_unknown_name_suggests_closest():
    registry = load_registry()
    with pytest.raises(UnknownComponentError, match="did you mean 'vit_base_patch14'"):
        registry.get("backbone", "vit_bse_patch14")


def test_register_rejects_non_callables():
    class Bad:
        @hookimpl
        def medssl_register_datasets(self, register):
            register("bad", 42)

    with pytest.raises(PluginError, match="not callable"):
        load_registry([Bad()])


@pytest.mark.slow
def test_pip_installed_plugin_shows_up_in_cli(tmp_path):
    """A real `pip install` of a plugin package; its component appears in `medssl plugins`."""
    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(FIXTURE_PLUGIN),
        ],
        check=True,
    )
    env = {"PYTHONPATH": str(target), "PATH": str(Path(sys.executable).parent)}
    out = subprocess.run(
        [sys.executable, "-m", "medssl.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert '"constant_images"' in out.stdout
    assert '"medssl-example"' in out.stdout


def test_misspelt_hook_is_an_error_naming_the_distribution(site):
    misspelt = """
        from medssl import hookimpl

        @hookimpl
        def medssl_register_dataset(register):
            register("never_seen", object)
    """
    _install_fake_dist(site, "fakeplug-typo", "fakeplug_typo", misspelt, "typo")
    with pytest.raises(PluginError) as info:
        load_registry()
    message = str(info.value)
    assert "'fakeplug-typo'" in message
    assert "medssl_register_dataset (did you mean medssl_register_datasets?)" in message


def test_check_pending_also_covers_extra_plugins():
    class Typo:
        @hookimpl
        def medssl_register_backbone(self, register):  # no such hook
            del register

    with pytest.raises(PluginError, match="'Typo' implements unknown hook"):
        load_registry([Typo()])


def test_registry_of_some_kinds_calls_only_their_hooks() -> None:
    registry = load_registry(kinds=["dataset"])
    assert "chexpert" in registry.names("dataset")
    assert registry.names("backbone") == [] and registry.names("objective") == []
    with pytest.raises(KeyError, match="unknown component kinds"):
        load_registry(kinds=["datasets"])


def _public_api() -> set[str]:
    """The module names listed in docs/writing_plugins.md's public-API section."""
    text = (ROOT / "docs" / "writing_plugins.md").read_text(encoding="utf-8")
    section = text.split("<!-- public-api")[1].split("<!-- /public-api -->")[0]
    return set(re.findall(r"`(medssl(?:\.[a-z_]+)*)`", section))


def _medssl_imports(path: Path) -> Iterator[tuple[str, str, int]]:
    """``(module, name, line)`` of every medssl import in a file (``name`` "" for ``import``)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "medssl" or alias.name.startswith("medssl."):
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module == "medssl" or node.module.startswith("medssl."):
                for alias in node.names:
                    yield node.module, alias.name, node.lineno


def _public_names(module: str) -> set[str] | None:
    """A module's ``__all__``; ``None`` when it has none (then no ``_`` name is public)."""
    names = getattr(importlib.import_module(module), "__all__", None)
    return None if names is None else set(names)


def test_the_public_api_section_lists_importable_modules():
    api = _public_api()
    assert {"medssl", "medssl.types", "medssl.objectives", "medssl.testing"} <= api
    missing = [m for m in sorted(api) if importlib.util.find_spec(m) is None]
    assert not missing


def test_reference_plugin_uses_only_the_public_api():
    api = _public_api()
    plugin = ROOT / "plugins" / "medssl-ct"
    outside = []
    for path in sorted(plugin.rglob("*.py")):
        for module, name, line in _medssl_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module not in api:
                outside.append(f"{where}: {module}")
            elif name and name != "*" and module != "medssl":
                public = _public_names(module)
                listed = name in public if public is not None else not name.startswith("_")
                if not listed and importlib.util.find_spec(f"{module}.{name}") is None:
                    outside.append(f"{where}: {module}.{name} (not in __all__)")
            elif module == "medssl" and name not in ("hookimpl", "__version__"):
                outside.append(f"{where}: medssl.{name}")
    assert not outside, "medssl-ct imports outside docs/writing_plugins.md's public API:\n" + (
        "\n".join(outside)
    )


def test_the_plugin_api_check_catches_an_internal_import(tmp_path):
    sample = tmp_path / "p.py"
    sample.write_text(
        "def f():\n    from medssl.builtins.objectives.mae import MAE\nfrom medssl import hookimpl\n"
    )
    found = list(_medssl_imports(sample))
    assert ("medssl.builtins.objectives.mae", "MAE", 2) in found
    assert "medssl.builtins.objectives.mae" not in _public_api()
