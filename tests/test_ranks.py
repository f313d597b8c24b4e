"""Logging from rank zero only: one copy of each line under DDP, warnings from every rank."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medssl.engine.reporting import Progress
from medssl.ranks import RankZeroFilter, process_rank
from medssl.testing.pytest_plugin import TINY_RECIPE

RANK_VARIABLES = ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "LOCAL_RANK")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*RANK_VARIABLES, "NODE_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_PROCID": "1"}, 1),
        ({"LOCAL_RANK": "1"}, 1),
        ({"LOCAL_RANK": "0", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "4"}, 4),
        ({"LOCAL_RANK": "0", "NODE_RANK": "2"}, 2),  # never 0 on another node
    ],
)
def test_process_rank_from_the_launchers_variables(clean_env, env, rank) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert process_rank() == rank


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("medssl.train", level, __file__, 1, message, None, None)


def test_filter_keeps_rank_zero_and_warnings_of_others(clean_env) -> None:
    keep = RankZeroFilter()
    assert keep.filter(_record(logging.INFO, "step 1/2"))
    clean_env.setenv("RANK", "1")
    assert not keep.filter(_record(logging.INFO, "step 1/2"))
    warning = _record(logging.WARNING, "3 images failed to load")
    assert keep.filter(warning) and warning.getMessage() == "[rank 1] 3 images failed to load"
    assert keep.filter(warning) and warning.getMessage().count("[rank 1]") == 1


def test_progress_timing_gives_elapsed_and_eta() -> None:
    progress = Progress(total=10, start=2, enabled=False)
    started = progress._started
    assert progress.timing(6, now=started + 20) == "elapsed 0:20, ETA 0:20"
    assert progress.timing(10, now=started + 3725) == "elapsed 1:02:05"


@pytest.mark.slow
def test_ddp_run_logs_each_line_once(tmp_path: Path) -> None:
    """Two gloo ranks through Fabric's launcher: the CLI's log lines appear once."""
    medssl = Path(sys.executable).with_name("medssl")
    if not medssl.is_file():
        pytest.skip("needs the medssl console script beside the interpreter")
    recipe = dict(copy.deepcopy(TINY_RECIPE), output_dir=str(tmp_path / "run"))
    recipe["train"].update(strategy="ddp", devices=2, accelerator="cpu", threads=1)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    result = subprocess.run(
        [str(medssl), "run", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert log.count("medssl.train: training 2 steps") == 1, log
    assert log.count("medssl.train: step 1/2") == 1 and log.count("step 2/2") == 1, log
    assert "[rank 1]" not in log, log  # nothing went wrong on rank 1: no warning
    assert result.stdout.count("run directory:") == 1
