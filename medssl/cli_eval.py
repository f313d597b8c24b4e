"""``medssl eval``, ``export``, ``ablate`` and ``visualize`` (click commands)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from medssl.cli_common import cli_registry
from medssl.config import ComponentSpec, RecipeError, ResolvedRecipe, load_recipe
from medssl.plugins import Registry, UnknownComponentError

__all__ = ["ablate", "eval_command", "export", "visualize"]


def _run_recipe(
    run_dir: Path, recipe: str | None, overrides: tuple[str, ...], registry: Registry
) -> ResolvedRecipe | None:
    """The given recipe, else the run's own config.yaml; None for a bare HF folder."""
    source = Path(recipe) if recipe else run_dir / "config.yaml"
    if not source.is_file():
        if recipe:
            raise click.ClickException(f"recipe not found: {recipe}")
        return None
    try:
        return load_recipe(source, overrides, registry)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None


def _data_block(items: tuple[str, ...]) -> dict[str, Any]:
    """``--data`` values: one YAML file with the block, or KEY=VALUE pairs (YAML values)."""
    import yaml

    if len(items) == 1 and "=" not in items[0]:
        source = Path(items[0])
        if not source.is_file():
            raise click.ClickException(f"--data: {items[0]!r} is neither KEY=VALUE nor a file")
        try:
            block = yaml.safe_load(source.read_text())
        except yaml.YAMLError as exc:
            raise click.ClickException(f"--data {items[0]}: not valid YAML ({exc})") from None
        if not isinstance(block, dict):
            raise click.ClickException(f"--data {items[0]}: must hold a mapping (a data block)")
        return block
    block: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.ClickException(f"--data: {item!r} is not KEY=VALUE")
        try:
            block[key.strip()] = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            block[key.strip()] = value
    if "name" not in block:
        raise click.ClickException(
            "--data: name=... is missing (the dataset adapter, e.g. csv_manifest or image_folder)"
        )
    return block


def _folder_blocks(
    overrides: tuple[str, ...],
    registry: Registry,
    folder: str,
    data_block: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[ComponentSpec]]:
    """The data block and evaluators for a folder without a recipe (an exported HF
    folder), from ``data.*`` and ``eval.*`` overrides; the encoder's preprocessing comes
    from the folder's preprocessor_config.json. Without an eval list: ``linear_probe``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from medssl.config import validate_block

    source = "command line"
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise RecipeError(f"bad override: {exc}", source) from None
    assert isinstance(given, dict)
    other = sorted(set(given) - {"data", "eval"})
    if other:
        raise RecipeError(
            f"{folder} has no recipe: only data.* and eval.* apply, not {', '.join(other)}",
            source,
        )
    if "data" not in given and data_block is not None:
        given["data"] = data_block  # --data
    if "data" not in given:
        raise RecipeError(
            f"{folder} has no config.yaml: give the data to evaluate on (e.g. "
            "data.name=image_folder data.root=DIR, or data.name=demo_cxr) or pass --recipe "
            "(its eval: list and data block are used)",
            source,
        )
    data = validate_block(registry, "dataset", given["data"], "data", source)
    evaluators = given.get("eval") or []
    if isinstance(evaluators, dict) and all(str(k).isdigit() for k in evaluators):
        evaluators = [evaluators[k] for k in sorted(evaluators, key=int)]  # eval.0.name=...
    if not isinstance(evaluators, list):
        raise RecipeError("expected a list of evaluator blocks", source, "eval")
    specs = [
        validate_block(registry, "evaluator", block, f"eval.{i}", source)
        for i, block in enumerate(evaluators)
    ]
    return {"name": data.name, **data.options}, specs or [
        validate_block(registry, "evaluator", {"name": "linear_probe"}, "eval.0", source)
    ]


@click.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--recipe", help="Take the evaluators (and data) from this recipe.")
@click.option(
    "--evaluator",
    "-e",
    "names",
    multiple=True,
    help="Run this evaluator with its defaults (repeatable) instead of the recipe's eval: list.",
)
@click.option(
    "--data",
    "data_items",
    multiple=True,
    metavar="KEY=VALUE|FILE.yaml",
    help="Probe on this data block instead of the recipe's, for every evaluator: "
    "KEY=VALUE pairs (values read as YAML), e.g. --data name=csv_manifest --data "
    "root=/data/cxr --data label_columns=[effusion,edema] --data mask_column=mask; "
    "or one YAML file holding the block.",
)
@click.option("--out", type=click.Path(file_okay=False), help="Where eval.json/eval.md go.")
def eval_command(
    run_dir: str,
    overrides: tuple[str, ...],
    recipe: str | None,
    names: tuple[str, ...],
    data_items: tuple[str, ...],
    out: str | None,
) -> None:
    """Evaluate the frozen encoder of RUN_DIR (a run directory or an exported HF folder).

    Evaluators come from the run's config.yaml (or --recipe), overridable as KEY=VALUE,
    e.g. eval.0.features=cls; every score is printed with its floors. --data points
    every evaluator at your own labelled images (folder or CSV manifest). A folder
    without a recipe (an export) takes its preprocessing from preprocessor_config.json
    and its data from --data or data.* (e.g. data.name=image_folder data.root=DIR);
    evaluators from --evaluator or eval.N.*, else linear_probe.
    """
    from medssl.config import validate_block
    from medssl.eval import markdown_table, run_evaluators
    from medssl.eval.report import results_from_payload

    registry = cli_registry()
    path = Path(run_dir)
    data = _data_block(data_items) if data_items else None
    resolved = _run_recipe(path, recipe, overrides, registry)
    default_data, specs = None, None
    if resolved is None:
        try:
            default_data, specs = _folder_blocks(overrides, registry, run_dir, data)
        except RecipeError as exc:
            raise click.ClickException(str(exc)) from None
    if names:
        try:
            specs = [
                validate_block(
                    registry, "evaluator", {"name": n}, f"--evaluator {n}", "command line"
                )
                for n in names
            ]
        except RecipeError as exc:
            raise click.ClickException(str(exc)) from None
    if data is not None:
        specs = [
            s.model_copy(update={"options": {**s.options, "data": data}})
            for s in (specs if specs is not None else resolved.evaluators if resolved else [])
        ]
    try:
        payload = run_evaluators(
            path, resolved, registry, specs=specs, out_dir=out, default_data=default_data
        )
    except (RecipeError, FileNotFoundError, ValueError, UnknownComponentError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(markdown_table(results_from_payload(payload)))
    click.echo(f"wrote {Path(out or run_dir) / 'eval.json'} and eval.md")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("options", nargs=-1)
@click.option("--format", "fmt", default="hf", show_default=True, help="A registered exporter.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    help="Input channels of the exported model (hf: 3, RGB-ready, by default; 1 keeps a "
    "grey encoder grey). Same as the option channels=N.",
)
def export(
    run_dir: str, options: tuple[str, ...], fmt: str, out: str, channels: str | None
) -> None:
    """Export the encoder of RUN_DIR (e.g. --format hf: a transformers Dinov2Model folder).

    OPTIONS are the exporter's KEY=VALUE options, e.g. include_heads=false. The hf format
    writes a grey encoder as an RGB-input model (a grey image converted to RGB gives the
    same features) and a model card, README.md.
    """
    from pydantic import ValidationError

    registry = cli_registry()
    try:
        component = registry.get("exporter", fmt)
    except UnknownComponentError as exc:
        raise click.ClickException(f"--format: {exc}") from None
    raw = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"exporter option {item!r} is not KEY=VALUE")
        raw[key] = value
    if channels is not None:
        raw["channels"] = channels
    model = component.options_model
    try:
        opts = model.model_validate(raw).model_dump() if model is not None else raw
    except ValidationError as exc:
        raise click.ClickException(f"exporter {fmt!r} options: {exc}") from None
    resolved = _run_recipe(Path(run_dir), None, (), registry)
    try:
        folder = component.factory(**opts)(Path(run_dir), Path(out), resolved, registry)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {run_dir} as {fmt} to {folder}")


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--vary", multiple=True, help="KEY=V1,V2,... (repeatable: the grid of all).")
@click.option("--set", "overrides", multiple=True, help="KEY=VALUE applied to every variant.")
@click.option(
    "--seeds",
    help="Comma-separated seeds, e.g. 0,1,2: every variant is trained once per seed and "
    "reported as mean with a 95% interval.",
)
@click.option("--out", default="runs/ablation", show_default=True, type=click.Path(file_okay=False))
def ablate(
    recipes: tuple[str, ...],
    vary: tuple[str, ...],
    overrides: tuple[str, ...],
    seeds: str | None,
    out: str,
) -> None:
    """Train and evaluate every variant of RECIPES the same way; table + plot.

    Each RECIPE is a variant, crossed with every --vary grid point (and every --seeds
    seed). Writes ablation.csv, ablation.md and ablation.png in --out; finished variants
    are not rerun.
    """
    from medssl.ablate import VariantStopped, run_ablation
    from medssl.data.robust import TooManyLoadFailures
    from medssl.engine.checkpoint import CheckpointError
    from medssl.engine.model import NonFiniteLossError
    from medssl.engine.run_lock import RunDirectoryLocked
    from medssl.engine.trainer import stop_exit_code

    try:
        seed_list = [int(x) for x in seeds.split(",")] if seeds else None
    except ValueError:
        raise click.ClickException(
            f"--seeds {seeds!r} is not a comma-separated list of integers"
        ) from None
    registry = cli_registry()
    try:
        run_ablation(recipes, vary, out, registry, overrides, seeds=seed_list)
    except VariantStopped as exc:
        click.echo(str(exc), err=True)
        sys.exit(stop_exit_code(exc.result))
    except (
        RecipeError,
        ValueError,
        NonFiniteLossError,
        TooManyLoadFailures,
        CheckpointError,
        RunDirectoryLocked,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo((Path(out) / "ablation.md").read_text())
    click.echo(f"wrote {out}/ablation.csv, ablation.md, ablation.png")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="attn.png", show_default=True, type=click.Path(dir_okay=False))
@click.option("--size", type=int, help="Input size (default: the encoder's training crop size).")
def visualize(run_dir: str, image: str, out: str, size: int | None) -> None:
    """Draw the last layer's CLS self-attention heads of RUN_DIR's encoder over IMAGE."""
    from medssl.eval.encoder import load_encoder
    from medssl.visualize import visualize_image

    registry = cli_registry()
    resolved = _run_recipe(Path(run_dir), None, (), registry)
    try:
        encoder = load_encoder(run_dir, resolved, registry)
        path = visualize_image(encoder, image, out, size)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {path}")
