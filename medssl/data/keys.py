"""Keyed, PHI-free names for data files: HMAC-SHA256 of the path under a dataset's root.

A plain hash of a source path lets anyone who can guess a path (``Doe^John/scan.dcm``)
confirm it is in a prepared set; an HMAC with a secret does not. The secret (32 random
bytes, hex) is looked up in this order, and never written into the output folder nor
into the data folder:

1. an explicit file (``medssl prepare --key-file``, or the ``MEDSSL_KEY_FILE`` variable);
2. ``ROOT/.medssl-key``, a file the data owner placed beside the source to share one
   secret between users or machines;
3. the user's key store, ``$MEDSSL_KEY_DIR`` or ``~/.config/medssl/keys``, one file per
   dataset root (named by a hash of the root's resolved path), created on first use.

The same key names a file in ``medssl prepare``'s outputs and in ``medssl run``'s
failure reports, so a failure can be traced back by whoever holds the secret and the
data (``--show-paths``), and by nobody who holds only the outputs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

__all__ = [
    "KEY_FILE_NAME",
    "data_key",
    "dataset_secret",
    "printable_path",
    "show_paths",
]

KEY_FILE_NAME = ".medssl-key"
SHOW_PATHS_ENV = "MEDSSL_SHOW_PATHS"

log = logging.getLogger(__name__)
_EPHEMERAL = secrets.token_bytes(32)


class KeyFileError(ValueError):
    """A key file that cannot be read, or holds no valid secret."""


def show_paths() -> bool:
    """Whether the user asked for source paths in failure reports (``--show-paths``)."""
    return os.environ.get(SHOW_PATHS_ENV, "") not in ("", "0")


def printable_path(relative_path: str) -> str:
    """A path for text output (undecodable bytes of a file name shown as ``\\xNN``)."""
    return os.fsencode(relative_path).decode("utf-8", "backslashreplace")


def _key_dir() -> Path:
    configured = os.environ.get("MEDSSL_KEY_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "medssl" / "keys"


def _read_secret(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            text = fh.read(256).strip()
        secret = bytes.fromhex(text.decode("ascii"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(
            f"key file {str(path)!r} is unreadable or not a hex secret ({type(exc).__name__})"
        ) from None
    if len(secret) < 16:
        raise KeyFileError(f"key file {str(path)!r} holds fewer than 16 bytes of secret")
    return secret


def _create_secret(path: Path) -> bytes:
    """Create ``path`` with a new secret unless it exists; safe between processes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # fails if another process created it first: use theirs
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_secret(path)


@functools.lru_cache(maxsize=16)
def _secret_for(root: str, explicit: str | None) -> bytes:
    if explicit:
        path = Path(explicit).expanduser()
        return _read_secret(path) if path.exists() else _create_secret(path)
    beside = Path(root) / KEY_FILE_NAME
    if beside.is_file():
        return _read_secret(beside)
    name = hashlib.sha256(os.fsencode(root)).hexdigest()[:32]
    stored = _key_dir() / f"{name}.key"
    return _read_secret(stored) if stored.is_file() else _create_secret(stored)


def dataset_secret(
    root: str | Path, key_file: str | Path | None = None, ephemeral_ok: bool = False
) -> bytes:
    """The secret that keys the files under ``root`` (see the module doc for where).

    When no secret can be read or created (a read-only home, say), this raises
    :class:`KeyFileError`, or with ``ephemeral_ok`` (failure reports of a run) warns and
    returns a per-process secret: keys stay PHI-free but differ between runs.
    """
    explicit = key_file or os.environ.get("MEDSSL_KEY_FILE") or None
    try:
        return _secret_for(os.path.realpath(root), str(explicit) if explicit else None)
    except (OSError, KeyFileError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if not ephemeral_ok:
            raise KeyFileError(
                f"no key secret for the data folder ({reason}); set MEDSSL_KEY_DIR to a "
                "writable folder, or pass a key file"
            ) from None
        log.warning(
            "no key secret for the data folder (%s): failed files are named by keys that "
            "hold for this process only; set MEDSSL_KEY_DIR or MEDSSL_KEY_FILE",
            reason,
        )
        return _EPHEMERAL


def data_key(secret: bytes, relative_path: str) -> str:
    """24 hex digits of HMAC-SHA256(secret, POSIX path relative to the root)."""
    posix = os.fsencode(relative_path).replace(os.sep.encode(), b"/")
    return hmac.new(secret, posix, hashlib.sha256).hexdigest()[:24]
