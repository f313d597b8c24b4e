"""``medssl eval --data``: probes on a user's labelled manifest; feature modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from medssl.cli import main
from medssl.eval.base import EvalResult, Row
from medssl.eval.features import FeatureSet
from medssl.eval.knn import knn_inputs


def _manifest(root: Path, n: int = 30) -> None:
    """Images whose left half is bright when 'finding' is 1; masks: that half as class 1."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    (root / "msk").mkdir()
    lines = ["path,finding,mask,split"]
    for i in range(n):
        finding = i % 2
        image = rng.integers(0, 60, (28, 28)).astype(np.uint8)
        mask = np.zeros((28, 28), np.uint8)
        if finding:
            image[:, :14] += 150
            mask[:, :14] = 1
        mask[20:, :] = 2  # a second class in every image
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray(mask).save(root / "msk" / f"{i}.png")
        lines.append(f"img/{i}.png,{finding},msk/{i}.png,{'val' if i % 5 < 2 else 'train'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_eval_cli_probes_a_user_manifest_with_labels_and_masks(
    fake_run: Path, tmp_path: Path
) -> None:
    data = tmp_path / "mydata"
    data.mkdir()
    _manifest(data)
    out = tmp_path / "eval"
    evals = "[{name: linear_probe, C: 1.0, bootstrap: 200}, {name: segmentation_probe, epochs: 5}]"
    args = ["eval", str(fake_run), f"eval={evals}"]
    args += [
        "--data", "name=csv_manifest", "--data", f"root={data}", "--data", "manifest=labels.csv",
        "--data", "label_columns=[finding]", "--data", "mask_column=mask",
        "--data", "mask_names=[background,bright,floor]", "--data", "split_column=split",
        "--data", "image_size=28", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "eval.json").read_text())
    linear, seg = payload["results"]
    assert (linear["n_train"], linear["n_val"]) == (18, 12)  # the manifest's own split
    assert {r["features"] for r in linear["rows"]} == {"cls+mean_patch", "cls", "mean_patch"}
    assert {r["target"] for r in seg["rows"]} == {"bright", "floor", "mean"}
    for row in linear["rows"] + seg["rows"]:
        assert set(row["floors"]) == {"random", "pixels", "trivial"}
        if row["metric"] != "auprc":  # AUPRC: a point value only
            assert row["ci"][0] <= row["score"] <= row["ci"][1]
    # The raw pixels separate the bright half perfectly: the floor says so.
    auroc = next(r for r in linear["rows"] if r["metric"] == "auroc")
    assert auroc["floors"]["pixels"] == 1.0
    assert "| segmentation_probe | bright |" in result.output
    assert "not in the validation masks" not in result.output

    bad = CliRunner().invoke(main, ["eval", str(fake_run), "-e", "knn", "--data", "root"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "--data" in bad.output and "KEY=VALUE" in bad.output
    missing = CliRunner().invoke(
        main, ["eval", str(fake_run), "-e", "knn", "--data", "name=csv_manifest"]
    )
    assert missing.exit_code != 0 and "Traceback" not in missing.output
    assert "root" in missing.output.splitlines()[-1]


def _fs(cls: np.ndarray, mean_patch: np.ndarray, pixels: np.ndarray) -> FeatureSet:
    return FeatureSet(cls=cls, mean_patch=mean_patch, pixels=pixels)


def test_feature_modes_and_identical_knn_treatment() -> None:
    rng = np.random.default_rng(0)
    fs = _fs(rng.random((6, 3)) + 5, rng.random((6, 2)) - 7, rng.random((6, 4)) + 0.5)
    assert fs.features("cls").shape == (6, 3)
    assert fs.features("mean_patch").shape == (6, 2)
    assert np.array_equal(fs.features("cls+mean_patch"), np.hstack([fs.cls, fs.mean_patch]))
    with pytest.raises(ValueError, match="features must be one of"):
        fs.features("cls+cls")
    # Encoder blocks and raw pixels alike: centred on the training mean, unit length.
    for mode, width in (("cls", 1.0), ("cls+mean_patch", np.sqrt(2)), (None, 1.0)):
        x_tr, x_va = knn_inputs(fs, fs, mode)
        assert np.allclose(np.linalg.norm(x_tr, axis=1), width)
        assert np.allclose(x_tr, x_va)
    x_tr, _ = knn_inputs(fs, fs, None)
    centred = fs.pixels - fs.pixels.mean(0)
    assert np.allclose(x_tr, centred / np.linalg.norm(centred, axis=1, keepdims=True))


def test_headline_reads_the_first_feature_mode() -> None:
    rows = [
        Row("mean", "auroc", 0.7, features="cls+mean_patch"),
        Row("a", "auroc", 0.6, features="cls"),
        Row("mean", "auroc", 0.9, features="cls"),
    ]
    assert EvalResult("linear_probe", "d", rows).headline() is rows[0]
    assert EvalResult("linear_probe", "d", rows[1:]).headline() is rows[2]
