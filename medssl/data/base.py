"""The base of every file-backed dataset adapter.

Subclasses build a list of :class:`Record` (file, frame, label, whitelisted metadata,
text, mask file) in ``__init__``; this class loads, resizes (shorter side to
``image_size``, centre crop) and turns any failure into a
:class:`~medssl.data.robust.LoadFailure` so one bad file never stops a run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medssl.data.files import open_regular
from medssl.data.keys import data_key, dataset_secret, printable_path, show_paths
from medssl.data.readers import ReadSettings, open_image, read_image
from medssl.data.robust import LoadFailure, describe_error
from medssl.official_splits import OfficialSplits

if TYPE_CHECKING:
    import torch

__all__ = [
    "META_KEYS",
    "CommonOptions",
    "FileDataset",
    "Record",
    "normalise_age",
    "normalise_sex",
    "normalise_view",
]

#: The only metadata a sample may carry (no names, identifiers or dates).
META_KEYS = ("age", "sex", "view")


class CommonOptions(BaseModel):
    """Options every file-backed adapter shares."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(224, ge=8, description="shorter side resized to this, then centre crop")
    channels: Literal[1, 3] = 1
    frame: Literal["middle", "first", "all"] | int = Field(
        "middle", description="multi-frame DICOM frame / volume slice; 'all' makes one sample each"
    )
    slice_axis: Literal[0, 1, 2] = 2
    dicom_voi: bool = Field(True, description="apply the file's VOI LUT / window, else min-max")
    volume_window: tuple[float, float] | None = None
    max_file_bytes: int | None = Field(
        2**31, ge=1, description="larger files (on disk, or decoded volumes) are refused"
    )
    max_pixels: int | None = Field(
        40_000_000, ge=1, description="larger images are refused from their header"
    )
    max_aspect: float | None = Field(
        20.0, ge=1, description="images longer than this times their width are refused"
    )
    non_finite: Literal["fail", "fill"] = Field(
        "fail", description="NaN/Inf pixels fail the file, or (volumes) are filled"
    )
    scale16: Literal["auto", "full", "minmax"] = Field(
        "auto",
        description="16-bit images: 'auto' uses the PNG sBIT chunk, else the smallest bit "
        "depth holding the image's values; 'full' divides by 65535; 'minmax' per image",
    )


@dataclass
class Record:
    path: str
    frame: int | None = None
    label: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    mask_path: str | None = None
    display: str = ""  # path shown in failure reports (relative to the root)
    group: str | None = None  # patient / study key: splits probes, never reaches a sample


def normalise_age(value: Any) -> float | None:
    """``58``, ``"58"``, ``"058Y"`` -> 58.0; months/weeks/days converted; blanks -> None."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return None if isinstance(value, float) and math.isnan(value) else float(value)
    text = str(value).strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)", text)
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2) or "Y"
    return number / {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}[unit]


def normalise_sex(value: Any) -> str | None:
    text = str(value or "").strip().upper()
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    return None


def normalise_view(value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


class FileDataset:
    """Loads records; subclasses fill ``self.records`` and the label attributes.

    A map-style dataset for ``torch.utils.data.DataLoader`` (``len`` and ``[i]``) that
    imports torch only when a sample is loaded, so parsing and checking a large table
    (``medssl validate --data-only``) stays free of torch.
    """

    Options: ClassVar[type[BaseModel]] = CommonOptions
    has_text: ClassVar[bool] = False
    has_mask: ClassVar[bool] = False
    #: ``"multilabel"`` (float multi-hot), ``"multiclass"`` (long index),
    #: ``"regression"`` (float vector) or ``None``.
    task: str | None = None
    label_names: list[str] | None = None
    mask_names: list[str] | None = None
    #: the label column of a multi-class target (reported by probes under this name)
    target_name: str | None = None
    #: what :meth:`groups` returns keys of (``"patient"``, ``"study"``...), or ``None``
    group_kind: str | None = None
    #: what was checked on a sample only (``medssl validate`` prints it), or ``None``
    check_note: str | None = None

    def __init__(self, **options: Any) -> None:
        self._setup(self.Options(**options))

    def _setup(self, opts: Any) -> None:
        self.options = opts
        self.image_size: int = opts.image_size
        self.channels: int = opts.channels
        frame = opts.frame if opts.frame in ("middle", "first") else "middle"
        self.read_settings = ReadSettings(
            channels=opts.channels,
            frame=frame,
            slice_axis=opts.slice_axis,
            dicom_voi=opts.dicom_voi,
            volume_window=tuple(opts.volume_window) if opts.volume_window else None,
            max_file_bytes=opts.max_file_bytes,
            max_pixels=opts.max_pixels,
            max_aspect=opts.max_aspect,
            non_finite=opts.non_finite,
            scale16=opts.scale16,
        )
        self.records: Sequence[Record] = []

    @classmethod
    def capabilities(cls, **options: Any) -> dict[str, bool]:
        """``has_text`` / ``has_mask`` from the options alone, without reading any file."""
        return {"has_text": bool(cls.has_text), "has_mask": bool(cls.has_mask)}

    @classmethod
    def official_splits(cls, **options: Any) -> OfficialSplits | None:
        """The dataset's own train / held-out split (see :class:`medssl.types.OfficialSplits`)."""
        return None

    def groups(self) -> list[str | None] | None:
        """The group key (patient, study) of every sample, or ``None`` without one."""
        if self.group_kind is None:
            return None
        columns = getattr(self.records, "groups", None)  # ColumnRecords keeps them as a list
        return list(columns) if columns is not None else [r.group for r in self.records]

    @property
    def num_classes(self) -> int | None:
        """Outputs a probe needs: number of labels (multi-label/regression) or classes."""
        return len(self.label_names) if self.label_names else None

    @property
    def num_mask_classes(self) -> int | None:
        return len(self.mask_names) if self.mask_names else None

    def __len__(self) -> int:
        return len(self.records)

    def _frame_for(self, record: Record) -> int | None:
        if record.frame is not None:
            return record.frame
        frame = self.options.frame
        return frame if isinstance(frame, int) else None

    def _label_tensor(self, label: Any) -> torch.Tensor:
        import torch

        if self.task == "multiclass":
            return torch.tensor(int(label), dtype=torch.long)
        return torch.as_tensor(np.asarray(label, dtype=np.float32))

    def load(self, index: int) -> dict[str, Any]:
        """The sample at ``index``; raises on a bad file (``__getitem__`` does not)."""
        record = self.records[index]
        image = read_image(record.path, self.read_settings, frame=self._frame_for(record))
        mask = None
        if record.mask_path is not None:
            mask = read_mask(record.mask_path, self._frame_for(record), self.read_settings)
        from medssl.data.transforms import resize_and_crop

        image_t, mask_t = resize_and_crop(image, self.image_size, mask)
        sample: dict[str, Any] = {
            "image": image_t,
            "meta": {key: record.meta.get(key) for key in META_KEYS},
        }
        if record.label is not None:
            sample["label"] = self._label_tensor(record.label)
        if mask_t is not None:
            sample["mask"] = mask_t
        if self.has_text:
            sample["text"] = record.text or ""
        return sample

    def __getitem__(self, index: int) -> dict[str, Any] | LoadFailure:
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} samples")
        try:
            return self.load(index)
        except MemoryError:
            raise
        except Exception as exc:  # a bad file is counted, never fatal
            return LoadFailure(self.failure_key(self.records[index]), describe_error(exc))

    def failure_key(self, record: Record) -> str:
        """How a failure names its file: the keyed hash of its path under the root
        (the key ``medssl prepare`` gives its output), or the path with ``--show-paths``.
        """
        if show_paths():
            return printable_path(record.display or record.path)
        root = getattr(self.options, "root", None)
        root = os.path.dirname(record.path) if root is None else os.path.expanduser(root)
        rel = os.path.relpath(record.path, root)
        key = data_key(dataset_secret(root, ephemeral_ok=True), rel)
        return key if record.frame is None else f"{key}[{record.frame}]"


def read_mask(path: str, frame: int | None, settings: ReadSettings) -> np.ndarray:
    """A class-index mask ``[H, W]`` (int64) from a PNG or a volume slice."""
    if path.lower().endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")):
        from medssl.data.volumes import load_volume

        vol = load_volume(path, settings.max_file_bytes)
        n = vol.shape[settings.slice_axis]
        index = n // 2 if frame is None else frame
        return np.take(vol, index, axis=settings.slice_axis).T.astype(np.int64)
    with open_regular(path, settings.max_file_bytes) as fh, open_image(fh, settings) as img:
        img.load()
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int64)


def resolve_root(root: str | Path | None, what: str) -> Path:
    if root is None:
        raise ValueError(f"{what}: option 'root' is required")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: root {str(path)!r} is not a directory")
    return path


def expand_frames(records: list[Record], settings: ReadSettings) -> list[Record]:
    """One record per frame / slice (``frame: all``); headers only are read.

    A file whose header cannot be read stays as one record: loading it later fails and
    is counted like any other bad file.
    """
    from medssl.data.readers import count_frames

    out: list[Record] = []
    for record in records:
        try:
            n = count_frames(record.path, settings)
        except Exception:
            out.append(record)
            continue
        for i in range(n):
            out.append(
                Record(
                    record.path,
                    i,
                    record.label,
                    record.meta,
                    record.text,
                    record.mask_path,
                    f"{record.display}[{i}]",
                    record.group,
                )
            )
    return out
