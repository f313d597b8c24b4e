"""The README's set-up blocks work as written on a fresh clone, in a fresh virtual environment.

The blocks are read from README.md, not copied here, and run line by line in ``bash``
with two changes that keep CI short: ``python -m pytest`` only collects
(``--collect-only``), and every ``medssl`` command trains two steps and evaluates with the
k-NN probe alone (``train.steps=2 'eval=[{name: knn}]'``: the quickstart's three probes
take minutes of CPU; ``tests/eval`` covers each of them).
The train block runs first: it makes the fresh venv; the test block then adds the
development extra and the example plugin in that venv, as it would on its own (each block
starts with the same ``python3 -m venv .venv``). Everything pip installs comes from the
pinned versions of ``constraints.txt`` (about 1.5 min for torch from a local disk).

The clone is of the committed ``HEAD``: commit before running these locally.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LICENSE_WARNING = "project.license as a TOML table is deprecated"
TINY_RUN = "train.steps=2 'eval=[{name: knn}]'"


def readme_block(title: str, text: str | None = None) -> list[str]:
    """The commands of the first ```bash block whose preceding paragraph starts with
    ``title`` (e.g. "Train", "Test")."""
    text = README.read_text() if text is None else text
    pattern = rf"^{re.escape(title)}\b[^\n]*\n(?:[^\n`]+\n)*\n?```bash\n(.*?)```"
    match = re.search(pattern, text, flags=re.M | re.S)
    if match is None:
        raise AssertionError(f"README.md has no ```bash block after a paragraph '{title} ...'")
    return [line for line in match.group(1).splitlines() if line.strip()]


def _fresh_env() -> dict[str, str]:
    """The caller's environment without its virtual environment, PYTHONPATH or medssl
    settings, as a new user's shell would be."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("MEDSSL_")
    }
    venv_bins = {str(Path(sys.prefix) / "bin")} if sys.prefix != sys.base_prefix else set()
    if os.environ.get("VIRTUAL_ENV"):
        venv_bins.add(str(Path(os.environ["VIRTUAL_ENV"]) / "bin"))
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p.rstrip("/") not in venv_bins
    )
    return env


def _run_block(lines: list[str], cwd: Path, timeout: float = 1200) -> tuple[int, str]:
    """Exit status and output (stdout and stderr) of the block; on a timeout the whole
    process group (pip, medssl) is stopped and the test fails with the output's tail."""
    script = "\n".join(["set -euo pipefail", *lines])
    log = cwd.parent / f"{cwd.name}-{len(list(cwd.parent.glob('*.log')))}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=cwd,
            env=_fresh_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"timed out after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
    return code, log.read_text()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of medssl")
    target = tmp_path_factory.mktemp("readme") / "medssl"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, env=_fresh_env())
    return target


def test_readme_blocks_are_found() -> None:
    train, test = readme_block("Train"), readme_block("Test")
    assert train[0].startswith("python3 -m venv .venv") and test[0] == train[0]
    assert any(line.startswith("medssl run") for line in train)
    assert test[-1] == "python -m pytest"
    # CI (.ci/run) installs what the test block installs, plugins included.
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -c constraints.txt -e ".[dev]"' in ci
    assert '--no-build-isolation -e "$plugin"' in ci
    assert any("--no-build-isolation -e plugins/medssl-ct" in line for line in test)


@pytest.mark.slow
def test_readme_train_block_trains_on_a_fresh_clone(clone: Path) -> None:
    lines = [
        f"{line} {TINY_RUN}" if line.startswith("medssl ") else line
        for line in readme_block("Train")
    ]
    code, output = _run_block(lines, clone)
    assert code == 0, output[-4000:]
    assert LICENSE_WARNING not in output
    assert "run directory: runs/quickstart" in output, output[-4000:]
    run_dir = clone / "runs" / "quickstart"
    for name in ("config.yaml", "run.json", "backbone.safetensors", "eval.json"):
        assert (run_dir / name).is_file(), f"the quickstart run wrote no {name}"
    assert "elapsed" in output  # the log lines' progress


@pytest.mark.slow
def test_readme_test_block_installs_what_pytest_collects(clone: Path) -> None:
    lines = readme_block("Test")
    lines = [
        f"{line} --collect-only -q -p no:cacheprovider" if line == "python -m pytest" else line
        for line in lines
    ]
    code, output = _run_block(lines + ["python -m pip check"], clone)
    assert code == 0, output[-4000:]
    assert LICENSE_WARNING not in output
    # The example plugin's tests are collected, not skipped: the block installed it.
    assert "plugins/medssl-ct/tests/test_ct_window.py::" in output
    assert "No broken requirements found" in output


def test_plugin_tests_skip_with_the_install_command_without_the_plugin(tmp_path: Path) -> None:
    """`python -m pytest` after `pip install -e ".[dev]"` alone: the plugin's tests are
    skipped, naming the command that installs it, not errors at collection."""
    blocked = tmp_path / "medssl_ct"
    blocked.mkdir()
    # What Python raises for a package that is not installed.
    (blocked / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'medssl_ct'\", name='medssl_ct')\n"
    )
    paths = [str(tmp_path), str(ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "plugins/medssl-ct/tests",
            "tests/test_readme.py::test_readme_blocks_are_found",  # what the skips sit beside
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    modules = len(list((ROOT / "plugins" / "medssl-ct" / "tests").glob("test_*.py")))
    assert f"1 passed, {modules} skipped" in result.stdout, result.stdout
    assert "error" not in result.stdout.lower()
    assert "medssl-ct is not installed: pip install" in result.stdout
    assert "--no-build-isolation -e plugins/medssl-ct" in result.stdout
