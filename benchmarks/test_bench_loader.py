"""Loader throughput: raw DICOM versus files written by ``medssl prepare``.

Images/s from disk to a batch on the training device (CUDA when present, else the CPU),
through the same adapter (``image_folder``), DataLoader (2 workers) and collate, at
RAD-DINO's resolution (shorter side 518, centre crop 518). The raw files are copies of a
real PA chest radiograph (pydicom-data ``RG1_UNCR.dcm``: CR, 1955x1841, 16 bit,
MONOCHROME1); the prepared ones are what ``medssl prepare --size 518`` writes from them.

Run: ``pytest benchmarks/test_bench_loader.py --benchmark-enable``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from medssl.data import ImageFolder, collate
from medssl.data.prepare import prepare

N_IMAGES = 24
SIZE = 518
WORKERS = 2
SHARED = Path(
    os.environ.get("MEDSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RATES: dict[str, float] = {}


def raw_radiographs(root: Path, n: int = N_IMAGES) -> Path:
    """``n`` copies of the real radiograph in ``root / "raw"`` (the test skips without it)."""
    source = SHARED / "pydicom-data-1.0.0" / "RG1_UNCR.dcm"
    if not source.is_file():
        pytest.skip(f"{source} not found (set MEDSSL_SHARED_DATA)")
    raw = root / "raw"
    raw.mkdir()
    for i in range(n):
        shutil.copy(source, raw / f"{i:03d}.dcm")
    return raw


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loader_bench")
    raw = raw_radiographs(root)
    out = {"raw_dicom": raw}
    for fmt in ("png16", "png8"):
        prepare(raw, root / fmt, size=SIZE, fmt=fmt, workers=WORKERS)  # type: ignore[arg-type]
        out[f"prepared_{fmt}"] = root / fmt / "images"
    return out


def _epoch(root: Path) -> int:
    ds = ImageFolder(root=str(root), image_size=SIZE)
    loader = DataLoader(
        ds, batch_size=8, num_workers=WORKERS, collate_fn=collate, persistent_workers=False
    )
    seen = 0
    for batch in loader:
        image = batch["image"].to(DEVICE, non_blocking=True)
        seen += image.shape[0]
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return seen


@pytest.mark.parametrize("kind", ["raw_dicom", "prepared_png16", "prepared_png8"])
def test_loader_throughput(benchmark, folders: dict[str, Path], kind: str) -> None:  # noqa: ANN001
    start = time.perf_counter()
    seen = benchmark.pedantic(_epoch, args=(folders[kind],), rounds=3, iterations=1)
    assert seen == N_IMAGES
    per_epoch = (
        benchmark.stats.stats.median if benchmark.enabled else (time.perf_counter() - start) / 3
    )
    RATES[kind] = N_IMAGES / per_epoch
    benchmark.extra_info["images_per_s"] = round(RATES[kind], 1)
    if "raw_dicom" in RATES and kind != "raw_dicom":
        benchmark.extra_info["speedup_vs_raw_dicom"] = round(RATES[kind] / RATES["raw_dicom"], 2)
    print(f"\n{kind}: {RATES[kind]:.1f} images/s on {DEVICE}")
