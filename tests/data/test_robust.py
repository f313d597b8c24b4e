"""Robust loading: collate, the failure tracker, root confinement, and a fuzz test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import REPO, pydicom_test_file, write_png
from torch.utils.data import DataLoader

from medssl.data import (
    ImageFolder,
    LoadFailure,
    LoadFailures,
    ManifestPathError,
    TooManyLoadFailures,
    collate,
)
from medssl.data.keys import data_key, dataset_secret
from medssl.data.robust import resolve_under_root


def _sample(i: int, text: bool = False) -> dict:
    s = {
        "image": torch.full((1, 4, 4), float(i)),
        "meta": {"age": float(i), "sex": "F", "view": None},
        "label": torch.tensor([i, 0], dtype=torch.float32),
        "mask": torch.zeros(4, 4).long(),
    }
    if text:
        s["text"] = f"report {i}"
    return s


def test_collate_stacks_and_drops_failures() -> None:
    batch = collate(
        [_sample(0, True), LoadFailure("a.dcm", "DicomReadError: x"), _sample(1, True), None]
    )
    assert batch["image"].shape == (2, 1, 4, 4)
    assert batch["label"].shape == (2, 2) and batch["mask"].shape == (2, 4, 4)
    assert batch["meta"] == {"age": [0.0, 1.0], "sex": ["F", "F"], "view": [None, None]}
    assert batch["text"] == ["report 0", "report 1"]
    assert batch["failures"][0] == ("a.dcm", "DicomReadError: x") and len(batch["failures"]) == 2
    empty = collate([LoadFailure("b.png", "OSError: truncated")])
    assert "image" not in empty and empty["failures"] == [("b.png", "OSError: truncated")]
    with pytest.raises(ValueError, match="'label'"):
        collate([_sample(0), {k: v for k, v in _sample(1).items() if k != "label"}])


def test_tracker_threshold_and_summary() -> None:
    tracker = LoadFailures(max_failure_share=0.1)
    tracker.update([("x.dcm", "DicomReadError: no pixel data")], n_seen=10)
    tracker.update([], n_seen=10)
    assert tracker.share == pytest.approx(0.05)
    tracker.check()  # 5 % <= 10 %
    assert "x.dcm" in tracker.summary() and "DicomReadError x1" in tracker.summary()
    tracker.update([("y.png", "OSError: truncated"), ("z.png", "OSError: truncated")], 2)
    with pytest.raises(TooManyLoadFailures, match="max_failure_share=10.00%") as info:
        tracker.check()
    assert "y.png" in str(info.value)
    tracker.reset()
    assert tracker.n_seen == 0 and tracker.summary() == "all 0 samples loaded"
    with pytest.raises(ValueError, match="n_seen"):
        tracker.update([("a", "b")], 0)
    with pytest.raises(ValueError, match="max_failure_share"):
        LoadFailures(1.5)


def test_paths_cannot_escape_root(tmp_path: Path) -> None:
    assert resolve_under_root(tmp_path, "a/b.png") == str(tmp_path / "a" / "b.png")
    for bad in ("../x.png", "a/../../x.png", "/etc/passwd", ""):
        with pytest.raises(ManifestPathError):
            resolve_under_root(tmp_path, bad, "m.csv line 2")


def _corrupt_copies(sources: list[Path], out: Path) -> int:
    """Truncated and byte-flipped copies of real files; returns how many were written."""
    rng = np.random.default_rng(0)
    n = 0
    for src in sources:
        data = src.read_bytes()
        for frac in (0.0, 0.01, 0.3, 0.9):
            (out / f"{src.stem}_trunc{int(frac * 100)}{src.suffix}").write_bytes(
                data[: int(len(data) * frac)]
            )
            n += 1
        for k in range(3):
            flipped = bytearray(data)
            positions = rng.integers(0, len(data), size=20 if k else 3)
            for pos in positions:
                flipped[pos] ^= 0xFF
            if k == 2:  # damage the header region too
                for pos in rng.integers(0, min(len(data), 600), size=20):
                    flipped[pos] ^= 0x5A
            (out / f"{src.stem}_flip{k}{src.suffix}").write_bytes(bytes(flipped))
            n += 1
    return n


def test_fuzz_corrupt_files_are_counted_not_fatal(tmp_path: Path) -> None:
    demo_png = next((REPO / "data" / "demo" / "images").rglob("*.png"), None)
    if demo_png is None:
        demo_png = write_png(
            tmp_path / "src" / "d.png",
            np.random.default_rng(1).integers(0, 255, (96, 96), dtype=np.uint8),
        )
    sources = [
        pydicom_test_file("MR_small.dcm"),
        pydicom_test_file("CT_small.dcm"),
        pydicom_test_file("SC_rgb_rle_16bit.dcm"),
        demo_png,
    ]
    root = tmp_path / "root"
    root.mkdir()
    n = _corrupt_copies(sources, root)
    shutil.copy(pydicom_test_file("MR_small.dcm"), root / "good.dcm")
    ds = ImageFolder(root=str(root), image_size=16)
    assert len(ds) == n + 1
    tracker = LoadFailures(max_failure_share=1.0)
    loaded = 0
    loader = DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate)
    for batch in loader:
        good = len(batch["image"]) if "image" in batch else 0
        loaded += good
        tracker.update(batch["failures"], good + len(batch["failures"]))
        if good:
            assert batch["image"].shape[1:] == (1, 16, 16)
            assert torch.isfinite(batch["image"]).all()
    assert tracker.n_seen == n + 1 and loaded + tracker.n_failed == n + 1
    assert loaded >= 1 and tracker.n_failed >= len(sources) * 2  # empty files at least
    secret = dataset_secret(root)
    files = {data_key(secret, p.name) for p in root.iterdir()}
    for path, reason in tracker.failures:
        assert path in files and reason.split(":")[0].isidentifier()
    strict = LoadFailures(max_failure_share=0.01)
    strict.update(tracker.failures, tracker.n_seen)
    with pytest.raises(TooManyLoadFailures):
        strict.check()
