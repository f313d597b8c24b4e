"""``demo_cxr``: the demo dataset committed in ``data/demo/`` (see its README.md).

Radiographs reconstructed from real chest CTs (deformed anatomy, findings, lung and heart
masks, cardiothoracic ratio) plus slices of CT and MR volumes with lesion masks, built by
``scripts/make_demo_dataset.py``. ``subset`` picks the radiographs (``drr``), the slices
(``slices``) or both (``all``, for pre-training); ``targets`` picks the labels.

The official ``train`` / ``val`` split is random by image, so images of one source scan
sit on both sides; the source scan (``source`` column) is the group key, and
``split: patient`` in a probe holds whole source scans out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medssl.data.base import CommonOptions
from medssl.data.manifest import CsvManifest
from medssl.official_splits import OfficialSplits

__all__ = ["DEMO_MASK_NAMES", "DemoCXR", "default_demo_root"]

DEMO_MASK_NAMES = ["background", "lung", "heart", "lesion"]
DRR_FINDINGS = ["effusion", "consolidation", "pneumothorax", "cardiomegaly"]
_DEFAULT_TARGETS = {"drr": DRR_FINDINGS, "slices": ["lesion"], "all": []}
_KIND = {"drr": "drr", "slices": "slice"}


def default_demo_root() -> Path:
    """``data/demo`` of the source checkout this package was imported from."""
    return Path(__file__).resolve().parents[2] / "data" / "demo"


class DemoCXR(CsvManifest):
    """The committed demo dataset (chest DRRs + CT/MR slices)."""

    class Options(CommonOptions):
        root: str | None = Field(None, description="default: the repository's data/demo")
        subset: Literal["drr", "slices", "all"] = "drr"
        split: Literal["train", "val"] | None = None
        targets: list[str] | None = Field(
            None, description="label columns; default: findings (drr), lesion (slices), none (all)"
        )
        target_kind: Literal["multilabel", "multiclass", "regression"] = "multilabel"
        masks: bool = False
        image_size: int = Field(128, ge=8)

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        return {"has_text": False, "has_mask": bool(options.get("masks", False))}

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits:
        return OfficialSplits(train="train", val="val", disjoint=False)

    def __init__(self, **options: Any) -> None:
        opts = self.Options(**options)
        root = Path(opts.root) if opts.root is not None else default_demo_root()
        if not (root / "manifest.csv").is_file():
            raise FileNotFoundError(
                f"demo_cxr: no manifest.csv in {str(root)!r}; build it with "
                "`python scripts/make_demo_dataset.py` or pass root="
            )
        targets = _DEFAULT_TARGETS[opts.subset] if opts.targets is None else opts.targets
        manifest_opts = CsvManifest.Options(
            root=str(root),
            manifest="manifest.csv",
            where={} if opts.subset == "all" else {"kind": _KIND[opts.subset]},
            label_columns=list(targets),
            label_kind=opts.target_kind,
            meta_columns={"view": "view"},
            mask_column="mask" if opts.masks else None,
            mask_names=DEMO_MASK_NAMES if opts.masks else None,
            split_column="split" if opts.split else None,
            split=opts.split,
            group_column="source",
            image_size=opts.image_size,
            channels=opts.channels,
            frame=opts.frame,
            slice_axis=opts.slice_axis,
            dicom_voi=opts.dicom_voi,
            volume_window=opts.volume_window,
            scale16=opts.scale16,
        )
        self._setup(manifest_opts)
        self._index(manifest_opts)
        self.group_kind = "source scan"
        self.options = opts
