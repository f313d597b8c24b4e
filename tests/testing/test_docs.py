"""Every hook of medssl.hookspecs has its section in docs/plugin_hooks.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from medssl import hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _hooks() -> list[str]:
    return sorted(
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("medssl_") and hasattr(fn, "medssl_spec")
    )


def test_hookspecs_are_found():
    assert "medssl_register_datasets" in _hooks() and "medssl_register_commands" in _hooks()


def test_every_hook_has_a_section_with_an_example():
    text = (DOCS / "plugin_hooks.md").read_text()
    sections = dict(re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    missing = [hook for hook in _hooks() if hook not in sections]
    assert not missing, f"docs/plugin_hooks.md has no '## <hook>' section for: {missing}"
    for hook in _hooks():
        assert f"def {hook}(" in sections[hook], f"the {hook} section shows no example"
    unknown = [name for name in sections if name.startswith("medssl_") and name not in _hooks()]
    assert not unknown, f"docs/plugin_hooks.md documents hooks that do not exist: {unknown}"


def test_writing_plugins_covers_the_topics():
    text = (DOCS / "writing_plugins.md").read_text().lower()
    for topic in ("one-off plugin", "installable plugin", "testing", "tracing", "publishing"):
        assert topic in text, f"docs/writing_plugins.md lacks a part on {topic}"
    assert "medssl plugin new" in text
