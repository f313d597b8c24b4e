"""Schedules and parameter groups against DINOv2's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medssl.builtins.objectives.heads import DINOHead
from medssl.engine.schedules import (
    CosineSchedule,
    apply_to_optimizer,
    dinov2_schedules,
    layer_id,
    param_groups,
    scaled_lr,
    teacher_temperature,
)
from medssl.testing.objectives import tiny_backbone


def dinov2_cosine_scheduler(base, final, total, warmup=0, start_warmup=0.0, freeze=0):
    """dinov2/utils/utils.py::CosineScheduler.schedule, written out (values past the end: final)."""
    freeze_schedule = np.zeros(freeze)
    warmup_schedule = np.linspace(start_warmup, base, warmup)
    iters = np.arange(total - warmup - freeze)
    schedule = final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((freeze_schedule, warmup_schedule, schedule))


@pytest.mark.parametrize(
    ("base", "final", "total", "warmup", "start", "freeze"),
    [
        (0.004, 1e-6, 50, 10, 0.0, 0),
        (0.04, 0.4, 30, 0, 0.0, 0),
        (0.992, 1.0, 40, 0, 0.0, 0),
        (1e-3, 1e-6, 40, 5, 1e-5, 7),
    ],
)
def test_cosine_schedule_matches_dinov2(base, final, total, warmup, start, freeze) -> None:
    schedule = CosineSchedule(base, final, total, warmup, start, freeze)
    expected = dinov2_cosine_scheduler(base, final, total, warmup, start, freeze)
    got = np.array([schedule(i) for i in range(total)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert schedule(total) == schedule(total + 100) == final


def test_cosine_schedule_rejects_bad_lengths() -> None:
    with pytest.raises(ValueError, match="exceed total_steps"):
        CosineSchedule(1.0, 0.0, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="step must be >= 0"):
        CosineSchedule(1.0, 0.0, 5)(-1)


def test_scaled_lr() -> None:
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 256) == pytest.approx(0.002)  # sqrt(1/4)
    assert scaled_lr(0.004, 2560) == pytest.approx(0.004 * math.sqrt(2.5))
    assert scaled_lr(0.004, 256, rule="linear") == pytest.approx(0.001)
    with pytest.raises(ValueError, match="rule"):
        scaled_lr(0.004, 256, rule="cube")


def test_teacher_temperature() -> None:
    temps = [teacher_temperature(s, 10, 0.04, 0.07, 3) for s in range(40)]
    np.testing.assert_allclose(temps[:30], np.linspace(0.04, 0.07, 30))
    assert temps[30:] == [0.07] * 10
    assert teacher_temperature(0, 10, 0.04, 0.07, 0) == 0.07


def test_dinov2_schedules() -> None:
    s = dinov2_schedules(total_steps=100, steps_per_epoch=5, batch_size=256, warmup_epochs=2)
    lr = 0.004 * math.sqrt(256 / 1024)
    assert s.lr(0) == 0.0 and s.lr(9) == pytest.approx(lr) and s.lr(100) == 1e-6
    assert (
        s.last_layer_lr(4) == 0.0
        and s.last_layer_lr(5) == 0.0
        and s.last_layer_lr(14) == pytest.approx(lr)
    )
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(100) == pytest.approx(0.4)
    assert s.momentum(0) == pytest.approx(0.992) and s.momentum(100) == 1.0
    assert list(s.at(3)) == ["lr", "last_layer_lr", "weight_decay", "momentum"]
    short = dinov2_schedules(total_steps=3, steps_per_epoch=100, batch_size=8)  # clipped
    assert short.lr(2) == pytest.approx(scaled_lr(0.004, 8))


def test_layer_id_follows_dinov2() -> None:
    assert layer_id("vit.patch_embed.proj.weight", 12) == 0
    assert layer_id("vit.cls_token", 12) == 0
    assert layer_id("mask_token", 12) == 0
    assert layer_id("vit.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id("vit.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("vit.norm.weight", 12) == 13


def test_param_groups_on_the_backbone_and_a_head() -> None:
    backbone = tiny_backbone()  # 2 blocks
    head = DINOHead(32, prototypes=16, hidden_dim=8, bottleneck_dim=4)
    groups = param_groups(
        backbone,
        [head],
        layer_decay=0.9,
        patch_embed_lr_mult=0.2,
        last_layer_params=[head.last_layer.weight],
    )
    by_name = {n: g for g in groups for n in g["names"]}
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert len(by_name) == len(trainable) + len(list(head.parameters()))
    assert sum(len(g["params"]) for g in groups) == len(by_name)  # each parameter once
    pe = by_name["vit.patch_embed.proj.weight"]
    assert pe["lr_multiplier"] == pytest.approx(0.9**3 * 0.2) and pe["wd_multiplier"] == 1.0
    assert by_name["vit.patch_embed.proj.bias"]["wd_multiplier"] == 0.0
    assert by_name["vit.cls_token"]["lr_multiplier"] == pytest.approx(0.9**3)
    assert by_name["vit.cls_token"]["wd_multiplier"] == 0.0
    assert by_name["vit.pos_embed"]["wd_multiplier"] == 0.0
    assert by_name["mask_token"]["wd_multiplier"] == 0.0
    q0 = by_name["vit.blocks.0.attn.qkv.weight"]
    assert q0["lr_multiplier"] == pytest.approx(0.9**2) and q0["wd_multiplier"] == 1.0
    assert by_name["vit.blocks.1.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert by_name["vit.blocks.1.norm1.weight"]["wd_multiplier"] == 0.0
    assert by_name["vit.blocks.1.ls1.gamma"]["wd_multiplier"] == 0.0
    assert by_name["vit.norm.weight"]["lr_multiplier"] == 1.0
    assert by_name["heads.0.mlp.0.weight"]["lr_multiplier"] == 1.0
    assert by_name["heads.0.last_layer.weight"]["is_last_layer"]
    assert not by_name["heads.0.mlp.0.weight"]["is_last_layer"]

    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups])
    apply_to_optimizer(opt, lr=0.1, weight_decay=0.04, last_layer_lr=0.0)
    for group in opt.param_groups:
        expected_lr = 0.0 if group["is_last_layer"] else 0.1 * group["lr_multiplier"]
        assert group["lr"] == pytest.approx(expected_lr)
        assert group["weight_decay"] == pytest.approx(0.04 * group["wd_multiplier"])


def test_param_groups_skip_frozen_and_check_options() -> None:
    model = nn.Linear(3, 3)
    model.bias.requires_grad_(False)
    groups = param_groups(model)
    assert [g["names"] for g in groups] == [["weight"]]
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups(model, layer_decay=0)
