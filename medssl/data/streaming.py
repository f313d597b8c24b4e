"""Streaming shards: ``medssl prepare --format shards`` and ``data.name: streaming``.

The shards are Lightning's litdata format (https://github.com/Lightning-AI/litData): chunk
files plus an ``index.json``, read from a local folder or an object store (``s3://``,
``gs://``, ``azure://``) by litdata's own client. litdata also deals the chunks out to
ranks and DataLoader workers, shuffles chunks and items within them for a seed and epoch,
and records how far each worker got (:meth:`StreamingFeed.state_dict`), so a killed run
resumes on the very sample it would have read next. Nothing here splits work by hand.

A shard item is ``{"image": uint8/uint16 [C, H, W], "info": JSON}``: the pixels exactly as
``medssl prepare`` writes them into a PNG (decoded, resized, quantised) and, in ``info``,
the keyed name, the label, the whitelisted metadata (:data:`medssl.data.base.META_KEYS`)
and the group's number. ``index.json`` carries a ``medssl`` block (task, label names,
groups) beside litdata's own fields. No source path or tag value is ever written.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from medssl.data.base import META_KEYS
from medssl.data.readers import ReadSettings
from medssl.data.robust import LoadFailure, describe_error
from medssl.data.transforms import resize_and_crop

# litdata asks PyPI for a newer version whenever a dataset is built: a network call from
# every worker of a training job (and a 30 s wait on a cluster without internet access).
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

__all__ = [
    "SHARD_FORMATS",
    "ShardJob",
    "StreamingFeed",
    "StreamingShards",
    "make_feed",
    "prepare_shards",
    "shard_dataset",
    "write_shards",
]

log = logging.getLogger(__name__)

#: ``medssl prepare --format`` values that write shards (16-bit grey / 8-bit).
SHARD_FORMATS = {"shards": "png16", "shards8": "png8"}
INDEX = "index.json"
PARTS = "parts"
_TMP = ".tmp-shard-"


def _require_litdata() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise ImportError(
            "streaming shards need litdata: pip install 'medssl[streaming]'"
        ) from None


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
    from medssl.data.prepare import decode_for_output

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
    _require_litdata()
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

    from medssl.data.prepare import TooManyPrepareFailures

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
    from medssl.data.prepare import PrepareReport

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


# -- reading ----------------------------------------------------------------------------------


class StreamingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: str = Field(description="shards folder or URI (s3://, gs://, azure://)")
    split: str | None = Field(None, description="read root/<split> (e.g. train, val)")
    image_size: int = Field(224, ge=8, description="shorter side resized to this, then centre crop")
    channels: int = Field(1, ge=1, le=3)
    shuffle: bool = Field(True, description="shuffle chunks and items in training (litdata)")
    cache_dir: str | None = Field(None, description="local cache of remote chunks")
    max_cache_size: str | None = Field(None, description="cache budget, e.g. '100GB'")
    max_pre_download: int = Field(2, ge=1, description="chunks each worker fetches ahead")


def _root(options: StreamingOptions) -> str:
    root = options.root.rstrip("/")
    if options.split:
        root = f"{root}/{options.split}"
    if "://" not in root:
        path = Path(root).expanduser()
        if not (path / INDEX).is_file():
            raise FileNotFoundError(
                f"streaming: no {INDEX} under {str(path)!r}; write shards with "
                "`medssl prepare SOURCE OUT --format shards`"
            )
        root = str(path.resolve())
    return root


#: The only item serialisers medssl reads: litdata also has ``pickle`` (and others that
#: unpickle), which would run code from a shard someone else wrote.
SAFE_FORMATS = {"numpy", "str"}


def _check_safe(index: dict[str, Any], root: str) -> None:
    """Refuse shards that would make litdata unpickle, decrypt or decompress anything."""
    config = index.get("config") or {}
    formats = set(config.get("data_format") or [])
    if not formats or not formats <= SAFE_FORMATS:
        unsafe = ", ".join(sorted(formats - SAFE_FORMATS)) or "none declared"
        raise ValueError(
            f"streaming: the shards under {root!r} declare item formats medssl does not read "
            f"({unsafe}); only {sorted(SAFE_FORMATS)} are read, so that loading runs no code. "
            "Write them with `medssl prepare --format shards`"
        )
    if config.get("item_loader", "PyTreeLoader") != "PyTreeLoader" or config.get("encryption"):
        raise ValueError(
            f"streaming: the shards under {root!r} need an item loader or decryption medssl "
            "does not use; write them with `medssl prepare --format shards`"
        )


class StreamingShards(torch.utils.data.Dataset):
    """``data.name: streaming``: shards written by ``medssl prepare --format shards``.

    Map-style access (``dataset[i]``) serves probes and checks; training iterates through
    :func:`make_feed`, where litdata shuffles and splits the shards.
    """

    Options = StreamingOptions
    has_text = False
    has_mask = False

    def __init__(self, **options: Any) -> None:
        self.options = StreamingOptions(**options)
        self.image_size = self.options.image_size
        self.channels = self.options.channels
        root = _root(self.options)
        _require_litdata()
        from medssl.data._shards import Shards

        cache = self.options.cache_dir
        self.shards = Shards(
            root,
            cache_dir=os.path.expanduser(cache) if cache else None,
            shuffle=self.options.shuffle,
            max_cache_size=self.options.max_cache_size,
            max_pre_download=self.options.max_pre_download,
        )
        self.shards.adapter = self
        index_path = Path(self.shards.input_dir.path) / INDEX
        self.index = json.loads(index_path.read_text())
        _check_safe(self.index, self.options.root)
        info = self.index.get("medssl", {})
        self.shards.check_local_chunks()
        if info.get("channels", self.channels) != self.channels:
            raise ValueError(
                f"streaming: the shards hold {info['channels']}-channel images but "
                f"channels={self.channels}; set data.channels to {info['channels']}"
            )
        self.task: str | None = info.get("task")
        self.label_names: list[str] | None = info.get("label_names")
        self.target_name: str | None = info.get("target_name")
        self.group_kind: str | None = info.get("group_kind")
        self._groups: list[int | None] | None = info.get("groups")
        self.bits = int(info.get("bits", 16))

    # the adapter contract ------------------------------------------------------------
    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {"has_text": False, "has_mask": False}

    @classmethod
    def official_splits(cls, **options: Any) -> Any:
        """``split: train`` / ``val`` when the root holds both (local roots only)."""
        from medssl.types import OfficialSplits

        root = str(options.get("root", ""))
        if "://" in root or not root:
            return None
        base = Path(root).expanduser()
        if (base / "train" / INDEX).is_file() and (base / "val" / INDEX).is_file():
            return OfficialSplits(train="train", val="val", disjoint=False)
        return None

    @property
    def num_classes(self) -> int | None:
        return len(self.label_names) if self.label_names else None

    num_mask_classes = None

    def groups(self) -> list[str | None] | None:
        if self.group_kind is None or self._groups is None:
            return None
        return [None if g is None else str(g) for g in self._groups]

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, index: int) -> dict[str, Any] | LoadFailure:
        return self.shards[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.shards)

    # items -> samples ---------------------------------------------------------------
    def to_sample(self, item: dict[str, Any]) -> dict[str, Any]:
        info = json.loads(item["info"])
        array = np.asarray(item["image"])
        if array.ndim == 2:
            array = array[None]
        if array.shape[0] != self.channels:
            raise ValueError(f"shard image has {array.shape[0]} channels, not {self.channels}")
        scale = 65535.0 if array.dtype == np.uint16 else 255.0
        # float32 division as the PNG reader does, so both paths give the same pixels
        image = torch.from_numpy(array.astype(np.float32) / np.float32(scale))
        image_t, _ = resize_and_crop(image.numpy(), self.image_size, None)
        sample: dict[str, Any] = {
            "image": image_t,
            "meta": {k: info.get("meta", {}).get(k) for k in META_KEYS},
        }
        if info.get("label") is not None:
            if self.task == "multiclass":
                sample["label"] = torch.tensor(int(info["label"]), dtype=torch.long)
            else:
                sample["label"] = torch.as_tensor(np.asarray(info["label"], dtype=np.float32))
        return sample


# -- training ---------------------------------------------------------------------------------

#: State fields that hold paths (never written into a checkpoint; refilled on load).
_PATH_FIELDS = ("input_dir_path", "input_dir_url", "cache_dir_path")


class StreamingFeed:
    """Micro-batches for the trainer from litdata's ``StreamingDataLoader``.

    Ranks and workers get their shards from litdata (which reads the rank and world size
    of the process group Fabric set up); order is a function of the recipe seed and the
    epoch; :meth:`state_dict` is litdata's loader state (plain JSON), so ``--resume``
    continues with exactly the samples an uninterrupted run would read next.
    """

    def __init__(
        self, dataset: StreamingShards, batch_size: int, num_workers: int, seed: int
    ) -> None:
        from litdata import StreamingDataLoader

        from medssl.data.robust import collate

        self.dataset = dataset
        dataset.shards.seed = seed
        self.loader = StreamingDataLoader(
            dataset.shards,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate,
            drop_last=True,
        )

    def batches(
        self, start_micro: int, micro_per_epoch: int, on_epoch: Callable[[int], None]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(epoch, batch)`` from micro-batch ``start_micro`` on; the epoch label is the
        trainer's (micro-batches / ``micro_per_epoch``) and ``on_epoch`` runs as it turns."""
        micro = start_micro
        label = micro // micro_per_epoch
        on_epoch(label)
        while True:
            # A resumed epoch whose every batch was read before the checkpoint yields none.
            fresh, yielded = not self.loader.restore, False
            for batch in self.loader:
                yielded = True
                yield label, batch
                micro += 1
                if micro // micro_per_epoch != label:
                    label = micro // micro_per_epoch
                    on_epoch(label)
            if not yielded and fresh:
                raise RuntimeError(
                    "streaming: an epoch of the shards gave this rank no full batch; "
                    "lower train.batch_size or train.num_workers"
                )

    def state_dict(self) -> dict[str, Any]:
        state = self.loader.state_dict()
        state["dataset"] = {k: v for k, v in state["dataset"].items() if k not in _PATH_FIELDS}
        return json.loads(json.dumps(state))  # plain JSON types only

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shards = self.dataset.shards
        state = json.loads(json.dumps(state))
        state["dataset"].update(
            input_dir_path=shards.input_dir.path,
            input_dir_url=shards.input_dir.url,
            cache_dir_path=shards.cache_dir.path,
        )
        self.loader.load_state_dict(state)


def make_feed(dataset: Any, batch_size: int, num_workers: int, seed: int) -> StreamingFeed | None:
    """A :class:`StreamingFeed` for a streaming dataset; ``None`` for map-style ones."""
    if not isinstance(dataset, StreamingShards):
        return None
    return StreamingFeed(dataset, batch_size, num_workers, seed)
