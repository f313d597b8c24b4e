"""impl="auto" | "torch" | "triton" resolution and the autocast behaviour of the fused head."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from medssl.losses import dispatch, prototype_cross_entropy, prototype_targets


def test_auto_on_cpu_is_torch_and_logged_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(dispatch, "_logged", set())
    x = torch.zeros(2, 3)
    with caplog.at_level(logging.INFO, logger="medssl.losses"):
        assert dispatch.resolve_impl("auto", x, "demo") == "torch"
        assert dispatch.resolve_impl("auto", x, "demo") == "torch"
    messages = [r.getMessage() for r in caplog.records if "demo" in r.getMessage()]
    assert messages == ["medssl.losses.demo: impl='auto' uses the torch path"]


def test_unknown_impl_names_the_function() -> None:
    with pytest.raises(ValueError, match=r"medssl.losses.demo: impl must be one of"):
        dispatch.resolve_impl("cuda", torch.zeros(1), "demo")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with pytest.raises(RuntimeError, match="needs CUDA tensors .* TRITON_INTERPRET=1"):
        dispatch.resolve_impl("triton", torch.zeros(1), "demo")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_impl("triton", torch.zeros(1), "demo") == "triton"


def test_autocast_runs_the_head_in_its_dtype() -> None:
    """Under bf16 autocast the fused head equals the explicit bf16 call; grads keep dtypes."""
    g = torch.Generator().manual_seed(0)
    f = F.normalize(torch.randn(6, 16, generator=g), dim=-1).requires_grad_()
    w = F.normalize(torch.randn(50, 16, generator=g), dim=-1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = prototype_targets(f.detach(), w.detach(), 0.05)
        loss = prototype_cross_entropy(f, p, w, 0.1, impl="torch")
    want = prototype_cross_entropy(f.bfloat16(), p, w.bfloat16(), 0.1, impl="torch")
    assert loss.dtype == torch.float32 and p.dtype == torch.float32
    torch.testing.assert_close(loss, want)
    loss.sum().backward()
    assert f.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
