"""Atomic, verified checkpoints.

A checkpoint is a folder ``checkpoints/step_000100/`` holding ``model.safetensors``
(student, teacher and heads), ``state.pt`` (optimiser, step, RNG states) and
``manifest.json`` (SHA-256 of both, written last). It is written under a temporary name
and renamed into place, so a process killed at any moment leaves either a complete
checkpoint or none; a folder whose hashes do not match is skipped on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
PREFIX = "step_"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors; clone what needs it.
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen or not tensor.is_contiguous():
            tensor = tensor.clone().contiguous()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def save_checkpoint(
    directory: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically into ``directory`` and keep the last ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f".tmp_{PREFIX}{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous_cpu(model_state), str(tmp / MODEL_FILE), metadata={"step": str(step)})
    torch.save(state, tmp / STATE_FILE)
    manifest = {
        "step": step,
        "files": {name: _sha256(tmp / name) for name in (MODEL_FILE, STATE_FILE)},
    }
    for name in (MODEL_FILE, STATE_FILE):
        with (tmp / name).open("rb") as fh:
            os.fsync(fh.fileno())
    with (tmp / MANIFEST_FILE).open("w") as fh:
        json.dump(manifest, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def verify_checkpoint(path: Path) -> bool:
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        return all(
            (path / name).is_file() and _sha256(path / name) == digest
            for name, digest in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError):
        return False


def latest_valid_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose hashes verify; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        if verify_checkpoint(path):
            return path
        log.warning("checkpoint %s is incomplete or corrupt; trying an older one", path)
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not verify_checkpoint(path):
        raise ValueError(f"checkpoint {path} failed verification (hash mismatch or missing files)")
    model_state = load_file(str(path / MODEL_FILE))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    return model_state, state
