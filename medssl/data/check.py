"""Check a recipe's ``data:`` block alone, without torch: ``medssl validate --data-only``.

A full ``medssl validate`` builds every component of the recipe, so it pays for importing
torch (about 600 MB resident with the CUDA wheels) before it reads a line of the label
table. Checking a 200,000-row table before a long run needs none of that: this module
loads only the dataset kind of the registry (:func:`medssl.plugins.load_registry` with
``kinds``), builds the adapter with sampled file checks (:mod:`medssl.data.large`) and
decodes a few images with the numpy readers (:mod:`medssl.data.readers`).
"""

from __future__ import annotations

from typing import Any

from medssl.config import RecipeError, build_component, validate_block
from medssl.data.large import sampled_file_checks
from medssl.data.readers import read_image
from medssl.data.robust import describe_error
from medssl.plugins import Registry

__all__ = ["check_data"]

#: images decoded at most, until one reads (as ``medssl validate`` does through the adapter)
DECODE_TRIES = 8


def _decode_first(dataset: Any) -> tuple[tuple[int, ...] | None, list[str], str | None]:
    """The first readable image's shape among the first records, and the failure reasons
    (classes, never paths), or a note saying why pixels were not decoded."""
    records = getattr(dataset, "records", None)
    settings = getattr(dataset, "read_settings", None)
    if records is None or settings is None:
        return None, [], "pixels not decoded: the adapter has no file records"
    failures: list[str] = []
    for index in range(min(DECODE_TRIES, len(records))):
        record = records[index]
        try:
            image = read_image(record.path, settings, frame=getattr(record, "frame", None))
        except Exception as exc:  # noqa: BLE001 - any reader error is reported by its class
            failures.append(describe_error(exc))
            continue
        return tuple(int(n) for n in image.shape), failures, None
    return None, failures, None


def check_data(config: dict[str, Any], registry: Registry, source: str) -> list[str]:
    """Raise :class:`RecipeError` on a bad ``data:`` block; return the notes to print."""
    if "data" not in config:
        raise RecipeError("required key is missing", source, "data")
    spec = validate_block(registry, "dataset", config["data"], "data", source)
    with sampled_file_checks():  # a large table's files are checked on a sample, said below
        dataset = build_component(registry, spec)
    n = len(dataset)
    if n == 0:
        raise RecipeError(f"dataset {spec.name!r} is empty", source, "data")
    notes = [f"dataset {spec.name!r}: {n:,} images"]
    if getattr(dataset, "check_note", None):
        notes.append(str(dataset.check_note))
    shape, failures, why_not = _decode_first(dataset)
    if why_not:
        notes.append(why_not)
    elif shape is None:
        reasons = ", ".join(sorted(set(failures)))
        raise RecipeError(
            f"none of the first {len(failures)} images could be read ({reasons})", source, "data"
        )
    else:
        skipped = f" after {len(failures)} unreadable" if failures else ""
        notes.append(f"first readable image{skipped}: {shape[1]}×{shape[2]}, {shape[0]} channel(s)")
    notes.append(
        "data only: the backbone, objectives, augmentation and evaluations were not checked "
        "(run `medssl validate` without --data-only for those)"
    )
    return notes
