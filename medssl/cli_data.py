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
    "--no-follow-links",
    is_flag=True,
    help="Do not descend into symbolic links to folders (followed by default, loops cut).",
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
    no_follow_links: bool,
) -> None:
    """Decode every image under SOURCE once and write compact PNGs + manifest.csv to OUT.

    Applies the DICOM pixel pipeline (modality LUT, VOI LUT / window, MONOCHROME1
    inversion), resizes so the shorter side is --size, and names outputs by a hash of the
    source path (no identifiers). Safe to interrupt and rerun: finished files are kept.
    """
    from medssl.data.prepare import prepare as run_prepare
    from medssl.data.readers import ReadSettings

    settings = ReadSettings(channels=1, frame=frame, dicom_voi=not no_voi)  # type: ignore[arg-type]
    last = [-1]

    def progress(done: int, total: int) -> None:
        step = max(1, total // 20)
        if done == total or done - last[0] >= step:
            last[0] = done
            click.echo(f"  {done}/{total}", err=True)

    report = run_prepare(
        source,
        out,
        size=size,
        fmt=fmt,
        workers=workers,  # type: ignore[arg-type]
        settings=settings,
        with_source_paths=with_source_paths,
        progress=progress,
        follow_links=not no_follow_links,
    )
    click.echo(str(report))
    for rel, reason in report.failures[:20]:
        click.echo(f"  failed: {rel}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... {len(report.failures) - 20} more in {out}/failures.csv", err=True)
    if report.total and len(report.failures) == report.total:
        sys.exit(1)
