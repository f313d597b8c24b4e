"""medssl: self-supervised pre-training of medical image encoders."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Marks a function as an implementation of a medssl hook (see :mod:`medssl.hookspecs`).
hookimpl = pluggy.HookimplMarker("medssl")

__all__ = ["__version__", "hookimpl"]
