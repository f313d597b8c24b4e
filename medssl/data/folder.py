"""``image_folder``: every readable file under a root, recursively, any mix of formats.

Like torchvision's ``ImageFolder`` when ``labels_from_folders`` is set (the first
folder level names the class); otherwise unlabelled, for self-supervised training.
Symbolic links to folders are followed (``follow_links``, loops cut: see
:func:`medssl.data.files.scan_folder`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import Field

from medssl.data.base import CommonOptions, FileDataset, Record, expand_frames, resolve_root
from medssl.data.files import scan_folder
from medssl.data.readers import is_supported

__all__ = ["ImageFolder"]

log = logging.getLogger(__name__)


class ImageFolder(FileDataset):
    """All DICOM / NIfTI / NRRD / PNG / JPEG files under ``root`` (recursive)."""

    class Options(CommonOptions):
        root: str
        labels_from_folders: bool = Field(
            False, description="class index from the first folder level under root"
        )
        follow_links: bool = Field(
            True, description="descend into symbolic links to folders (loops are cut)"
        )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        root = resolve_root(self.options.root, "image_folder")
        follow = self.options.follow_links
        scan = scan_folder(root, is_supported, follow_links=follow)
        paths = scan.files
        if scan.not_regular or scan.unreadable:
            log.warning(
                "image_folder: skipped %d entries that are not regular files (FIFO, device, "
                "socket) and %d folders that cannot be listed",
                scan.not_regular,
                scan.unreadable,
            )
        if not paths:
            links = "followed" if follow else "not followed (follow_links: false)"
            raise FileNotFoundError(
                f"image_folder: no readable image under {str(root)!r} "
                f"(symbolic links to folders {links})"
            )
        classes: list[str] = []
        if self.options.labels_from_folders:
            classes = sorted(
                {
                    os.path.relpath(p, root).split(os.sep)[0]
                    for p in paths
                    if os.sep in os.path.relpath(p, root)
                }
            )
            if not classes:
                raise ValueError(
                    f"image_folder: labels_from_folders is set but {str(root)!r} has no "
                    "class sub-folders"
                )
            self.label_names = classes
            self.task = "multiclass"
            self.target_name = "folder"
        index = {c: i for i, c in enumerate(classes)}
        records = []
        for p in paths:
            rel = os.path.relpath(p, root)
            label = None
            if classes:
                top = rel.split(os.sep)[0]
                if top not in index:
                    continue  # files directly under root have no class
                label = index[top]
            records.append(Record(p, label=label, display=rel))
        if self.options.frame == "all":
            records = expand_frames(records, self.read_settings)
        self.records = records
