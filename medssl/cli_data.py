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
    type=click.Choice(["png8", "png16"]),
    help="8- or 16-bit grayscale PNG (colour images are converted to grey).",
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
    "--with-source-paths",
    is_flag=True,
    help="Also write each source path into the manifest (may contain identifiers).",
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
    with_source_paths: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    keep_labels: bool,
) -> None:
    """Decode every image under SOURCE once and write compact PNGs + manifest.csv to OUT.

    Applies the DICOM pixel pipeline (modality LUT, VOI LUT / window, MONOCHROME1
    inversion), resizes so the shorter side is --size, and names outputs by a hash of the
    source path (no identifiers). Safe to interrupt and rerun: finished files are kept.
    Label and mask files are skipped (--keep-labels); an empty selection exits 1.
    """
    from medssl.data.prepare import prepare as run_prepare
    from medssl.data.readers import ReadSettings
    from medssl.data.source_filter import SourceFilter

    settings = ReadSettings(channels=1, frame=frame, dicom_voi=not no_voi)  # type: ignore[arg-type]
    last = [-1]

    def progress(done: int, total: int) -> None:
        step = max(1, total // 20)
        if done == total or done - last[0] >= step:
            last[0] = done
            click.echo(f"  {done}/{total}", err=True)

    select = SourceFilter(include, exclude, keep_labels)
    report = run_prepare(
        source,
        out,
        size=size,
        fmt=fmt,
        workers=workers,  # type: ignore[arg-type]
        settings=settings,
        with_source_paths=with_source_paths,
        progress=progress,
        select=select,
    )
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
    for rel, reason in report.failures[:20]:
        click.echo(f"  failed: {rel}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... {len(report.failures) - 20} more in {out}/failures.csv", err=True)
    _warn_burned_in_text(source, select.kept)
    if report.total and len(report.failures) == report.total:
        sys.exit(1)


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
