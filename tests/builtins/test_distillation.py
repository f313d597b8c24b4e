"""objectives.distillation: the distance pinned by hand, the teacher kept out of training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medssl.builtins.backbones import VisionTransformer
from medssl.builtins.objectives.distillation import Distillation, feature_distance
from medssl.export.huggingface import export_hf_dinov2
from medssl.types import BackboneOutput, ObjectiveContext, StepOutputs, Views


def test_cosine_distance_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 5.0]])
    # 1 - cos: 1 - 1/sqrt(2) and 0, averaged over the two tokens.
    expected = (1 - 1 / math.sqrt(2) + 0.0) / 2
    assert feature_distance(s, t, "cosine").item() == pytest.approx(expected, abs=1e-7)


def test_smooth_l1_distance_by_hand() -> None:
    s = torch.tensor([[0.0, 3.0]])
    t = torch.tensor([[0.5, 0.0]])
    # |d| = 0.5 < 1: 0.5 * 0.5^2 = 0.125; |d| = 3: 3 - 0.5 = 2.5; summed over channels.
    assert feature_distance(s, t, "smooth_l1").item() == pytest.approx(2.625)


def _teacher_folder(tmp_path: Path, in_chans: int = 1, patch_size: int = 14) -> Path:
    torch.manual_seed(1)
    teacher = VisionTransformer(
        embed_dim=24, depth=1, num_heads=2, patch_size=patch_size, img_size=56, in_chans=in_chans
    )
    return export_hf_dinov2(teacher, tmp_path / "teacher", channels=in_chans)


def test_loss_on_a_small_case_matches_a_hand_computation(tmp_path: Path) -> None:
    folder = _teacher_folder(tmp_path, patch_size=8)  # another grid than the student's
    objective = Distillation(teacher=str(folder), features="both", distance="cosine")
    ctx = ObjectiveContext(
        embed_dim=16,
        patch_size=14,
        in_chans=1,
        total_steps=1,
        steps_per_epoch=1,
        shared={},
        image_size=56,
    )
    objective.setup(ctx)
    assert not any("teacher" in n for n, _ in objective.named_parameters())
    torch.manual_seed(2)
    crops = torch.randn(2, 1, 56, 56)
    student = BackboneOutput(cls=torch.randn(2, 16), patch=torch.randn(2, 16, 16))
    out = StepOutputs(
        views=Views(batch_size=1, global_crops=crops, n_global=2),
        student_global=student,
        student_local=None,
        teacher_global=None,
        student=torch.nn.Identity(),
        progress=0.0,
        epoch=0,
        step=0,
    )
    loss = objective.loss(out).loss

    teacher = objective._load()
    with torch.no_grad():
        target = teacher(crops)
    # By hand: project, 1 - cos per token, mean; teacher's 7x7 grid resized to 4x4.
    p_cls = student.cls @ objective.cls_proj.weight.T + objective.cls_proj.bias
    cls_term = (
        1 - (p_cls * target.cls).sum(-1) / (p_cls.norm(dim=-1) * target.cls.norm(dim=-1))
    ).mean()
    grid = target.patch.transpose(1, 2).reshape(2, 24, 7, 7)
    resized = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear")
    t_patch = resized.flatten(2).transpose(1, 2)
    p_patch = student.patch @ objective.patch_proj.weight.T + objective.patch_proj.bias
    cos = (p_patch * t_patch).sum(-1) / (p_patch.norm(dim=-1) * t_patch.norm(dim=-1))
    expected = (cls_term + (1 - cos).mean()) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert objective.cls_proj.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("case", ["missing", "channels"])
def test_validate_names_the_teacher_key(
    case: str, tmp_path: Path, tiny_recipe: Path, medssl_cli: Any
) -> None:
    config = yaml.safe_load(tiny_recipe.read_text())
    if case == "missing":
        teacher = str(tmp_path / "no_such_folder")
    else:
        teacher = str(_teacher_folder(tmp_path, in_chans=3))
    config["objectives"]["distillation"] = {"weight": 1.0, "teacher": teacher}
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = medssl_cli(["validate", str(tiny_recipe)], expect=1)
    assert "objectives.distillation" in result.output
    assert ("does not exist" if case == "missing" else "3-channel") in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
