"""Images/s per loader worker process: raw DICOM, the prepared PNG folder, local shards.

One process with one thread decodes, resizes to RAD-DINO's 518 px grey (shorter side 518,
centre crop) and collates batches of 8, as one DataLoader worker does: ``image_folder``
through a DataLoader for the DICOMs and PNGs, litdata's loader for the shards, both with
no worker processes (the process is the worker; loaders are built once, outside the timing). The
raw files are copies of a real PA chest radiograph (pydicom-data ``RG1_UNCR.dcm``: CR,
1955x1841, 16 bit); the PNGs and shards are what ``medssl prepare --size 518`` (``--format
png16`` / ``shards``) writes from them. The three kinds run in alternating rounds (A, B, C,
A, B, C, ...) and the ratios are medians over the rounds.

From the shards' rate and the RAD-DINO recipe's training throughput on one GPU
(``TRAIN_IMAGES_PER_S``, benchmarks/RESULTS.md) it gives the loader workers one GPU needs.

Run: ``pytest benchmarks/test_bench_streaming.py --benchmark-enable -s``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_bench_loader import raw_radiographs
from torch.utils.data import DataLoader

from medssl.data import ImageFolder, collate
from medssl.data.prepare import prepare

pytest.importorskip("litdata")

N_IMAGES = 24
SIZE = 518
ROUNDS = 5
#: RAD-DINO recipe (ViT-B/14, 2 x 518 + 8 x 98 crops, bf16-mixed, batch 40) on one H200,
#: benchmarks/gpu_train_throughput.py (RESULTS.md, "GPU checks on an H200").
TRAIN_IMAGES_PER_S = 88.3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("streaming_bench")
    raw = raw_radiographs(root, N_IMAGES)
    prepare(raw, root / "png16", size=SIZE, fmt="png16", workers=2)
    prepare(raw, root / "shards", size=SIZE, fmt="shards", workers=2, shard_images=8)
    return {"raw_dicom": raw, "png16": root / "png16" / "images", "shards": root / "shards"}


def _loaders(folders: dict[str, Path]) -> dict[str, Iterable[dict[str, Any]]]:
    """Each kind's loader, built once: a pass times the reading, not the set-up."""
    from medssl.data.streaming import StreamingShards, make_feed

    loaders: dict[str, Iterable[dict[str, Any]]] = {}
    for kind in ("raw_dicom", "png16"):
        dataset = ImageFolder(root=str(folders[kind]), image_size=SIZE)
        loaders[kind] = DataLoader(dataset, batch_size=8, num_workers=0, collate_fn=collate)
    feed = make_feed(StreamingShards(root=str(folders["shards"]), image_size=SIZE), 8, 0, seed=0)
    assert feed is not None
    loaders["shards"] = feed.loader
    return loaders


def test_images_per_s_per_worker(benchmark, folders: dict[str, Path]) -> None:  # noqa: ANN001
    torch.set_num_threads(1)  # as in a DataLoader worker process
    loaders = _loaders(folders)
    seconds: dict[str, list[float]] = {kind: [] for kind in loaders}

    def rounds() -> None:
        for _ in range(ROUNDS):
            for kind, loader in loaders.items():
                start = time.perf_counter()
                assert sum(batch["image"].shape[0] for batch in loader) == N_IMAGES
                seconds[kind].append(time.perf_counter() - start)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    rate = {k: N_IMAGES / statistics.median(v) for k, v in seconds.items()}
    vs_dicom = statistics.median(
        d / s for d, s in zip(seconds["raw_dicom"], seconds["shards"], strict=True)
    )
    vs_png = statistics.median(
        p / s for p, s in zip(seconds["png16"], seconds["shards"], strict=True)
    )
    workers = math.ceil(TRAIN_IMAGES_PER_S / rate["shards"])
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    benchmark.extra_info.update(
        {f"{k}_images_per_s": round(v, 1) for k, v in rate.items()}
        | {
            "shards_vs_raw_dicom": round(vs_dicom, 2),
            "shards_vs_png16": round(vs_png, 2),
            "workers_per_gpu_rad_dino": workers,
            "load_average": load,
        }
    )
    print(
        "\nimages/s per worker: "
        + ", ".join(f"{k} {v:.1f}" for k, v in rate.items())
        + f"; shards / raw DICOM x{vs_dicom:.2f}, shards / PNG x{vs_png:.2f} (median of "
        f"{ROUNDS} alternating rounds); RAD-DINO at {TRAIN_IMAGES_PER_S} images/s per GPU "
        f"needs {workers} shard worker(s) per GPU; load average {load}"
    )
    assert vs_dicom >= 5.0 and vs_png >= 1.0
