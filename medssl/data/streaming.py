"""Streaming shards for training: ``data.name: streaming``.

The shards are Lightning's litdata format (https://github.com/Lightning-AI/litData), written
by ``medssl prepare --format shards`` (:mod:`medssl.data.shard_writer`): chunk files plus
an ``index.json``, read from a local folder or an object store (``s3://``, ``gs://``,
``azure://``) by litdata's own client. litdata also deals the chunks out to ranks and
DataLoader workers, shuffles chunks and items within them for a seed and epoch, and
records how far each worker got (:meth:`StreamingFeed.state_dict`), so a killed run
resumes on the very sample it would have read next. Nothing here splits work by hand.
Torch is imported when a sample is read, not with the module (``medssl validate
--data-only`` registers this adapter without torch).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medssl.data.base import META_KEYS
from medssl.data.robust import LoadFailure

# litdata asks PyPI for a newer version whenever a dataset is built: a network call from
# every worker of a training job (and a 30 s wait on a cluster without internet access).
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

__all__ = ["INDEX", "StreamingFeed", "StreamingShards", "make_feed", "require_litdata"]

log = logging.getLogger(__name__)

INDEX = "index.json"


def require_litdata() -> None:
    try:
        import litdata  # noqa: F401
    except ImportError:
        raise ImportError(
            "streaming shards need litdata: pip install 'medssl[streaming]'"
        ) from None


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


class StreamingShards:
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
        require_litdata()
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
        import torch

        from medssl.data.transforms import resize_and_crop

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
