"""``medssl ablate``: variant planning, tables, plot, and resuming without retraining."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medssl.ablate import parse_vary, plan_variants, run_ablation
from medssl.cli import main
from medssl.config import load_recipe
from medssl.engine.trainer import train


def test_parse_vary_keeps_bracketed_values_whole() -> None:
    axes = parse_vary(["objectives.ibot.mask_ratio=[0.1,0.5],[0.2, 0.4]", "seed=0,1,2"])
    assert axes == [
        ("objectives.ibot.mask_ratio", ["[0.1,0.5]", "[0.2, 0.4]"]),
        ("seed", ["0", "1", "2"]),
    ]
    with pytest.raises(ValueError, match="not KEY=V1,V2"):
        parse_vary(["seed"])
    with pytest.raises(ValueError, match="empty value"):
        parse_vary(["seed=0,,1"])


def test_plan_is_the_grid_over_every_recipe(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    variants = plan_variants([a, b], ["objectives.koleo.weight=0,0.1", "seed=0,1"])
    assert len(variants) == 8
    assert len({v.name for v in variants}) == 8
    assert variants[0].name == "a__koleo=0__seed=0"
    assert variants[-1].overrides == ["objectives.koleo.weight=0.1", "seed=1"]


def test_objective_swap_recipes_validate(medssl_registry) -> None:  # type: ignore[no-untyped-def]
    root = Path(__file__).resolve().parents[1] / "recipes" / "ablations"
    enabled = {
        p.stem: {s.name for s in load_recipe(p, registry=medssl_registry).enabled_objectives}
        for p in sorted(root.glob("*.yaml"))
    }
    assert enabled == {
        "dino": {"dino"},
        "dino_ibot": {"dino", "ibot"},
        "dino_ibot_koleo": {"dino", "ibot", "koleo"},
        "mae": {"mae"},
        "dino_mae": {"dino", "mae"},
    }


def test_ablation_tables_plot_and_resume(
    tiny_recipe: Path, tmp_path: Path, medssl_registry
) -> None:  # type: ignore[no-untyped-def]
    config = yaml.safe_load(tiny_recipe.read_text())
    config["data"] = {"name": "synthetic", "n_images": 20, "image_size": 56}
    config["objectives"]["koleo"] = {"weight": 0.1}
    config["train"]["steps"] = 1
    config["eval"] = [{"name": "knn", "k": 3}]
    tiny_recipe.write_text(yaml.safe_dump(config))
    out = tmp_path / "ablation"
    trained: list[str] = []

    def counting_train(resolved, registry, resume=False):  # type: ignore[no-untyped-def]
        trained.append(resolved.recipe.output_dir)
        return train(resolved, registry, resume=resume)

    vary = ["objectives.koleo.weight=0,0.1"]
    run_ablation([tiny_recipe], vary, out, medssl_registry, train_fn=counting_train)
    assert [Path(p).name for p in trained] == ["koleo=0", "koleo=0.1"]
    with (out / "ablation.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["variant"] for r in rows} == {"koleo=0", "koleo=0.1"}
    assert {r["metric"] for r in rows} == {"auroc", "auprc", "accuracy"}
    assert all(r["floor_pixels"] and r["floor_trivial"] for r in rows)
    table = (out / "ablation.md").read_text()
    assert "| koleo=0 |" in table and "raw-pixel floor" in table
    assert (out / "ablation.png").stat().st_size > 1000
    assert (out / "ablation_losses.png").stat().st_size > 1000  # variants side by side

    # Finished variants are not rerun; a new grid point is the only one trained.
    trained.clear()
    result = CliRunner().invoke(
        main,
        ["ablate", str(tiny_recipe), "--vary", "objectives.koleo.weight=0,0.1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "| koleo=0.1 |" in result.output
    run_ablation(
        [tiny_recipe],
        ["objectives.koleo.weight=0,0.1,0.2"],
        out,
        medssl_registry,
        train_fn=counting_train,
    )
    assert [Path(p).name for p in trained] == ["koleo=0.2"]


def test_ablate_refuses_recipes_without_eval(tiny_recipe: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["ablate", str(tiny_recipe), "--vary", "seed=0,1", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "'eval:' list" in result.output
