"""medssl-ct: CT and MR volumes as a medssl modality (a third-party plugin).

Registers, through medssl's entry-point group ``medssl``:

* dataset ``ct_volume`` — NIfTI / NRRD / DICOM-series volumes as slices, 2.5D slabs or
  3D patches, in Hounsfield units (:mod:`medssl_ct.volume`);
* augmentation ``ct_window`` — random CT windows around presets with multi-crop, on
  slices or 3D patches (:mod:`medssl_ct.window`);
* backbones ``vit3d_patch16``, ``vit3d_tiny_patch16``, ``vit3d_small_patch16`` — a ViT on
  3D patches (:mod:`medssl_ct.vit3d`);
* backbone ``monai_vit`` — MONAI's 3D ``ViT`` (UNETR's encoder) with medssl's backbone
  interface, and exporter ``monai_unetr`` — encoder weights UNETR loads
  (:mod:`medssl_ct.monai_vit`);
* objective ``mae3d`` — the masked autoencoder on 3D patches (:mod:`medssl_ct.mae3d`).

Imports happen inside the hooks so that loading the plugin costs nothing until used.
"""

from __future__ import annotations

from medssl import hookimpl
from medssl.hookspecs import Register

__version__ = "0.1.0"


@hookimpl
def medssl_register_datasets(register: Register) -> None:
    from medssl_ct.volume import CTVolume

    register("ct_volume", CTVolume)


@hookimpl
def medssl_register_augmentations(register: Register) -> None:
    from medssl_ct.window import CTWindow

    register("ct_window", CTWindow)


@hookimpl
def medssl_register_backbones(register: Register) -> None:
    from medssl_ct.monai_vit import MonaiViT3D
    from medssl_ct.vit3d import BACKBONES

    for name, factory in BACKBONES.items():
        register(name, factory)
    register("monai_vit", MonaiViT3D)


@hookimpl
def medssl_register_exporters(register: Register) -> None:
    from medssl_ct.monai_vit import UNETRExporter

    register("monai_unetr", UNETRExporter)


@hookimpl
def medssl_register_objectives(register: Register) -> None:
    from medssl_ct.mae3d import MAE3D

    register("mae3d", MAE3D)
