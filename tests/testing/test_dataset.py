"""The dataset contract class: built-in adapters pass it, broken ones fail it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.builtins.datasets import DATASETS
from medssl.testing.dataset import DatasetContractTests, check_sample


class TestSynthetic(DatasetContractTests):
    factory = DATASETS["synthetic"]
    options = {"n_images": 6, "image_size": 16, "with_mask": True}
    bad_options = [{"n_images": 0}, {"image_size": 2}]


class TestSyntheticRGBWithText(DatasetContractTests):
    factory = DATASETS["synthetic"]
    options = {"n_images": 3, "image_size": 16, "channels": 3, "with_text": True}


class TestImageFolder(DatasetContractTests):
    """A file-backed adapter with options that need files under tmp_path."""

    factory = DATASETS["image_folder"]
    bad_options = [{"root": "/no/such/folder/anywhere"}]

    def make_options(self, tmp_path: Path) -> dict:
        root = tmp_path / "images"
        if not root.exists():
            root.mkdir()
            for i in range(3):
                pixels = (np.arange(20 * 24).reshape(20, 24) * (i + 1) % 256).astype(np.uint8)
                Image.fromarray(pixels).save(root / f"img{i}.png")
        return {"root": str(root), "image_size": 16}


def test_check_sample_names_the_problem():
    good = {"image": torch.rand(1, 8, 8), "meta": {"age": 40.0}}
    check_sample(good)
    with pytest.raises(AssertionError, match=r"\['image'\] float values"):
        check_sample({"image": torch.full((1, 8, 8), 2.0)})
    with pytest.raises(AssertionError, match="whitelist"):
        check_sample({"image": torch.rand(1, 8, 8), "meta": {"patient_name": "x"}})
    with pytest.raises(AssertionError, match=r"\['mask'\] shape"):
        check_sample({"image": torch.rand(1, 8, 8), "mask": torch.zeros(4, 4, dtype=torch.long)})
    with pytest.raises(AssertionError, match="4 dimensions"):
        check_sample(good, image_ndim=4)


class RaggedImages(torch.utils.data.Dataset):
    """Broken on purpose: the size changes with the index, so batches cannot stack."""

    from pydantic import BaseModel as _Base

    class Options(_Base):
        n: int = 4

    def __init__(self, n: int = 4) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if index >= self.n:
            raise IndexError(index)
        return {"image": torch.rand(1, 8 + index, 8), "meta": {}}


def test_contract_catches_ragged_samples():
    suite = type("T", (DatasetContractTests,), {"factory": RaggedImages, "__test__": False})()
    dataset = RaggedImages()
    with pytest.raises(AssertionError, match="share a shape"):
        suite.test_samples(dataset)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        suite.test_options_model(None)  # its Options model ignores unknown keys
