"""objectives.distillation: the distance pinned by hand, the teacher kept out of training."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medssl.builtins.backbones import VisionTransformer
from medssl.builtins.objectives.distillation import (
    Distillation,
    feature_distance,
    load_teacher_heads,
)
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


def _ctx() -> ObjectiveContext:
    """A 16-d student with 14-px patches on 56-px grey global crops."""
    return ObjectiveContext(
        embed_dim=16,
        patch_size=14,
        in_chans=1,
        total_steps=1,
        steps_per_epoch=1,
        shared={},
        image_size=56,
    )


def test_loss_on_a_small_case_matches_a_hand_computation(tmp_path: Path) -> None:
    folder = _teacher_folder(tmp_path, patch_size=8)  # another grid than the student's
    objective = Distillation(teacher=str(folder), features="both", distance="cosine")
    objective.setup(_ctx())
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


# -- variant dinov2 -------------------------------------------------------------------------


def _teacher_with_heads(tmp_path: Path, separate_ibot: bool = True) -> Path:
    """A 24-d teacher exported with a 2-layer DINO head (and a separate 1-layer iBOT head)
    onto 5 (and 3) prototypes, as ``medssl export`` writes them."""
    from medssl.builtins.objectives.heads import DINOHead

    torch.manual_seed(1)
    teacher = VisionTransformer(embed_dim=24, depth=1, num_heads=2, patch_size=8, img_size=56)
    heads = {f"dino_head.{k}": v for k, v in DINOHead(24, 5, 12, 6, 2).state_dict().items()}
    if separate_ibot:
        ibot = DINOHead(24, 3, 1, 4, 1).state_dict()
        heads.update({f"ibot_head.{k}": v for k, v in ibot.items()})
    return export_hf_dinov2(teacher, tmp_path / "teacher", channels=1, heads=heads)


def _dinov2_objective(folder: Path, **options: Any) -> Distillation:
    objective = Distillation(teacher=str(folder), variant="dinov2", **options)
    objective.setup(_ctx())
    return objective


def _outputs(n_local: int = 0) -> StepOutputs:
    torch.manual_seed(2)
    b = 2
    local = BackboneOutput(cls=torch.randn(n_local * b, 16), patch=torch.randn(n_local * b, 4, 16))
    return StepOutputs(
        views=Views(
            batch_size=b,
            global_crops=torch.randn(2 * b, 1, 56, 56),
            n_global=2,
            local_crops=torch.randn(n_local * b, 1, 28, 28) if n_local else None,
            n_local=n_local,
        ),
        student_global=BackboneOutput(cls=torch.randn(2 * b, 16), patch=torch.randn(2 * b, 16, 16)),
        student_local=local if n_local else None,
        teacher_global=None,
        student=torch.nn.Identity(),
        progress=0.0,
        epoch=0,
        step=0,
    )


def _head_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of a DINOv2 head written out: MLP with GELU, L2-normalise, normalised rows."""
    n = len([k for k in state if k.startswith("mlp.") and k.endswith(".weight")])
    for i in range(n):
        x = x @ state[f"mlp.{2 * i}.weight"].T + state[f"mlp.{2 * i}.bias"]
        if i < n - 1:
            x = torch.nn.functional.gelu(x)
    x = x / x.norm(dim=-1, keepdim=True)
    w = state["last_layer.weight"]
    return x @ (w / w.norm(dim=-1, keepdim=True)).T


def _ce(p: torch.Tensor, student_logits: torch.Tensor, temp: float) -> torch.Tensor:
    """-sum_k p_k log softmax(s / temp)_k per row."""
    return -(p * torch.log_softmax(student_logits / temp, dim=-1)).sum(-1)


def test_dinov2_variant_matches_a_hand_computation(tmp_path: Path) -> None:
    """Mean centring, two steps (the second with the moved centre), DINO term with the
    crop swap and local crops, iBOT term on every patch token (teacher 7x7 -> student 4x4)."""
    folder = _teacher_with_heads(tmp_path)
    ts, tt, m = 0.1, 0.05, 0.5
    objective = _dinov2_objective(
        folder, centering="mean", student_temp=ts, teacher_temp=tt, center_momentum=m
    )
    # Only the student's heads train; the teacher and its heads stay outside.
    names = {n for n, _ in objective.named_parameters()}
    assert names and all(n.startswith(("dino_head.", "ibot_head.")) for n in names)
    out = _outputs(n_local=2)
    t_heads = load_teacher_heads(folder)
    s_dino = dict(objective.dino_head.state_dict())
    s_ibot = dict(objective.ibot_head.state_dict())
    with torch.no_grad():
        target = objective._load()(out.views.global_crops)
    z = _head_by_hand(t_heads["dino"], target.cls)  # [4, 5]: (crop 0: b0, b1; crop 1: ...)
    grid = target.patch.transpose(1, 2).reshape(4, 24, 7, 7)
    patches = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear")
    zp = _head_by_hand(t_heads["ibot"], patches.flatten(2).transpose(1, 2).reshape(-1, 24))
    s_g = _head_by_hand(s_dino, out.student_global.cls)
    s_l = _head_by_hand(s_dino, out.student_local.cls)
    s_p = _head_by_hand(s_ibot, out.student_global.patch.reshape(-1, 16))

    center, center_p = torch.zeros(1, 5), torch.zeros(1, 3)
    for _ in range(2):
        p = torch.softmax((z - center) / tt, dim=-1)
        p0, p1 = p[:2], p[2:]
        # global 0 vs teacher 1, global 1 vs teacher 0, each local crop vs both teachers.
        pairs = _ce(p1, s_g[:2], ts) + _ce(p0, s_g[2:], ts)
        for c in range(2):
            pairs = (
                pairs + _ce(p0, s_l[2 * c : 2 * c + 2], ts) + _ce(p1, s_l[2 * c : 2 * c + 2], ts)
            )
        dino = pairs.sum() / (2 * 6)
        pp = torch.softmax((zp - center_p) / tt, dim=-1)
        ibot = _ce(pp, s_p, ts).mean()
        result = objective.loss(out)
        torch.testing.assert_close(result.loss, dino + ibot, rtol=1e-5, atol=1e-6)
        assert result.metrics["dino"] == pytest.approx(float(dino), rel=1e-5)
        center = m * center + (1 - m) * z.mean(0, keepdim=True)
        center_p = m * center_p + (1 - m) * zp.mean(0, keepdim=True)
        torch.testing.assert_close(objective.dino_center, center, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(objective.ibot_center, center_p, rtol=1e-5, atol=1e-7)
    result.loss.backward()
    assert objective.dino_head.last_layer.weight.grad is not None
    assert objective.ibot_head.last_layer.weight.grad is not None
    teacher_params = list(objective._load().parameters())
    teacher_params += [p for h in objective._teacher_heads.values() for p in h.parameters()]
    assert all(p.grad is None for p in teacher_params)


def test_dinov2_variant_sinkhorn_knopp_targets_by_hand(tmp_path: Path) -> None:
    """Sinkhorn-Knopp (DINOv2's three iterations) on the teacher's logits; iBOT shares the
    DINO head when the teacher has no separate iBOT head."""
    folder = _teacher_with_heads(tmp_path, separate_ibot=False)
    objective = _dinov2_objective(folder, teacher_temp=0.2, local_crops=False)
    assert not hasattr(objective, "ibot_head")
    out = _outputs()
    t_dino = load_teacher_heads(folder)["dino"]
    s_dino = dict(objective.dino_head.state_dict())
    with torch.no_grad():
        target = objective._load()(out.views.global_crops)

    def sinkhorn(logits: torch.Tensor) -> torch.Tensor:
        q = torch.exp(logits / 0.2).T  # [K, B]
        q = q / q.sum()
        k, b = q.shape
        for _ in range(3):
            q = q / q.sum(1, keepdim=True) / k
            q = q / q.sum(0, keepdim=True) / b
        return (q * b).T

    p = sinkhorn(_head_by_hand(t_dino, target.cls).double()).float()
    s_g = _head_by_hand(s_dino, out.student_global.cls)
    dino = (_ce(p[2:], s_g[:2], 0.1) + _ce(p[:2], s_g[2:], 0.1)).sum() / (2 * 2)
    grid = target.patch.transpose(1, 2).reshape(4, 24, 7, 7)
    patches = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bilinear")
    zp = _head_by_hand(t_dino, patches.flatten(2).transpose(1, 2).reshape(-1, 24))
    ibot = _ce(
        sinkhorn(zp.double()).float(),
        _head_by_hand(s_dino, out.student_global.patch.reshape(-1, 16)),
        0.1,
    ).mean()
    torch.testing.assert_close(objective.loss(out).loss, dino + ibot, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"variant": "dinov2", "distance": "smooth_l1"},
            "distance is an option of variant features",
        ),
        ({"teacher_temp": 0.04}, "teacher_temp is an option of variant dinov2"),
        ({"variant": "dinov2"}, "has none"),
    ],
)
def test_validate_names_the_dinov2_options(
    options: dict[str, Any], message: str, tmp_path: Path, tiny_recipe: Path, medssl_cli: Any
) -> None:
    config = yaml.safe_load(tiny_recipe.read_text())
    teacher = str(_teacher_folder(tmp_path))  # no heads.safetensors
    config["objectives"]["distillation"] = {"weight": 1.0, "teacher": teacher, **options}
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = medssl_cli(["validate", str(tiny_recipe)], expect=1)
    assert "objectives.distillation" in result.output and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
