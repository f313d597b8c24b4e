"""``medssl prepare``: decode once, write compact training files (RAD-DINO's preprocessing).

RAD-DINO resized its DICOMs so that the shorter side is 518 pixels and stored them as
PNG. This does the same for any folder of files medssl reads: the DICOM pixel pipeline
(:mod:`medssl.data.dicom`), resize (antialiased, aspect kept), then an 8- or 16-bit PNG.
PNG is lossless, universally readable, and 16 bits keep a CR's full depth.

* **Parallel**: a process pool over the files.
* **Resumable**: each output is written to a temporary name, fsynced and renamed, so an
  output that exists is complete; a rerun skips those, deletes stale temporaries and
  rebuilds ``manifest.csv`` (itself written by rename) from the outputs on disk.
* **PHI-free**: output names are a hash of the source path relative to SOURCE, never DICOM
  tags; the manifest holds the hash key, not the source path (unless asked for).
"""

from __future__ import annotations

import csv
import hashlib
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medssl.data.readers import ReadSettings, is_supported, read_image
from medssl.data.robust import describe_error
from medssl.data.transforms import resize_shorter_side

__all__ = ["PrepareReport", "output_key", "prepare", "prepare_one"]

Format = Literal["png8", "png16"]
TMP_MARK = ".tmp-"


def output_key(relative_path: str) -> str:
    """The output name of a source file: SHA-256 of its POSIX path relative to SOURCE."""
    return hashlib.sha256(Path(relative_path).as_posix().encode()).hexdigest()[:24]


def _output_rel(key: str) -> str:
    return f"images/{key[:2]}/{key}.png"


@dataclass
class PrepareReport:
    total: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relative source, reason)

    def __str__(self) -> str:
        return (
            f"{self.total} source files: {self.written} written, {self.skipped} already done, "
            f"{len(self.failures)} failed"
        )


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write to a temporary name in the same folder, fsync, then rename atomically."""
    from PIL import Image

    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    if array.ndim == 3 and array.shape[0] == 3:
        if array.dtype == np.uint16:
            raise ValueError("16-bit RGB is not supported by PNG writers here; use png8")
        img = Image.fromarray(np.ascontiguousarray(np.moveaxis(array, 0, -1)))
    else:
        img = Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[-2:])))
    with open(tmp, "wb") as fh:
        img.save(fh, format="PNG", compress_level=6)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_one(
    job: tuple[str, str, str, int, Format, ReadSettings],
) -> tuple[str, str | None]:
    """Convert one file; returns ``(relative source, error or None)``. Never raises."""
    src, rel, out_dir, size, fmt, settings = job
    try:
        target = Path(out_dir) / _output_rel(output_key(rel))
        image = read_image(src, settings)
        resized = resize_shorter_side(torch.from_numpy(image), size).numpy()
        if fmt == "png16" and resized.shape[0] == 1:
            array = np.round(resized * 65535.0).astype(np.uint16)
        else:
            array = np.round(resized * 255.0).astype(np.uint8)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_png(target, array)
        return rel, None
    except MemoryError:
        raise
    except Exception as exc:
        return rel, describe_error(exc)


def _scan(source: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            if not name.startswith(".") and is_supported(full):
                found.append(os.path.relpath(full, source))
    return found


def _remove_stale_temporaries(out: Path) -> int:
    removed = 0
    images = out / "images"
    if images.is_dir():
        for path in images.rglob(f"*{TMP_MARK}*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_manifest(
    out: Path, sources: list[str], with_source_paths: bool, failures: dict[str, str]
) -> None:
    from PIL import Image

    columns = ["path", "key", "height", "width", "channels", "bits"]
    if with_source_paths:
        columns.append("source")
    rows = []
    for rel in sources:
        key = output_key(rel)
        target = out / _output_rel(key)
        if not target.is_file():
            continue
        with Image.open(target) as img:  # header only
            width, height = img.size
            channels = 3 if img.mode == "RGB" else 1
            bits = 16 if img.mode.startswith("I") else 8
        row = {
            "path": _output_rel(key),
            "key": key,
            "height": height,
            "width": width,
            "channels": channels,
            "bits": bits,
        }
        if with_source_paths:
            row["source"] = Path(rel).as_posix()
        rows.append(row)
    rows.sort(key=lambda r: r["key"])
    tmp = out / f"manifest.csv{TMP_MARK}{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "manifest.csv")
    tmp = out / f"failures.csv{TMP_MARK}{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "reason"])
        for rel in sorted(failures, key=output_key):
            writer.writerow([output_key(rel), failures[rel]])
    os.replace(tmp, out / "failures.csv")


def prepare(
    source: str | Path,
    out: str | Path,
    size: int = 518,
    fmt: Format = "png16",
    workers: int = 2,
    settings: ReadSettings | None = None,
    with_source_paths: bool = False,
    progress: Callable[[int, int], None] | None = None,
    select: Callable[[list[str]], list[str]] | None = None,
) -> PrepareReport:
    """Convert every readable file under ``source`` into ``out`` (see the module doc).

    ``select`` picks among the relative source paths (e.g. a
    :class:`medssl.data.source_filter.SourceFilter`).
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"prepare: source {str(source)!r} is not a directory")
    if fmt not in ("png8", "png16"):
        raise ValueError(f"prepare: format must be png8 or png16, got {fmt!r}")
    if size < 8:
        raise ValueError(f"prepare: size must be at least 8, got {size}")
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or ReadSettings()
    _remove_stale_temporaries(out)
    # OUT may sit inside SOURCE: its files must not be read back as sources on a rerun.
    out_abs = out.resolve()
    sources = [s for s in _scan(source) if not (source / s).resolve().is_relative_to(out_abs)]
    if select is not None:
        sources = select(sources)
    report = PrepareReport(total=len(sources))
    todo = []
    for rel in sources:
        if (out / _output_rel(output_key(rel))).is_file():
            report.skipped += 1
        else:
            todo.append((str(source / rel), rel, str(out), size, fmt, settings))
    failures: dict[str, str] = {}
    done = 0
    if todo:
        if workers <= 1:
            results = map(prepare_one, todo)
            pool = None
        else:
            pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers)
            results = pool.imap_unordered(prepare_one, todo, chunksize=1)
        try:
            for rel, error in results:
                done += 1
                if error is None:
                    report.written += 1
                else:
                    failures[rel] = error
                    report.failures.append((rel, error))
                if progress is not None:
                    progress(done, len(todo))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    _write_manifest(out, sources, with_source_paths, failures)
    return report
