"""Streaming shards: ``prepare --format shards``, the ``streaming`` adapter, bad shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from data_helpers import gradient, write_png

from medssl.data import CsvManifest, LoadFailures, TooManyLoadFailures
from medssl.testing.dataset import DatasetContractTests

pytest.importorskip("litdata")

from medssl.cli_data import prepare as prepare_command  # noqa: E402
from medssl.data.prepare import prepare  # noqa: E402
from medssl.data.shard_writer import shard_dataset  # noqa: E402
from medssl.data.streaming import StreamingShards, make_feed  # noqa: E402


def _sources(folder: Path, n: int = 7) -> Path:
    """Images of several sizes, depths and aspect ratios (one 16-bit, one colour)."""
    for i in range(n):
        write_png(folder / f"s{i % 2}" / f"{i}.png", gradient(20 + 3 * i, 28 - i) + i)
    write_png(folder / "deep.png", gradient(24, 30, np.uint16))
    write_png(folder / "rgb.png", np.stack([gradient(22, 22)] * 3, axis=-1))
    return folder


def _labelled(folder: Path, n: int = 9) -> dict[str, Any]:
    """A csv_manifest dataset with labels, metadata and groups."""
    folder.mkdir(parents=True)
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "y0", "y1", "sex", "patient"])
        for i in range(n):
            write_png(folder / f"{i}.png", gradient(18 + i, 21) + 5 * i)
            writer.writerow([f"{i}.png", i % 2, (i // 2) % 2, "MF"[i % 2], f"p{i // 3}"])
    return {
        "root": str(folder),
        "image_size": 16,
        "label_columns": ["y0", "y1"],
        "meta_columns": {"sex": "sex"},
        "group_column": "patient",
    }


class TestStreaming(DatasetContractTests):
    factory = StreamingShards
    bad_options = [{"root": "/no/such/folder"}, {"root": "/tmp", "image_size": 2}]

    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        if not (tmp_path / "shards" / "index.json").is_file():
            src = _sources(tmp_path / "src")
            # one secret for every instance: the same sources get the same keys (and order)
            key = tmp_path.parent / "streaming-contract.key"
            prepare(
                src,
                tmp_path / "shards",
                size=24,
                fmt="shards",
                workers=1,
                shard_images=4,
                key_file=key,
            )
        return {"root": str(tmp_path / "shards"), "image_size": 16}


def test_shards_hold_the_png_pixels(tmp_path: Path) -> None:
    """The same source prepared as PNGs and as shards: identical pixels, by key."""
    src = _sources(tmp_path / "src")
    prepare(src, tmp_path / "png", size=24, fmt="png16", workers=1)
    report = prepare(src, tmp_path / "shards", size=24, fmt="shards", workers=2, shard_images=3)
    assert (report.total, report.written, len(report.failures)) == (9, 9, 0)
    assert "3 shards" in str(report)
    pngs = CsvManifest(root=str(tmp_path / "png"), image_size=20)
    shards = StreamingShards(root=str(tmp_path / "shards"), image_size=20, shuffle=False)
    assert len(pngs) == len(shards) == 9
    # Shards are written in key order, as manifest.csv lists the PNGs.
    for i in range(9):
        assert torch.equal(pngs[i]["image"], shards[i]["image"]), f"image {i} differs"
    # An existing prepared folder converts with one command, keeping its names.
    again = prepare(tmp_path / "png", tmp_path / "from_png", size=24, fmt="shards", workers=1)
    assert again.written == 9
    converted = StreamingShards(root=str(tmp_path / "from_png"), image_size=20, shuffle=False)
    for i in range(9):
        assert torch.equal(converted[i]["image"], shards[i]["image"])
    index = (tmp_path / "shards" / "index.json").read_text()
    assert "src" not in index and str(tmp_path) not in index  # no source path written


def test_dataset_shards_keep_labels_meta_groups(tmp_path: Path) -> None:
    options = _labelled(tmp_path / "src")
    adapter = CsvManifest(**options)
    report = shard_dataset(adapter, tmp_path / "shards", workers=1, shard_images=4)
    assert report.written == 9
    shards = StreamingShards(root=str(tmp_path / "shards"), image_size=16, shuffle=False)
    assert (shards.task, shards.label_names) == (adapter.task, adapter.label_names)
    want = {adapter[i]["image"].numpy().tobytes(): adapter[i] for i in range(9)}
    groups_want = {adapter[i]["image"].numpy().tobytes(): g for i, g in enumerate(adapter.groups())}
    groups = shards.groups()
    assert groups is not None and len(set(groups)) == 3
    pairs = {}
    for i in range(9):
        got = shards[i]
        ref = want[got["image"].numpy().tobytes()]  # identical pixels
        assert torch.equal(got["label"], ref["label"])
        assert got["meta"] == ref["meta"] and got["meta"]["sex"] in ("M", "F")
        pairs.setdefault(groups[i], set()).add(groups_want[got["image"].numpy().tobytes()])
    assert all(len(v) == 1 for v in pairs.values())  # same grouping, renumbered
    assert "p0" not in (tmp_path / "shards" / "index.json").read_text()


def test_prepare_shards_resumes_by_shard(tmp_path: Path) -> None:
    src = _sources(tmp_path / "src")
    out = tmp_path / "shards"
    first = prepare(src, out, size=24, fmt="shards", workers=1, shard_images=4)
    assert first.written == 9
    marker = out / "parts" / "1.json"
    marker.unlink()  # as if killed while writing the second shard
    second = prepare(src, out, size=24, fmt="shards", workers=1, shard_images=4)
    assert (second.written, second.skipped) == (4, 5)
    shards = StreamingShards(root=str(out), image_size=16, shuffle=False)
    assert len(shards) == 9


def test_cli_counts_bad_files_and_summarises(tmp_path: Path) -> None:
    src = _sources(tmp_path / "src")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = CliRunner().invoke(
        prepare_command,
        [str(src), str(tmp_path / "out"), "--format", "shards", "--size", "16"]
        + ["--workers", "1", "--shard-images", "4", "--max-failure-share", "0.2"],
    )
    assert result.exit_code == 0, result.output
    assert "10 source files: 9 written, 0 already done, 1 failed" in result.output
    assert "3 shards" in result.output
    with open(tmp_path / "out" / "failures.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and "broken" not in rows[0]["key"]


def _corrupt(tmp_path: Path) -> Path:
    src = _sources(tmp_path / "src", n=14)
    out = tmp_path / "shards"
    prepare(src, out, size=16, fmt="shards", workers=1, shard_images=4)
    chunk = out / "chunk-1-0.bin"
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
    (out / "chunk-2-0.bin").unlink()  # a missing object
    return out


def test_bad_shards_are_named_and_counted(tmp_path: Path, caplog: Any) -> None:
    out = _corrupt(tmp_path)
    shards = StreamingShards(root=str(out), image_size=16)
    assert "chunk-1-0.bin is truncated" in caplog.text
    assert "chunk-2-0.bin is missing" in caplog.text
    feed = make_feed(shards, batch_size=2, num_workers=0, seed=0)
    assert feed is not None
    strict, lenient = LoadFailures(0.2), LoadFailures(0.6)
    for batch in feed.loader:
        n = len(batch["failures"]) + (batch["image"].shape[0] if "image" in batch else 0)
        strict.update(batch["failures"], n)
        lenient.update(batch["failures"], n)
    assert strict.n_failed == 8 and strict.n_seen == 16
    reasons = {reason for _, reason in strict.failures}
    assert reasons == {
        "DataFileError: shard chunk-1-0.bin is truncated (100 of "
        + str(json.loads((out / "index.json").read_text())["chunks"][1]["chunk_bytes"])
        + " bytes)",
        "DataFileError: shard chunk-2-0.bin is missing",
    }
    lenient.check()  # 50 % failed, 60 % allowed: the run goes on
    with pytest.raises(TooManyLoadFailures, match="chunk-2-0.bin"):
        strict.check()


def test_shards_that_would_unpickle_are_refused(tmp_path: Path) -> None:
    """litdata can store items with pickle; reading such shards would run their code."""
    src = _sources(tmp_path / "src", n=2)
    out = tmp_path / "shards"
    prepare(src, out, size=16, fmt="shards", workers=1, shard_images=4)
    index = json.loads((out / "index.json").read_text())
    index["config"]["data_format"] = ["pickle", "str"]
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="declare item formats medssl does not read .pickle."):
        StreamingShards(root=str(out), image_size=16)


def test_cli_shards_a_dataset_adapter(tmp_path: Path) -> None:
    _labelled(tmp_path / "src")
    args = [str(tmp_path / "src"), str(tmp_path / "out"), "--format", "shards", "--workers", "1"]
    result = CliRunner().invoke(
        prepare_command,
        args + ["--dataset", "csv_manifest", "--set", "label_columns=[y0, y1]", "--size", "16"],
    )
    assert result.exit_code == 0, result.output
    assert "9 source files: 9 written" in result.output
    shards = StreamingShards(root=str(tmp_path / "out"), image_size=16)
    assert shards.label_names == ["y0", "y1"] and "label" in shards[0]
    bad = CliRunner().invoke(prepare_command, args + ["--dataset", "no_such_dataset"])
    assert bad.exit_code == 1 and "--dataset no_such_dataset" in bad.output
    assert "Traceback" not in bad.output
    png = CliRunner().invoke(prepare_command, args[:2] + ["--dataset", "csv_manifest"])
    assert png.exit_code == 1 and "add --format shards" in png.output
