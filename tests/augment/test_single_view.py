"""MAE and CLIP single-view policies."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from medssl.augment import CLIPView, MAEView
from medssl.testing.augmentation import AugmentationPolicyContractTests
from medssl.types import BlockMaskSpec, ViewRequest


class TestMAEView(AugmentationPolicyContractTests):
    def make_policy(self, **overrides: Any) -> MAEView:
        return MAEView(**{"crop_size": 16, **overrides})

    def make_request(self, patch_size: int = 4) -> ViewRequest:
        return ViewRequest(single_view=True, mae_mask_ratio=0.75, patch_size=patch_size)

    def expected_shapes(self, policy: Any, request: ViewRequest, batch: int) -> dict[str, tuple]:
        size = policy.options.crop_size
        grid = size // request.patch_size
        return {"single_view": (batch, policy.channels, size, size), "mae_masks": (batch, grid**2)}

    def crop_size_option(self) -> str:
        return "crop_size"


class TestCLIPView(AugmentationPolicyContractTests):
    def make_policy(self, **overrides: Any) -> CLIPView:
        return CLIPView(**{"crop_size": 16, **overrides})

    def make_request(self, patch_size: int = 4) -> ViewRequest:
        return ViewRequest(single_view=True, text=True, patch_size=patch_size)

    def run(self, policy, images, seed=0, request=None, **kwargs):  # type: ignore[no-untyped-def]
        request = request or self.make_request(self.patch_size)
        if request.text and "text" not in kwargs:
            kwargs["text"] = [f"report {i}" for i in range(images.shape[0])]
        return super().run(policy, images, seed, request, **kwargs)

    def expected_shapes(self, policy: Any, request: ViewRequest, batch: int) -> dict[str, tuple]:
        size = policy.options.crop_size
        return {"single_view": (batch, policy.channels, size, size)}

    def crop_size_option(self) -> str:
        return "crop_size"

    def test_text_passes_through(self) -> None:
        text = [f"finding {i}" for i in range(self.batch_size)]
        views = self.run(self.make_policy(), self.images(), text=text)
        assert views.text == text
        with pytest.raises(ValueError, match="3 texts for a batch of 4"):
            self.run(self.make_policy(), self.images(), text=text[:3])


def test_defaults() -> None:
    mae, clip = MAEView().options, CLIPView().options
    assert (mae.crop_size, mae.scale, mae.hflip_prob) == (224, (0.2, 1.0), 0.5)
    assert (clip.crop_size, clip.scale, clip.hflip_prob) == (224, (0.9, 1.0), 0.0)
    assert MAEView(crop_size=112).global_crop_size == 112


@pytest.mark.parametrize("policy", [MAEView(crop_size=16), CLIPView(crop_size=16)])
def test_multicrop_requests_are_refused(policy: Any) -> None:
    images = torch.zeros((2, 1, 20, 20), dtype=torch.uint8)
    for request in (
        ViewRequest(global_crops=True, patch_size=4),
        ViewRequest(single_view=True, block_masks=BlockMaskSpec(), patch_size=4),
    ):
        with pytest.raises(ValueError, match="one view per image"):
            policy(images, request)
