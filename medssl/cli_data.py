"""``medssl prepare SOURCE OUT``: the data-preparation command (see :mod:`medssl.data.prepare`)."""

from __future__ import annotations

import sys

import click

__all__ = ["prepare"]


@click.command("prepare")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=str))
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--size",
    default=518,
    show_default=True,
    type=click.IntRange(min=8),
    help="Shorter side of the output images, in pixels (aspect ratio kept).",
)
@click.option(
    "--format",
    "fmt",
    default="png16",
    show_default=True,
    type=click.Choice(["png8", "png16", "shards", "shards8"]),
    help="8- or 16-bit grayscale PNG (colour images are converted to grey), or the same "
    "pixels as streaming shards (16- or 8-bit) for data.name: streaming.",
)
@click.option(
    "--shard-images",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per shard (--format shards): the unit of resumption and of streaming.",
)
@click.option(
    "--dataset",
    "dataset_name",
    metavar="NAME",
    help="Shard a registered dataset adapter rooted at SOURCE (labels, whitelisted metadata "
    "and groups travel with the pixels), e.g. --dataset demo_cxr --set split=train.",
)
@click.option(
    "--set",
    "dataset_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the --dataset adapter (repeatable; values read as YAML).",
)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Worker processes."
)
@click.option(
    "--frame",
    default="middle",
    show_default=True,
    type=click.Choice(["middle", "first"]),
    help="Frame of multi-frame DICOMs / slice of volumes to keep.",
)
@click.option(
    "--no-voi",
    is_flag=True,
    help="Ignore DICOM VOI LUT / window; min-max scale the modality values instead.",
)
@click.option(
    "--show-paths",
    "--with-source-paths",
    "show_paths",
    is_flag=True,
    help="Show source paths and the libraries' error messages, and write the paths into "
    "manifest.csv and failures.csv (they may hold identifiers).",
)
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Secret of the keyed output names (created if absent; keep it outside OUT). "
    "Default: SOURCE/.medssl-key if present, else the user's key store.",
)
@click.option(
    "--max-failure-share",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Exit 1 when more than this share of the files failed (outputs are kept).",
)
@click.option(
    "--max-pixels",
    default=40_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refuse images with more pixels (checked from the header, before decoding).",
)
@click.option(
    "--no-follow-links",
    is_flag=True,
    help="Do not descend into symbolic links to folders (followed by default, loops cut).",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files whose path under SOURCE matches (repeatable; '*' crosses folders).",
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Leave out matching files (repeatable)."
)
@click.option(
    "--keep-labels",
    is_flag=True,
    help="Also prepare label/mask files (*mask*, *seg*, *_label.*, labelsTr/), skipped by default.",
)
def prepare(
    source: str,
    out: str,
    size: int,
    fmt: str,
    workers: int,
    frame: str,
    no_voi: bool,
    show_paths: bool,
    key_file: str | None,
    max_failure_share: float,
    max_pixels: int,
    no_follow_links: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    keep_labels: bool,
    shard_images: int,
    dataset_name: str | None,
    dataset_options: tuple[str, ...],
) -> None:
    """Decode every image under SOURCE once and write compact PNGs + manifest.csv to OUT.

    Applies the DICOM pixel pipeline (modality LUT, VOI LUT / window, MONOCHROME1
    inversion), resizes so the shorter side is --size, and names outputs by a keyed hash
    of the source path (no identifiers). Failures are listed by that key and a reason
    class; --show-paths names the files. Safe to interrupt and rerun: finished files
    are kept. Label and mask files are skipped (--keep-labels); an empty selection
    exits 1. --format shards writes litdata shards instead (a prepared folder as SOURCE
    is converted, keeping its names); --dataset NAME shards a dataset with its labels.
    """
    from medssl.data.keys import KeyFileError
    from medssl.data.prepare import TooManyPrepareFailures
    from medssl.data.prepare import prepare as run_prepare
    from medssl.data.readers import ReadSettings
    from medssl.data.source_filter import SourceFilter

    settings = ReadSettings(
        channels=1,
        frame=frame,  # type: ignore[arg-type]
        dicom_voi=not no_voi,
        max_pixels=max_pixels,
    )
    last = [-1]

    def progress(done: int, total: int) -> None:
        step = max(1, total // 20)
        if done == total or done - last[0] >= step:
            last[0] = done
            click.echo(f"  {done}/{total}", err=True)

    select = SourceFilter(include, exclude, keep_labels)
    too_many = None
    if dataset_name is not None:
        if not fmt.startswith("shards"):
            raise click.ClickException("--dataset writes shards: add --format shards")
        _shard_dataset(
            source,
            out,
            dataset_name,
            dataset_options,
            size=size,
            fmt=fmt,
            workers=workers,
            shard_images=shard_images,
            progress=progress,
            max_failure_share=max_failure_share,
            key_file=key_file,
        )
        return
    try:
        report = run_prepare(
            source,
            out,
            size=size,
            fmt=fmt,  # type: ignore[arg-type]
            workers=workers,
            settings=settings,
            with_source_paths=show_paths,
            progress=progress,
            key_file=key_file,
            max_failure_share=max_failure_share,
            follow_links=not no_follow_links,
            select=select,
            shard_images=shard_images,
        )
    except TooManyPrepareFailures as exc:
        too_many, report = exc, exc.report
    except (KeyFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(report))
    if select.summary():
        click.echo(select.summary())
    if report.total == 0:
        click.echo(
            f"warning: no source file to prepare under {source} (DICOM, NIfTI, NRRD, PNG, "
            "JPEG are read; see the line above for files left out)",
            err=True,
        )
        sys.exit(1)
    for name, reason in report.failures[:20]:
        click.echo(f"  failed: {name}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... {len(report.failures) - 20} more in {out}/failures.csv", err=True)
    _warn_burned_in_text(source, select.kept)
    if too_many is not None:
        click.echo(f"Error: {too_many}", err=True)
        sys.exit(1)
    if report.total and len(report.failures) == report.total:
        sys.exit(1)


def _shard_dataset(
    source: str, out: str, name: str, options: tuple[str, ...], **kwargs: object
) -> None:
    """``--dataset NAME``: build the adapter on SOURCE and write its samples as shards."""
    import yaml

    from medssl.data.prepare import TooManyPrepareFailures
    from medssl.data.shard_writer import shard_dataset
    from medssl.plugins import load_registry

    values: dict[str, object] = {"root": source}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.ClickException(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value)
    registry = load_registry()
    try:
        factory = registry.get("dataset", name).factory
        adapter = factory(**values)
        report = shard_dataset(adapter, out, **kwargs)  # type: ignore[arg-type]
    except TooManyPrepareFailures as exc:
        click.echo(str(exc.report))
        raise click.ClickException(str(exc)) from None
    except (KeyError, ValueError, TypeError, FileNotFoundError) as exc:
        raise click.ClickException(f"--dataset {name}: {exc}") from None
    click.echo(str(report))
    for key, reason in report.failures[:20]:
        click.echo(f"  failed: {key}: {reason}", err=True)


def _warn_burned_in_text(source: str, kept: list[str]) -> None:
    """Text burned into pixels is kept (medssl cannot remove it reliably): say so."""
    from pathlib import Path

    from medssl.data.source_filter import burned_in_text

    count = sum(burned_in_text(str(Path(source) / rel)) for rel in kept)
    if count:
        click.echo(
            f"warning: {count} DICOM files declare text burned into their pixels or are "
            "ultrasound (BurnedInAnnotation); the text, often names and dates, is kept in "
            "the PNGs: mask or crop it, or --exclude those files, before sharing the outputs",
            err=True,
        )
