"""Multi-crop throughput: medssl's batched policy against lightly's per-sample ``DINOTransform``.

Both make DINOv2's crops (2 × 224 + 8 × 96, 3 channels) from 1-channel 512×512 uint8
images on the same 2 CPU cores: lightly per sample with PIL in 2 DataLoader workers
(its intended use), medssl on stacked batches of 32 in the main process with 2 torch
threads (the loader only decodes and resizes; here the batch is already in memory).
Throughput is source images per second. Run::

    pytest benchmarks/test_bench_augment.py --benchmark-enable -s

The ratio test measures both interleaved, best of three epochs each, so a shared
machine's noise hits both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.augment import DINOv2MultiCrop
from medssl.types import ViewRequest

N_IMAGES = 256
BATCH = 32
SIZE = 512
REQUEST = ViewRequest(global_crops=True, local_crops=True, patch_size=16)


def _sources() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Smooth random images (a blurred noise field), so resampling sees image-like content.
    small = rng.integers(0, 256, (16, 64, 64), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((SIZE, SIZE))) for s in small])


class _LightlyDataset(torch.utils.data.Dataset):
    def __init__(self, sources: np.ndarray, n: int) -> None:
        from lightly.transforms import DINOTransform

        self.images = [Image.fromarray(s) for s in sources]
        self.n = n
        self.transform = DINOTransform(n_local_views=8)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        return self.transform(self.images[index % len(self.images)])


def _lightly_epoch_fn(sources: np.ndarray) -> tuple[Callable[[], int], Callable[[], None]]:
    loader = torch.utils.data.DataLoader(
        _LightlyDataset(sources, N_IMAGES),
        batch_size=BATCH,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=2,
    )

    def epoch() -> int:
        count = 0
        for views in loader:
            assert len(views) == 10 and views[0].shape[1:] == (3, 224, 224)
            count += views[0].shape[0]
        return count

    def close() -> None:
        del loader._iterator  # shuts the persistent workers down

    return epoch, close


def _medssl_epoch_fn(sources: np.ndarray) -> Callable[[], int]:
    policy = DINOv2MultiCrop(local_crop_size=96, channels=3)
    batches = [
        torch.from_numpy(sources[np.arange(i, i + BATCH) % len(sources)]).unsqueeze(1)
        for i in range(0, N_IMAGES, BATCH)
    ]
    generator = torch.Generator().manual_seed(0)

    def epoch() -> int:
        count = 0
        for images in batches:
            views = policy(images, REQUEST, generator)
            assert views.local_crops is not None and views.local_crops.shape[-1] == 96
            count += images.shape[0]
        return count

    return epoch


def _images_per_s(epoch: Callable[[], int]) -> float:
    start = time.perf_counter()
    count = epoch()
    return count / (time.perf_counter() - start)


@pytest.fixture(scope="module")
def sources() -> np.ndarray:
    return _sources()


@pytest.fixture
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_lightly_dino_transform(benchmark, sources: np.ndarray, two_threads: None) -> None:
    epoch, close = _lightly_epoch_fn(sources)
    epoch()  # starts the workers
    try:
        count = benchmark.pedantic(epoch, rounds=3, iterations=1)
    finally:
        close()
    assert count == N_IMAGES
    benchmark.extra_info["images"] = N_IMAGES


def test_medssl_dinov2_multicrop(benchmark, sources: np.ndarray, two_threads: None) -> None:
    epoch = _medssl_epoch_fn(sources)
    epoch()
    count = benchmark.pedantic(epoch, rounds=3, iterations=1)
    assert count == N_IMAGES
    benchmark.extra_info["images"] = N_IMAGES


def test_ratio_against_lightly(benchmark, sources: np.ndarray, two_threads: None) -> None:
    """Interleaved epochs, best of three each; medssl should reach 2× lightly."""
    lightly_epoch, close = _lightly_epoch_fn(sources)
    medssl_epoch = _medssl_epoch_fn(sources)
    lightly_epoch()
    medssl_epoch()
    lightly_rates, medssl_rates = [], []
    try:
        for _ in range(3):
            lightly_rates.append(_images_per_s(lightly_epoch))
            medssl_rates.append(_images_per_s(medssl_epoch))
    finally:
        close()
    ratio = max(medssl_rates) / max(lightly_rates)
    benchmark.extra_info.update(
        lightly_images_per_s=round(max(lightly_rates), 1),
        medssl_images_per_s=round(max(medssl_rates), 1),
        ratio=round(ratio, 2),
    )
    print(
        f"\nlightly DINOTransform, 2 workers: {max(lightly_rates):.0f} images/s; "
        f"medssl dinov2_multicrop, 2 threads: {max(medssl_rates):.0f} images/s; "
        f"ratio {ratio:.2f}"
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert ratio >= 2.0, f"medssl reached only {ratio:.2f}× lightly's images/s"
