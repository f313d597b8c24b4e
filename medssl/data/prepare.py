"""``medssl prepare``: decode once, write compact training files (RAD-DINO's preprocessing).

RAD-DINO resized its DICOMs so that the shorter side is 518 pixels and stored them as
PNG. This does the same for any folder of files medssl reads: the DICOM pixel pipeline
(:mod:`medssl.data.dicom`), resize (antialiased, aspect kept), then an 8- or 16-bit PNG.
PNG is lossless, universally readable, and 16 bits keep a CR's full depth.

* **Parallel**: a process pool over the files.
* **Resumable**: each output is written to a temporary name, fsynced and renamed, so an
  output that exists is complete; a rerun skips those, deletes stale temporaries and
  rebuilds ``manifest.csv`` (itself written by rename) from the outputs on disk.
* **PHI-free**: output names are a keyed hash (HMAC-SHA256, :mod:`medssl.data.keys`) of
  the source path relative to SOURCE, never DICOM tags; the manifest and
  ``failures.csv`` hold the key and a reason class, not the source path or any tag
  value (unless ``show_paths`` is asked for). The secret is never written into OUT.
* **Defensive**: only regular files are opened (a FIFO is counted, never read), sizes
  are checked from headers before decoding (:mod:`medssl.data.files`), unreadable
  folders are counted, and a failed share above ``max_failure_share`` is an error once
  the manifest is written.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medssl.data.files import scan_folder
from medssl.data.keys import dataset_secret, printable_path
from medssl.data.prepare_output import (
    TMP_MARK,
    Format,
    PrepareReport,
    TooManyPrepareFailures,
    decode_for_output,
    output_key,
)
from medssl.data.readers import ReadSettings, is_supported
from medssl.data.robust import describe_error

__all__ = ["PrepareReport", "TooManyPrepareFailures", "output_key", "prepare", "prepare_one"]


def _output_rel(key: str) -> str:
    return f"images/{key[:2]}/{key}.png"


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
    info = None
    if array.dtype == np.uint16:  # all 16 bits significant: readers scale by 65535
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", b"\x10")
    with open(tmp, "wb") as fh:
        img.save(fh, format="PNG", compress_level=6, pnginfo=info)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_one(
    job: tuple[str, str, str, str, int, Format, ReadSettings, bool],
) -> tuple[str, str | None]:
    """Convert one file; returns ``(relative source, error or None)``. Never raises."""
    src, rel, key, out_dir, size, fmt, settings, paths = job
    try:
        target = Path(out_dir) / _output_rel(key)
        array = decode_for_output(src, size, fmt, settings)
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_png(target, array)
        return rel, None
    except MemoryError:
        raise
    except Exception as exc:
        return rel, describe_error(exc, paths=paths)


def _prepared_keys(source: Path) -> dict[str, str]:
    """``{relative PNG path: key}`` of a folder ``prepare`` wrote, else ``{}``."""
    manifest = source / "manifest.csv"
    if not manifest.is_file():
        return {}
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"path", "key"} <= set(reader.fieldnames or ()):
            return {}
        return {os.path.normpath(r["path"]): r["key"] for r in reader}


def _remove_stale_temporaries(out: Path) -> int:
    removed = 0
    images = out / "images"
    if images.is_dir():
        for path in images.rglob(f"*{TMP_MARK}*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_manifest(
    out: Path,
    sources: list[str],
    keys: dict[str, str],
    with_source_paths: bool,
    failures: dict[str, str],
) -> None:
    from PIL import Image

    columns = ["path", "key", "height", "width", "channels", "bits"]
    if with_source_paths:
        columns.append("source")
    rows = []
    for rel in sources:
        key = keys[rel]
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
            row["source"] = printable_path(Path(rel).as_posix())
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
        writer.writerow(["key", "reason", "source"] if with_source_paths else ["key", "reason"])
        for rel in sorted(failures, key=keys.__getitem__):
            row = [keys[rel], failures[rel]]
            if with_source_paths:
                row.append(printable_path(Path(rel).as_posix()))
            writer.writerow(row)
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
    key_file: str | Path | None = None,
    max_failure_share: float = 0.05,
    follow_links: bool = True,
    select: Callable[[list[str]], list[str]] | None = None,
    shard_images: int = 256,
) -> PrepareReport:
    """Convert every readable file under ``source`` into ``out`` (see the module doc).

    ``with_source_paths`` (``--show-paths``) adds each source path to ``manifest.csv``
    and ``failures.csv`` and the library's own words to failure reasons. ``key_file``
    holds the secret of the keyed output names (:func:`medssl.data.keys.dataset_secret`).
    Raises :class:`TooManyPrepareFailures` after writing the manifest when more than
    ``max_failure_share`` of the files failed. ``select`` picks among the relative
    source paths (e.g. a :class:`medssl.data.source_filter.SourceFilter`).
    ``fmt`` ``shards`` / ``shards8`` writes streaming shards of ``shard_images`` images
    instead of PNGs (:mod:`medssl.data.streaming`); a prepared folder as SOURCE keeps the
    names of its ``manifest.csv``.
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"prepare: source {str(source)!r} is not a directory")
    if fmt not in ("png8", "png16", "shards", "shards8"):
        raise ValueError(f"prepare: format must be png8, png16, shards or shards8, got {fmt!r}")
    if size < 8:
        raise ValueError(f"prepare: size must be at least 8, got {size}")
    out.mkdir(parents=True, exist_ok=True)
    out_abs = out.resolve()
    if key_file is not None and Path(key_file).resolve().is_relative_to(out_abs):
        raise ValueError("prepare: the key file must not lie inside OUT (it unlocks the names)")
    settings = settings or ReadSettings()
    _remove_stale_temporaries(out)
    secret = dataset_secret(source, key_file)
    # OUT may sit inside SOURCE: its files must not be read back as sources on a rerun.
    scan = scan_folder(source, is_supported, follow_links=follow_links)
    sources = [
        os.path.relpath(s, source)
        for s in scan.files
        if not Path(s).resolve().is_relative_to(out_abs)
    ]
    if select is not None:
        sources = select(sources)
    keys = {rel: output_key(rel, secret) for rel in sources}
    report = PrepareReport(
        total=len(sources), not_regular=scan.not_regular, unreadable_folders=scan.unreadable
    )
    if fmt.startswith("shards"):
        from medssl.data.shard_writer import prepare_shards

        prepared = _prepared_keys(source)  # a prepared folder keeps its names
        return prepare_shards(
            source,
            out,
            [(str(source / rel), prepared.get(rel, keys[rel])) for rel in sources],
            report,
            size=size,
            fmt=fmt,
            settings=settings,
            workers=workers,
            show_paths=with_source_paths,
            progress=progress,
            max_failure_share=max_failure_share,
            shard_images=shard_images,
        )
    todo = []
    for rel in sources:
        if (out / _output_rel(keys[rel])).is_file():
            report.skipped += 1
        else:
            todo.append(
                (
                    str(source / rel),
                    rel,
                    keys[rel],
                    str(out),
                    size,
                    fmt,
                    settings,
                    with_source_paths,
                )
            )
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
                    shown = printable_path(rel) if with_source_paths else keys[rel]
                    report.failures.append((shown, error))
                if progress is not None:
                    progress(done, len(todo))
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    _write_manifest(out, sources, keys, with_source_paths, failures)
    if report.failure_share > max_failure_share:
        raise TooManyPrepareFailures(
            f"{len(report.failures)} of {report.total} files ({report.failure_share:.2%}) "
            f"failed, more than max_failure_share={max_failure_share:.2%}; the outputs and "
            f"{out / 'failures.csv'} are written (failures by key and reason)",
            report,
        )
    return report
