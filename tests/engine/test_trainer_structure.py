"""The trainer is the loop: a short module whose state is created in one place (issue #16)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import medssl.engine.trainer as trainer_module

SOURCE = Path(trainer_module.__file__).read_text(encoding="utf-8")


def test_trainer_module_is_at_most_350_lines() -> None:
    """Set-up, checkpoints, reports and signals live in their own engine modules."""
    lines = len(SOURCE.splitlines())
    assert lines <= 350, f"medssl/engine/trainer.py has {lines} lines; move what is not the loop"


def _self_targets(node: ast.AST) -> Iterator[str]:
    """Attributes of ``self`` that ``node`` assigns (``self.x = ...``, tuples included)."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign | ast.AugAssign):
        targets = [node.target]
    else:
        return
    for target in targets:
        for leaf in target.elts if isinstance(target, ast.Tuple) else [target]:
            if (
                isinstance(leaf, ast.Attribute)
                and isinstance(leaf.value, ast.Name)
                and leaf.value.id == "self"
            ):
                yield leaf.attr


def test_trainer_creates_its_attributes_in_init_only() -> None:
    tree = ast.parse(SOURCE)
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    created: dict[str, set[str]] = {}
    for method in trainer.body:
        if isinstance(method, ast.FunctionDef):
            for node in ast.walk(method):
                for name in _self_targets(node):
                    created.setdefault(name, set()).add(method.name)
    assert created, "the walk found no attribute at all: the test would pass vacuously"
    outside = {name: sorted(m) for name, m in created.items() if "__init__" not in m}
    assert not outside, f"attributes first created outside Trainer.__init__: {outside}"
