"""``medssl prepare``: outputs, PHI-free names, resumability after SIGKILL."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from data_helpers import REPO, pydicom_test_file, write_png
from PIL import Image

from medssl.cli_data import prepare as prepare_command
from medssl.data.keys import dataset_secret
from medssl.data.prepare import TMP_MARK, prepare
from medssl.data.prepare import output_key as keyed_output_key


def output_key(rel: str, source: Path) -> str:
    return keyed_output_key(rel, dataset_secret(source))


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


def test_prepare_outputs_and_no_phi(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "DOE_JANE").mkdir(parents=True)
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.PatientName, ds.PatientID = "DOE^JANE", "PID12345"
    ds.save_as(src / "DOE_JANE" / "mr.dcm")
    shutil.copy(pydicom_test_file("examples_rgb_color.dcm"), src / "us.dcm")
    shutil.copy(pydicom_test_file("liver_1frame.dcm"), src / "seg.dcm")
    write_png(src / "wide.png", np.tile(np.arange(0, 240, 2, dtype=np.uint8), (60, 1)))
    out = tmp_path / "out"
    result = CliRunner().invoke(  # --keep-labels: seg.dcm is read (and fails) as before
        prepare_command,
        [
            str(src),
            str(out),
            *("--size", "32", "--workers", "1", "--max-failure-share", "0.3", "--keep-labels"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 source files: 3 written, 0 already done, 1 failed" in result.output
    rows = {r["key"]: r for r in _rows(out)}
    mr = rows[output_key("DOE_JANE/mr.dcm", src)]
    assert (mr["height"], mr["width"], mr["bits"], mr["channels"]) == ("32", "32", "16", "1")
    with Image.open(out / mr["path"]) as img:
        assert img.mode.startswith("I") and img.size == (32, 32)
    us = rows[output_key("us.dcm", src)]
    # 240x320 RGB: aspect kept, converted to grey (chest X-ray training is single-channel)
    assert (us["height"], us["width"], us["bits"], us["channels"]) == ("32", "43", "16", "1")
    wide = rows[output_key("wide.png", src)]
    assert (wide["height"], wide["width"]) == ("32", "64")
    assert "source" not in mr
    with open(out / "failures.csv") as fh:
        failures = list(csv.DictReader(fh))
    assert failures == [
        {
            "key": output_key("seg.dcm", src),
            "reason": "DicomReadError: modality SEG object is not an image",
        }
    ]
    for path in out.rglob("*"):  # no identifier, in names or in bytes
        assert "DOE" not in str(path.relative_to(out))
        if path.is_file():
            data = path.read_bytes()
            assert b"DOE" not in data and b"PID12345" not in data
    again = prepare(src, out, size=32, workers=1, with_source_paths=True, max_failure_share=0.3)
    assert (again.written, again.skipped, len(again.failures)) == (0, 3, 1)
    assert {r["source"] for r in _rows(out)} == {"DOE_JANE/mr.dcm", "us.dcm", "wide.png"}


_SLOW_PREPARE = """
import sys, time
import medssl.data.prepare as p
write = p._write_png
def slow(path, array):  # widen the window in which the kill lands
    time.sleep(0.05)
    write(path, array)
p._write_png = slow
p.prepare(sys.argv[1], sys.argv[2], size=24, fmt="png16", workers=2)
"""


def test_prepare_killed_midway_then_resumed(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    rng = np.random.default_rng(0)
    n = 60
    for i in range(n):
        write_png(
            src / f"d{i % 3}" / f"{i:03d}.png", rng.integers(0, 65535, (40, 48), dtype=np.uint16)
        )
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PREPARE, str(src), str(out)],
        start_new_session=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    done: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = list((out / "images").rglob("*.png")) if (out / "images").is_dir() else []
        if len(done) >= 5:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"prepare ended before it could be killed: {proc.stderr.read()!r}"
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its pool workers
    proc.wait()
    before = {p: p.stat() for p in (out / "images").rglob("*.png")}
    assert 5 <= len(before) < n
    assert not (out / "manifest.csv").exists()  # written only at the end
    # a temporary left by a writer that died mid-file
    stale = next(iter(before)).with_name(f"{'0' * 24}.png{TMP_MARK}99999")
    stale.write_bytes(b"\x89PNG\r\n\x1a\n half")

    report = prepare(src, out, size=24, fmt="png16", workers=2)
    assert report.skipped == len(before) and report.written == n - len(before)
    assert not report.failures
    assert not list(out.rglob(f"*{TMP_MARK}*"))
    for path, stat in before.items():  # finished files were not redone
        assert path.stat().st_ino == stat.st_ino and path.stat().st_mtime_ns == stat.st_mtime_ns
    rows = _rows(out)
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    assert {r["key"] for r in rows} == {
        output_key(str(p.relative_to(src)), src) for p in src.rglob("*.png")
    }
    outputs = list((out / "images").rglob("*.png"))
    assert len(outputs) == n
    for path in outputs:
        with Image.open(path) as img:
            img.load()  # every output decodes completely
            assert min(img.size) == 24


def test_prepare_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a directory"):
        prepare(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="png8, png16, shards or shards8"):
        prepare(tmp_path, tmp_path / "out", fmt="tiff")  # type: ignore[arg-type]
