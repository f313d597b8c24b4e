"""Learning diagnostics: chance levels pinned by hand, signals, states, warnings, runs."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from medssl import hookimpl
from medssl.builtins.objectives import CLIP, DINO, IBOT
from medssl.builtins.objectives.mae import _signals as mae_signals
from medssl.config import load_recipe
from medssl.engine.diagnostics import (
    CONSTANT_SPREAD,
    LearningMonitor,
    collapse_metrics,
    condition,
    effective_rank,
    feature_std,
    final_lines,
    gradient_shares,
    learning_signals,
    row_spread,
)
from medssl.engine.trainer import train
from medssl.testing.objectives import hand_made_step, objective_context
from medssl.types import BackboneOutput

K = 32
HEAD = {"prototypes": K, "hidden_dim": 16, "bottleneck_dim": 8}
QUICKSTART = Path(__file__).parents[2] / "recipes" / "quickstart.yaml"


def _dino(**kw: Any) -> DINO:
    torch.manual_seed(0)
    obj = DINO(**HEAD, warmup_teacher_temp_epochs=0, freeze_last_layer_epochs=0, **kw)
    obj.setup(objective_context())
    return obj.double()


def _diagnosed(step: Any) -> Any:
    return dataclasses.replace(step, diagnose=True)


# -- chance levels, by hand -------------------------------------------------------------------


def test_dino_chance_is_ln_k_and_kl_is_the_mean_pairwise_kl() -> None:
    obj = _dino(centering="mean")
    step = _diagnosed(hand_made_step(3, 2, 2, dtype=torch.float64))
    center = obj.center.clone()
    result = obj.loss(step)
    signals = result.signals
    assert signals is not None and signals.chance == pytest.approx(math.log(32))  # 3.4657
    # KL(teacher || student) over every (student crop, other teacher crop) pair, by hand.
    with torch.no_grad():
        t_logits = obj.teacher_head(step.teacher_global.cls)
        temp = result.metrics["teacher_temp"]
        t = torch.softmax((t_logits - center) / temp, dim=1).view(2, 3, K)
        cls = torch.cat([step.student_global.cls, step.student_local.cls])
        log_s = torch.log_softmax(obj.head(cls) / 0.1, dim=1).view(4, 3, K)
        pairs = [(i, j) for i in range(4) for j in range(2) if i != j]
        kl = [(t[j] * (t[j].log() - log_s[i])).sum(1).mean() for i, j in pairs]
    assert float(signals.kl) == pytest.approx(float(torch.stack(kl).mean()), rel=1e-6)
    assert signals.student_probs.shape == (6, K) and signals.teacher_probs.shape == (6, K)
    # A step that is not diagnosed computes none of it.
    assert obj.loss(hand_made_step(3, 2, 2)).signals is None


def test_a_uniform_student_scores_exactly_its_chance_level() -> None:
    obj = _dino(centering="sinkhorn_knopp")
    with torch.no_grad():  # every prototype the same vector: every logit the same
        obj.head.last_layer.weight.copy_(obj.head.last_layer.weight[:1].expand(K, -1))
    result = obj.loss(_diagnosed(hand_made_step(4, 2, 2)))
    assert result.loss.item() == pytest.approx(math.log(K), rel=1e-9)
    values = learning_signals({"dino": result}, {"dino": 1.0}, _diagnosed(hand_made_step(4, 2, 2)))
    assert values["dino"]["loss_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert values["dino"]["student_entropy_ratio"] == pytest.approx(1.0, rel=1e-9)


def test_ibot_chance_counts_the_masked_images() -> None:
    dino = _dino()
    ctx = objective_context(shared={"dino_head": dino.head, "dino_teacher_head": dino.teacher_head})
    ibot = IBOT(warmup_teacher_temp_epochs=0)
    ibot.setup(ctx)
    masks = torch.zeros(8, 6, dtype=torch.bool)
    masks[0, :2] = masks[3, 1:4] = masks[5, 5] = True  # 3 of 8 global-crop images masked
    signals = ibot.loss(_diagnosed(hand_made_step(4, 2, 0, block_masks=masks))).signals
    assert float(signals.chance) == pytest.approx(math.log(K) * 3 / 8)  # 1.2997
    assert float(signals.kl) >= 0


def test_mae_chance_is_each_images_mean_patch() -> None:
    # One image, three patches of two pixels; the first two hidden. Their mean is (1, 1):
    # squared errors (1 + 1) / 2 = 1 for each hidden patch, so the chance level is 1.
    target = torch.tensor([[[0.0, 0.0], [2.0, 2.0], [4.0, 0.0]]])
    hidden = torch.tensor([[1.0, 1.0, 0.0]])
    signals = mae_signals(target, hidden, torch.zeros(1, 2, 3))
    assert float(signals.chance) == pytest.approx(1.0)


def test_clip_chance_is_ln_batch() -> None:
    torch.manual_seed(0)
    clip = CLIP(text_width=8, text_layers=1, text_heads=2, context_length=16, view="global")
    clip.setup(objective_context())
    step = hand_made_step(4, 1, 0, dtype=torch.float32)
    step.views.text = ["a", "bb", "ccc", "dddd"]
    signals = clip.loss(_diagnosed(step)).signals
    assert signals.chance == pytest.approx(math.log(4))
    assert signals.backbone_tokens == ()  # global crop 0's CLS is already a shared output


# -- signals and states ------------------------------------------------------------------------


def test_constant_teacher_is_collapsed_and_uniform_teacher_is_uniform() -> None:
    step = hand_made_step(4, 2, 0)
    same = step.teacher_global.cls[:1].expand(8, -1).contiguous()
    step = dataclasses.replace(
        step, teacher_global=BackboneOutput(cls=same, patch=step.teacher_global.patch)
    )
    obj = _dino(centering="mean", local_crops=False)
    values = learning_signals({"dino": obj.loss(_diagnosed(step))}, {"dino": 1.0}, step)["dino"]
    assert values["teacher_spread"] <= CONSTANT_SPREAD and values["prototypes_used"] == 1
    assert condition(values) == "collapsed"
    uniform = collapse_metrics(torch.full((16, K), 1.0 / K))
    assert uniform["teacher_entropy_ratio"] == pytest.approx(1.0)
    assert condition(uniform) == "uniform"
    one_hot = torch.zeros(16, K)
    one_hot[:, 3] = 1.0
    assert condition(collapse_metrics(one_hot)) == "collapsed"
    distinct = collapse_metrics(torch.eye(K)[:16])
    assert distinct["prototypes_used"] == 16 and distinct["usage_ratio"] == pytest.approx(1.0)
    assert condition(distinct) == "unjudged"  # a healthy teacher, and no loss to judge
    assert row_spread(torch.eye(4)).item() == pytest.approx(0.75)


def test_gradient_shares_match_separate_backwards() -> None:
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(6, 4, generator=gen, requires_grad=True)
    patch = torch.randn(6, 3, 4, generator=gen, requires_grad=True)
    a = (cls.sin() * 2).sum()
    b = patch.square().mean() + 0.5 * cls.sum()
    shares = gradient_shares({"a": a, "b": b}, [cls, patch])
    ga = torch.autograd.grad(a, [cls, patch], retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(b, [cls, patch], retain_graph=True)
    total = torch.cat([(ga[0] + gb[0]).flatten(), gb[1].flatten()]).norm()
    assert float(shares["a"]) == pytest.approx(float(ga[0].norm() / total), rel=1e-6)
    b_norm = torch.cat([gb[0].flatten(), gb[1].flatten()]).norm()
    assert float(shares["b"]) == pytest.approx(float(b_norm / total), rel=1e-6)
    assert cls.grad is None and patch.grad is None  # nothing accumulated


def test_monitor_states_windows_warnings_and_resume(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LearningMonitor(total_steps=1000, window=20)
    at_chance = {"chance": 5.5, "loss_ratio": 1.0}
    with caplog.at_level(logging.WARNING, logger="medssl.engine.diagnostics"):
        for step in (10, 20):
            assert monitor.update(step, {"dino": at_chance})["dino"] == "undecided"
        assert not caplog.records
        assert monitor.update(30, {"dino": at_chance}, {"dino": "objectives.dino.x"}) == {
            "dino": "not_learning"
        }
        monitor.update(40, {"dino": at_chance})
    assert len(caplog.records) == 1
    assert "objectives.dino.x" in caplog.records[0].getMessage()
    state = json.loads(json.dumps(monitor.state_dict()))  # JSON-able, so checkpoint-safe
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = LearningMonitor(total_steps=1000)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    # The window's mean is judged: 1.0 and 0.97 average above 0.98; 0.9 twice below.
    assert (
        resumed.update(50, {"dino": {"chance": 5.5, "loss_ratio": 0.97}})["dino"] == "not_learning"
    )
    for step in (60, 70):
        state = resumed.update(step, {"dino": {"chance": 5.5, "loss_ratio": 0.9}})
    assert state["dino"] == "learning"
    assert resumed.update(80, {"koleo": {"grad_share": 0.3}})["koleo"] == "unjudged"
    summary = resumed.summary()
    assert summary["final_state"] == {"dino": "learning", "koleo": "unjudged"}
    assert summary["healthy"] and len(summary["warnings"]) == 1
    assert final_lines(summary) == ["diagnostics: dino: learning", "diagnostics: koleo: unjudged"]


def test_final_lines_repeat_the_warning_of_a_bad_final_state() -> None:
    monitor = LearningMonitor(total_steps=100, window=1)
    for step in (1, 2):  # above chance: declared after twice the window, not yet
        assert monitor.update(step, {"mae": {"chance": 1.0, "loss_ratio": 1.2}}) == {
            "mae": "undecided"
        }
    monitor.update(3, {"mae": {"chance": 1.0, "loss_ratio": 1.2}})
    lines = final_lines(monitor.summary())
    # at chance after above chance continues the streak: window 1 is held from step 3
    nudged = LearningMonitor(total_steps=100, window=1)
    for step, ratio in ((1, 1.2), (2, 1.0)):
        state = nudged.update(step, {"mae": {"chance": 1.0, "loss_ratio": ratio}})
    assert state == {"mae": "not_learning"}  # at chance at step 2, one streak since step 1
    assert lines[0] == "diagnostics: mae: not_learning (since step 3)"
    assert lines[1].startswith("warning: step 3: objective 'mae': not learning: its loss")
    assert "more than 2% above its chance level" in lines[1]


def test_feature_spread() -> None:
    gen = torch.Generator().manual_seed(0)
    healthy = torch.randn(256, 32, generator=gen)
    assert feature_std(healthy).item() == pytest.approx(1 / math.sqrt(32), rel=0.1)
    assert effective_rank(healthy).item() > 25
    rank_one = torch.randn(256, 1, generator=gen) * torch.randn(1, 32, generator=gen)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=1e-4)
    assert math.isnan(feature_std(healthy[:1]).item())


# -- runs ----------------------------------------------------------------------------------------


class UniformStudentDINO(DINO):
    """DINO whose student prototypes are one vector, frozen: the student's output is uniform
    whatever its features, so its loss is ln K at every step."""

    def setup(self, ctx: Any) -> None:
        super().setup(ctx)
        with torch.no_grad():
            weight = self.head.last_layer.weight
            weight.copy_(weight[:1].expand_as(weight))


class UniformStudentPlugin:
    @hookimpl
    def medssl_register_objectives(self, register: Any) -> None:
        register("uniform_student_dino", UniformStudentDINO)


def _quickstart_run(tmp_path: Path, registry: Any, overrides: list[str]) -> Any:
    small = [
        f"output_dir={tmp_path / 'run'}",
        "eval=[]",
        "train.threads=1",
        "train.checkpoint_every=1000",
        "train.warmup_epochs=0",
        "augmentation.n_local_crops=0",
        "backbone.embed_dim=64",
        "backbone.depth=2",
        "backbone.num_heads=2",
    ]
    resolved = load_recipe(QUICKSTART, small + overrides, registry)
    return train(resolved, registry, progress_bar=False)


def test_a_run_whose_dino_student_is_uniform_is_not_learning(
    tmp_path: Path, medssl_registry_with: Any
) -> None:
    registry = medssl_registry_with(UniformStudentPlugin())
    result = _quickstart_run(
        tmp_path,
        registry,
        [
            "objectives.dino.name=uniform_student_dino",
            "objectives.dino.freeze_last_layer_epochs=1000",  # the prototypes never move
            "objectives.ibot.weight=0",
            "objectives.mae.weight=0",
            "train.batch_size=8",
            "train.steps=10",
            "train.diagnostics_every=2",
        ],
    )
    dino = result.diagnostics["objectives"]["dino"]
    assert dino["state"] == "not_learning", dino
    assert dino["last"]["loss_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert "objectives.dino.teacher_temp" in dino["warning"]
    saved = json.loads((result.run_dir / "diagnostics.json").read_text())
    assert saved["final_state"]["dino"] == "not_learning"
    assert (result.run_dir / "loss_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_a_short_mae_run_on_the_demo_data_is_learning(tmp_path: Path, medssl_registry: Any) -> None:
    """Measured: MAE's loss / chance falls from 1.13 to 0.95 in 100 steps (about 20 s)."""
    result = _quickstart_run(
        tmp_path,
        medssl_registry,
        [
            "objectives.dino.weight=0",
            "objectives.ibot.weight=0",
            "objectives.koleo.weight=0",
            "objectives.mae.decoder_dim=64",
            "objectives.mae.decoder_depth=1",
            "objectives.mae.decoder_heads=2",
            "train.lr=1e-3",
            "train.steps=100",
            "train.diagnostics_every=5",
        ],
    )
    mae = result.diagnostics["objectives"]["mae"]
    assert mae["state"] == "learning", mae
    assert mae["last"]["loss_ratio_window"] < 0.98
