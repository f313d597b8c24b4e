"""Which files under a source folder ``medssl prepare`` turns into training images.

* ``--include`` / ``--exclude``: glob patterns on the path relative to SOURCE (POSIX
  separators; ``*`` also crosses folders, so ``*.dcm`` matches at any depth).
* Label and mask volumes are skipped unless asked for (``--keep-labels``): segmentation
  data sets keep them beside the images (``case_0001_label.nrrd``, ``labelsTr/``,
  ``*_mask.png``, ``segmentation-0.nii``, DICOM ``SEG`` folders), and a mask trained on as
  an image teaches the encoder nothing about anatomy. A path counts as a label when one
  of its parts contains ``mask`` or ``seg``, or has a word ``label(s)``, ``gt``,
  ``annotation(s)`` or ``labelsTr``/``labelsTs``.
* Burned-in text: ultrasound (and some fluoroscopy and screen-capture) DICOMs carry text
  in their pixels — often names and dates. medssl cannot remove it reliably, so it does
  not try: :func:`burned_in_text` finds the DICOMs that declare it
  (``BurnedInAnnotation`` = YES) or are ultrasound without saying otherwise, and
  ``prepare`` warns with their count; mask or crop those frames (or ``--exclude`` them)
  before the outputs leave the hospital.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import PurePath

__all__ = ["SourceFilter", "burned_in_text", "is_label_path"]

_LABEL_SUBSTRINGS = ("mask", "seg")
_LABEL_WORDS = frozenset(
    {"label", "labels", "labelstr", "labelsts", "gt", "annotation", "annotations"}
)
_WORD = re.compile(r"[a-z0-9]+")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", "")


def is_label_path(relative: str) -> bool:
    """Whether a source path looks like a label or mask volume (see the module doc)."""
    for part in PurePath(relative).parts:
        lower = part.lower()
        if any(s in lower for s in _LABEL_SUBSTRINGS):
            return True
        if _LABEL_WORDS.intersection(_WORD.findall(lower)):
            return True
    return False


@dataclass
class SourceFilter:
    """Selects the source files to prepare and counts what it leaves out."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    keep_labels: bool = False
    excluded: int = 0
    labels: int = 0
    kept: list[str] = field(default_factory=list)

    def __call__(self, sources: Iterable[str]) -> list[str]:
        kept = []
        for rel in sources:
            posix = PurePath(rel).as_posix()
            if self.include and not any(fnmatchcase(posix, p) for p in self.include):
                self.excluded += 1
            elif any(fnmatchcase(posix, p) for p in self.exclude):
                self.excluded += 1
            elif not self.keep_labels and is_label_path(posix):
                self.labels += 1
            else:
                kept.append(rel)
        self.kept = kept
        return kept

    def summary(self) -> str | None:
        """One line on what was left out, or None."""
        parts = []
        if self.labels:
            parts.append(f"{self.labels} label/mask files skipped (--keep-labels keeps them)")
        if self.excluded:
            parts.append(f"{self.excluded} files left out by --include/--exclude")
        return "; ".join(parts) or None


def burned_in_text(path: str) -> bool:
    """Whether a DICOM file declares text burned into its pixels, or is ultrasound that
    does not declare the opposite. Non-DICOM and unreadable files: False."""
    if PurePath(path).suffix.lower() not in _DICOM_SUFFIXES:
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["BurnedInAnnotation", "Modality"]
        )
    except Exception:  # not DICOM, or unreadable: prepare reports read failures itself
        return False
    burned = str(getattr(ds, "BurnedInAnnotation", "") or "").strip().upper()
    if burned:
        return burned == "YES"
    return str(getattr(ds, "Modality", "") or "").strip().upper() == "US"
