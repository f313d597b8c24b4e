"""The DINO/iBOT heads of continued pre-training: from a run's checkpoint, into a recipe.

The DINO head. A folder may carry ``heads.safetensors`` (written by medssl's export from
the run's last checkpoint: the teacher's ``dino_head.*`` / ``ibot_head.*`` with DINOv2's
parameter names). :func:`load_hf_dinov2_into` keeps those tensors on the backbone as
``model.initial_heads``; :func:`apply_initial_heads` loads them into the objectives' heads
once those exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import Tensor, nn

from medssl.engine.checkpoint import latest_valid_checkpoint
from medssl.export.hf_format import HEADS_FILE
from medssl.weights import load_weights

__all__ = ["apply_initial_heads", "heads_from_checkpoint"]


def apply_initial_heads(backbone: nn.Module, objectives: Mapping[str, nn.Module]) -> list[str]:
    """Load ``backbone.initial_heads`` into the objectives' student and teacher heads.

    ``heads.safetensors`` holds ``<objective>_head.<param>`` tensors (``dino_head``,
    ``ibot_head``). Returns the names of the heads loaded; a head whose shapes differ
    (another number of prototypes) raises with the objective named.
    """
    heads: Mapping[str, Tensor] | None = getattr(backbone, "initial_heads", None)
    if not heads:
        return []
    loaded = []
    for name, objective in objectives.items():
        prefix = f"{name}_head."
        state = {k.removeprefix(prefix): v for k, v in heads.items() if k.startswith(prefix)}
        if not state:
            continue
        for attr in ("head", "teacher_head"):
            head = getattr(objective, attr, None)
            if head is None:
                continue
            try:
                head.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"objectives.{name}: the initial {prefix[:-1]} from {HEADS_FILE} does not "
                    f"fit the head of this recipe: {exc}"
                ) from None
        loaded.append(name)
    return loaded


def heads_from_checkpoint(run_dir: str | Path) -> dict[str, Tensor]:
    """The teacher heads of a run's last valid checkpoint, as ``<objective>_head.*``."""
    latest = latest_valid_checkpoint(Path(run_dir) / "checkpoints")
    if latest is None:
        return {}
    heads: dict[str, Tensor] = {}
    for key, value in load_weights(latest / "model.safetensors", "checkpoint").items():
        parts = key.split(".")
        # objectives.<name>.teacher_head.<param...>: the teacher is what continued
        # pre-training starts from, as the exported backbone is the teacher's.
        if len(parts) > 3 and parts[0] == "objectives" and parts[2] == "teacher_head":
            heads[f"{parts[1]}_head." + ".".join(parts[3:])] = value
    return heads
