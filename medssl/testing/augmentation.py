"""A reusable contract test for augmentation policies (Kornia's ``BaseTester`` style).

Subclass :class:`AugmentationPolicyContractTests` in a test module, say how to build the
policy with tiny crops and what to request, and pytest runs every check::

    class TestMyPolicy(AugmentationPolicyContractTests):
        def make_policy(self, **overrides):
            return MyPolicy(**{"global_crop_size": 16, "local_crop_size": 8, **overrides})

        def make_request(self, patch_size=4):
            return ViewRequest(global_crops=True, local_crops=True, patch_size=patch_size)

Shapes are kept tiny so the whole contract runs in about a second on a CPU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from medssl.types import ViewRequest, Views

__all__ = ["AugmentationPolicyContract", "AugmentationPolicyContractTests", "view_tensors"]

VIEW_FIELDS = ("global_crops", "local_crops", "single_view")


def view_tensors(views: Views) -> dict[str, Tensor]:
    """Every tensor a :class:`Views` carries, by field name."""
    fields = (*VIEW_FIELDS, "block_masks", "mae_masks")
    return {name: getattr(views, name) for name in fields if getattr(views, name) is not None}


class AugmentationPolicyContractTests:
    """Checks every augmentation policy must pass; override the ``make_*`` hooks."""

    batch_size = 4
    height = 40
    width = 40
    patch_size = 4
    #: output channels the policy is built with by default
    channels = 3

    # -- hooks ----------------------------------------------------------------------------
    def make_policy(self, **overrides: Any) -> Any:
        raise NotImplementedError

    def make_request(self, patch_size: int = 4) -> ViewRequest:
        raise NotImplementedError

    def expected_shapes(self, policy: Any, request: ViewRequest, batch: int) -> dict[str, tuple]:
        """``{field: shape}`` of every tensor the views must hold."""
        raise NotImplementedError

    def crop_size_option(self) -> str:
        """An option holding a crop size (set to a non-multiple of the patch size)."""
        return "global_crop_size"

    # -- helpers --------------------------------------------------------------------------
    def images(
        self,
        channels: int = 1,
        dtype: torch.dtype = torch.uint8,
        batch: int | None = None,
        height: int | None = None,
        width: int | None = None,
        seed: int = 0,
    ) -> Tensor:
        """Smooth random images (a blurred noise field) in ``dtype``'s full range."""
        batch = batch or self.batch_size
        height, width = height or self.height, width or self.width
        g = torch.Generator().manual_seed(seed)
        coarse = torch.rand((batch, channels, max(2, height // 8), max(2, width // 8)), generator=g)
        x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
        if dtype == torch.uint8:
            return (x * 255).round().to(torch.uint8)
        if dtype == torch.uint16:
            return (x * 65535).round().to(torch.int32).to(torch.uint16)
        return x.to(dtype)

    def run(
        self,
        policy: Any,
        images: Tensor,
        seed: int | None = 0,
        request: ViewRequest | None = None,
        **kwargs: Any,
    ) -> Views:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return policy(images, request or self.make_request(self.patch_size), generator, **kwargs)

    def assert_views_equal(self, a: Views, b: Views) -> None:
        ta, tb = view_tensors(a), view_tensors(b)
        assert ta.keys() == tb.keys()
        for name in ta:
            torch.testing.assert_close(ta[name], tb[name], msg=lambda m, n=name: f"{n}: {m}")

    # -- the contract ---------------------------------------------------------------------
    def test_shapes_and_dtypes(self) -> None:
        policy = self.make_policy()
        request = self.make_request(self.patch_size)
        views = self.run(policy, self.images())
        assert isinstance(views, Views)
        assert views.batch_size == self.batch_size
        tensors = view_tensors(views)
        expected = self.expected_shapes(policy, request, self.batch_size)
        assert set(tensors) == set(expected), (
            f"views hold {sorted(tensors)}, want {sorted(expected)}"
        )
        for name, shape in expected.items():
            assert tuple(tensors[name].shape) == shape, f"{name}: {tuple(tensors[name].shape)}"
            want = torch.bool if name.endswith("masks") else torch.float32
            assert tensors[name].dtype == want, f"{name} is {tensors[name].dtype}"
        if views.global_crops is not None:
            assert views.global_crops.shape[0] == views.n_global * self.batch_size
        if views.local_crops is not None:
            assert views.local_crops.shape[0] == views.n_local * self.batch_size

    def test_values_are_normalised_images(self) -> None:
        policy = self.make_policy()
        views = self.run(policy, self.images())
        mean = torch.tensor(policy.mean).view(1, -1, 1, 1)
        std = torch.tensor(policy.std).view(1, -1, 1, 1)
        for name in VIEW_FIELDS:
            x = getattr(views, name)
            if x is None:
                continue
            assert torch.isfinite(x).all(), name
            pixels = x * std + mean
            assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4, f"{name} leaves [0, 1]"
            assert pixels.std() > 0.01, f"{name} is constant"

    def test_same_seed_same_views(self) -> None:
        policy = self.make_policy()
        images = self.images()
        self.assert_views_equal(self.run(policy, images, seed=3), self.run(policy, images, seed=3))

    def test_other_seed_other_views(self) -> None:
        policy = self.make_policy()
        images = self.images()
        a, b = self.run(policy, images, seed=1), self.run(policy, images, seed=2)
        for name in VIEW_FIELDS:
            if getattr(a, name) is not None:
                assert not torch.equal(getattr(a, name), getattr(b, name)), name

    def test_generator_is_optional(self) -> None:
        views = self.run(self.make_policy(), self.images(), seed=None)
        assert views.batch_size == self.batch_size

    @pytest.mark.parametrize("in_channels", [1, 3])
    @pytest.mark.parametrize("out_channels", [1, 3])
    def test_channels(self, in_channels: int, out_channels: int) -> None:
        policy = self.make_policy(channels=out_channels, mean=(0.5,), std=(0.25,))
        views = self.run(policy, self.images(channels=in_channels))
        for name in VIEW_FIELDS:
            x = getattr(views, name)
            if x is not None:
                assert x.shape[1] == out_channels, f"{name}: {tuple(x.shape)}"

    def test_grey_input_gives_grey_views(self) -> None:
        """A 1-channel source gives the same views as that source repeated to RGB."""
        policy = self.make_policy(mean=(0.5,), std=(0.25,))
        grey = self.images(channels=1)
        a = self.run(policy, grey)
        b = self.run(policy, grey.expand(-1, 3, -1, -1).contiguous())
        for name in VIEW_FIELDS:
            if getattr(a, name) is not None:
                torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=2e-3, rtol=0)

    @pytest.mark.parametrize("dtype", [torch.uint16, torch.float32])
    def test_source_dtypes_agree(self, dtype: torch.dtype) -> None:
        """uint8, uint16 and float sources of one picture give the same views."""
        policy = self.make_policy()
        as_uint8 = self.images(dtype=torch.uint8)
        if dtype == torch.uint16:
            converted = (as_uint8.to(torch.int32) * 257).to(torch.uint16)  # 255 -> 65535
        else:
            converted = as_uint8.to(torch.float32) / 255
        a, b = self.run(policy, as_uint8), self.run(policy, converted)
        for name in VIEW_FIELDS:
            if getattr(a, name) is not None:
                torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-4, rtol=1e-4)

    def test_mixed_orientation_batch(self) -> None:
        """Portrait and landscape content stacked in one non-square batch: each image's
        views depend on that image only."""
        policy = self.make_policy()
        height, width = self.height, self.width + self.width // 2
        images = self.images(height=height, width=width)
        # What a loader makes of a portrait picture: resized to the batch's landscape size.
        portrait = self.images(batch=1, height=width, width=height, seed=1).float()
        resized = torch.nn.functional.interpolate(portrait, size=(height, width), mode="bilinear")
        images[1] = resized[0].round().to(images.dtype)
        views = self.run(policy, images)
        expected = self.expected_shapes(policy, self.make_request(self.patch_size), len(images))
        for name, shape in expected.items():
            assert tuple(view_tensors(views)[name].shape) == shape
        changed = images.clone()
        changed[0] = 255 - changed[0]
        other = self.run(policy, changed)
        batch = len(images)
        for name in VIEW_FIELDS:
            x, y = getattr(views, name), getattr(other, name)
            if x is None:
                continue
            n = x.shape[0] // batch
            x, y = x.view(n, batch, *x.shape[1:]), y.view(n, batch, *y.shape[1:])
            torch.testing.assert_close(x[:, 1:], y[:, 1:])
            assert not torch.allclose(x[:, 0], y[:, 0]), name

    def test_wrong_ndim_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
            self.run(self.make_policy(), self.images()[0])

    def test_wrong_channel_count_is_a_clear_error(self) -> None:
        images = self.images(channels=1).expand(-1, 2, -1, -1)
        with pytest.raises(ValueError, match="1 or 3 channels"):
            self.run(self.make_policy(), images)

    def test_wrong_dtype_is_a_clear_error(self) -> None:
        with pytest.raises(ValueError, match="uint8, uint16 or float32"):
            self.run(self.make_policy(), self.images().to(torch.int64))

    def test_crop_size_not_a_multiple_of_the_patch_is_a_clear_error(self) -> None:
        option = self.crop_size_option()
        policy = self.make_policy(**{option: 3 * self.patch_size + 1})
        with pytest.raises(ValueError, match=f"{option}=.*multiple of the patch size"):
            self.run(policy, self.images())

    def test_mae_masks_on_request(self) -> None:
        request = self.make_request(self.patch_size)
        request = ViewRequest(**{**vars(request), "mae_mask_ratio": 0.75})
        views = self.run(self.make_policy(), self.images(), request=request)
        assert views.mae_masks is not None and views.mae_masks.dtype == torch.bool
        n_patches = views.mae_masks.shape[1]
        assert (views.mae_masks.sum(dim=1) == round(0.75 * n_patches)).all()
        assert math.isqrt(n_patches) ** 2 == n_patches

    def test_text_passes_through(self) -> None:
        request = self.make_request(self.patch_size)
        request = ViewRequest(**{**vars(request), "text": True})
        text = [f"report {i}" for i in range(self.batch_size)]
        views = self.run(self.make_policy(), self.images(), request=request, text=text)
        assert views.text == text
        with pytest.raises(ValueError, match="text"):
            self.run(self.make_policy(), self.images(), request=request)


#: The earlier name, kept for plugins that subclass it (one naming scheme: ``*ContractTests``).
AugmentationPolicyContract = AugmentationPolicyContractTests
