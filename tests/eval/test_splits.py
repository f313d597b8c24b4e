"""Probe splits: official splits by the dataset's own names, patient-disjoint splits, random
only when asked or without a group key, never a silent fallback (medssl.eval.splits)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medssl.cli import main
from medssl.config import RecipeError, load_recipe
from medssl.data import DemoCXR, NIHChestXray14
from medssl.eval import run_evaluators
from medssl.eval.splits import check_groups, choose_split, group_split

from .cxr_layouts import write_chexpert, write_mimic, write_nih


def _run(run: Path, registry: Any, evals: list[dict]) -> list[dict]:
    recipe = load_recipe(run / "config.yaml", [f"eval={json.dumps(evals)}"], registry)
    return run_evaluators(run, recipe, registry)["results"]


def _probes(data: dict, meta: str) -> list[dict]:
    return [
        {"name": "linear_probe", "data": data, "C": 1.0},
        {"name": "knn", "data": data, "k": 3},
        {"name": "metadata_probe", "data": data, "targets": [meta], "C": 1.0},
    ]


@pytest.mark.parametrize("dataset", ["nih_chestxray14", "chexpert", "mimic_cxr_jpg"])
def test_every_probe_honours_the_official_split(
    dataset: str, fake_run: Path, tmp_path: Path, medssl_registry: Any
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write, names, meta = {
        "nih_chestxray14": (write_nih, ["train_val", "test"], "sex"),
        "chexpert": (write_chexpert, ["train", "valid"], "sex"),
        "mimic_cxr_jpg": (write_mimic, ["train", "validate"], "view"),
    }[dataset]
    counts = write(root)
    # The recipe's data block names its training split; probes still use both sides.
    data = {"name": dataset, "root": str(root), "split": names[0], "image_size": 28}
    results = _run(fake_run, medssl_registry, _probes(data, meta))
    assert [r["evaluator"] for r in results] == ["linear_probe", "knn", "metadata_probe"]
    for r in results:
        split = r["split"]
        assert split["kind"] == "official" and split["names"] == names, split
        assert (r["n_train"], r["n_val"]) == (counts["train"], counts["val"])
        assert (split["groups_train"], split["groups_val"]) == counts["patients"]
        assert split["shared_groups"] == 0 and split["warning"] is None
        assert r["dataset"] == f"{dataset} (official split)"
    table = (fake_run / "eval.md").read_text()
    assert f"split: official ({names[0]} / {names[1]})" in table
    assert "0 on both sides" in table


def test_medssl_eval_on_nih_prints_split_and_no_shared_patient(
    fake_run: Path, tmp_path: Path
) -> None:
    counts = write_nih(tmp_path, v2020=True)  # the 2020 table, found without table=
    data = {"name": "nih_chestxray14", "root": str(tmp_path), "image_size": 28}
    evals = [{"name": "linear_probe", "data": data, "C": 1.0}]
    result = CliRunner().invoke(main, ["eval", str(fake_run), f"eval={json.dumps(evals)}"])
    assert result.exit_code == 0, result.output
    train, val = counts["patients"]
    line = f"linear_probe split: official (train_val / test); patients train/val {train}/{val}"
    assert f"{line}, 0 on both sides" in result.output


def test_patient_split_keeps_each_patient_on_one_side(tmp_path: Path) -> None:
    write_nih(tmp_path)
    ds = NIHChestXray14(root=str(tmp_path), image_size=8)
    groups = ds.groups()
    assert groups is not None and len(set(groups)) == 12
    build = lambda block: NIHChestXray14(**{k: v for k, v in block.items() if k != "name"})  # noqa: E731
    block = {"name": "nih_chestxray14", "root": str(tmp_path), "image_size": 8}
    for seed in range(5):
        tr, va, _, info = choose_split(NIHChestXray14, block, build, split="patient", seed=seed)
        g_tr = {groups[i] for i in tr.indices}
        g_va = {groups[i] for i in va.indices}
        assert not g_tr & g_va and len(tr) + len(va) == len(ds)
        assert info.kind == "patient" and info.shared_groups == 0
        assert (info.groups_train, info.groups_val) == (len(g_tr), len(g_va))
    # random only when asked: it says how many patients it put on both sides
    tr, va, _, info = choose_split(NIHChestXray14, block, build, split="random", seed=0)
    shared = {groups[i] for i in tr.indices} & {groups[i] for i in va.indices}
    assert info.kind == "random" and info.shared_groups == len(shared)
    if shared:
        assert "on both sides of a random split" in (info.warning or "")


def test_group_split_fraction_and_missing_keys() -> None:
    groups = [f"p{i // 4}" for i in range(40)] + [None] * 4  # 10 patients, 4 without a key
    tr, va = group_split(groups, 0.25, seed=3, where="t")
    assert set(tr) | set(va) == set(range(44)) and not set(tr) & set(va)
    assert 0.2 <= len(va) / 44 <= 0.4
    assert not {groups[i] for i in tr if groups[i]} & {groups[i] for i in va if groups[i]}
    with pytest.raises(ValueError, match="too few"):
        group_split(["a", "a"], 0.2, 0, "t")


def test_check_groups_names_counts_never_keys() -> None:
    assert check_groups(["a", "b"], ["c"], "patient", disjoint=True, where="w") == (2, 1, 0)
    with pytest.raises(ValueError, match=r"w: 1 patient\(s\) appear on both sides") as err:
        check_groups(["secret-id", "b"], ["secret-id"], "patient", disjoint=True, where="w")
    assert "secret-id" not in str(err.value)
    assert check_groups(["a"], ["a"], "study", disjoint=False, where="w") == (1, 1, 1)


def test_auto_falls_back_with_a_warning_in_the_table(
    fake_run: Path, tmp_path: Path, medssl_registry: Any
) -> None:
    write_nih(tmp_path)
    (tmp_path / "test_list.txt").unlink()
    data = {"name": "nih_chestxray14", "root": str(tmp_path), "image_size": 28}
    result = _run(fake_run, medssl_registry, [{"name": "knn", "data": data, "k": 3}])[0]
    assert result["split"]["kind"] == "patient" and result["split"]["shared_groups"] == 0
    assert "official split train_val/test unusable" in result["split"]["warning"]
    assert "WARNING: official split train_val/test unusable" in (fake_run / "eval.md").read_text()
    # asked for explicitly, the official split does not fall back
    evals = [{"name": "knn", "data": data, "k": 3, "split": "official"}]
    with pytest.raises(RecipeError, match="test_list.txt"):
        _run(fake_run, medssl_registry, evals)


def test_without_group_key_random_and_the_table_says_so(
    fake_run: Path, medssl_registry: Any
) -> None:
    result = _run(fake_run, medssl_registry, [{"name": "knn", "k": 3}])[0]  # synthetic data
    assert result["split"]["kind"] == "random" and result["split"]["group"] is None
    assert (
        "knn split: random; no group key, groups not checked" in (fake_run / "eval.md").read_text()
    )
    for kind in ("official", "patient"):
        with pytest.raises(
            RecipeError,
            match=f"no {'official split' if kind == 'official' else 'group key'}|declares no official",
        ):
            _run(fake_run, medssl_registry, [{"name": "knn", "k": 3, "split": kind}])


def _manifest(root: Path, n: int, shared: bool) -> dict:
    """A csv_manifest with masks, a split column and a patient column."""
    rows = ["path,mask,split,patient,finding"]
    for i in range(n):
        patient = i // 2
        split = "val" if patient % 4 == 0 else "train"
        if shared and i == 1:
            split = "val" if split == "train" else "train"  # patient 0 on both sides
        img = np.full((28, 28), 60, np.uint8)
        mask = np.zeros((28, 28), np.uint8)
        mask[4 : 10 + i % 8, 4:20] = 1
        img[mask == 1] = 200
        Image.fromarray(img).save(root / f"{i}.png")
        Image.fromarray(mask).save(root / f"{i}_m.png")
        rows.append(f"{i}.png,{i}_m.png,{split},{patient},{i % 2}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return {
        "name": "csv_manifest",
        "root": str(root),
        "manifest": "m.csv",
        "mask_column": "mask",
        "mask_names": ["background", "box"],
        "split_column": "split",
        "group_column": "patient",
        "image_size": 28,
    }


def test_segmentation_probe_and_manifest_groups(
    fake_run: Path, tmp_path: Path, medssl_registry: Any
) -> None:
    data = _manifest(tmp_path, 24, shared=False)
    seg = {"name": "segmentation_probe", "epochs": 2, "mask_size": 28}
    result = _run(fake_run, medssl_registry, [{**seg, "data": data}])[0]
    assert result["split"]["kind"] == "official" and result["split"]["group"] == "patient"
    assert (result["n_train"], result["n_val"]) == (18, 6)
    assert (result["split"]["groups_train"], result["split"]["groups_val"]) == (9, 3)
    result = _run(fake_run, medssl_registry, [{**seg, "data": data, "split": "patient"}])[0]
    assert result["split"]["kind"] == "patient" and result["split"]["shared_groups"] == 0
    # a manifest whose own split puts a patient on both sides is refused
    shared = _manifest(tmp_path, 24, shared=True)
    with pytest.raises(RecipeError, match=r"1 patient\(s\) appear on both sides"):
        _run(fake_run, medssl_registry, [{**seg, "data": shared}])


def test_multiclass_target_reported_by_its_column(
    fake_run: Path, tmp_path: Path, medssl_registry: Any
) -> None:
    data = _manifest(tmp_path, 24, shared=False)
    data.update(label_columns=["finding"], label_kind="multiclass", mask_column=None)
    data.pop("mask_names")
    result = _run(fake_run, medssl_registry, [{"name": "knn", "data": data, "k": 3}])[0]
    assert {r["target"] for r in result["rows"]} == {"finding"}


def test_demo_official_split_is_by_image_and_patient_holds_sources_out() -> None:
    block = {"name": "demo_cxr", "subset": "drr", "image_size": 16}
    build = lambda b: DemoCXR(**{k: v for k, v in b.items() if k != "name"})  # noqa: E731
    tr, va, _, info = choose_split(DemoCXR, block, build)
    assert info.kind == "official" and info.names == ["train", "val"]
    assert info.group == "source scan" and info.shared_groups == 3
    assert "by image" in (info.warning or "")
    tr, va, ref, info = choose_split(DemoCXR, block, build, split="patient")
    groups = ref.groups()
    assert not {groups[i] for i in tr.indices} & {groups[i] for i in va.indices}
    assert info.shared_groups == 0 and (info.groups_train, info.groups_val) == (2, 1)
