"""Choice of implementation (``impl="auto" | "torch" | "triton"``) for :mod:`medssl.losses`.

``auto`` picks the Triton kernels for CUDA tensors when :mod:`triton` imports, the torch
path otherwise, and logs the choice once per (function, choice). ``triton`` on CPU tensors
only works under the Triton interpreter (``TRITON_INTERPRET=1`` set before the kernels are
defined, i.e. before :mod:`medssl.losses.triton_kernels` is first imported).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch
from torch import Tensor

logger = logging.getLogger("medssl.losses")

IMPLS = ("auto", "torch", "triton")

_logged: set[tuple[str, str]] = set()


@functools.cache
def triton_available() -> bool:
    """Whether :mod:`triton` can be imported (checked once)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set, so Triton kernels can run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, x: Tensor, fn: str) -> str:
    """Return ``"torch"`` or ``"triton"`` for function ``fn`` called on tensor ``x``.

    Raises ``ValueError`` for an unknown ``impl`` and ``RuntimeError`` when ``"triton"`` is
    asked for but cannot run (not installed, or a CPU tensor without the interpreter).
    """
    if impl not in IMPLS:
        raise ValueError(f"medssl.losses.{fn}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        choice = "triton" if x.is_cuda and triton_available() else "torch"
        if (fn, choice) not in _logged:
            _logged.add((fn, choice))
            logger.info("medssl.losses.%s: impl='auto' uses the %s path", fn, choice)
        return choice
    if impl == "triton":
        if not triton_available():
            raise RuntimeError(f"medssl.losses.{fn}: impl='triton' but triton is not installed")
        if not x.is_cuda and not triton_interpreter_enabled():
            raise RuntimeError(
                f"medssl.losses.{fn}: impl='triton' needs CUDA tensors (got device {x.device}); "
                "on a CPU set TRITON_INTERPRET=1 before medssl.losses.triton_kernels is "
                "imported to use the (slow) Triton interpreter, or use impl='torch'"
            )
    return impl


def acc_dtype(x: Tensor) -> torch.dtype:
    """Dtype of the softmax arithmetic: fp32, or fp64 for fp64 inputs (reference checks)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_2d(name: str, fn: str, x: Tensor) -> None:
    """Raise a ``ValueError`` naming ``fn`` and argument ``name`` unless ``x`` is 2-D."""
    if x.dim() != 2:
        raise ValueError(
            f"medssl.losses.{fn}: {name} must be 2-D [rows, features], got shape {tuple(x.shape)}"
        )


def without_autocast(backward, ctx, grad_loss: Tensor):  # type: ignore[no-untyped-def]
    """Run ``backward``: one called inside an autocast region would run under it too, and
    the dtypes of its einsums and matmuls are chosen explicitly."""
    with torch.autocast(grad_loss.device.type, enabled=False):
        return backward(ctx, grad_loss)
