"""Reading manifest tables (CSV, optionally gzip) with clear errors for missing columns."""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["find_table", "read_table", "require_columns"]


def find_table(root: Path, name: str) -> Path:
    """``root/name`` or ``root/name.gz`` (or ``name`` itself when absolute)."""
    base = Path(name) if os.path.isabs(name) else root / name
    for candidate in (base, Path(f"{base}.gz")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"table {str(base)!r} (or .gz) not found")


#: Largest manifest read (after gzip decompression): a few million rows fit many times over;
#: a path to something else (a disk image, a gzip bomb) fails fast instead of filling memory.
MAX_TABLE_BYTES = 2 << 30


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """The header and every row as a dict of strings."""
    if not path.is_file():  # a FIFO or a device would block or never end
        raise ValueError(f"table {str(path)!r} is not a regular file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read(MAX_TABLE_BYTES + 1)
    if len(raw) > MAX_TABLE_BYTES:
        raise ValueError(f"table {str(path)!r} is larger than {MAX_TABLE_BYTES >> 30} GiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"table {str(path)!r} is not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def require_columns(header: Iterable[str], columns: Iterable[str | None], where: str) -> None:
    header = list(header)
    missing = [c for c in columns if c is not None and c not in header]
    if missing:
        # The header itself is not printed: a path to a file that is no manifest would
        # show its first line. Close matches only echo what the recipe already names.
        close = {
            c: m[0] for c in missing if (m := difflib.get_close_matches(c, header, n=1, cutoff=0.8))
        }
        hint = "".join(f"; did you mean {m!r} for {c!r}?" for c, m in close.items())
        raise ValueError(
            f"{where}: column(s) {missing} not found among the table's {len(header)} columns{hint}"
        )
