"""Run metadata (``run.json``): versions, git commit, plugins, seed — no patient data."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import platform
import subprocess
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
