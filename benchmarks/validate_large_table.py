"""``medssl validate`` on a generated CheXpert-layout table (issue: a full table is heavy).

Writes ``CheXpert-v1.0-small/train.csv`` with ``--rows`` made-up rows in CheXpert v1.0's
column layout (no real patient), a tiny JPEG hard-linked at every listed path (so every
row's file exists, as in a real download), and a recipe whose data block points at the
folder above (root discovery). Then runs ``medssl validate`` in a subprocess and reports
its wall time and peak resident memory (``ru_maxrss`` of the child).

    python benchmarks/validate_large_table.py --rows 200000 [--rounds 3] [--keep DIR]

Three arms, alternating round by round: ``--data-only`` (the data block alone, no torch)
and the full check on the large table, and the full check on a 10-row table (the cost of
importing torch and building the recipe's components).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medssl.data.chexpert import CHEXPERT_OBSERVATIONS  # noqa: E402
from medssl.testing.pytest_plugin import TINY_RECIPE  # noqa: E402


def write_table(parent: Path, rows: int, seed: int = 0) -> None:
    root = parent / "CheXpert-v1.0-small"
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    image = Image.fromarray(np.full((64, 64), 128, np.uint8))
    values = ["1.0", "0.0", "-1.0", "", "", ""]
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS])
        patient, study, view = 1, 1, 1
        for i in range(rows):
            if i % 60_000 == 0:  # a file system allows ~65,000 links to one inode
                jpeg = root / f"source_{i}.jpg"
                image.save(jpeg)
            rel = f"train/patient{patient:05d}/study{study}/view{view}_frontal.jpg"
            lateral = view == 2
            writer.writerow(
                [
                    f"CheXpert-v1.0-small/{rel}",
                    rng.choice(["Male", "Female"]),
                    rng.randint(18, 90),
                    "Lateral" if lateral else "Frontal",
                    "" if lateral else rng.choice(["AP", "PA"]),
                    *(rng.choice(values) for _ in CHEXPERT_OBSERVATIONS),
                ]
            )
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(jpeg, target)
            view += 1
            if view > 2 or rng.random() < 0.5:
                view, study = 1, study + 1
                if study > 3 or rng.random() < 0.4:
                    study, patient = 1, patient + 1


def run_validate(work: Path, *flags: str) -> tuple[float, float, float, str]:
    """``(wall s, CPU s, peak RSS MiB, stdout)`` of ``medssl validate [flags]`` on ``work``'s
    table."""
    recipe = dict(
        TINY_RECIPE,
        output_dir=str(work / "run"),
        data={"name": "chexpert", "root": str(work), "image_size": 64, "channels": 1},
    )
    (work / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    cmd = [sys.executable, "-m", "medssl.cli", "validate", str(work / "recipe.yaml"), *flags]
    # A fresh interpreter per measure: ru_maxrss of RUSAGE_CHILDREN is the largest child.
    probe = (
        "import resource, subprocess, sys, time, json; t = time.perf_counter(); "
        f"p = subprocess.run({cmd!r}, capture_output=True, text=True); "
        "w = time.perf_counter() - t; u = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print(json.dumps([w, u.ru_utime + u.ru_stime, u.ru_maxrss / 1024, p.returncode, "
        "p.stdout, p.stderr]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    wall, cpu, rss, rc, stdout, stderr = json.loads(out.stdout)
    if rc:
        raise SystemExit(f"medssl validate failed:\n{stdout}\n{stderr}")
    return wall, cpu, rss, stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="build (or reuse) the data here instead of a temp dir")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="medssl-bench-"))
    small = Path(tempfile.mkdtemp(prefix="medssl-bench-small-"))
    try:
        if not (work / "CheXpert-v1.0-small" / "train.csv").is_file():
            t0 = time.perf_counter()
            write_table(work, args.rows)
            print(f"wrote {args.rows} rows and files in {time.perf_counter() - t0:.1f} s")
        write_table(small, 10)
        arms = [
            (f"--data-only, {args.rows:,} rows", work, ("--data-only",)),
            (f"full, {args.rows:,} rows", work, ()),
            ("full, 10 rows (baseline)", small, ()),
        ]
        # Arms alternate round by round, each in a fresh interpreter; medians reported.
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in arms}
        print(f"load average before: {open('/proc/loadavg').read().split()[:3]}")
        for round_ in range(args.rounds):
            for name, folder, flags in arms:
                wall, cpu, rss, stdout = run_validate(folder, *flags)
                if round_ == 0:
                    print(stdout)
                results[name].append((wall, cpu, rss))
        for name, runs in results.items():
            wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
            print(
                f"medssl validate {name}: median of {len(runs)}: {wall:.2f} s wall, "
                f"{cpu:.2f} s CPU, peak RSS {rss:.0f} MiB (max {max(r[2] for r in runs):.0f})"
            )
        print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
    finally:
        shutil.rmtree(small, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
