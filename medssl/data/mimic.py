"""``mimic_cxr_jpg``: MIMIC-CXR-JPG v2.0.0 (Johnson et al., 2019) in its published layout.

Tables (``.csv`` or ``.csv.gz`` under ``root``): ``mimic-cxr-2.0.0-split.csv``
(``dicom_id, study_id, subject_id, split`` with train/validate/test),
``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id, ..., ViewPosition, ...``) and
``mimic-cxr-2.0.0-chexpert.csv`` (``subject_id, study_id`` + 14 CheXpert labels, same
1/0/-1/blank convention). Images: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``.
Reports (MIMIC-CXR ``files/p10/p10000032/s50414267.txt``) are read when ``reports_root``
is given. Subject and study IDs only locate files; they never reach a sample. MIMIC-CXR-JPG
carries no age or sex (those live in MIMIC-IV), so ``meta`` has the view only. The
official split is ``train`` / ``validate`` (``test`` is left for final reporting), disjoint
by subject; the subject groups samples for probe splits and never reaches a sample.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from medssl.data.base import CommonOptions, FileDataset, Record, normalise_view, resolve_root
from medssl.data.chexpert import CHEXPERT_OBSERVATIONS, UncertainPolicy, chexpert_value
from medssl.data.tables import find_table, read_table, require_columns
from medssl.types import OfficialSplits

__all__ = ["MimicCxrJpg", "report_text"]

log = logging.getLogger(__name__)

_SECTION = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:", re.IGNORECASE | re.MULTILINE)
_ANY_SECTION = re.compile(r"^\s*[A-Z][A-Z /&]+:", re.MULTILINE)


def report_text(raw: str, sections_only: bool = True) -> str:
    """The FINDINGS and IMPRESSION sections of a report (all of it when it has neither)."""
    if sections_only:
        parts = []
        for match in _SECTION.finditer(raw):
            start = match.end()
            nxt = _ANY_SECTION.search(raw, start)
            parts.append(raw[start : nxt.start() if nxt else len(raw)])
        if parts:
            raw = "\n".join(parts)
    return " ".join(raw.split())


class MimicCxrJpg(FileDataset):
    """MIMIC-CXR-JPG: 14 CheXpert labels, the view, and the report when present."""

    task = "multilabel"
    group_kind = "patient"

    class Options(CommonOptions):
        root: str
        split: Literal["train", "validate", "test"] | None = "train"
        uncertain: UncertainPolicy = "zeros"
        views: list[str] | None = Field(None, description="keep these ViewPosition values only")
        reports_root: str | None = Field(
            None, description="folder holding files/pXX/pSUBJECT/sSTUDY.txt; text when set"
        )
        report_sections_only: bool = True
        skip_missing: bool = True

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {"has_text": options.get("reports_root") is not None, "has_mask": False}

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        return OfficialSplits(train="train", val="validate")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.options
        root = resolve_root(opts.root, "mimic_cxr_jpg")
        self.has_text = opts.reports_root is not None  # type: ignore[misc]
        self.label_names = list(CHEXPERT_OBSERVATIONS)
        split_t = find_table(root, "mimic-cxr-2.0.0-split.csv")
        meta_t = find_table(root, "mimic-cxr-2.0.0-metadata.csv")
        label_t = find_table(root, "mimic-cxr-2.0.0-chexpert.csv")
        h, split_rows = read_table(split_t)
        require_columns(
            h, ["dicom_id", "study_id", "subject_id", "split"], f"mimic table {split_t}"
        )
        h, meta_rows = read_table(meta_t)
        require_columns(h, ["dicom_id", "ViewPosition"], f"mimic table {meta_t}")
        h, label_rows = read_table(label_t)
        require_columns(
            h, ["subject_id", "study_id", *CHEXPERT_OBSERVATIONS], f"mimic table {label_t}"
        )
        views = {r["dicom_id"]: r["ViewPosition"] for r in meta_rows}
        labels: dict[tuple[str, str], np.ndarray] = {}
        for line, row in enumerate(label_rows, start=2):
            try:
                labels[(row["subject_id"].strip(), row["study_id"].strip())] = np.array(
                    [chexpert_value(row[c], opts.uncertain) for c in CHEXPERT_OBSERVATIONS],
                    dtype=np.float32,
                )
            except ValueError as exc:
                raise ValueError(f"mimic table {label_t} line {line}: {exc}") from None
        reports_root = None
        if opts.reports_root is not None:
            reports_root = Path(opts.reports_root)
            if not reports_root.is_absolute():
                reports_root = root / reports_root
        blank = np.array(
            [chexpert_value("", opts.uncertain)] * len(CHEXPERT_OBSERVATIONS), dtype=np.float32
        )
        records, missing, no_report = [], 0, 0
        for row in split_rows:
            if opts.split is not None and row["split"].strip() != opts.split:
                continue
            dicom_id = row["dicom_id"].strip()
            subject, study = row["subject_id"].strip(), row["study_id"].strip()
            if not (dicom_id.replace("-", "").isalnum() and subject.isdigit() and study.isdigit()):
                raise ValueError(f"mimic table {split_t}: malformed identifiers in a row")
            view = normalise_view(views.get(dicom_id))
            if opts.views is not None and view not in opts.views:
                continue
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg"
            path = str(root / rel)
            if opts.skip_missing and not os.path.exists(path):
                missing += 1
                continue
            text = None
            if reports_root is not None:
                report = reports_root / f"files/p{subject[:2]}/p{subject}/s{study}.txt"
                if not report.is_file():
                    no_report += 1
                    continue
                text = report_text(report.read_text(errors="replace"), opts.report_sections_only)
            label = labels.get((subject, study), blank)
            records.append(Record(path, None, label, {"view": view}, text, None, rel, subject))
        if missing:
            log.warning("mimic_cxr_jpg: %d image(s) not found (skipped)", missing)
        if no_report:
            log.warning("mimic_cxr_jpg: %d image(s) without a report file (skipped)", no_report)
        self.records = records
