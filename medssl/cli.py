"""The ``medssl`` command line (click)."""

from __future__ import annotations

import json
import logging
import sys

import click

from medssl import __version__
from medssl.cli_common import cli_load_recipe, cli_registry
from medssl.config import RecipeError
from medssl.plugins import KINDS, PluginError
from medssl.ranks import RankZeroFilter, process_rank

log = logging.getLogger("medssl")


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if not any(getattr(h, "_medssl", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._medssl = True  # type: ignore[attr-defined]
        handler.addFilter(RankZeroFilter())  # one copy of each line under DDP
        root.addHandler(handler)
    root.setLevel(level)
    # Lightning's banner lines are noise for a CLI user.
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)


class _MedsslGroup(click.Group):
    """Adds plugin commands lazily, the first time the group lists or resolves commands."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        try:
            from medssl.plugins import get_plugin_manager

            get_plugin_manager().hook.medssl_register_commands(cli=self)
        except PluginError as exc:
            log.warning("plugin commands unavailable: %s", exc)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(cls=_MedsslGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medssl")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """medssl: self-supervised pre-training of medical image encoders.

    A recipe (YAML) names a dataset, an augmentation policy, a backbone and the
    objectives to mix; any value can be overridden as KEY=VALUE, for example
    objectives.ibot.weight=0 train.batch_size=8.
    """
    _setup_logging(verbose)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option(
    "--resume", is_flag=True, help="Continue from the last valid checkpoint (error if none)."
)
@click.option(
    "--resume-or-start",
    is_flag=True,
    help="Continue from the last valid checkpoint, or start when the run has none yet.",
)
@click.option(
    "--accept-changes",
    is_flag=True,
    help="Resume even though the recipe changes what is trained (recorded in history.jsonl).",
)
@click.option("--output-dir", type=click.Path(file_okay=False), help="Overrides output_dir.")
@click.option(
    "--show-paths",
    is_flag=True,
    help="Name files that fail to load by path, not by key (paths may hold identifiers).",
)
def run(
    recipe: str,
    overrides: tuple[str, ...],
    resume: bool,
    resume_or_start: bool,
    accept_changes: bool,
    output_dir: str | None,
    show_paths: bool,
) -> None:
    """Train the encoder a RECIPE describes and write its run directory.

    The run directory holds config.yaml (the resolved recipe), run.json (versions,
    plugins, seed), history.jsonl (each start and resume), metrics.csv, loss_curves.png,
    checkpoints/ and backbone.safetensors. Exit code 0: finished; 143 (128 + signal):
    stopped by SIGTERM with a checkpoint saved; 75: stopped by train.max_minutes with a
    checkpoint saved; 1: an error.
    """
    if show_paths:  # an environment variable reaches the DataLoader's worker processes
        import os

        os.environ["MEDSSL_SHOW_PATHS"] = "1"
    from medssl.data.robust import TooManyLoadFailures
    from medssl.engine.checkpoint import CheckpointError
    from medssl.engine.model import NonFiniteLossError
    from medssl.engine.run_lock import RunDirectoryLocked
    from medssl.engine.trainer import stop_exit_code, train
    from medssl.plugins import UnknownComponentError
    from medssl.validation import check_recipe

    registry = cli_registry()
    if output_dir:
        overrides = (*overrides, f"output_dir={output_dir}")
    resolved = cli_load_recipe(recipe, overrides, registry)
    try:
        # What `medssl validate` checks, so that no recipe error waits for training to end
        # (the device checks are left to Fabric, which knows the launcher's environment).
        check_recipe(resolved, registry, resume=resume or resume_or_start, device_check=False)
        result = train(
            resolved,
            registry,
            resume=resume,
            resume_or_start=resume_or_start,
            accept_changes=accept_changes,
        )
    except (
        RecipeError,
        NonFiniteLossError,
        TooManyLoadFailures,
        CheckpointError,
        RunDirectoryLocked,
    ) as exc:
        raise click.ClickException(str(exc)) from None
    if process_rank() != 0:
        return  # rank 0 evaluates and reports
    click.echo(f"run directory: {result.run_dir}")
    if resolved.evaluators and not result.stopped_early:
        from medssl.eval import markdown_table, run_evaluators
        from medssl.eval.report import results_from_payload

        try:
            payload = run_evaluators(result.run_dir, resolved, registry)
        except (RecipeError, FileNotFoundError, ValueError, UnknownComponentError) as exc:
            # The trained run is complete on disk; only its evaluation failed.
            raise click.ClickException(
                f"evaluation failed: {exc} (the trained run is kept; evaluate it again with "
                f"`medssl eval {result.run_dir}`)"
            ) from None
        click.echo(markdown_table(results_from_payload(payload)))
    from medssl.engine.diagnostics import final_lines

    for line in final_lines(result.diagnostics):  # again at the end: evaluation scrolled it away
        click.echo(line)
    code = stop_exit_code(result)
    if code:
        click.echo(
            f"stopped early with a checkpoint saved (exit code {code}); continue with --resume"
        )
        sys.exit(code)


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="The run will continue its output_dir.")
@click.option(
    "--no-device-check",
    is_flag=True,
    help="Skip the checks against this machine's devices (a GPU recipe on a login node).",
)
@click.option(
    "--data-only",
    is_flag=True,
    help="Check only the data: block (table, files, a few images), without loading torch: "
    "seconds for a 200,000-row table.",
)
def validate(
    recipe: str, overrides: tuple[str, ...], resume: bool, no_device_check: bool, data_only: bool
) -> None:
    """Check a RECIPE without training: everything `medssl run` would reject before its
    first step or in its evaluations (names, options, objectives vs data and views,
    devices, batch vs dataset size, the eval: list vs the data)."""
    if data_only:
        _validate_data(recipe, overrides)
        return
    from medssl.validation import check_recipe

    registry = cli_registry()
    resolved = cli_load_recipe(recipe, overrides, registry)
    try:
        notes = check_recipe(resolved, registry, resume=resume, device_check=not no_device_check)
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
    for note in notes:
        click.echo(f"note: {note}")
    enabled = ", ".join(f"{s.name}×{s.weight:g}" for s in resolved.enabled_objectives)
    click.echo(f"{recipe}: valid (objectives: {enabled})")


def _validate_data(recipe: str, overrides: tuple[str, ...]) -> None:
    from medssl.config import load_config
    from medssl.data.check import check_data
    from medssl.plugins import load_registry

    try:
        registry = load_registry(kinds=["dataset"])
        config, source = load_config(recipe, overrides)
        notes = check_data(config, registry, source)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    except RecipeError as exc:
        raise click.ClickException(str(exc)) from None
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(f"{recipe}: data valid")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List every registered component by kind, with the plugin that provides it."""
    registry = cli_registry()
    listing = {
        kind: [
            {
                "name": c.name,
                "plugin": c.provider.name,
                "version": c.provider.version,
                "doc": (c.factory.__doc__ or "").strip().splitlines()[0]
                if c.factory.__doc__
                else "",
            }
            for c in registry.components(kind)
        ]
        for kind in KINDS
    }
    failed = registry.load_report.failed
    if as_json:
        click.echo(json.dumps({"components": listing, "failed_plugins": failed}, indent=2))
        return
    for kind, items in listing.items():
        click.secho(f"{kind}s", bold=True)
        if not items:
            click.echo("  (none)")
        for item in items:
            version = f" {item['version']}" if item["version"] else ""
            click.echo(f"  {item['name']:<24} {item['plugin']}{version}")
    for dist, reason in failed.items():
        click.secho(f"plugin {dist!r} failed to import: {reason}", fg="red", err=True)
    for dist in registry.load_report.blocked:
        click.echo(f"plugin {dist!r} blocked by MEDSSL_DISABLE_PLUGINS", err=True)


# Feature commands live beside their features.
from medssl.cli_augment import augment_preview  # noqa: E402
from medssl.cli_data import prepare  # noqa: E402
from medssl.cli_eval import ablate, eval_command, export, visualize  # noqa: E402
from medssl.cli_plugin import plugin  # noqa: E402

for _command in (augment_preview, prepare, eval_command, export, ablate, visualize, plugin):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
