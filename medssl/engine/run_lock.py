"""One process per run directory: an OS-level lock on ``<dir>/.medssl.lock``.

``fcntl.flock`` is released by the kernel when the process exits or is killed, so a crash
never leaves a stale lock behind; the file holds the owner's PID only to name it in the
error a second process gets.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".medssl.lock"


class RunDirectoryLocked(RuntimeError):
    """Another process holds the run directory."""


class RunLock:
    """Hold the lock of ``directory`` (created if missing) while the context is open."""

    def __init__(self, directory: Path, what: str = "output_dir") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            pid = owner if owner.isdigit() else "unknown"
            raise RunDirectoryLocked(
                f"{self.what} {self.directory} is in use by another medssl process "
                f"(PID {pid}); wait for it to finish, stop it, or choose another {self.what}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Closing the descriptor drops the flock; the file stays (removing it would let
            # a third process lock a new inode while a second still waits on the old one).
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
