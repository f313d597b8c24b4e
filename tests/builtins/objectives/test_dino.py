"""DINO pinned to the formulas of facebookresearch/dinov2 (float64) and to lightly 1.6.0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from torch import Tensor

from medssl.builtins.objectives import DINO
from medssl.testing.objectives import hand_made_step, objective_context, perturb_

K = 32
HEAD = {"prototypes": K, "hidden_dim": 16, "bottleneck_dim": 8}
STUDENT_TEMP, TEACHER_TEMP, MOMENTUM = 0.1, 0.05, 0.9


# --- the formulas of dinov2/loss/dino_clstoken_loss.py, written out in float64 ---------------
def dinov2_softmax_center_teacher(teacher_output: Tensor, center: Tensor, temp: float) -> Tensor:
    return F.softmax((teacher_output - center) / temp, dim=-1)


def dinov2_sinkhorn_knopp_teacher(
    teacher_output: Tensor, temp: float, n_iterations: int = 3
) -> Tensor:
    q = torch.exp(teacher_output / temp).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True)
        q = q / k
        q = q / q.sum(dim=0, keepdim=True)
        q = q / b
    return (q * b).t()


def dinov2_dino_loss(student_list: list[Tensor], teacher_list: list[Tensor]) -> Tensor:
    total = 0
    for s in student_list:
        lsm = F.log_softmax(s / STUDENT_TEMP, dim=-1)
        for t in teacher_list:
            total = total - torch.sum(t * lsm, dim=-1).mean()
    return total


def dinov2_meta_arch(student_global, student_local, teacher, n_local, centering, center):
    """``ssl_meta_arch.py::forward_backward``'s DINO part (2 global crops, head logits in)."""
    t0, t1 = teacher.chunk(2)
    teacher = torch.cat((t1, t0))  # A is matched to B
    if centering == "mean":
        probs = dinov2_softmax_center_teacher(teacher, center, TEACHER_TEMP)
    else:
        probs = dinov2_sinkhorn_knopp_teacher(teacher, TEACHER_TEMP)
    probs = probs.view(2, -1, K)
    n_local_terms = max(n_local * 2, 1)
    n_global_terms = (2 - 1) * 2
    local = dinov2_dino_loss(list(student_local.chunk(n_local)), list(probs))
    local = local / (n_global_terms + n_local_terms)
    glob = dinov2_dino_loss([student_global], [probs.flatten(0, 1)]) * 2
    glob = glob / (n_global_terms + n_local_terms)
    new_center = center * MOMENTUM + teacher.mean(dim=0, keepdim=True) * (1 - MOMENTUM)
    return local + glob, new_center


def build(centering: str = "mean", freeze: float = 0, **kw) -> DINO:
    torch.manual_seed(0)
    obj = DINO(
        **HEAD,
        centering=centering,
        teacher_temp=TEACHER_TEMP,
        warmup_teacher_temp_epochs=0,
        center_momentum=MOMENTUM,
        freeze_last_layer_epochs=freeze,
        **kw,
    )
    obj.setup(objective_context())
    perturb_(obj.teacher_head)
    return obj


@pytest.mark.parametrize(
    ("centering", "lazy"),
    [("mean", False), ("sinkhorn_knopp", False), ("mean", True), ("sinkhorn_knopp", True)],
)
def test_matches_dinov2_formula_float64(centering: str, lazy: bool) -> None:
    """Also with lazy_targets (the teacher's targets recomputed tile by tile)."""
    obj = build(centering, lazy_targets=lazy).double()
    center = torch.zeros(1, K, dtype=torch.float64)
    for step in range(2):  # the second step uses the centre the first one updated
        out = hand_made_step(b=5, n_global=2, n_local=3, seed=step, step=step)
        got = obj.loss(out).loss
        sg, sl, tg = out.student_global.cls, out.student_local.cls, out.teacher_global.cls
        with torch.no_grad():
            teacher_logits = obj.teacher_head(tg)
        expected, center = dinov2_meta_arch(
            obj.head(sg), obj.head(sl), teacher_logits, 3, centering, center
        )
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        params = [sg, sl, obj.head.last_layer.weight, obj.head.mlp[0].weight]
        for a, b in zip(
            torch.autograd.grad(got, params), torch.autograd.grad(expected, params), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if centering == "mean":
            torch.testing.assert_close(obj.center, center, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("n_global", "n_local"), [(2, 3), (2, 0), (3, 2)])
def test_matches_lightly_dino_loss(n_global: int, n_local: int) -> None:
    """lightly's DINOLoss has the same pairs (diagonal excluded) and mean centring.

    Tolerance: fp32 on both sides at 4 x 32 rows: rtol 1e-5 on the loss, 1e-4 on gradients.
    """
    obj = build("mean")
    ref = DINOLoss(
        output_dim=K, teacher_temp=TEACHER_TEMP, student_temp=STUDENT_TEMP, center_momentum=MOMENTUM
    )
    for step in range(2):
        out = hand_made_step(
            b=4, n_global=n_global, n_local=n_local, dtype=torch.float32, seed=10 + step, step=step
        )
        got = obj.loss(out).loss
        with torch.no_grad():
            teacher_out = list(obj.teacher_head(out.teacher_global.cls).chunk(n_global))
        student = [obj.head(out.student_global.cls)]
        if n_local:
            student.append(obj.head(out.student_local.cls))
        student_out = [*student[0].chunk(n_global)]
        if n_local:
            student_out += list(student[1].chunk(n_local))
        expected = ref(teacher_out, student_out, teacher_temp=TEACHER_TEMP)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        g_got = torch.autograd.grad(got, out.student_global.cls)[0]
        g_ref = torch.autograd.grad(expected, out.student_global.cls)[0]
        torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(obj.center, ref.center.view(1, K), rtol=1e-5, atol=1e-7)


def test_teacher_temperature_warms_up_linearly() -> None:
    torch.manual_seed(0)
    obj = DINO(**HEAD, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    obj.setup(objective_context(steps_per_epoch=10))  # warm-up over 20 steps
    temps = [
        obj.loss(hand_made_step(2, 2, 0, dtype=torch.float32, step=s)).metrics["teacher_temp"]
        for s in (0, 10, 19, 20, 50)
    ]
    assert temps[0] == pytest.approx(0.04)
    assert temps[1] == pytest.approx(0.04 + 0.03 * 10 / 19)
    assert temps[2] == pytest.approx(0.07)
    assert temps[3] == temps[4] == pytest.approx(0.07)


def test_last_layer_gets_zero_gradient_while_frozen() -> None:
    obj = build("mean", freeze=1)  # 10 steps at steps_per_epoch=10
    assert obj.frozen_last_layer_params() == [obj.head.last_layer.weight]
    for step, frozen in ((3, True), (10, False)):
        obj.zero_grad()
        obj.loss(hand_made_step(3, 2, 2, dtype=torch.float32, step=step)).loss.backward()
        last = obj.head.last_layer.weight.grad
        assert last is not None
        assert bool((last == 0).all()) is frozen
        assert obj.head.mlp[0].weight.grad.abs().sum() > 0
    assert build("mean", freeze=0).frozen_last_layer_params() == []


def test_metrics_carry_teacher_diagnostics() -> None:
    obj = build("mean", diagnostics_every=1)
    metrics = obj.loss(hand_made_step(4, 2, 2, dtype=torch.float32)).metrics
    assert 0 < metrics["teacher_entropy_ratio"] <= 1 and 0 < metrics["usage_ratio"] <= 1
    assert metrics["teacher_temp"] == pytest.approx(TEACHER_TEMP)
    assert obj.freeze_last_layer_epochs == 0
    lazy = build("mean", lazy_targets=True, diagnostics_every=1).loss(
        hand_made_step(4, 2, 2, dtype=torch.float32)
    )
    assert lazy.metrics["teacher_entropy_ratio"] == pytest.approx(metrics["teacher_entropy_ratio"])
    quiet = build("mean")  # off by default: the engine's learning signals report them
    assert set(quiet.loss(hand_made_step(4, 2, 2, dtype=torch.float32)).metrics) == {"teacher_temp"}


def test_heads_shared_and_teacher_is_a_frozen_copy() -> None:
    torch.manual_seed(0)
    ctx = objective_context()
    obj = DINO(**HEAD)
    obj.setup(ctx)
    assert (
        ctx.shared["dino_head"] is obj.head and ctx.shared["dino_teacher_head"] is obj.teacher_head
    )
    assert obj.ema_pairs() == [(obj.head, obj.teacher_head)]
    assert obj.teacher_head is not obj.head
    assert not any(p.requires_grad for p in obj.teacher_head.parameters())
    for (name, a), (_, b) in zip(
        obj.head.state_dict().items(), obj.teacher_head.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_no_pairs_is_an_error() -> None:
    obj = build("mean")
    with pytest.raises(ValueError, match="no pair"):
        obj.loss(hand_made_step(b=2, n_global=1, n_local=0))


def test_wrong_rows_name_the_field() -> None:
    obj = build("mean")
    out = hand_made_step(b=2, n_global=2, n_local=0)
    out.views.batch_size = 3
    with pytest.raises(ValueError, match="student_global.cls"):
        obj.loss(out)


def test_bad_options_fail_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="centering"):
        DINO(centering="softmax")
    with pytest.raises(ValidationError, match="student_temp"):
        DINO(student_temp=0)


def test_centre_under_bf16_autocast_is_computed_in_fp32() -> None:
    """Under autocast the teacher's prototypes are bf16; the centre comes from the raw
    weight in fp32: the fp32 mean logits of the (autocast) features, to fp32 rounding --
    far tighter than a bf16 matmul would give (2^-8 relative)."""
    obj = build("mean")
    step = hand_made_step(4, 2, 2, dtype=torch.float32)
    teacher = obj.teacher_head
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = teacher.features(step.teacher_global.cls).float()
        expected = (1 - MOMENTUM) * (feats.mean(dim=0, keepdim=True) @ teacher.prototypes.T)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        obj.loss(step)
    assert obj.center.dtype == torch.float32
    torch.testing.assert_close(obj.center, expected, rtol=1e-5, atol=1e-6)
