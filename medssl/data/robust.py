"""Robust loading: bad files are skipped and counted, not fatal.

An adapter's ``__getitem__`` returns a :class:`LoadFailure` instead of raising when a
file is truncated, corrupt or undecodable. :func:`collate` drops those and carries
their ``(key, reason)`` records in the batch under ``"failures"``, so the count
survives DataLoader worker processes. A failure names the file by its keyed hash
(:mod:`medssl.data.keys`) and the reason by its class, never by path or tag value,
unless the user asked for paths (``--show-paths``). The engine feeds every batch to a
:class:`LoadFailures` tracker, reports once at the end of the epoch, and aborts only
when the failed share exceeds ``max_failure_share``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.data.files import DataFileError
from medssl.data.keys import show_paths

__all__ = [
    "LoadFailure",
    "LoadFailures",
    "ManifestPathError",
    "TooManyLoadFailures",
    "collate",
    "describe_error",
    "resolve_under_root",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadFailure:
    """Returned by an adapter in place of a sample whose file could not be loaded.

    ``path`` is the file's key (:func:`medssl.data.keys.data_key`), or its path under
    the root only when the user passed ``--show-paths``.
    """

    path: str
    reason: str


class TooManyLoadFailures(RuntimeError):
    """More than ``max_failure_share`` of the samples seen failed to load."""


class ManifestPathError(ValueError):
    """A manifest path that is absolute or escapes the dataset root."""


def describe_error(exc: BaseException, limit: int = 240, paths: bool | None = None) -> str:
    """The reason class of a failed load, on one line, free of PHI.

    :class:`~medssl.data.files.DataFileError` carries medssl's own words
    (``"DicomReadError: unsupported Photometric Interpretation (0028,0004)"``); any
    other exception is named by its type (and ``strerror`` for an ``OSError``), since
    library messages quote paths and tag values. ``paths=True`` (default: whether the
    user passed ``--show-paths``) appends the library's message.
    """
    paths = show_paths() if paths is None else paths
    name = type(exc).__name__
    if isinstance(exc, DataFileError):
        text = str(exc)
        if paths and exc.detail:
            text += f" ({exc.detail})"
    elif isinstance(exc, OSError) and exc.strerror:
        text = str(exc) if paths else exc.strerror
    else:
        text = str(exc) if paths else ""
    text = " ".join(text.split())
    reason = f"{name}: {text}" if text else name
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def resolve_under_root(root: str | Path, relative: str, where: str = "manifest") -> str:
    """``root / relative`` as a normalised path; refuse anything outside ``root``.

    Symlinks are not followed (a dataset may be a tree of links to a store); ``..``
    components and absolute paths that leave the root are refused with a clear error.
    """
    root_norm = os.path.normpath(os.path.abspath(os.fspath(root)))
    rel = str(relative).strip()
    if not rel:
        raise ManifestPathError(f"{where}: empty path")
    full = os.path.normpath(os.path.join(root_norm, rel))
    if full != root_norm and not full.startswith(root_norm + os.sep):
        raise ManifestPathError(
            f"{where}: path {rel!r} escapes the dataset root {root_norm!r}; manifest paths "
            "must be relative to the root and stay inside it"
        )
    return full


def collate(samples: Sequence[Any]) -> dict[str, Any]:
    """Stack ``image``/``label``/``mask``; ``meta`` as a dict of lists; ``text`` a list.

    :class:`LoadFailure` items (and ``None``) are dropped; the failures travel in the
    batch as ``batch["failures"]`` (a list of ``(path, reason)``). When every sample of
    a batch failed, the batch holds only ``"failures"``: callers skip batches without
    ``"image"``.
    """
    good = [s for s in samples if isinstance(s, dict)]
    failures = [(s.path, s.reason) for s in samples if isinstance(s, LoadFailure)]
    failures += [("<unknown>", "sample was None") for s in samples if s is None]
    batch: dict[str, Any] = {"failures": failures}
    if not good:
        return batch
    import torch  # here, not at import: table checks load this module without torch

    batch["image"] = torch.stack([s["image"] for s in good])
    for key in ("label", "mask"):
        present = [key in s for s in good]
        if all(present):
            batch[key] = torch.stack([torch.as_tensor(s[key]) for s in good])
        elif any(present):
            raise ValueError(f"some samples of a batch have {key!r} and some do not")
    metas = [s.get("meta", {}) for s in good]
    keys = sorted({k for m in metas for k in m})
    batch["meta"] = {k: [m.get(k) for m in metas] for k in keys}
    if any("text" in s for s in good):
        batch["text"] = [s.get("text", "") for s in good]
    return batch


class LoadFailures:
    """Counts failed loads over an epoch and decides whether the run may continue.

    Usage in a training loop::

        tracker = LoadFailures(max_failure_share=0.01)
        for batch in loader:
            tracker.update(batch["failures"], n_seen=len(batch["failures"]) + n_good)
            ...
        log.info(tracker.summary()); tracker.check(); tracker.reset()
    """

    def __init__(self, max_failure_share: float = 0.01, max_listed: int = 20) -> None:
        if not 0.0 <= max_failure_share <= 1.0:
            raise ValueError(f"max_failure_share must be in [0, 1], got {max_failure_share}")
        self.max_failure_share = max_failure_share
        self.max_listed = max_listed
        self.reset()

    def reset(self) -> None:
        self.failures: list[tuple[str, str]] = []
        self.n_seen = 0

    def update(self, batch_failures: Iterable[tuple[str, str]] | None, n_seen: int) -> None:
        """Add one batch: its failure records and how many samples it asked for."""
        records = [(str(p), str(r)) for p, r in (batch_failures or [])]
        if n_seen < len(records):
            raise ValueError(f"n_seen={n_seen} is less than the {len(records)} failures given")
        self.failures.extend(records)
        self.n_seen += int(n_seen)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def share(self) -> float:
        return self.n_failed / self.n_seen if self.n_seen else 0.0

    def summary(self) -> str:
        if not self.failures:
            return f"all {self.n_seen} samples loaded"
        reasons = Counter(r.split(":", 1)[0] for _, r in self.failures)
        lines = [
            f"{self.n_failed} of {self.n_seen} samples ({self.share:.2%}) failed to load and "
            f"were skipped; by error type: "
            + ", ".join(f"{k} x{v}" for k, v in reasons.most_common())
        ]
        for path, reason in self.failures[: self.max_listed]:
            lines.append(f"  {path}: {reason}")
        if self.n_failed > self.max_listed:
            lines.append(f"  ... and {self.n_failed - self.max_listed} more")
        return "\n".join(lines)

    def check(self) -> None:
        """Raise :class:`TooManyLoadFailures` when the failed share exceeds the limit."""
        if self.n_seen and self.share > self.max_failure_share:
            raise TooManyLoadFailures(
                f"{self.share:.2%} of samples failed to load, more than max_failure_share="
                f"{self.max_failure_share:.2%}; fix or remove the files, or raise the limit.\n"
                + self.summary()
            )
