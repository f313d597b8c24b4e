"""Reading manifest tables (CSV, optionally gzip) with clear errors for missing columns."""

from __future__ import annotations

import csv
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


def read_table(path: Path, delimiter: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    """The header and every row as a dict of strings."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def require_columns(header: Iterable[str], columns: Iterable[str | None], where: str) -> None:
    header = list(header)
    missing = [c for c in columns if c is not None and c not in header]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; the table has {header}")
