"""litdata's dataset with medssl's items (imported only when litdata is installed).

A module of its own so that the class is importable by name: DataLoader workers receive
the dataset by pickling, and a class defined inside a function cannot be pickled.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # see medssl.data.streaming

from litdata import StreamingDataset  # noqa: E402
from litdata.streaming.sampler import ChunkedIndex  # noqa: E402

from medssl.data.files import DataFileError  # noqa: E402
from medssl.data.robust import LoadFailure, describe_error  # noqa: E402

log = logging.getLogger(__name__)

# litdata logs its cache budget and folders at INFO from every worker: keep its warnings.
if logging.getLogger("litdata").level == logging.NOTSET:
    logging.getLogger("litdata").setLevel(logging.WARNING)


class Shards(StreamingDataset):
    """Items become medssl samples; a bad item or chunk becomes a :class:`LoadFailure`.

    A chunk that failed once (missing, truncated, a download that timed out) is
    remembered by this process, so its other items fail at once with the same reason
    instead of each waiting for litdata's timeout again.
    """

    adapter: Any  # the StreamingShards adapter that converts items
    bad_chunks: dict[int, str]

    def chunk_name(self, chunk: int) -> str:
        return str(self.cache._reader.config._chunks[chunk]["filename"])  # type: ignore[union-attr]

    def check_local_chunks(self) -> None:
        """Local shards: every chunk file present and as long as ``index.json`` says."""
        self.bad_chunks = {}
        root = self.input_dir.path
        if self.input_dir.url is not None or root is None:
            return  # remote: litdata fetches on demand; failures are caught per item
        index = self.adapter.index
        for number, chunk in enumerate(index["chunks"]):
            path = os.path.join(root, chunk["filename"])
            if not os.path.isfile(path):
                reason = f"shard {chunk['filename']} is missing"
            elif os.path.getsize(path) < int(chunk["chunk_bytes"]):
                reason = (
                    f"shard {chunk['filename']} is truncated ({os.path.getsize(path)} of "
                    f"{chunk['chunk_bytes']} bytes)"
                )
            else:
                continue
            self.bad_chunks[number] = reason
            log.warning("streaming: %s; its %d images will fail", reason, chunk["chunk_size"])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            if self.cache is None:
                self._ensure_cache()
            index = ChunkedIndex(*self.cache._get_chunk_index_from_index(index % len(self)))
        chunk = getattr(index, "chunk_index", None)
        where = f"{self.chunk_name(chunk)} item {index.index}"
        bad = getattr(self, "bad_chunks", {}).get(chunk)
        if bad is not None:
            return LoadFailure(where, f"DataFileError: {bad}")
        try:
            item = super().__getitem__(index)
            return self.adapter.to_sample(item)
        except MemoryError:
            raise
        except FileNotFoundError as exc:  # litdata's ChunkWaitTimeoutError too
            reason = f"shard {self.chunk_name(chunk)} could not be read ({type(exc).__name__})"
            self.bad_chunks = {**getattr(self, "bad_chunks", {}), chunk: reason}
            return LoadFailure(where, describe_error(DataFileError(reason)))
        except Exception as exc:
            return LoadFailure(where, describe_error(exc))

    def _ensure_cache(self) -> None:
        from litdata.utilities.env import _WorkerEnv

        self.worker_env = _WorkerEnv.detect()
        self.cache = self._create_cache(worker_env=self.worker_env)
        self.shuffler = self._create_shuffler(self.cache)
