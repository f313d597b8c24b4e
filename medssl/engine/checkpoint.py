"""Atomic, verified checkpoints that never execute code when read.

A checkpoint is a folder ``checkpoints/step_000100/`` holding ``model.safetensors``
(student, teacher and heads; the teacher's frozen parameters, which are the student's, once), ``state.safetensors`` + ``state.json`` (optimiser, step,
RNG states, counters: every tensor in safetensors, the structure around them in JSON) and
``manifest.json`` (SHA-256 of each file, written last). Nothing is pickled, so a
checkpoint copied from someone else cannot run code on ``--resume`` (a pickle's hash in the
manifest proves integrity, not authorship). The folder is written under a temporary name
and renamed into place, so a process killed at any moment leaves either a complete
checkpoint or none; a folder whose hashes do not match is skipped on load, and temporary
folders left by a kill or a failed save are removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_TENSORS = "state.safetensors"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
PREFIX = "step_"
TMP_PREFIX = f".tmp_{PREFIX}"
_STEP_NAME = re.compile(rf"{PREFIX}(\d+)")
#: JSON files of a checkpoint are small (structure only); anything larger is not ours.
MAX_JSON_BYTES = 64 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions) or read."""


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
        if tensor.numel() and (ptr in seen or not tensor.is_contiguous()):
            tensor = tensor.clone().contiguous()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


# -- state <-> (JSON, tensors) ---------------------------------------------------------------
# Tagged JSON: tensors and numpy arrays become references into state.safetensors; tuples
# and mappings with non-string keys (optimiser state is keyed by parameter index) keep
# their type, so what is loaded equals what was saved, bit for bit.


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint's state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__ndarray__":
            return tensors[inner].numpy()
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        if tag == "__items__":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _save_state(state: dict[str, Any], folder: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors)
    save_file(_contiguous_cpu(tensors), str(folder / STATE_TENSORS))
    with (folder / STATE_FILE).open("w") as fh:
        json.dump(structure, fh)


def _load_state(folder: Path) -> dict[str, Any]:
    tensors = load_file(str(folder / STATE_TENSORS))
    structure = json.loads(read_json_text(folder / STATE_FILE))
    state = _decode(structure, tensors)
    if not isinstance(state, dict):
        raise ValueError("state.json does not hold a mapping")
    return state


def read_json_text(path: Path, limit: int = MAX_JSON_BYTES) -> str:
    """A regular file's text, refused (not read) above ``limit`` bytes."""
    if not path.is_file():
        raise ValueError(f"{path.name} is missing or not a regular file")
    if path.stat().st_size > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return path.read_text(encoding="utf-8")


# -- folders ----------------------------------------------------------------------------------


def _step_of(path: Path) -> int | None:
    match = _STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def remove_temporary(directory: Path) -> int:
    """Remove the ``.tmp_step_*`` folders a kill or a failed save left; return how many."""
    if not directory.is_dir():
        return 0
    removed = 0
    for path in directory.iterdir():
        if path.name.startswith(TMP_PREFIX) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d unfinished checkpoint folder(s) from %s", removed, directory)
    return removed


def _make_room(directory: Path, keep: int) -> None:
    """When the disk cannot hold another checkpoint of the newest one's size, remove the
    ones the save would prune anyway, keeping at least one valid checkpoint meanwhile."""
    existing = list_checkpoints(directory)
    if len(existing) < max(keep, 2):
        return
    need = sum(f.stat().st_size for f in existing[-1].iterdir() if f.is_file()) * 1.1
    if shutil.disk_usage(directory).free >= need:
        return
    for old in existing[: len(existing) - keep + 1]:
        log.warning("disk nearly full: removing %s before the save, not after", old.name)
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    directory: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically into ``directory`` and keep the last ``keep``.

    An I/O error (a full disk, a lost mount) removes the partial folder and raises
    :class:`CheckpointError` with one line; the checkpoints already written stay. When the
    disk is short, the checkpoints this save would prune are removed before it.
    """
    final = directory / f"{PREFIX}{step:08d}"
    tmp = directory / f"{TMP_PREFIX}{step:08d}_{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _make_room(directory, keep)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(_contiguous_cpu(model_state), str(tmp / MODEL_FILE), metadata={"step": str(step)})
        _save_state(state, tmp)
        files = (MODEL_FILE, STATE_TENSORS, STATE_FILE)
        for name in files:
            with (tmp / name).open("rb") as fh:
                os.fsync(fh.fileno())
        manifest = {"step": step, "files": {name: _sha256(tmp / name) for name in files}}
        with (tmp / MANIFEST_FILE).open("w") as fh:
            json.dump(manifest, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except (OSError, SafetensorError) as exc:  # safetensors reports write errors as its own
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CheckpointError(
            f"could not write checkpoint step {step} into {directory}: {reason}; "
            "the checkpoints already written are intact (free space and --resume)"
        ) from None
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders (``step_<digits>``), oldest first; anything else is ignored."""
    if not directory.is_dir():
        return []
    found = [
        p
        for p in directory.iterdir()
        if _step_of(p) is not None and p.is_dir() and not p.is_symlink()
    ]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def verify_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a complete checkpoint of this format whose hashes match."""
    try:
        manifest = json.loads(read_json_text(path / MANIFEST_FILE))
        files = manifest["files"]
        if set(files) != {MODEL_FILE, STATE_TENSORS, STATE_FILE}:
            return False  # an older layout (state.pt, a pickle) or a foreign folder
        return all(
            (path / name).is_file() and _sha256(path / name) == digest
            for name, digest in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def latest_valid_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint whose hashes verify; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        if verify_checkpoint(path):
            return path
        log.warning("checkpoint %s is incomplete, corrupt or of an older format; skipped", path)
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(model state, training state)`` of a verified checkpoint; nothing is unpickled."""
    if not verify_checkpoint(path):
        raise ValueError(f"checkpoint {path} failed verification (hash mismatch or missing files)")
    try:
        return load_file(str(path / MODEL_FILE)), _load_state(path)
    except Exception as exc:  # a verified but hand-made folder: safetensors/JSON errors
        raise ValueError(f"checkpoint {path} cannot be read: {type(exc).__name__}") from None
