"""iBOT pinned to facebookresearch/dinov2's ``iBOTPatchLoss`` formulas (float64) and lightly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import IBOTPatchLoss
from torch import Tensor

from medssl.builtins.objectives import DINO, IBOT
from medssl.testing.objectives import hand_made_step, objective_context, perturb_

K = 32
HEAD = {"prototypes": K, "hidden_dim": 16, "bottleneck_dim": 8}
STUDENT_TEMP, TEACHER_TEMP, MOMENTUM = 0.1, 0.05, 0.9
TEMPS = {"teacher_temp": TEACHER_TEMP, "warmup_teacher_temp_epochs": 0, "center_momentum": MOMENTUM}
N_PATCHES = 6


def masks_for(rows: int, seed: int) -> Tensor:
    """Half the crops masked with 1..4 patches, the rest unmasked (as DINOv2's collate)."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(rows, N_PATCHES, dtype=torch.bool)
    for i in range(rows // 2):
        masks[i, torch.randperm(N_PATCHES, generator=gen)[: 1 + i % 4]] = True
    return masks[torch.randperm(rows, generator=gen)]


# --- dinov2/loss/ibot_patch_loss.py, written out in float64 ------------------------------------
def dinov2_ibot_sinkhorn_knopp_teacher(
    teacher_output: Tensor, teacher_temp: float, n_masked_patches: int, n_iterations: int = 3
) -> Tensor:
    """``iBOTPatchLoss.sinkhorn_knopp_teacher``: the batch size is the masked-patch count."""
    q = torch.exp(teacher_output / teacher_temp).t()
    b, k = n_masked_patches, q.shape[0]
    q = q / q.sum()
    for _ in range(n_iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def dinov2_forward_masked(student_masked: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
    loss = torch.sum(teacher_probs * F.log_softmax(student_masked / STUDENT_TEMP, dim=-1), dim=-1)
    masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    loss = loss * masks_weight
    return -loss.sum() / masks.shape[0]


def build(separate: bool, centering: str = "mean", lazy: bool = False) -> tuple[IBOT, DINO | None]:
    torch.manual_seed(0)
    ctx = objective_context()
    dino = None
    if not separate:
        dino = DINO(**HEAD, **TEMPS)
        dino.setup(ctx)
        perturb_(dino.teacher_head)
    ibot = IBOT(
        **HEAD,
        **TEMPS,
        separate_head=separate,
        centering=centering,
        freeze_last_layer_epochs=0,
        lazy_targets=lazy,
    )
    ibot.setup(ctx)
    if separate:
        perturb_(ibot.teacher_head)
    return ibot, dino


@pytest.mark.parametrize(
    ("separate", "centering", "lazy"),
    [(False, "mean", False), (True, "sinkhorn_knopp", False), (False, "mean", True),
     (True, "sinkhorn_knopp", True)],
)  # fmt: skip
def test_matches_dinov2_formula_float64(separate: bool, centering: str, lazy: bool) -> None:
    """Also with lazy_targets (the teacher's targets recomputed tile by tile)."""
    ibot, dino = build(separate, centering, lazy)
    ibot.double()
    if dino is not None:
        dino.double()
    head, teacher_head = ibot.heads
    center = torch.zeros(1, K, dtype=torch.float64)
    for step in range(2):
        masks = masks_for(8, seed=step)
        out = hand_made_step(
            b=4, n_global=2, n_local=0, seed=step, step=step, n_patches=N_PATCHES, block_masks=masks
        )
        got = ibot.loss(out).loss
        flat = masks.flatten()
        s = out.student_global.patch.flatten(0, 1)[flat]
        with torch.no_grad():
            t = teacher_head(out.teacher_global.patch.flatten(0, 1)[flat])
        if centering == "mean":
            probs = F.softmax((t - center) / TEACHER_TEMP, dim=-1)
            center = center * MOMENTUM + t.mean(dim=0, keepdim=True) * (1 - MOMENTUM)
        else:  # DINOv2's iBOT Sinkhorn-Knopp: B = the number of masked patches
            probs = dinov2_ibot_sinkhorn_knopp_teacher(t, TEACHER_TEMP, int(masks.sum()))
        # ssl_meta_arch.py: * loss_scales (2) * ibot_loss_scale (1 / n_global_crops)
        expected = dinov2_forward_masked(head(s), probs, masks) * 2 * (1 / 2)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        params = [out.student_global.patch, head.last_layer.weight]
        for a, b in zip(
            torch.autograd.grad(got, params), torch.autograd.grad(expected, params), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        if centering == "mean":
            torch.testing.assert_close(ibot.center, center, rtol=1e-12, atol=1e-14)


def test_matches_lightly_ibot_patch_loss() -> None:
    """lightly's IBOTPatchLoss: same per-image normalisation and mean centring.

    Tolerance: fp32 on both sides, rtol 1e-5 on the loss, 1e-4 on gradients.
    """
    ibot, _ = build(separate=False)
    head, teacher_head = ibot.heads
    ref = IBOTPatchLoss(
        output_dim=K, teacher_temp=TEACHER_TEMP, student_temp=STUDENT_TEMP, center_momentum=MOMENTUM
    )
    for step in range(2):
        masks = masks_for(8, seed=5 + step)
        out = hand_made_step(
            b=4,
            n_global=2,
            n_local=0,
            dtype=torch.float32,
            seed=step,
            step=step,
            n_patches=N_PATCHES,
            block_masks=masks,
        )
        got = ibot.loss(out).loss
        flat = masks.flatten()
        with torch.no_grad():
            t = teacher_head(out.teacher_global.patch.flatten(0, 1)[flat])
        s = head(out.student_global.patch.flatten(0, 1)[flat])
        expected = ref(t, s, masks.view(8, 2, 3), teacher_temp=TEACHER_TEMP)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        g_got = torch.autograd.grad(got, out.student_global.patch)[0]
        g_ref = torch.autograd.grad(expected, out.student_global.patch)[0]
        torch.testing.assert_close(g_got, g_ref, rtol=1e-4, atol=1e-7)


def test_shared_head_is_dino_s_and_not_owned() -> None:
    ibot, dino = build(separate=False)
    assert ibot.heads == (dino.head, dino.teacher_head)
    assert ibot.ema_pairs() == [] and ibot.frozen_last_layer_params() == []
    assert not any("head" in k for k in ibot.state_dict())  # DINO checkpoints the heads
    assert set(ibot.state_dict()) == {"center"}


def test_own_head_without_dino() -> None:
    torch.manual_seed(0)
    ibot = IBOT(**HEAD)  # separate_head False, but no DINO set up before it
    ibot.setup(objective_context())
    assert ibot.owns_head
    assert ibot.ema_pairs() == [(ibot.head, ibot.teacher_head)]
    assert ibot.frozen_last_layer_params() == [ibot.head.last_layer.weight]


def test_nothing_masked_gives_zero_connected_loss() -> None:
    ibot, _ = build(separate=True)
    masks = torch.zeros(8, N_PATCHES, dtype=torch.bool)
    out = hand_made_step(4, 2, 0, dtype=torch.float32, n_patches=N_PATCHES, block_masks=masks)
    loss = ibot.loss(out).loss
    assert loss.item() == 0.0
    loss.backward()
    assert out.student_global.patch.grad is not None


def test_request_carries_the_mask_spec() -> None:
    ibot = IBOT(mask_ratio=(0.2, 0.4), masked_share=0.25)
    spec = ibot.request(14).block_masks
    assert (spec.ratio_min, spec.ratio_max, spec.masked_share) == (0.2, 0.4, 0.25)


def test_bad_masks_are_named() -> None:
    ibot, _ = build(separate=True)
    out = hand_made_step(4, 2, 0, dtype=torch.float32, n_patches=N_PATCHES)
    with pytest.raises(ValueError, match="block_masks is None"):
        ibot.loss(out)
    out.views.block_masks = torch.zeros(8, N_PATCHES + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match="block_masks must be bool"):
        ibot.loss(out)
