"""One folder walk for every adapter and ``medssl prepare``: symlinks followed, loops cut.

Datasets on shared storage are usually linked into place (``images -> /store/nih/images``),
so symbolic links to folders are followed by default. A folder reached twice — a link
back to an ancestor, or two links to one folder — is walked once: folders are identified
by ``(device, inode)`` of their target, so a link loop ends instead of recursing forever.
Names starting with ``.`` are skipped; the order is sorted, so listings are reproducible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

__all__ = ["walk_files"]


def walk_files(
    root: str | os.PathLike[str],
    *,
    follow_links: bool = True,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[str]:
    """Full paths of the files under ``root`` (sorted, hidden names skipped).

    ``follow_links=False`` leaves linked folders out (linked files are still listed);
    ``keep(path)`` filters the files.
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:  # a loop, or a second link to a folder already walked
            dirnames[:] = []
            continue
        seen.add(ident)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            if keep is None or keep(full):
                yield full
