"""Writing streaming shards: ``medssl prepare --format shards`` and ``--dataset NAME``.

The shards are litdata's format (read back by :mod:`medssl.data.streaming`). A shard item
is ``{"image": uint8/uint16 [C, H, W], "info": JSON}``: the pixels exactly as ``medssl
prepare`` writes them into a PNG (:func:`medssl.data.prepare_output.decode_for_output`)
and, in ``info``, the keyed name, the label, the whitelisted metadata
(:data:`medssl.data.base.META_KEYS`) and the group's number. ``index.json`` carries a
``medssl`` block (task, label names, groups) beside litdata's own fields. No source path
or tag value is ever written.

Writing is resumable by shard: shard ``n`` holds the ``n``-th run of ``shard_images``
sources in key order; it is written to a temporary folder and moved into place, and a
marker (``parts/n.json``, written last) says it is complete with its failures.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.base import META_KEYS
from medssl.data.readers import ReadSettings
from medssl.data.robust import describe_error
from medssl.data.streaming import INDEX, require_litdata

__all__ = ["SHARD_FORMATS", "ShardJob", "prepare_shards", "shard_dataset", "write_shards"]

log = logging.getLogger(__name__)

#: ``medssl prepare --format`` values that write shards (16-bit grey / 8-bit).
SHARD_FORMATS = {"shards": "png16", "shards8": "png8"}
PARTS = "parts"
_TMP = ".tmp-shard-"


# -- writing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    """One source to decode into a shard item (everything a worker process needs)."""

    path: str
    key: str
    size: int | None
    fmt: str  # png8 / png16: the quantisation of medssl prepare
    settings: ReadSettings
    frame: int | None = None
    label: Any = None
    meta: tuple[tuple[str, Any], ...] = ()
    group: int | None = None
    show_paths: bool = False
    shrink_only: bool = False


def decode_job(job: ShardJob) -> tuple[str, np.ndarray | None, str | None]:
    """``(key, pixels or None, failure reason or None)``; never raises (but MemoryError)."""
    from medssl.data.prepare_output import decode_for_output

    try:
        array = decode_for_output(
            job.path,
            job.size,
            job.fmt,  # type: ignore[arg-type]
            job.settings,
            job.frame,
            job.shrink_only,
        )
        return job.key, array, None
    except MemoryError:
        raise
    except Exception as exc:
        return job.key, None, describe_error(exc, paths=job.show_paths)


def _json_label(label: Any) -> Any:
    if label is None:
        return None
    array = np.asarray(label)
    return array.tolist()


def _item(job: ShardJob, array: np.ndarray) -> dict[str, Any]:
    info = {
        "key": job.key,
        "label": _json_label(job.label),
        "meta": {k: v for k, v in job.meta if k in META_KEYS},
        "group": job.group,
    }
    return {"image": np.ascontiguousarray(array), "info": json.dumps(info)}


@dataclass
class ShardReport:
    total: int = 0
    written: int = 0
    skipped: int = 0
    shards: int = 0
    shard_bytes: int = 0
    failures: list[tuple[str, str]] | None = None

    def __str__(self) -> str:
        mean = self.shard_bytes / self.shards / 2**20 if self.shards else 0.0
        return f"{self.shards} shards ({mean:.1f} MiB on average)"


def _write_part(out: Path, part: int, items: list[dict[str, Any]], shard_images: int) -> int:
    """Write one shard into a temporary folder, then move its chunk into ``out``."""
    from litdata.streaming.writer import BinaryWriter

    tmp = out / f"{_TMP}{part}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # One chunk per shard: the chunk limit is above the shard's item count.
    writer = BinaryWriter(str(tmp), chunk_size=shard_images + 1)
    writer._rank = part  # names the chunk chunk-<part>-0.bin (litdata's per-writer rank)
    for i, item in enumerate(items):
        writer.add_item(i, item)
    writer.done()
    size = 0
    index_file = tmp / f"{part}.{INDEX}"
    if items:
        for chunk in json.loads(index_file.read_text())["chunks"]:
            os.replace(tmp / chunk["filename"], out / chunk["filename"])
            size += int(chunk["chunk_bytes"])
        os.replace(index_file, out / PARTS / f"{part}.{INDEX}")
    shutil.rmtree(tmp, ignore_errors=True)
    return size


def _merge(out: Path, parts: int, info: dict[str, Any]) -> None:
    """``index.json``: every shard's chunks in shard order, with medssl's block."""
    chunks: list[dict[str, Any]] = []
    config = None
    groups: list[int | None] = []
    for part in range(parts):
        marker = json.loads((out / PARTS / f"{part}.json").read_text())
        groups.extend(marker["groups"])
        index_file = out / PARTS / f"{part}.{INDEX}"
        if not index_file.is_file():
            continue  # every source of this shard failed
        data = json.loads(index_file.read_text())
        config = config or data["config"]
        chunks.extend(data["chunks"])
    if config is None:
        raise ValueError("prepare: no image could be written, so no shard exists")
    if any(g is not None for g in groups):
        info["groups"] = groups
    tmp = out / f"{INDEX}{_TMP}{os.getpid()}"
    tmp.write_text(json.dumps({"chunks": chunks, "config": config, "medssl": info}))
    os.replace(tmp, out / INDEX)


def write_shards(
    jobs: Sequence[ShardJob],
    out: str | Path,
    info: dict[str, Any],
    shard_images: int = 256,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> ShardReport:
    """Decode ``jobs`` (sorted by key here) into shards of ``shard_images`` under ``out``.

    Shards finished by an earlier run are kept (their sources are not decoded again);
    failures are counted per shard and reported with the key and reason class.
    """
    require_litdata()
    if shard_images < 1:
        raise ValueError(f"prepare: shard size must be at least 1 image, got {shard_images}")
    out = Path(out)
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{_TMP}*"):
        shutil.rmtree(stale, ignore_errors=True)
    (out / INDEX).unlink(missing_ok=True)  # rewritten at the end, from the markers
    ordered = sorted(jobs, key=lambda j: j.key)
    parts = [ordered[i : i + shard_images] for i in range(0, len(ordered), shard_images)]
    report = ShardReport(total=len(ordered), failures=[])
    todo: list[int] = []
    for n, part in enumerate(parts):
        marker = out / PARTS / f"{n}.json"
        done = marker.is_file() and json.loads(marker.read_text()).get("keys") == [
            j.key for j in part
        ]
        if done:
            saved = json.loads(marker.read_text())
            report.skipped += len(part) - len(saved["failures"])
            report.failures.extend(tuple(f) for f in saved["failures"])  # type: ignore[union-attr]
            report.shard_bytes += int(saved["bytes"])
            report.shards += bool(saved["bytes"])
        else:
            marker.unlink(missing_ok=True)
            (out / PARTS / f"{n}.{INDEX}").unlink(missing_ok=True)
            todo.append(n)
    pool = None
    if workers > 1 and todo:
        pool = mp.get_context("fork" if os.name != "nt" else "spawn").Pool(workers)
    try:
        done_count, total = 0, sum(len(parts[n]) for n in todo)
        for n in todo:
            part = parts[n]
            results = pool.imap(decode_job, part, chunksize=4) if pool else map(decode_job, part)
            items, failures, groups = [], [], []
            for job, (key, array, error) in zip(part, results, strict=True):
                done_count += 1
                if array is None:
                    failures.append((key, error or "unknown"))
                else:
                    items.append(_item(job, array))
                    groups.append(job.group)
                if progress is not None:
                    progress(done_count, total)
            size = _write_part(out, n, items, shard_images)
            marker = {
                "keys": [j.key for j in part],
                "failures": failures,
                "groups": groups,
                "bytes": size,
            }
            tmp = out / PARTS / f"{n}.json{_TMP}"
            tmp.write_text(json.dumps(marker))
            os.replace(tmp, out / PARTS / f"{n}.json")  # last: the shard is complete
            report.written += len(items)
            report.failures.extend(failures)  # type: ignore[union-attr]
            report.shard_bytes += size
            report.shards += bool(size)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    # Markers of shards beyond this run's count belong to a larger earlier selection.
    for marker in (out / PARTS).glob("*.json"):
        stem = marker.name.split(".")[0]
        if stem.isdigit() and int(stem) >= len(parts):
            marker.unlink()
            (out / PARTS / f"{stem}.{INDEX}").unlink(missing_ok=True)
            for chunk in out.glob(f"chunk-{stem}-*.bin"):
                chunk.unlink()
    _merge(out, len(parts), info)
    return report


def _finish(
    out: Path, report: Any, shards: ShardReport, max_failure_share: float, show_paths: bool
) -> Any:
    """Fill a :class:`medssl.data.prepare.PrepareReport`, write ``failures.csv``, check the
    failed share (as the PNG output does)."""
    import csv

    from medssl.data.prepare_output import TooManyPrepareFailures

    report.written, report.skipped = shards.written, shards.skipped
    report.failures = list(shards.failures or [])
    report.shards = str(shards)
    tmp = out / f"failures.csv{_TMP}"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["key", "reason"])
        writer.writerows(sorted(report.failures))
    os.replace(tmp, out / "failures.csv")
    if report.failure_share > max_failure_share:
        raise TooManyPrepareFailures(
            f"{len(report.failures)} of {report.total} files ({report.failure_share:.2%}) "
            f"failed, more than max_failure_share={max_failure_share:.2%}; the shards and "
            f"{out / 'failures.csv'} are written (failures by key and reason)",
            report,
        )
    return report


def prepare_shards(
    source: Path,
    out: Path,
    sources: list[tuple[str, str]],
    report: Any,
    *,
    size: int | None,
    fmt: str,
    settings: ReadSettings,
    workers: int,
    show_paths: bool,
    progress: Callable[[int, int], None] | None,
    max_failure_share: float,
    shard_images: int,
) -> Any:
    """``medssl prepare SOURCE OUT --format shards``: ``sources`` are ``(path, key)``."""
    del source
    quant = SHARD_FORMATS[fmt]
    jobs = [ShardJob(p, k, size, quant, settings, show_paths=show_paths) for p, k in sources]
    info = {"format": 1, "channels": settings.channels, "bits": 16 if quant == "png16" else 8}
    if quant == "png16" and settings.channels == 3:
        info["bits"] = 8  # 16-bit colour is stored as 8 bits, as in the PNG output
    shards = write_shards(jobs, out, info, shard_images, workers, progress)
    return _finish(out, report, shards, max_failure_share, show_paths)


def shard_dataset(
    adapter: Any,
    out: str | Path,
    *,
    size: int | None = None,
    fmt: str = "shards",
    workers: int = 2,
    shard_images: int = 256,
    progress: Callable[[int, int], None] | None = None,
    max_failure_share: float = 0.05,
    key_file: str | Path | None = None,
) -> Any:
    """Shards of a file-backed dataset adapter (``medssl prepare --dataset NAME``): its
    labels, whitelisted metadata and group numbers travel with the pixels.

    Keys are the keyed hash of each file's path under the adapter's root, as for a folder;
    groups (patients, studies) are numbered in order of appearance, never written by name.
    """
    from medssl.data.keys import data_key, dataset_secret
    from medssl.data.prepare_output import PrepareReport

    records = getattr(adapter, "records", None)
    root = getattr(adapter.options, "root", None)
    if records is None or root is None:
        raise ValueError(
            f"prepare --dataset: {type(adapter).__name__} is not a file-backed adapter with a "
            "root; shard a folder instead"
        )
    root = Path(root).expanduser()
    secret = dataset_secret(root, key_file)
    quant = SHARD_FORMATS[fmt]
    numbers: dict[str, int] = {}
    jobs = []
    for record in records:
        rel = os.path.relpath(record.path, root)
        key = data_key(secret, rel)
        if record.frame is not None:
            key = f"{key}-{record.frame}"
        group = None
        if record.group is not None:
            group = numbers.setdefault(str(record.group), len(numbers))
        meta = tuple((k, record.meta.get(k)) for k in META_KEYS if record.meta.get(k) is not None)
        frame = adapter._frame_for(record)
        jobs.append(
            ShardJob(
                record.path,
                key,
                size,
                quant,
                adapter.read_settings,
                frame,
                record.label,
                meta,
                group,
                shrink_only=True,  # the loader resizes; shards never store enlarged images
            )
        )
    info = {
        "format": 1,
        "channels": adapter.channels,
        "bits": 16 if quant == "png16" and adapter.channels == 1 else 8,
        "task": adapter.task,
        "label_names": adapter.label_names,
        "target_name": adapter.target_name,
        "group_kind": adapter.group_kind,
    }
    report = PrepareReport(total=len(jobs))
    shards = write_shards(jobs, out, info, shard_images, workers, progress)
    return _finish(Path(out), report, shards, max_failure_share, False)
