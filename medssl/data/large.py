"""Large label tables (CheXpert's 223,414 rows): compact records and sampled file checks.

A :class:`~medssl.data.base.Record` with its metadata dict and label array costs about a
kilobyte; :class:`ColumnRecords` keeps a table's rows as columns (a relative path, one
row of a label matrix, interned metadata and group keys: about 150 bytes a row) and
builds a ``Record`` when one is indexed. Tables are read streamed
(:func:`medssl.data.tables.iter_rows`), never whole.

Checking that every listed file exists costs one ``stat`` per row. Training needs that
(``skip_missing`` drops the absent rows); ``medssl validate`` does not, so inside
:func:`sampled_file_checks` adapters check a seeded sample of the files and say so in
their ``check_note``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, overload

import numpy as np

from medssl.data.base import Record

__all__ = ["ColumnRecords", "check_files", "sampled_file_checks"]

_SAMPLE: ContextVar[int] = ContextVar("medssl_sampled_file_checks", default=0)


@contextmanager
def sampled_file_checks(n: int = 1000) -> Iterator[None]:
    """Within this block, table adapters check ``n`` sampled files instead of every one."""
    token = _SAMPLE.set(n)
    try:
        yield
    finally:
        _SAMPLE.reset(token)


def check_files(root: str, rel: Sequence[str], what: str) -> tuple[np.ndarray, str | None]:
    """``(keep, note)``: which rows' files exist, and a note when only a sample was checked.

    Outside :func:`sampled_file_checks` every file is checked; inside, a seeded sample is,
    the other rows are kept, and ``note`` states the sample and what it found.
    """
    n = len(rel)
    sample = _SAMPLE.get()
    if not sample or n <= sample:
        keep = np.fromiter((os.path.exists(os.path.join(root, r)) for r in rel), bool, n)
        return keep, None
    keep = np.ones(n, bool)
    picked = np.random.default_rng(0).choice(n, sample, replace=False)
    for i in picked:
        keep[i] = os.path.exists(os.path.join(root, rel[i]))
    missing = int(n - keep.sum())
    note = (
        f"{what}: {n:,} table rows parsed in full (streamed); file existence checked on a "
        f"seeded sample of {sample:,}: {missing} missing"
        + (f" (about {missing / sample:.0%} of the rows would be skipped)" if missing else "")
    )
    return keep, note


class ColumnRecords(Sequence[Record]):
    """Rows of a table as columns; ``records[i]`` is a :class:`Record` (see module doc)."""

    def __init__(
        self,
        root: str,
        rel: list[str],
        labels: np.ndarray | None,
        meta: dict[str, list[Any]],
        groups: list[str | None] | None = None,
        text: list[str | None] | None = None,
    ) -> None:
        self.root, self.rel, self.labels, self.meta, self.groups = root, rel, labels, meta, groups
        self.text = text

    def __len__(self) -> int:
        return len(self.rel)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> list[Record]: ...

    def __getitem__(self, index: int | slice) -> Record | list[Record]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        rel = self.rel[index]
        return Record(
            os.path.join(self.root, rel),
            None,
            None if self.labels is None else self.labels[index].copy(),
            {key: values[index] for key, values in self.meta.items()},
            None if self.text is None else self.text[index],
            None,
            rel,
            None if self.groups is None else self.groups[index],
        )

    def take(self, keep: np.ndarray) -> ColumnRecords:
        """The rows where ``keep`` is true."""
        index = np.flatnonzero(keep)
        pick = lambda values: [values[i] for i in index]  # noqa: E731
        return ColumnRecords(
            self.root,
            pick(self.rel),
            None if self.labels is None else self.labels[index],
            {key: pick(values) for key, values in self.meta.items()},
            None if self.groups is None else pick(self.groups),
            None if self.text is None else pick(self.text),
        )
