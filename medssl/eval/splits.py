"""How a probe splits its data: choose the split, check it, describe it.

``split`` of an evaluator:

- ``official``: the dataset's own train / held-out split, under its own names
  (:class:`medssl.types.OfficialSplits`: NIH ``train_val`` / ``test``, CheXpert
  ``train`` / ``valid``, MIMIC-CXR ``train`` / ``validate``, the demo's ``train`` / ``val``);
- ``patient``: a seeded split of the adapter's groups (patient, study, source scan), so a
  group sits on one side only — as published chest X-ray evaluations split;
- ``random``: a seeded split of the images;
- ``auto`` (default): official where the dataset has one, else patient where it has a
  group key, else random.

Nothing falls back silently: when ``auto`` cannot build the official split it says why in
:attr:`SplitInfo.warning`, which the eval table prints. Every split is checked: a group on
both sides of a split that must be disjoint (official, patient) is an error; on a random or
by-image split the shared groups are counted and reported as a warning. Group keys are
compared in memory only; no key is ever logged or written, only counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from medssl.types import OfficialSplits

__all__ = ["SPLIT_KINDS", "SplitInfo", "check_groups", "choose_split", "group_split"]

log = logging.getLogger(__name__)

#: Values of an evaluator's ``split`` option.
SPLIT_KINDS = ("auto", "official", "patient", "random")

Build = Callable[[dict[str, Any]], Dataset]


@dataclass
class SplitInfo:
    """What a probe's split was: the ``split`` field of its result, one line in the table."""

    kind: str  # official | patient | random
    requested: str  # the evaluator's split option
    names: list[str] | None = None  # the dataset's split names (official)
    group: str | None = None  # what a group is ("patient"...), None without a group key
    groups_train: int | None = None
    groups_val: int | None = None
    shared_groups: int | None = None  # groups on both sides (None: not checkable)
    warning: str | None = None

    def summary(self) -> str:
        if self.kind == "official" and self.names:
            text = f"official ({self.names[0]} / {self.names[1]})"
        else:
            text = self.kind
        if self.group is None:
            text += "; no group key, groups not checked"
        else:
            text += (
                f"; {self.group}s train/val {self.groups_train}/{self.groups_val}, "
                f"{self.shared_groups} on both sides"
            )
        if self.warning:
            text += f"; WARNING: {self.warning}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


def _groups(dataset: Dataset) -> tuple[str | None, list[str | None] | None]:
    kind = getattr(dataset, "group_kind", None)
    groups = getattr(dataset, "groups", None)
    if kind is None or groups is None:
        return None, None
    keys = groups()
    return (kind, list(keys)) if keys is not None else (None, None)


def _official(factory: Any, block: dict[str, Any]) -> OfficialSplits | None:
    declare = getattr(factory, "official_splits", None)
    if declare is None:
        return None
    options = {k: v for k, v in block.items() if k != "name"}
    return declare(**options)


def check_groups(
    train: Sequence[str | None],
    val: Sequence[str | None],
    kind: str,
    *,
    disjoint: bool,
    where: str,
) -> tuple[int, int, int]:
    """``(groups in train, groups in val, groups on both sides)``.

    Raises when ``disjoint`` and a group is on both sides (the count, never the keys).
    """
    g_tr = {g for g in train if g is not None}
    g_va = {g for g in val if g is not None}
    shared = len(g_tr & g_va)
    if disjoint and shared:
        raise ValueError(
            f"{where}: {shared} {kind}(s) appear on both sides of the split, which must keep "
            f"each {kind} on one side; use split: patient to split by {kind}"
        )
    return len(g_tr), len(g_va), shared


def group_split(
    groups: Sequence[str | None], val_fraction: float, seed: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Train / val indices holding whole groups out (GroupShuffleSplit-like, seeded).

    Groups are drawn in a seeded order into the validation side until it holds
    ``val_fraction`` of the images; at least one group stays on each side. A sample
    without a key is its own group.
    """
    keys = [g if g is not None else f"\0{i}" for i, g in enumerate(groups)]
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise ValueError(f"{where}: {len(unique)} group(s) are too few to split by group")
    size: dict[str, int] = {}
    for k in keys:
        size[k] = size.get(k, 0) + 1
    order = np.random.default_rng(seed).permutation(len(unique))
    target = val_fraction * len(keys)
    held: set[str] = set()
    n_val = 0
    for i in order[:-1]:  # the last group drawn always stays in train
        if n_val >= target and held:
            break
        held.add(unique[i])
        n_val += size[unique[i]]
    is_val = np.array([k in held for k in keys])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _random_split(n: int, val_fraction: float, seed: int, where: str) -> tuple[Any, Any]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_fraction * n)))
    if n - n_val < 2:
        raise ValueError(f"{where}: {n} images are too few to split for a probe")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def choose_split(
    factory: Any,
    block: dict[str, Any],
    build: Build,
    *,
    split: str = "auto",
    val_fraction: float = 0.2,
    seed: int = 0,
    where: str = "eval",
) -> tuple[Dataset, Dataset, Dataset, SplitInfo]:
    """``(train, val, reference, info)`` for ``block``; ``reference`` carries the labels.

    ``factory`` is the adapter's registered factory (read for ``official_splits``);
    ``build(block)`` builds an adapter from a data block.
    """
    if split == "dataset":  # the option's former name
        split = "official"
    if split not in SPLIT_KINDS:
        raise ValueError(f"{where}: split must be one of {list(SPLIT_KINDS)}, got {split!r}")
    name = block.get("name")
    warning = None
    if split in ("auto", "official"):
        official = _official(factory, block)
        if official is None and split == "official":
            raise ValueError(
                f"{where}: dataset {name!r} declares no official split; "
                "use split: patient or split: random"
            )
        if official is not None:
            try:
                train = build({**block, official.option: official.train})
                val = build({**block, official.option: official.val})
                if len(train) == 0 or len(val) == 0:
                    empty = official.train if len(train) == 0 else official.val
                    raise ValueError(f"its {empty!r} split is empty")
            except (ValueError, FileNotFoundError) as exc:
                if split == "official":
                    raise
                warning = f"official split {official.train}/{official.val} unusable ({exc})"
                log.warning("%s: %s", where, warning)
            else:
                info = SplitInfo("official", split, [official.train, official.val])
                kind_tr, g_tr = _groups(train)
                _, g_va = _groups(val)
                if kind_tr is not None and g_tr is not None and g_va is not None:
                    counts = check_groups(
                        g_tr, g_va, kind_tr, disjoint=official.disjoint, where=where
                    )
                    info.group = kind_tr
                    info.groups_train, info.groups_val, info.shared_groups = counts
                    if counts[2]:
                        info.warning = (
                            f"the official split is by image: {counts[2]} {kind_tr}(s) on "
                            "both sides (optimistic scores); split: patient holds them out"
                        )
                return train, val, train, info
    dataset = build(block)
    kind, groups = _groups(dataset)
    if split == "patient" and groups is None:
        raise ValueError(
            f"{where}: dataset {name!r} has no group key (patient or study) to split by; "
            "use split: random (csv_manifest: set group_column)"
        )
    if groups is not None and split != "random":
        tr, va = group_split(groups, val_fraction, seed, where)
        kind_used = "patient"
    else:
        tr, va = _random_split(len(dataset), val_fraction, seed, where)  # type: ignore[arg-type]
        kind_used = "random"
    info = SplitInfo(kind_used, split, warning=warning)
    if kind is not None and groups is not None:
        counts = check_groups(
            [groups[i] for i in tr],
            [groups[i] for i in va],
            kind,
            disjoint=kind_used == "patient",
            where=where,
        )
        info.group = kind
        info.groups_train, info.groups_val, info.shared_groups = counts
        if counts[2]:
            note = f"{counts[2]} {kind}(s) on both sides of a random split (optimistic scores)"
            info.warning = f"{warning}; {note}" if warning else note
    return Subset(dataset, tr.tolist()), Subset(dataset, va.tolist()), dataset, info
