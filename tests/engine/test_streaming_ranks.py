"""Exactly-once coverage over 2 gloo ranks x 2 loader workers, as ``torchrun --nnodes 1
--nproc-per-node 2`` starts them: the streaming adapter (litdata deals out the shards) and
the folder adapter (:class:`medssl.engine.sampler.EpochSampler`), each as the trainer
builds its loader."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("litdata")

N_IMAGES, BATCH, WORKERS, SEED = 24, 2, 2, 7


def _dataset(folder: Path) -> dict[str, Any]:
    """A csv_manifest whose regression label is the image's number."""
    from PIL import Image

    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "number"])
        for i in range(N_IMAGES):
            Image.fromarray(np.full((8, 8), i, np.uint8)).save(folder / f"{i}.png")
            writer.writerow([f"{i}.png", i])
    return {
        "root": str(folder),
        "image_size": 8,
        "label_columns": ["number"],
        "label_kind": "regression",
    }


def _rank(rank: int, world: int, init: str, options: dict, shards: str, out: Any) -> None:
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from medssl.data import CsvManifest, collate
    from medssl.data.streaming import StreamingShards, make_feed
    from medssl.engine.sampler import EpochSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        seen: dict[str, list[list[int]]] = {"streaming": [], "folder": []}
        dataset = StreamingShards(root=shards, image_size=8)
        feed = make_feed(dataset, BATCH, WORKERS, SEED)
        assert feed is not None
        for _ in range(2):  # two epochs: each reshuffled, each exactly once
            seen["streaming"].append(
                [int(v) for b in feed.loader for v in b["label"].flatten().tolist()]
            )
        folder = CsvManifest(**options)
        sampler = EpochSampler(len(folder), SEED, rank, world)
        loader = DataLoader(
            folder, batch_size=BATCH, sampler=sampler, collate_fn=collate, num_workers=WORKERS
        )
        for epoch in range(2):
            sampler.set_epoch(epoch)
            seen["folder"].append([int(v) for b in loader for v in b["label"].flatten().tolist()])
        out[rank] = seen
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_sample_once_per_epoch_over_two_ranks_and_two_workers(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from medssl.data import CsvManifest
    from medssl.data.shard_writer import shard_dataset

    options = _dataset(tmp_path / "src")
    shard_dataset(CsvManifest(**options), tmp_path / "shards", workers=1, shard_images=3)
    manager = mp.Manager()
    out = manager.dict()
    args = (2, str(tmp_path / "init"), options, str(tmp_path / "shards"), out)
    mp.spawn(_rank, args=args, nprocs=2, join=True)
    for kind in ("streaming", "folder"):
        epochs = []
        for epoch in range(2):
            ranks = [out[r][kind][epoch] for r in range(2)]
            assert len(ranks[0]) == len(ranks[1]) == N_IMAGES // 2, f"{kind}: uneven ranks"
            together = sorted(ranks[0] + ranks[1])
            assert together == list(range(N_IMAGES)), f"{kind} epoch {epoch}: {together}"
            epochs.append(ranks[0] + ranks[1])
        assert epochs[0] != epochs[1], f"{kind}: the second epoch was not reshuffled"
