"""Large tables: streamed reading, compact records, file checks on a sample in validate."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from data_helpers import FIXTURES
from PIL import Image

from medssl.data import CheXpert
from medssl.data.large import check_files, sampled_file_checks
from medssl.data.tables import iter_rows


def _chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    shutil.copytree(FIXTURES / "chexpert", root)
    with open(root / "train.csv") as fh:
        for row in csv.DictReader(fh):
            path = root / row["Path"].split("/", 1)[1]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path)
    return root


def test_iter_rows_streams_plain_and_gzip(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4\n")
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"\xef\xbb\xbfa,b\n1,2\n"))
    header, rows = iter_rows(tmp_path / "t.csv")
    assert header == ["a", "b"] and list(rows) == [["1", "2"], ["3", "4"]]
    header, rows = iter_rows(tmp_path / "t.csv.gz")
    assert header == ["a", "b"] and list(rows) == [["1", "2"]]


def test_sampled_file_checks_state_what_they_checked(tmp_path: Path) -> None:
    root = _chexpert(tmp_path)
    gone = root / "train/patient90003/study1/view1_frontal.jpg"
    gone.unlink()
    full = CheXpert(root=str(root))
    assert len(full) == 5 and full.check_note is None  # every file checked, one skipped
    with sampled_file_checks(2):
        sampled = CheXpert(root=str(root))
    assert len(sampled) in (5, 6)  # rows outside the sample are kept
    assert sampled.check_note is not None
    assert "6 table rows parsed in full (streamed)" in sampled.check_note
    assert "seeded sample of 2" in sampled.check_note
    keep, note = check_files(str(root), ["train.csv", "nothing.jpg"], "t")
    assert keep.tolist() == [True, False] and note is None
    # compact records give back what the row said
    record = full.records[1]
    assert record.group == "patient90002" and record.display.startswith("train/patient90002")
    assert record.meta == {"age": 87.0, "sex": "F", "view": "AP"}
    assert Path(record.path).is_file() and record.label.dtype == np.float32
    assert full.groups() == [r.group for r in full.records]


def test_validate_prints_the_sampled_check(tmp_path: Path, monkeypatch, tiny_recipe: Path) -> None:  # type: ignore[no-untyped-def]
    import yaml
    from click.testing import CliRunner

    import medssl.validation
    from medssl.cli import main

    _chexpert(tmp_path)
    monkeypatch.setattr(medssl.validation, "sampled_file_checks", lambda: sampled_file_checks(2))
    config = yaml.safe_load(tiny_recipe.read_text())
    config["data"] = {"name": "chexpert", "root": str(tmp_path), "image_size": 64}
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["validate", str(tiny_recipe)])
    assert result.exit_code == 0, result.output
    assert "file existence checked on a seeded sample of 2" in result.output


def test_iter_rows_pads_short_rows_and_skips_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a,b,c\n1\n\n4,5,6\n")
    header, rows = iter_rows(tmp_path / "t.csv")
    assert list(rows) == [["1", "", ""], ["4", "5", "6"]]


def test_nih_table_variants(tmp_path: Path) -> None:
    from medssl.data import NIHChestXray14

    for name in ("00000007_000.png", "00000007_001.png", "00000009_000.png"):
        path = tmp_path / "images" / name
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 50, np.uint8)).save(path)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Patient Age,Patient Gender,View Position\n"
        "00000007_000.png,Mass,40,M,PA\n"
    )
    # the 2020 file wins when both are there; 'Patient Sex', no 'Patient ID' column
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Patient Age,Patient Sex,View Position\n"
        "00000007_000.png,Mass,40,M,PA\n00000007_001.png,No Finding,41,M,AP\n"
        "00000009_000.png,Effusion,60,F,PA\n"
    )
    ds = NIHChestXray14(root=str(tmp_path), image_size=8)
    assert len(ds) == 3 and ds.records[2].meta == {"age": 60.0, "sex": "F", "view": "PA"}
    assert ds.groups() == ["00000007", "00000007", "00000009"]  # from the image names
    assert len(NIHChestXray14(root=str(tmp_path), table="Data_Entry_2017.csv")) == 1


def _data_only_recipe(tmp_path: Path, tiny_recipe: Path) -> Path:
    import yaml

    config = yaml.safe_load(tiny_recipe.read_text())
    config["data"] = {"name": "chexpert", "root": str(tmp_path), "image_size": 64}
    tiny_recipe.write_text(yaml.safe_dump(config))
    return tiny_recipe


def test_validate_data_only_checks_the_table_and_an_image(
    tmp_path: Path,
    monkeypatch,
    tiny_recipe: Path,  # type: ignore[no-untyped-def]
) -> None:
    from click.testing import CliRunner

    import medssl.data.check
    from medssl.cli import main

    root = _chexpert(tmp_path)
    recipe = _data_only_recipe(tmp_path, tiny_recipe)
    monkeypatch.setattr(medssl.data.check, "sampled_file_checks", lambda: sampled_file_checks(2))
    result = CliRunner().invoke(main, ["validate", str(recipe), "--data-only"])
    assert result.exit_code == 0, result.output
    assert "file existence checked on a seeded sample of 2" in result.output
    assert "first readable image: 8×8, 1 channel(s)" in result.output
    assert "data valid" in result.output and "were not checked" in result.output
    # every image unreadable: one line with the reason class, no path
    for jpeg in root.rglob("*.jpg"):
        jpeg.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(main, ["validate", str(recipe), "--data-only"])
    assert result.exit_code == 1
    assert "none of the first 6 images could be read" in result.output
    assert "patient9000" not in result.output and "Traceback" not in result.output
    # a bad option is named by its key, as the full check does
    result = CliRunner().invoke(main, ["validate", str(recipe), "--data-only", "data.rooot=x"])
    assert result.exit_code == 1 and "data.rooot: unknown option" in result.output


def test_validate_data_only_never_imports_torch(tmp_path: Path, tiny_recipe: Path) -> None:
    """What makes it light: the dataset kind alone is loaded (plugins included)."""
    import subprocess
    import sys

    _chexpert(tmp_path)
    recipe = _data_only_recipe(tmp_path, tiny_recipe)
    code = (
        "import sys\nfrom medssl.cli import main\n"
        f"main(['validate', {str(recipe)!r}, '--data-only'], standalone_mode=False)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'kornia'})\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "data valid" in out.stdout and "heavy: []" in out.stdout
