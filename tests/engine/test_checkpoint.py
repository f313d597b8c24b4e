"""Atomic, verified checkpoints: what a kill at any moment can leave behind is skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medssl.engine import checkpoint as ckpt


def _save(directory: Path, step: int, keep: int = 3) -> Path:
    model = {"w": torch.full((2, 3), float(step)), "b": torch.arange(3.0)}
    return ckpt.save_checkpoint(directory, step, model, {"step": step}, keep)


def test_round_trip_and_keep_last_k(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    model, state = ckpt.load_checkpoint(ckpt.latest_valid_checkpoint(tmp_path))
    assert state["step"] == 4
    assert torch.equal(model["w"], torch.full((2, 3), 4.0))


def test_corrupt_or_unfinished_checkpoints_are_skipped(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    # A half-written temporary folder (killed before the rename) is not a checkpoint.
    (tmp_path / ".tmp_step_00000003_123").mkdir()
    # A flipped byte in the newest one: its hash no longer matches the manifest.
    data = bytearray((newest / ckpt.MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (newest / ckpt.MODEL_FILE).write_bytes(bytes(data))
    assert ckpt.latest_valid_checkpoint(tmp_path).name == "step_00000001"
    with pytest.raises(ValueError, match="failed verification"):
        ckpt.load_checkpoint(newest)
    # No manifest (killed before it was written): skipped as well.
    (newest / ckpt.MANIFEST_FILE).unlink()
    assert not ckpt.verify_checkpoint(newest)


def test_shared_storage_is_saved(tmp_path: Path) -> None:
    weight = torch.randn(4, 4)
    path = ckpt.save_checkpoint(tmp_path, 5, {"a": weight, "tied": weight, "t": weight.T}, {}, 1)
    model, _ = ckpt.load_checkpoint(path)
    assert torch.equal(model["tied"], weight) and torch.equal(model["t"], weight.T)


def test_a_short_disk_prunes_before_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, step, keep=3)
    removed_before: list[list[str]] = []
    real_save = ckpt.save_file

    def watching_save(*args: object, **kwargs: object) -> None:
        removed_before.append([p.name for p in ckpt.list_checkpoints(tmp_path)])
        real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _: shutil_usage(free=10))
    monkeypatch.setattr(ckpt, "save_file", watching_save)
    _save(tmp_path, 4, keep=3)
    assert removed_before[0] == ["step_00000002", "step_00000003"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step_00000002",
        "step_00000003",
        "step_00000004",
    ]


def shutil_usage(free: int) -> object:
    import shutil

    return shutil._ntuple_diskusage(total=10**9, used=10**9 - free, free=free)


def test_state_round_trips_without_pickle(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = {
        "step": 7,
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 2)}},
            "param_groups": [{"params": [0], "betas": (0.9, 0.999), "lr": 1e-3, "foreach": None}],
        },
        "rng": [{"python": random.getstate(), "numpy": np.random.get_state()}],
        "diagnostics": {"history": [(1, "ok", {"loss": float("nan")})], "_warned": None},
        "__looks_tagged__": {"__tensor__": "not a tensor"},
    }
    path = ckpt.save_checkpoint(tmp_path, 7, {"w": torch.ones(1)}, state, keep=1)
    assert not (path / "state.pt").exists()
    _, loaded = ckpt.load_checkpoint(path)
    groups = loaded["optimizer"]["param_groups"]
    assert groups[0]["betas"] == (0.9, 0.999) and groups[0]["foreach"] is None
    assert torch.equal(
        loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert loaded["rng"][0]["python"] == state["rng"][0]["python"]
    numpy_state = loaded["rng"][0]["numpy"]
    assert numpy_state[0] == "MT19937" and np.array_equal(
        numpy_state[1], state["rng"][0]["numpy"][1]
    )
    assert loaded["diagnostics"]["history"][0][:2] == (1, "ok")
    assert loaded["__looks_tagged__"] == {"__tensor__": "not a tensor"}
