"""A reusable contract test class for dataset adapters (kornia style).

A plugin that adds a dataset subclasses :class:`DatasetContractTests` in its tests::

    from medssl.testing.dataset import DatasetContractTests

    class TestMyDataset(DatasetContractTests):
        factory = MyDataset
        options = {"root": str(FIXTURES), "image_size": 32}
        bad_options = [{"root": "/no/such/folder"}]   # each must fail at construction

Options that depend on pytest's ``tmp_path`` go in :meth:`make_options` instead. The checks
are what the engine, the policies and the evaluators rely on
(:class:`medssl.types.Sample`): ``image`` a ``[C, H, W]`` tensor (``[C, D, H, W]`` for a
3D dataset: set ``image_ndim = 4``) of uint8, uint16 or float32 in [0, 1] with C in
{1, 3}; every sample of one dataset the same shape, so batches stack with
:func:`medssl.data.collate`; ``meta`` only whitelisted keys (no PHI); masks long and the
image's spatial shape; an ``Options`` model that rejects unknown options; clear errors on
bad options and on an index out of range; determinism; picklable for loader workers;
``capabilities`` that agree with what the samples carry; ``official_splits`` and
``groups()`` (the split contract, :class:`medssl.types.DatasetAdapter`) well formed.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medssl.data import META_KEYS, LoadFailure, collate
from medssl.types import OfficialSplits

__all__ = ["DatasetContractTests", "check_sample"]

_DTYPES = (torch.uint8, torch.uint16, torch.float32)


def check_sample(sample: Any, image_ndim: int = 3, where: str = "sample") -> None:
    """Assert that ``sample`` follows :class:`medssl.types.Sample`; messages name the key."""
    assert not isinstance(sample, LoadFailure), f"{where}: failed to load: {sample}"
    assert isinstance(sample, dict), f"{where}: must be a dict, got {type(sample).__name__}"
    image = sample.get("image")
    assert isinstance(image, torch.Tensor), f"{where}['image'] must be a tensor"
    assert image.ndim == image_ndim, (
        f"{where}['image'] must have {image_ndim} dimensions, got shape {tuple(image.shape)}"
    )
    assert image.shape[0] >= 1, f"{where}['image'] has no channel"
    assert image.dtype in _DTYPES, f"{where}['image'] dtype {image.dtype} not in {_DTYPES}"
    if image.dtype == torch.float32:
        assert torch.isfinite(image).all(), f"{where}['image'] has NaN/Inf"
        lo, hi = float(image.min()), float(image.max())
        assert 0.0 <= lo and hi <= 1.0, f"{where}['image'] float values in [{lo}, {hi}]"
    meta = sample.get("meta", {})
    assert isinstance(meta, dict), f"{where}['meta'] must be a dict"
    extra = set(meta) - set(META_KEYS)
    assert not extra, f"{where}['meta'] has keys outside the whitelist {META_KEYS}: {extra}"
    if "mask" in sample:
        mask = sample["mask"]
        assert isinstance(mask, torch.Tensor) and mask.dtype == torch.long, (
            f"{where}['mask'] must be a long tensor"
        )
        assert tuple(mask.shape) == tuple(image.shape[1:]), (
            f"{where}['mask'] shape {tuple(mask.shape)} != image spatial shape "
            f"{tuple(image.shape[1:])}"
        )
        assert int(mask.min()) >= 0, f"{where}['mask'] has negative classes"
    if "label" in sample:
        assert isinstance(sample["label"], torch.Tensor), f"{where}['label'] must be a tensor"
    if "text" in sample:
        assert isinstance(sample["text"], str), f"{where}['text'] must be a str"


class DatasetContractTests:
    """Contract tests every dataset adapter passes; subclass and set ``factory``, ``options``."""

    factory: ClassVar[Callable[..., Dataset]]
    options: ClassVar[dict[str, Any]] = {}
    #: option sets that must fail at construction (a ValueError, a pydantic ValidationError
    #: or FileNotFoundError) with a non-empty message.
    bad_options: ClassVar[list[dict[str, Any]]] = []
    #: 3 for ``[C, H, W]`` images, 4 for ``[C, D, H, W]`` volumes.
    image_ndim: ClassVar[int] = 3
    #: samples checked (spread over the dataset); keep it small for slow readers.
    n_checked: ClassVar[int] = 4
    #: channel counts the images may have (the Sample contract: 1 or 3).
    allowed_channels: ClassVar[tuple[int, ...]] = (1, 3)

    # -- helpers -----------------------------------------------------------------------
    def make_options(self, tmp_path: Any) -> dict[str, Any]:
        """Options for this test; override when they need files under ``tmp_path``."""
        del tmp_path
        return dict(self.options)

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tmp_path_factory: Any) -> Dataset:
        """One instance per test class (building may read every file's header)."""
        return cls.factory(**cls().make_options(tmp_path_factory.mktemp("dataset")))

    def indices(self, dataset: Dataset) -> list[int]:
        n = len(dataset)  # type: ignore[arg-type]
        k = min(self.n_checked, n)
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    # -- the contract --------------------------------------------------------------------
    def test_options_model(self, tmp_path: Any) -> None:
        model = getattr(type(self).factory, "Options", None)
        assert model is not None, "the factory needs a nested pydantic Options model"
        options = self.make_options(tmp_path)
        type(self).factory(**model(**options).model_dump())  # what the config layer does
        from pydantic import ValidationError

        with pytest.raises(ValidationError):  # Options must forbid unknown keys
            model(**options, not_an_option=1)
        with pytest.raises((ValidationError, TypeError)):
            type(self).factory(**options, not_an_option=1)

    def test_bad_options(self) -> None:
        from pydantic import ValidationError

        for options in self.bad_options:
            with pytest.raises((ValidationError, ValueError, FileNotFoundError)) as info:
                type(self).factory(**options)
            assert str(info.value).strip(), f"empty error message for {options}"

    def test_length(self, dataset: Dataset) -> None:
        assert len(dataset) > 0  # type: ignore[arg-type]

    def test_samples(self, dataset: Dataset) -> None:
        shapes = set()
        for i in self.indices(dataset):
            sample = dataset[i]
            check_sample(sample, self.image_ndim, where=f"sample {i}")
            shapes.add(tuple(sample["image"].shape))
        assert len(shapes) == 1, f"samples of one dataset must share a shape, got {shapes}"
        channels = next(iter(shapes))[0]
        assert channels in self.allowed_channels, (
            f"images have {channels} channels; allowed: {self.allowed_channels}"
        )
        declared = getattr(dataset, "channels", None)
        if declared is not None:
            assert declared == channels, f"dataset.channels={declared} but images have {channels}"

    def test_index_out_of_range(self, dataset: Dataset) -> None:
        with pytest.raises(IndexError):
            dataset[len(dataset)]  # type: ignore[arg-type]

    def test_collate_and_loader(self, dataset: Dataset) -> None:
        batch_size = min(2, len(dataset))  # type: ignore[arg-type]
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
        batch = next(iter(loader))
        assert batch["failures"] == [], f"load failures: {batch['failures']}"
        assert batch["image"].shape[0] == batch_size
        assert batch["image"].ndim == self.image_ndim + 1

    def test_determinism(self, dataset: Dataset, tmp_path: Any) -> None:
        again = type(self).factory(**self.make_options(tmp_path))
        for i in self.indices(dataset)[:2]:
            a, b = dataset[i], again[i]
            assert torch.equal(a["image"], b["image"]), f"sample {i} differs between instances"
            if "mask" in a:
                assert torch.equal(a["mask"], b["mask"])

    def test_picklable(self, dataset: Dataset) -> None:
        """DataLoader workers receive the dataset by pickling."""
        clone = pickle.loads(pickle.dumps(dataset))
        i = self.indices(dataset)[0]
        assert torch.equal(clone[i]["image"], dataset[i]["image"])

    def test_capabilities(self, dataset: Dataset, tmp_path: Any) -> None:
        capabilities = getattr(type(self).factory, "capabilities", None)
        sample = dataset[self.indices(dataset)[0]]
        if capabilities is not None:
            caps = capabilities(**self.make_options(tmp_path))
            assert caps.get("has_mask", False) == ("mask" in sample), (
                "capabilities()['has_mask'] disagrees with the samples"
            )
            assert caps.get("has_text", False) == ("text" in sample), (
                "capabilities()['has_text'] disagrees with the samples"
            )
        if "mask" in sample and getattr(dataset, "num_mask_classes", None):
            assert int(sample["mask"].max()) < dataset.num_mask_classes  # type: ignore[attr-defined]

    def test_split_contract(self, dataset: Dataset, tmp_path: Any) -> None:
        """``official_splits`` (if any) names a split; ``groups()`` keys every sample."""
        declare = getattr(type(self).factory, "official_splits", None)
        if declare is not None:
            official = declare(**self.make_options(tmp_path))
            assert official is None or isinstance(official, OfficialSplits), (
                "official_splits() must return medssl.types.OfficialSplits or None"
            )
        if getattr(dataset, "group_kind", None) is not None:
            groups = dataset.groups()  # type: ignore[attr-defined]
            assert groups is not None and len(groups) == len(dataset), (  # type: ignore[arg-type]
                "groups() must give one key per sample when group_kind is set"
            )
