"""``medssl ablate``: variant planning, tables, plot, and resuming without retraining."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medssl.ablate import parse_vary, plan_variants, run_ablation, seed_summary, separated
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
    seeded = plan_variants([a], ["objectives.koleo.weight=0,0.1"], seeds=[0, 1, 2])
    assert [v.name for v in seeded[:3]] == [f"koleo=0__seed={s}" for s in (0, 1, 2)]
    assert {v.group for v in seeded} == {"koleo=0", "koleo=0.1"}
    assert seeded[4].overrides == ["objectives.koleo.weight=0.1", "seed=1"]


def test_seed_summary_and_separated_variants() -> None:
    rows = [{"score": 0.70}, {"score": 0.72}, {"score": 0.74}]
    got = seed_summary(rows)
    # mean 0.72, s.d. 0.02, t(0.975, 2) = 4.303: half-width 4.303 * 0.02 / sqrt(3)
    assert got["mean"] == pytest.approx(0.72)
    assert got["hi"] - got["mean"] == pytest.approx(4.303 * 0.02 / 3**0.5)
    assert seed_summary([{"score": 0.7, "ci": [0.6, 0.8]}])["lo"] == 0.6
    agg = {
        "a": {"0:knn mean auroc": {"mean": 0.8, "lo": 0.78, "hi": 0.82, "higher_is_better": True}},
        "b": {"0:knn mean auroc": {"mean": 0.7, "lo": 0.68, "hi": 0.72, "higher_is_better": True}},
        "c": {"0:knn mean auroc": {"mean": 0.75, "lo": 0.69, "hi": 0.81, "higher_is_better": True}},
    }
    assert separated(["0:knn mean auroc"], agg) == ["a > b on knn mean auroc"]


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

    # Seeds as an axis: one row per variant with its mean and interval over seeds.
    trained.clear()
    seeded = tmp_path / "seeded"
    one = ["objectives.koleo.weight=0"]
    run_ablation([tiny_recipe], one, seeded, medssl_registry, train_fn=counting_train, seeds=[0, 1])
    assert [Path(p).name for p in trained] == ["koleo=0__seed=0", "koleo=0__seed=1"]
    table = (seeded / "ablation.md").read_text()
    assert "| koleo=0 | 2 |" in table and "differ beyond their intervals" in table
    with (seeded / "ablation.csv").open() as fh:
        summary = [r for r in csv.DictReader(fh) if r["seed"] == "mean of 2"]
    assert {r["variant"] for r in summary} == {"koleo=0"}
    assert all(float(r["ci_lo"]) <= float(r["score"]) <= float(r["ci_hi"]) for r in summary)


def test_ablate_refuses_recipes_without_eval(tiny_recipe: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["ablate", str(tiny_recipe), "--vary", "seed=0,1", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and "'eval:' list" in result.output
