"""What ``medssl prepare`` writes for each image, whatever the output format: its keyed
name, its pixels as stored (decoded, resized, quantised) and the report of a run.

Shared by the PNG output (:mod:`medssl.data.prepare`) and the streaming shards
(:mod:`medssl.data.shard_writer`), so that both store the very same pixels under the
very same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from medssl.data.keys import data_key
from medssl.data.readers import ReadSettings, read_image

__all__ = [
    "TMP_MARK",
    "Format",
    "PrepareReport",
    "TooManyPrepareFailures",
    "decode_for_output",
    "output_key",
]

Format = Literal["png8", "png16", "shards", "shards8"]
TMP_MARK = ".tmp-"


class TooManyPrepareFailures(RuntimeError):
    """More than ``max_failure_share`` of the source files failed (outputs are kept)."""

    def __init__(self, message: str, report: PrepareReport) -> None:
        super().__init__(message)
        self.report = report


def output_key(relative_path: str, secret: bytes) -> str:
    """The output name of a source file: HMAC-SHA256 of its path relative to SOURCE."""
    return data_key(secret, relative_path)


@dataclass
class PrepareReport:
    total: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    not_regular: int = 0  # FIFOs, devices, sockets: never opened
    unreadable_folders: int = 0
    shards: str = ""  # what --format shards wrote

    @property
    def failure_share(self) -> float:
        return len(self.failures) / self.total if self.total else 0.0

    def __str__(self) -> str:
        text = (
            f"{self.total} source files: {self.written} written, {self.skipped} already done, "
            f"{len(self.failures)} failed"
        )
        if self.not_regular:
            text += f"; {self.not_regular} non-regular file(s) (FIFO, device, socket) skipped"
        if self.unreadable_folders:
            text += f"; {self.unreadable_folders} unreadable folder(s) skipped"
        if self.shards:
            text += f"\n{self.shards}"
        return text


def decode_for_output(
    src: str,
    size: int | None,
    fmt: Format,
    settings: ReadSettings,
    frame: int | None = None,
    shrink_only: bool = False,
) -> np.ndarray:
    """Read, resize (shorter side ``size``; ``None`` keeps it; ``shrink_only`` never
    enlarges) and quantise one image as ``prepare`` stores it: uint16 for ``png16`` grey,
    else uint8. Raises on a bad file."""
    import torch

    from medssl.data.transforms import resize_shorter_side

    image = read_image(src, settings, frame=frame)
    if size is not None and not (shrink_only and min(image.shape[-2:]) <= size):
        image = resize_shorter_side(torch.from_numpy(image), size).numpy()
    if fmt == "png16" and image.shape[0] == 1:
        return np.round(image * 65535.0).astype(np.uint16)
    return np.round(image * 255.0).astype(np.uint8)
