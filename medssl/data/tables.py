"""Reading manifest tables (CSV, optionally gzip) with clear errors for missing columns."""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["find_column", "find_table", "iter_rows", "read_table", "require_columns"]


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


def iter_rows(path: Path, delimiter: str = ",") -> tuple[list[str], Iterator[list[str]]]:
    """The header and an iterator over the rows as lists: a large table is never held whole.

    Blank lines are skipped and short rows padded with empty cells, as ``csv.DictReader``
    does, so a row can be indexed by any header position.
    """
    if path.suffix == ".gz":
        fh = io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    else:
        fh = open(path, encoding="utf-8-sig", newline="")
    reader = csv.reader(fh, delimiter=delimiter)
    header = next(reader, [])

    width = len(header)

    def rows() -> Iterator[list[str]]:
        with fh:
            for row in reader:
                if len(row) < width:
                    if not row:
                        continue
                    row += [""] * (width - len(row))
                yield row

    return header, rows()


def require_columns(header: Iterable[str], columns: Iterable[str | None], where: str) -> None:
    header = list(header)
    missing = [c for c in columns if c is not None and c not in header]
    if missing:
        raise ValueError(f"{where}: column(s) {missing} not found; the table has {header}")


def _key(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


def find_column(header: Iterable[str], names: Iterable[str], where: str) -> str:
    """The header's spelling of the first of ``names`` it has (case, spaces, ``_`` ignored).

    Releases of one dataset spell a column differently (NIH's ``Patient Gender`` became
    ``Patient Sex`` in its 2020 table); listing the variants accepts either.
    """
    header, names = list(header), list(names)
    by_key = {_key(h): h for h in header}
    for name in names:
        if _key(name) in by_key:
            return by_key[_key(name)]
    raise ValueError(
        f"{where}: column {' / '.join(repr(n) for n in names)} not found; the table has {header}"
    )
