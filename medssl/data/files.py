"""Opening data files defensively: regular files only, bounded sizes, PHI-free errors.

Data folders are not always curated: a FIFO named ``scan.png`` blocks any reader that
opens it, a 13000² PNG decodes to gigabytes, a 1×40000 strip is not an image anyone
meant to train on. Every reader goes through :func:`open_regular` (or
:func:`check_regular` where a library needs a path) and :func:`check_image_size` before
it decodes pixels. Errors raised here and by the readers are :class:`DataFileError`,
whose text is written by medssl and never holds a path, a file name or a tag value;
the library's own message, which may, travels in ``detail`` and is shown only with
``--show-paths``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

__all__ = [
    "DataFileError",
    "FolderScan",
    "NonFiniteError",
    "check_image_size",
    "check_regular",
    "open_regular",
    "scan_folder",
]


class DataFileError(ValueError):
    """A data file medssl refuses or cannot decode.

    ``str(exc)`` is PHI-free (medssl's own words, numbers at most); ``detail`` keeps
    the underlying library message, which may quote paths or tag values.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.detail = " ".join(detail.split())[:300]


class NonFiniteError(DataFileError):
    """Pixels that are NaN or infinite: a counted load failure, never a loss blow-up."""


def _check_stat(st: os.stat_result, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise DataFileError("not a regular file (a FIFO, device, socket or folder)")
    if st.st_size == 0:
        raise DataFileError("empty file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DataFileError(
            f"file of {st.st_size} bytes is larger than the {max_bytes}-byte limit "
            "(data.max_file_bytes)"
        )


def check_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> None:
    """Refuse anything but a regular file (symlinks are followed) of at most ``max_bytes``."""
    _check_stat(os.stat(path), max_bytes)


def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading without ever blocking on a FIFO.

    ``O_NONBLOCK`` makes ``open`` return at once on a FIFO whose other end nobody
    holds; the ``fstat`` of the open descriptor then refuses it, with no window for
    the file to be swapped between the check and the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        _check_stat(os.fstat(fd), max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_image_size(
    height: int, width: int, max_pixels: int | None, max_aspect: float | None
) -> None:
    """Refuse an image from its header, before its pixels are decoded."""
    if height < 1 or width < 1:
        raise DataFileError(f"image of {height}x{width} pixels has no pixels")
    if max_pixels is not None and height * width > max_pixels:
        raise DataFileError(
            f"image of {height}x{width} pixels is larger than the {max_pixels}-pixel limit "
            "(data.max_pixels)"
        )
    if max_aspect is not None and max(height, width) > max_aspect * min(height, width):
        raise DataFileError(
            f"image of {height}x{width} pixels has an aspect ratio beyond "
            f"{max_aspect:g}:1 (data.max_aspect)"
        )


@dataclass
class FolderScan:
    """What :func:`scan_folder` found: files to read, and what it left out (counted)."""

    files: list[str] = field(default_factory=list)
    not_regular: int = 0
    unreadable: int = 0


def scan_folder(
    root: str | os.PathLike[str],
    accept: Callable[[str], bool] | None = None,
    follow_links: bool = True,
) -> FolderScan:
    """Every regular file under ``root`` that ``accept`` takes, in sorted order.

    Hidden files and folders are skipped. FIFOs, devices and sockets are counted in
    ``not_regular`` and never opened (a FIFO would block the reader); folders that
    cannot be listed are counted in ``unreadable``. Nothing here names a path: the
    counts are all a report needs.

    Datasets on shared storage are usually linked into place (``images -> /store/nih``),
    so symbolic links to folders are followed by default. A folder reached twice (a link
    back to an ancestor, or two links to one folder) is walked once: folders are known by
    the ``(device, inode)`` of their target, so a link loop ends instead of recursing.
    ``follow_links=False`` leaves linked folders out (linked files are still listed).
    """
    scan = FolderScan()
    seen: set[tuple[int, int]] = set()

    def on_error(exc: OSError) -> None:
        scan.unreadable += 1

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=follow_links):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a loop, or a second link to a folder walked
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            try:
                regular = stat.S_ISREG(os.stat(full).st_mode)
            except OSError:  # a dangling link, or a file gone since the listing
                regular = True  # kept: reading it fails and is counted with a reason
            if not regular:
                scan.not_regular += 1
            elif accept is None or accept(full):
                scan.files.append(full)
    return scan
