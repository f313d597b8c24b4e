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

from medssl.data.robust import LoadFailure, describe_error  # noqa: E402

# litdata logs its cache budget and folders at INFO from every worker: keep its warnings.
if logging.getLogger("litdata").level == logging.NOTSET:
    logging.getLogger("litdata").setLevel(logging.WARNING)


class Shards(StreamingDataset):
    """Items become medssl samples; a bad item or chunk becomes a :class:`LoadFailure`."""

    adapter: Any  # the StreamingShards adapter that converts items

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            index %= len(self)
        try:
            item = super().__getitem__(index)
            return self.adapter.to_sample(item)
        except MemoryError:
            raise
        except Exception as exc:
            return LoadFailure(self.adapter.where(index), describe_error(exc))
