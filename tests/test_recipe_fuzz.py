"""Fuzzing recipe overrides: malformed values of every type against every kind of key must
end in one clear line (or be accepted), never a traceback or a hang (issue 15).

The cases are generated from a fixed seed, so a failure reproduces; ``python
tests/test_recipe_fuzz.py`` prints the counts quoted in docs/security.md.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from medssl.cli import main
from medssl.testing.pytest_plugin import TINY_RECIPE

KEYS = [
    "seed",
    "output_dir",
    "train.batch_size",
    "train.steps",
    "train.epochs",
    "train.lr",
    "train.base_lr",
    "train.warmup_epochs",
    "train.betas",
    "train.devices",
    "train.precision",
    "train.num_workers",
    "train.clip_grad",
    "train.max_failure_share",
    "train.momentum_teacher",
    "data.n_images",
    "data.image_size",
    "data.name",
    "augmentation.global_crop_size",
    "augmentation.n_local_crops",
    "augmentation.mean",
    "backbone.embed_dim",
    "backbone.num_heads",
    "backbone.img_size",
    "backbone.init",
    "objectives.dino.weight",
    "objectives.dino.prototypes",
    "objectives.dino.student_temp",
    "objectives",
    "train",
]

VALUES = [
    "-1",
    "0",
    "1e308",
    "-1e308",
    "1e-400",
    "nan",
    ".nan",
    "inf",
    "-.inf",
    "99999999999999999999",
    str(2**63),
    "abc",
    "''",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: 1}}",
    "null",
    "true",
    "0x10",
    "1_000",
    "${oc.env:HOME}",
    "${missing.key}",
    "${oc.decode:'[1,2'}",
    "[",
    "{",
    "'unterminated",
    "💥",
    "a" * 5000,
    "/dev/zero",
    "/etc/passwd",
    "../../../../etc/shadow",
    "*alias",
    "&anchor x",
    "!!python/object/apply:os.system ['echo pwned']",
]

#: Overrides malformed as text, not as values.
SYNTAX = ["noequals", "=5", "train..steps=3", ".seed=1", "seed.=1", "train.steps.x=1", "[]=1"]


def generate(n: int = 160, seed: int = 15) -> list[list[str]]:
    """``n`` override lists: one key with a malformed value, sometimes two at once."""
    rng = random.Random(seed)
    cases = [[item] for item in SYNTAX]
    while len(cases) < n:
        count = 1 if rng.random() < 0.8 else 2
        cases.append([f"{rng.choice(KEYS)}={rng.choice(VALUES)}" for _ in range(count)])
    return cases


def run_cases(recipe: Path, cases: list[list[str]]) -> Counter:
    """Each case through ``medssl validate`` in-process; counts by outcome."""
    runner = CliRunner()
    counts: Counter = Counter()
    for overrides in cases:
        started = time.monotonic()
        result = runner.invoke(main, ["validate", str(recipe), *overrides])
        seconds = time.monotonic() - started
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        if crashed or "Traceback" in result.output:
            counts["tracebacks"] += 1
            counts[f"traceback: {overrides} -> {result.exception!r}"[:300]] += 1
        elif result.exit_code == 1:
            counts["clean errors"] += 1
        elif result.exit_code == 0:
            counts["accepted"] += 1
        else:
            counts[f"exit {result.exit_code}"] += 1
        if seconds > 60:  # one validate takes well under a second; 60 s allows a loaded CI
            counts["hangs"] += 1
            counts[f"hang: {overrides} took {seconds:.0f} s"[:300]] += 1
        counts["inputs"] += 1
    return counts


def _write_recipe(folder: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({**TINY_RECIPE, "output_dir": str(folder / "run")}))
    return path


def test_malformed_overrides_never_end_in_a_traceback(tmp_path: Path) -> None:
    cases = generate()
    assert len(cases) >= 100
    counts = run_cases(_write_recipe(tmp_path), cases)
    problems = [k for k in counts if k.startswith(("traceback:", "hang:"))]
    assert counts["tracebacks"] == 0, problems
    assert counts["hangs"] == 0, problems
    assert counts["clean errors"] >= 100
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value", ["!!python/object/apply:os.mkdir ['{marker}']"])
def test_python_yaml_tags_in_a_recipe_file_do_not_run(tmp_path: Path, value: str) -> None:
    marker = tmp_path / "pwned"
    recipe = _write_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + f"evil: {value.format(marker=marker)}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not marker.exists()


if __name__ == "__main__":  # the counts for docs/security.md
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        totals = run_cases(_write_recipe(Path(tmp)), generate())
    for key, value in sorted(totals.items()):
        print(f"{key}: {value}")
