"""Run metadata (``run.json``): versions, git commit, plugins, seed — no patient data."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medssl import __version__
from medssl.plugins import Registry

DEPENDENCIES = (
    "torch",
    "torchvision",
    "lightly",
    "kornia",
    "timm",
    "lightning",
    "pydantic",
    "omegaconf",
    "pluggy",
    "transformers",
    "monai",
    "pydicom",
    "triton",
)


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def git_commit(start: Path | None = None) -> str | None:
    """The commit of the medssl source tree (or ``start``), when it is a git checkout."""
    where = start or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


def run_info(registry: Registry, seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    providers = {}
    for kind in ("backbone", "objective", "augmentation", "dataset", "evaluator", "exporter"):
        for component in registry.components(kind):
            provider = component.provider
            providers[provider.name] = provider.version
    return {
        "medssl_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dependencies": {name: _version(name) for name in DEPENDENCIES},
        "plugins": providers,
        "plugins_failed": dict(registry.load_report.failed),
        "seed": seed,
        "cuda": torch.cuda.is_available(),
        **(extra or {}),
    }


# Option names that hold locations (files, folders, tables, URLs) in dataset adapters.
_PATH_WORDS = ("path", "root", "dir", "file", "manifest", "csv", "url", "folder", "table")


def _looks_like_path(value: Any) -> bool:
    """Separators, ``~``, or a file extension (``labels.csv``; not ``3.11.7``)."""
    return isinstance(value, str) and (
        "/" in value or "\\" in value or value.startswith("~") or Path(value).suffix[1:].isalpha()
    )


def public_options(block: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe block without the options that are, or may be, paths (possible PHI)."""
    out: dict[str, Any] = {}
    for key, value in block.items():
        if any(word in key.lower() for word in _PATH_WORDS) or _looks_like_path(value):
            continue
        if isinstance(value, Mapping):
            value = public_options(value)
        elif isinstance(value, list | tuple):
            if any(_looks_like_path(v) for v in value):
                continue
            value = [public_options(v) if isinstance(v, Mapping) else v for v in value]
        out[key] = value
    return out
