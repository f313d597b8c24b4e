"""A reusable contract test class for backbones (kornia style).

A plugin that adds an encoder subclasses :class:`BackboneContractTests` in its tests::

    from medssl.testing.backbone import BackboneContractTests

    class TestMyViT(BackboneContractTests):
        factory = MyViT
        options = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 16}
        input_shape = (2, 1, 16, 16)        # [N, C, H, W]; 3D encoders: [N, C, D, H, W]

and gets the checks the engine and the objectives rely on (:class:`medssl.types.Backbone`):
the protocol's attributes, CLS ``[N, D]`` and patch tokens ``[N, P, D]`` with ``P`` the
patch grid, iBOT masks that hide the masked patches' content, an MAE
``forward_visible`` that agrees with ``forward``, gradients reaching every trained
parameter, clear errors on bad input, per-sample independence, determinism and a
state-dict round trip.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from medssl.types import Backbone, BackboneOutput

__all__ = ["BackboneContractTests", "n_patches"]


def n_patches(shape: tuple[int, ...], patch_size: int) -> int:
    """Patch tokens of an input ``[N, C, *spatial]``: the product of ``side // patch_size``."""
    return math.prod(side // patch_size for side in shape[2:])


class BackboneContractTests:
    """Contract tests every backbone passes; subclass and set ``factory``, ``options``,
    ``input_shape``."""

    factory: ClassVar[Callable[..., nn.Module]]
    options: ClassVar[dict[str, Any]] = {}
    #: ``[N, C, H, W]`` (or ``[N, C, D, H, W]``); sides multiples of the patch size.
    input_shape: ClassVar[tuple[int, ...]] = (2, 1, 16, 16)
    #: a second size the encoder must accept (local crops), or ``None`` to skip.
    other_input_shape: ClassVar[tuple[int, ...] | None] = None
    #: floating-point tolerance of the equivalence checks (masking, forward_visible).
    atol: ClassVar[float] = 1e-5

    # -- helpers -----------------------------------------------------------------------
    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return type(self).factory(**self.options)

    def inputs(self, seed: int = 0, shape: tuple[int, ...] | None = None) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape or self.input_shape, generator=g)

    def patches(self, model: nn.Module, shape: tuple[int, ...] | None = None) -> int:
        return n_patches(shape or self.input_shape, int(model.patch_size))

    def forward(self, model: nn.Module, x: Tensor, masks: Tensor | None = None) -> BackboneOutput:
        out = model(x, masks=masks) if masks is not None else model(x)
        assert isinstance(out, BackboneOutput), (
            f"forward must return medssl.types.BackboneOutput, got {type(out).__name__}"
        )
        return out

    # -- the contract --------------------------------------------------------------------
    def test_options_model(self) -> None:
        model = getattr(type(self).factory, "Options", None)
        assert model is not None, "the factory needs a nested pydantic Options model"
        validated = model(**self.options).model_dump()
        type(self).factory(**validated)  # what the config layer does
        from pydantic import ValidationError

        with pytest.raises(ValidationError):  # Options must forbid unknown keys
            model(**self.options, not_an_option=1)
        with pytest.raises((ValidationError, TypeError)):
            type(self).factory(**self.options, not_an_option=1)

    def test_protocol(self) -> None:
        model = self.build()
        assert isinstance(model, nn.Module)
        assert isinstance(model, Backbone), "missing embed_dim, patch_size, in_chans or methods"
        for attr in ("embed_dim", "patch_size", "in_chans"):
            value = getattr(model, attr)
            assert isinstance(value, int) and value > 0, f"{attr} must be a positive int"
        assert model.in_chans == self.input_shape[1], "input_shape's channels != in_chans"

    def test_shapes(self) -> None:
        model = self.build().eval()
        x = self.inputs()
        out = self.forward(model, x)
        n, d = x.shape[0], model.embed_dim
        assert out.cls.shape == (n, d), f"cls must be [N, D] = {(n, d)}, got {tuple(out.cls.shape)}"
        p = self.patches(model)
        assert out.patch.shape == (n, p, d), (
            f"patch tokens must be [N, P, D] = {(n, p, d)}, got {tuple(out.patch.shape)}"
        )
        assert out.cls.dtype == x.dtype and out.patch.dtype == x.dtype
        assert torch.isfinite(out.cls).all() and torch.isfinite(out.patch).all()

    def test_other_input_size(self) -> None:
        if self.other_input_shape is None:
            pytest.skip("no other_input_shape set")
        model = self.build().eval()
        shape = self.other_input_shape
        out = self.forward(model, self.inputs(shape=shape))
        assert out.patch.shape == (shape[0], self.patches(model, shape), model.embed_dim)

    def test_masks_hide_content(self) -> None:
        """A masked patch's pixels must not reach any output (iBOT's mask token)."""
        model = self.build().eval()
        x = self.inputs()
        p = self.patches(model)
        masks = torch.zeros(x.shape[0], p, dtype=torch.bool)
        masks[:, : max(1, p // 2)] = True
        out = self.forward(model, x, masks)
        assert out.patch.shape == (x.shape[0], p, model.embed_dim)
        # Change only the pixels of the first (masked) patch of every image.
        ps = model.patch_size
        changed = x.clone()
        corner = (slice(None), slice(None), *(slice(0, ps) for _ in x.shape[2:]))
        changed[corner] += 5.0
        again = self.forward(model, changed, masks)
        torch.testing.assert_close(again.patch, out.patch, atol=self.atol, rtol=0)
        torch.testing.assert_close(again.cls, out.cls, atol=self.atol, rtol=0)
        unmasked = self.forward(model, changed)
        assert not torch.allclose(unmasked.patch, out.patch, atol=self.atol), (
            "without masks the changed patch must change the output"
        )

    def test_no_mask_equals_all_false_mask(self) -> None:
        model = self.build().eval()
        x = self.inputs()
        masks = torch.zeros(x.shape[0], self.patches(model), dtype=torch.bool)
        a, b = self.forward(model, x), self.forward(model, x, masks)
        torch.testing.assert_close(a.patch, b.patch, atol=self.atol, rtol=0)

    def test_forward_visible(self) -> None:
        """Keeping every patch reproduces ``forward``; keeping some gives ``1 + K`` tokens."""
        model = self.build().eval()
        x = self.inputs()
        n, p = x.shape[0], self.patches(model)
        everything = torch.arange(p).expand(n, p)
        tokens = model.forward_visible(x, everything)
        assert tokens.shape == (n, 1 + p, model.embed_dim)
        full = self.forward(model, x)
        torch.testing.assert_close(tokens[:, 1:], full.patch, atol=self.atol, rtol=1e-4)
        torch.testing.assert_close(tokens[:, 0], full.cls, atol=self.atol, rtol=1e-4)
        k = max(1, p // 4)
        keep = torch.stack(
            [torch.randperm(p, generator=torch.Generator().manual_seed(i))[:k] for i in range(n)]
        )
        assert model.forward_visible(x, keep).shape == (n, 1 + k, model.embed_dim)

    def test_gradients(self) -> None:
        model = self.build().train()
        x = self.inputs().requires_grad_(True)
        masks = torch.zeros(x.shape[0], self.patches(model), dtype=torch.bool)
        masks[:, 0] = True  # so the mask token is used too
        out = self.forward(model, x, masks)
        (out.cls.square().mean() + out.patch.square().mean()).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        missing = [
            name
            for name, param in model.named_parameters()
            if param.requires_grad and (param.grad is None or not torch.isfinite(param.grad).all())
        ]
        assert not missing, f"no (finite) gradient reached: {missing[:8]}"

    def test_bad_input(self) -> None:
        model = self.build().eval()
        x = self.inputs()
        spatial = len(self.input_shape) - 2
        bad_channels = x.new_zeros(x.shape[0], x.shape[1] + 1, *x.shape[2:])
        with pytest.raises(ValueError, match=r"channel"):
            model(bad_channels)
        with pytest.raises(ValueError, match=r"\S"):
            model(x[0])  # one dimension short
        if model.patch_size > 1:
            ragged = x[(..., *([slice(0, -1)] * spatial))]
            with pytest.raises(ValueError, match=r"patch"):
                model(ragged)
        wrong = torch.zeros(x.shape[0], self.patches(model) + 1, dtype=torch.bool)
        with pytest.raises(ValueError, match=r"mask"):
            model(x, masks=wrong)

    def test_samples_are_independent(self) -> None:
        """In eval mode an image's tokens do not depend on the rest of its batch."""
        model = self.build().eval()
        x = self.inputs()
        together = self.forward(model, x)
        alone = self.forward(model, x[:1])
        torch.testing.assert_close(alone.patch[0], together.patch[0], atol=self.atol, rtol=1e-4)

    def test_determinism(self) -> None:
        a = self.forward(self.build(seed=3).eval(), self.inputs(seed=4))
        b = self.forward(self.build(seed=3).eval(), self.inputs(seed=4))
        torch.testing.assert_close(a.patch, b.patch, rtol=0, atol=0)
        c = self.forward(self.build(seed=5).eval(), self.inputs(seed=4))
        assert not torch.equal(a.patch, c.patch), "another seed must give other weights"

    def test_state_dict_round_trip(self) -> None:
        model = self.build(seed=1).eval()
        restored = self.build(seed=2).eval()
        restored.load_state_dict(copy.deepcopy(model.state_dict()))
        x = self.inputs(seed=6)
        torch.testing.assert_close(self.forward(restored, x).patch, self.forward(model, x).patch)
