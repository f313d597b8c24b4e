"""A dataset's own train / held-out split: the contract type, importable without torch.

Re-exported as :class:`medssl.types.OfficialSplits`; it lives here so that dataset
adapters (and ``medssl validate --data-only``) import it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OfficialSplits"]


@dataclass(frozen=True, kw_only=True)
class OfficialSplits:
    """A dataset's own train / held-out split, under the dataset's own names.

    A probe builds the adapter twice, with ``{option: train}`` and ``{option: val}``
    (NIH ChestX-ray14: ``split: train_val`` / ``split: test``; CheXpert ``train`` /
    ``valid``; MIMIC-CXR ``train`` / ``validate``). ``disjoint`` states that the
    published split keeps every group (patient) on one side; a probe stops with an error
    when it does not. A split made by image (the demo data's) sets ``disjoint=False`` and
    the groups found on both sides are reported as a warning instead.
    """

    train: str
    val: str
    option: str = "split"
    disjoint: bool = True
