"""Hostile files and faults on the engine side (issue 15): no code runs from anything medssl
reads, one process per run directory, honest resumes, one-line errors for bad recipes,
full disks and stray files, and documented exit codes. Each test names the item it covers.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from medssl.cli import main
from medssl.engine import checkpoint as ckpt
from medssl.engine.run_lock import LOCK_FILE, RunLock
from medssl.testing.pytest_plugin import TINY_RECIPE


class _Payload:
    """A pickle that creates ``marker`` when unpickled: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"state": _Payload(marker)}))


def _clean(result: Result) -> None:
    """Exit 1 with a message, and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def _recipe(tmp_path: Path, **changes: object) -> Path:
    config = json.loads(json.dumps(TINY_RECIPE))
    config["output_dir"] = str(tmp_path / "run")
    config["train"]["checkpoint_every"] = 1
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run, trained once: its recipe and run directory are copied per test."""
    base = tmp_path_factory.mktemp("trained")
    recipe = _recipe(base)
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    return base


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run / "run", tmp_path / "run")
    _recipe(tmp_path)
    return tmp_path


# -- 1. nothing medssl reads can execute code --------------------------------------------------


def test_training_state_holds_no_pickle(run_copy: Path) -> None:
    latest = ckpt.latest_valid_checkpoint(run_copy / "run" / "checkpoints")
    assert latest is not None
    names = {p.name for p in latest.iterdir()}
    assert names == {ckpt.MODEL_FILE, ckpt.STATE_TENSORS, ckpt.STATE_FILE, ckpt.MANIFEST_FILE}
    for path in latest.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"
    _, state = ckpt.load_checkpoint(latest)
    assert state["step"] == 2 and state["recipe"]["seed"] == 0
    assert isinstance(state["rng"][0]["python"], tuple)  # types survive the JSON round trip


def _rewrite_manifest(folder: Path, files: list[str]) -> None:
    manifest = {"step": 2, "files": {n: ckpt._sha256(folder / n) for n in files}}
    (folder / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize("where", ["old_state_pt", "state_tensors", "state_json"])
def test_planted_pickle_in_a_checkpoint_never_runs(run_copy: Path, where: str) -> None:
    marker = run_copy / "pwned"
    latest = ckpt.latest_valid_checkpoint(run_copy / "run" / "checkpoints")
    assert latest is not None
    for old in ckpt.list_checkpoints(latest.parent)[:-1]:
        shutil.rmtree(old)
    if where == "old_state_pt":  # the pre-safetensors layout, hashes rewritten to match
        (latest / ckpt.STATE_TENSORS).unlink()
        (latest / ckpt.STATE_FILE).unlink()
        _plant_pickle(latest / "state.pt", marker)
        _rewrite_manifest(latest, [ckpt.MODEL_FILE, "state.pt"])
    else:
        name = ckpt.STATE_TENSORS if where == "state_tensors" else ckpt.STATE_FILE
        _plant_pickle(latest / name, marker)
        _rewrite_manifest(latest, [ckpt.MODEL_FILE, ckpt.STATE_TENSORS, ckpt.STATE_FILE])
    result = CliRunner().invoke(main, ["run", str(run_copy / "recipe.yaml"), "--resume"])
    _clean(result)
    assert not marker.exists(), "unpickling ran code"


def _hf_folder(folder: Path, weights: str, marker: Path) -> Path:
    folder.mkdir()
    config = {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1}
    (folder / "config.json").write_text(json.dumps(config))
    _plant_pickle(folder / weights, marker)
    return folder


@pytest.mark.parametrize(
    "where",
    ["hf_pytorch_model_bin", "hf_model_safetensors", "backbone_init_file", "head_init_pth"],
)
def test_planted_pickle_in_a_model_file_never_runs(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    if where == "hf_pytorch_model_bin":
        override = f"backbone.init={_hf_folder(tmp_path / 'hf', 'pytorch_model.bin', marker)}"
    elif where == "hf_model_safetensors":
        override = f"backbone.init={_hf_folder(tmp_path / 'hf', 'model.safetensors', marker)}"
    elif where == "backbone_init_file":
        _plant_pickle(tmp_path / "weights.safetensors", marker)
        override = f"backbone.init={tmp_path / 'weights.safetensors'}"
    else:
        _plant_pickle(tmp_path / "head.pth", marker)
        override = f"objectives.dino.head_init={tmp_path / 'head.pth'}"
    # The heads are built when training starts (they need the backbone's width).
    command = "run" if where == "head_init_pth" else "validate"
    result = CliRunner().invoke(main, [command, str(_recipe(tmp_path)), override])
    _clean(result)
    assert "backbone.init" in result.output or "head_init" in result.output
    assert not marker.exists(), "unpickling ran code"


def test_planted_pickle_in_an_export_never_runs(run_copy: Path) -> None:
    marker = run_copy / "pwned"
    _plant_pickle(run_copy / "run" / "backbone.safetensors", marker)
    result = CliRunner().invoke(main, ["eval", str(run_copy / "run"), "-e", "knn"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not a readable safetensors file" in result.output
    assert not marker.exists()


# -- 2. one process per run directory ----------------------------------------------------------


def _hold_lock(directory: Path) -> subprocess.Popen:
    code = (
        "import sys, time\n"
        "from medssl.engine.run_lock import RunLock\n"
        f"RunLock(__import__('pathlib').Path({str(directory)!r})).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_with_the_owner_pid(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path)
    holder = _hold_lock(tmp_path / "run")
    try:
        result = CliRunner().invoke(main, ["run", str(recipe)])
        _clean(result)
        assert f"in use by another medssl process (PID {holder.pid})" in result.output
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        holder.kill()  # a crash: the kernel drops the lock
        holder.wait()
    with RunLock(tmp_path / "run"):  # free again once its owner is gone
        pass
    assert (tmp_path / "run" / LOCK_FILE).is_file()


def test_ablate_respects_the_lock(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, eval=[{"name": "knn", "k": 3}])
    holder = _hold_lock(tmp_path / "ablation")
    try:
        result = CliRunner().invoke(
            main,
            ["ablate", str(recipe), "--vary", "seed=0,1", "--out", str(tmp_path / "ablation")],
        )
        _clean(result)
        assert f"PID {holder.pid}" in result.output
    finally:
        holder.kill()
        holder.wait()


# -- 4. recipe files are read bounded, and never echoed ----------------------------------------

SECRET = "DOE^JOHN_8675309"


@pytest.mark.parametrize(
    "target",
    ["plain_file", "yaml_mapping", "yaml_named_like_recipe", "fifo", "symlink_loop", "cycle"],
)
def test_extends_never_echoes_and_never_hangs(tmp_path: Path, target: str) -> None:
    recipe = _recipe(tmp_path)
    config = yaml.safe_load(recipe.read_text())
    if target == "plain_file":
        (tmp_path / "shadow").write_text(f"{SECRET}:x:0:0::/root:/bin/sh\n")
        config["extends"] = "shadow"
    elif target in ("yaml_mapping", "yaml_named_like_recipe"):
        name = "notes.yaml" if target == "yaml_named_like_recipe" else "notes.yml"
        (tmp_path / name).write_text(f"{SECRET}: admitted 2024-01-01\n")
        config["extends"] = name
    elif target == "fifo":
        os.mkfifo(tmp_path / "pipe.yaml")
        config["extends"] = "pipe.yaml"
    elif target == "symlink_loop":
        os.symlink(tmp_path / "b.yaml", tmp_path / "a.yaml")
        os.symlink(tmp_path / "a.yaml", tmp_path / "b.yaml")
        config["extends"] = "a.yaml"
    else:
        (tmp_path / "other.yaml").write_text(yaml.safe_dump({"extends": recipe.name}))
        config["extends"] = "other.yaml"
    recipe.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert time.monotonic() - started < 10
    _clean(result)
    assert SECRET not in result.output and "8675309" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_manifest_errors_never_echo_the_file(tmp_path: Path) -> None:
    (tmp_path / "shadow").write_text(f"{SECRET}:x:0:0::/root:/bin/sh\nsecond,line\n")
    data = {"name": "csv_manifest", "root": str(tmp_path), "manifest": "shadow"}
    result = CliRunner().invoke(main, ["validate", str(_recipe(tmp_path, data=data))])
    _clean(result)
    assert "not found among the table's" in result.output
    assert SECRET not in result.output and "8675309" not in result.output


def test_yaml_alias_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 800
    started = time.monotonic()
    result = CliRunner().invoke(main, ["validate", str(bomb)])
    assert time.monotonic() - started < 5
    _clean(result)
    assert "YAML aliases expand this recipe past" in result.output


def test_large_recipe_file_is_not_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(2 << 20)
    result = CliRunner().invoke(main, ["validate", str(big)])
    _clean(result)
    assert "larger than 1 MiB" in result.output


# -- 9. resume honesty --------------------------------------------------------------------------


def test_resume_refuses_changes_to_what_is_trained(run_copy: Path) -> None:
    recipe = str(run_copy / "recipe.yaml")
    config_before = (run_copy / "run" / "config.yaml").read_text()
    runner = CliRunner()
    for override, shown in [
        ("train.batch_size=8", "train.batch_size: 4 -> 8"),
        ("seed=1", "seed: 0 -> 1"),
        ("train.lr=0.01", "train.lr: null -> 0.01"),
        ("objectives.dino.prototypes=32", "objectives.dino.prototypes: 64 -> 32"),
    ]:
        result = runner.invoke(main, ["run", recipe, override, "train.steps=3", "--resume"])
        _clean(result)
        assert shown in result.output and "--accept-changes" in result.output
    # A changed shape, even accepted, ends in one line rather than a long RuntimeError.
    result = runner.invoke(
        main,
        ["run", recipe, "backbone.embed_dim=64", "train.steps=3", "--resume", "--accept-changes"],
    )
    _clean(result)
    assert "does not fit the model" in result.output
    assert len(result.output.strip().splitlines()) == 1

    more = runner.invoke(main, ["run", recipe, "train.steps=3", "train.log_every=2", "--resume"])
    assert more.exit_code == 0, more.output
    assert (run_copy / "run" / "config.yaml").read_text() == config_before
    history = [
        json.loads(line) for line in (run_copy / "run" / "history.jsonl").read_text().splitlines()
    ]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["from_step"] == 2
    assert history[1]["changes"]["train.steps"] == {"checkpoint": 2, "now": 3}
    # output_dir: the run was copied here from where it was trained
    assert set(history[1]["changes"]) == {"train.steps", "train.log_every", "output_dir"}


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    recipe = str(_recipe(tmp_path))
    runner = CliRunner()
    result = runner.invoke(main, ["run", recipe, "--resume"])
    _clean(result)
    assert "--resume-or-start" in result.output
    started = runner.invoke(main, ["run", recipe, "--resume-or-start"])
    assert started.exit_code == 0, started.output
    # Every checkpoint corrupt: refused, not silently restarted from step 0.
    for folder in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints"):
        (folder / ckpt.MODEL_FILE).write_bytes(b"garbage")
    for flag in ("--resume", "--resume-or-start"):
        result = runner.invoke(main, ["run", recipe, flag])
        _clean(result)
        assert "no valid checkpoint" in result.output


# -- 10. disk full, unfinished and stray checkpoint folders -------------------------------------


def test_disk_full_on_save_is_one_line_and_leaves_no_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    result = CliRunner().invoke(main, ["run", str(_recipe(tmp_path))])
    _clean(result)
    assert "could not write checkpoint step 1" in result.output
    assert "No space left on device" in result.output
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "run" / "checkpoints").iterdir())


def test_stray_entries_are_ignored_and_temporary_folders_removed(run_copy: Path) -> None:
    checkpoints = run_copy / "run" / "checkpoints"
    (checkpoints / "step_00000002.bak").mkdir()
    (checkpoints / "step_00000009.bak").write_text("a copy someone made")
    (checkpoints / "notes.txt").write_text("")
    (checkpoints / f"{ckpt.TMP_PREFIX}00000003_999").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(checkpoints)] == [
        "step_00000001",
        "step_00000002",
    ]
    result = CliRunner().invoke(
        main, ["run", str(run_copy / "recipe.yaml"), "train.steps=3", "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert not (checkpoints / f"{ckpt.TMP_PREFIX}00000003_999").exists()
    assert (checkpoints / "step_00000003").is_dir() and (checkpoints / "notes.txt").is_file()


# -- 11. machine-checked devices, range-checked numbers -----------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.devices=-1", "train.devices"),
        ("train.devices=abc", "train.devices"),
        ("seed=99999999999999999999", "seed"),
        ("seed=-1", "seed"),
        ("train.warmup_epochs=1e308", "train.warmup_epochs"),
        ("train.lr=nan", "train.lr"),
        ("objectives.dino.student_temp=inf", "objectives.dino.student_temp"),
        ("backbone.init=/dev/null", "backbone.init"),
    ],
)
def test_bad_numbers_are_one_line(tmp_path: Path, override: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(_recipe(tmp_path)), override])
    _clean(result)
    assert expected in result.output


@pytest.mark.parametrize("objectives", [[], {}, None, "dino"])
def test_empty_or_malformed_objectives_are_one_line(tmp_path: Path, objectives: object) -> None:
    result = CliRunner().invoke(main, ["validate", str(_recipe(tmp_path, objectives=objectives))])
    _clean(result)
    assert "objectives" in result.output


@pytest.mark.parametrize("command", ["validate", "run"])
def test_more_devices_than_cores_is_refused_before_launching(tmp_path: Path, command: str) -> None:
    cores = os.cpu_count() or 1
    result = CliRunner().invoke(
        main,
        [command, str(_recipe(tmp_path)), f"train.devices={cores + 1}", "train.accelerator=cpu"],
    )
    _clean(result)
    assert f"this machine has {cores} CPU cores" in result.output


def test_output_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    result = CliRunner().invoke(
        main, ["run", str(_recipe(tmp_path)), f"output_dir={tmp_path / 'taken'}"]
    )
    _clean(result)
    assert "output_dir" in result.output


def test_garbage_model_safetensors_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    (folder / "model.safetensors").write_bytes(os.urandom(256))
    result = CliRunner().invoke(
        main, ["validate", str(_recipe(tmp_path)), f"backbone.init={folder}"]
    )
    _clean(result)
    assert "not a readable safetensors file" in result.output


# -- 12/13. exit codes ------------------------------------------------------------------------


def test_a_stopped_run_exits_with_the_documented_code(tmp_path: Path) -> None:
    from medssl.engine.trainer import EXIT_OUT_OF_TIME, RunResult, stop_exit_code

    result = CliRunner().invoke(
        main, ["run", str(_recipe(tmp_path)), "train.steps=50", "train.max_minutes=1e-9"]
    )
    assert result.exit_code == EXIT_OUT_OF_TIME == 75, result.output
    assert "continue with --resume" in result.output
    assert ckpt.latest_valid_checkpoint(tmp_path / "run" / "checkpoints") is not None
    assert stop_exit_code(RunResult(tmp_path, 3, True, stop_signal=15)) == 143
    assert stop_exit_code(RunResult(tmp_path, 3, False)) == 0


def test_a_stopped_ablation_variant_exits_with_the_documented_code(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, eval=[{"name": "knn", "k": 3}])
    out = tmp_path / "ablation"
    result = CliRunner().invoke(
        main,
        ["ablate", str(recipe), "--vary", "seed=0", "--out", str(out)]
        + ["--set", "train.steps=50", "--set", "train.max_minutes=1e-9"],
    )
    assert result.exit_code == 75, result.output
    assert "rerun ablate to resume it" in result.output and "Traceback" not in result.output
