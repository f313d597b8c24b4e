"""Files that fail to load are skipped and counted; too many abort the run clearly."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from medssl import hookimpl
from medssl.config import load_recipe
from medssl.data.robust import LoadFailure, TooManyLoadFailures
from medssl.engine.trainer import train
from medssl.plugins import load_registry


class FlakyImages(torch.utils.data.Dataset):
    """Grey images; indices below ``n_bad`` fail to load like corrupt files do."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_images: int = 16
        n_bad: int = 4

    def __init__(self, n_images: int = 16, n_bad: int = 4) -> None:
        self.n_images, self.n_bad = n_images, n_bad

    def __len__(self) -> int:
        return self.n_images

    def __getitem__(self, index: int):
        if index < self.n_bad:
            return LoadFailure(f"scan_{index}.dcm", "InvalidDicomError: truncated file")
        generator = torch.Generator().manual_seed(index)
        return {"image": torch.randint(0, 256, (1, 64, 64), dtype=torch.uint8, generator=generator)}


class FlakyPlugin:
    @hookimpl
    def medssl_register_datasets(self, register):
        register("flaky_images", FlakyImages)


def _recipe(tiny_recipe, *overrides):
    registry = load_registry([FlakyPlugin()])
    base = ["data.name=flaky_images", "train.steps=8", "train.log_every=4"]
    return registry, load_recipe(tiny_recipe, [*base, *overrides], registry)


def test_failed_files_are_skipped_counted_and_reported(tiny_recipe, caplog):
    # 4 of 16 files fail: whole batches of failures are skipped, the run goes on.
    registry, recipe = _recipe(tiny_recipe, "train.max_failure_share=0.5")
    result = train(recipe, registry)
    assert result.steps == 8
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "failed to load and were skipped" in messages
    assert "scan_0.dcm: InvalidDicomError: truncated file" in messages


def test_too_many_failures_abort_with_a_clear_error(tiny_recipe):
    registry, recipe = _recipe(tiny_recipe, "train.max_failure_share=0.1")
    with pytest.raises(TooManyLoadFailures, match="max_failure_share"):
        train(recipe, registry)
