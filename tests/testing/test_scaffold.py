"""`medssl plugin new`: the scaffolded package installs, registers and passes its tests."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from medssl.cli import main
from medssl.cli_plugin import render_plugin


def test_render_names_and_files(tmp_path):
    target = render_plugin("medssl_Ultra-Sound".lower(), tmp_path)
    assert target.name == "medssl-ultra-sound"
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md",
        "pyproject.toml",
        "src/medssl_ultra_sound/__init__.py",
        "src/medssl_ultra_sound/dataset.py",
        "tests/test_medssl_ultra_sound.py",
    ]
    text = "\n".join(p.read_text() for p in target.rglob("*") if p.is_file())
    assert "{{" not in text, "a placeholder was left unrendered"
    pyproject = (target / "pyproject.toml").read_text()
    assert '[project.entry-points.medssl]\nultra_sound = "medssl_ultra_sound"' in pyproject
    for path in target.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_cli_refuses_bad_names_and_existing_folders(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["plugin", "new", "medssl-echo", "-o", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "medssl-echo" / "pyproject.toml").is_file()
    again = runner.invoke(main, ["plugin", "new", "medssl-echo", "-o", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(main, ["plugin", "new", "Bad Name!", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and "NAME" in bad.output


@pytest.mark.slow
def test_scaffold_installs_and_passes_its_own_tests(tmp_path):
    """Render, `pip install --target` (the venv stays clean), run its tests in a subprocess."""
    project = render_plugin("medssl-scaffoldcheck", tmp_path)
    target = tmp_path / "site"
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
            str(project),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("MEDSSL_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("MEDSSL_DISABLE_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "medssl.cli", "plugins"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "scaffoldcheck_images" in listing.stdout and "medssl-scaffoldcheck" in listing.stdout


def test_scaffold_says_to_install_the_test_extra_before_pytest(tmp_path):
    """In the README's train environment pytest is missing: `[test]` brings it."""
    import tomllib

    target = render_plugin("medssl-echo", tmp_path)
    readme = (target / "README.md").read_text()
    install = readme.index('pip install -e ".[test]"')
    assert install < readme.index("python -m pytest")
    extras = tomllib.loads((target / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("pytest") for dep in extras["optional-dependencies"]["test"])
    out = CliRunner().invoke(main, ["plugin", "new", "medssl-other", "-o", str(tmp_path)]).output
    lines = out.splitlines()
    assert lines[1].strip().startswith(f'pip install -e "{tmp_path / "medssl-other"}[test]"')
    assert lines[-1].strip() == f"python -m pytest {tmp_path / 'medssl-other'}"
