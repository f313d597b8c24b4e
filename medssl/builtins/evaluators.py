"""Built-in evaluators (frozen-feature probes, see :mod:`medssl.eval`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medssl.eval.knn import KNN
from medssl.eval.linear_probe import LinearProbe
from medssl.eval.metadata import MetadataProbe
from medssl.eval.segmentation import SegmentationProbe

EVALUATORS: dict[str, Callable[..., Any]] = {
    "linear_probe": LinearProbe,
    "knn": KNN,
    "segmentation_probe": SegmentationProbe,
    "metadata_probe": MetadataProbe,
}
