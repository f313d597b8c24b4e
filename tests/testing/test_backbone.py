"""The backbone contract class: built-in ViTs pass it, broken encoders fail it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from medssl.builtins.backbones import BACKBONES, VisionTransformer
from medssl.testing.backbone import BackboneContractTests, n_patches
from medssl.types import BackboneOutput

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 4, "img_size": 16}


class TestVitPatch14Tiny(BackboneContractTests):
    factory = BACKBONES["vit_patch14"]
    options = TINY
    input_shape = (2, 1, 16, 16)
    other_input_shape = (3, 1, 8, 12)


class TestVitSmallPresetOverridden(BackboneContractTests):
    """A named preset with its sizes overridden, as a recipe would."""

    factory = BACKBONES["vit_small_patch14"]
    options = {**TINY, "in_chans": 3}
    input_shape = (2, 3, 16, 16)


class MaskIgnoringViT(VisionTransformer):
    """Broken on purpose: drops the iBOT masks."""

    def forward(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        return super().forward(x, None)


class SilentViT(VisionTransformer):
    """Broken on purpose: no input check, so a wrong channel count is not reported."""

    def _check_input(self, x: Tensor) -> None:
        return None


class _Broken(BackboneContractTests):
    options = TINY
    __test__ = False  # collected only through the tests below


def test_n_patches_2d_and_3d():
    assert n_patches((2, 1, 16, 12), 4) == 12
    assert n_patches((2, 1, 8, 16, 16), 8) == 4


def test_contract_catches_ignored_masks():
    suite = type("T", (_Broken,), {"factory": MaskIgnoringViT})()
    with pytest.raises(AssertionError):
        suite.test_masks_hide_content()


def test_contract_catches_missing_input_checks():
    suite = type("T", (_Broken,), {"factory": SilentViT})()
    with pytest.raises((pytest.fail.Exception, RuntimeError, AssertionError)):
        suite.test_bad_input()


def test_contract_catches_missing_options_model():
    def factory(**options):
        return VisionTransformer(**options)

    suite = type("T", (_Broken,), {"factory": staticmethod(factory)})()
    with pytest.raises(AssertionError, match="Options"):
        suite.test_options_model()


def test_contract_catches_batch_leakage():
    class BatchNormViT(VisionTransformer):
        """Broken on purpose: tokens normalised over the batch."""

        def forward(self, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
            out = super().forward(x, masks)
            patch = out.patch - out.patch.mean(dim=0, keepdim=True)
            return BackboneOutput(cls=out.cls, patch=patch)

    suite = type("T", (_Broken,), {"factory": BatchNormViT})()
    with pytest.raises(AssertionError):
        suite.test_samples_are_independent()


def test_gradients_check_reports_dead_parameters():
    class DeadParameter(VisionTransformer):
        def __init__(self, **options):
            super().__init__(**options)
            self.unused = torch.nn.Parameter(torch.zeros(3))

    suite = type("T", (_Broken,), {"factory": DeadParameter})()
    with pytest.raises(AssertionError, match="unused"):
        suite.test_gradients()
