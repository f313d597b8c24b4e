"""Reading manifest tables (CSV, optionally gzip) with clear errors for missing columns."""

from __future__ import annotations

import csv
import difflib
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
        # The header itself is not printed: a path to a file that is no manifest would
        # show its first line. Close matches only echo what the recipe already names.
        close = {
            c: m[0] for c in missing if (m := difflib.get_close_matches(c, header, n=1, cutoff=0.8))
        }
        hint = "".join(f"; did you mean {m!r} for {c!r}?" for c, m in close.items())
        raise ValueError(
            f"{where}: column(s) {missing} not found among the table's {len(header)} columns{hint}"
        )


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
    # The header is not printed: a path to a file that is no table would show its first line.
    raise ValueError(
        f"{where}: column {' / '.join(repr(n) for n in names)} not found among the table's "
        f"{len(header)} columns"
    )
