"""SSLModel: one forward for every objective, prototypes normalised once per head and step."""

from __future__ import annotations

import pytest
import torch

from medssl.builtins.objectives import DINO, IBOT, heads
from medssl.engine.model import NonFiniteLossError, SSLModel
from medssl.testing.objectives import make_views, objective_context, tiny_backbone

# center_momentum 1: the centre stays put, so two forwards see the same targets.
HEAD = {"prototypes": 64, "hidden_dim": 16, "bottleneck_dim": 8, "center_momentum": 1.0}


def model_and_views() -> tuple[SSLModel, object]:
    torch.manual_seed(0)
    student = tiny_backbone()
    ctx = objective_context(embed_dim=student.embed_dim)
    objectives = {"dino": DINO(**HEAD), "ibot": IBOT(**HEAD)}
    for objective in objectives.values():
        objective.setup(ctx)
    model = SSLModel(student, {name: (obj, 1.0) for name, obj in objectives.items()})
    return model, make_views(model.view_request(), batch_size=4)


def test_dino_and_ibot_share_one_normalisation_per_head(monkeypatch) -> None:
    model, views = model_and_views()
    calls = []
    original = heads.normalize_rows

    def counting(v: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return original(v)

    monkeypatch.setattr(heads, "normalize_rows", counting)
    loss, metrics, _ = model(views, 0.5, 20, 200)  # past the prototypes' frozen epoch
    # DINO's head is iBOT's: once for the student (with grad), once for the teacher.
    assert sorted(calls) == [False, True]
    assert {"loss_dino", "loss_ibot", "loss"} <= metrics.keys()
    loss.backward()
    head = model.objectives["dino"].head
    assert head.last_layer.weight.grad is not None
    assert head.last_layer.weight.grad.abs().sum() > 0
    assert head.prototypes is not head.prototypes  # the cache closed with the forward


def test_gradients_equal_uncached_prototypes(monkeypatch) -> None:
    model, views = model_and_views()
    loss, _, _ = model(views, 0.5, 20, 200)
    loss.backward()
    cached = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model._step_caches = []  # every access normalises again, as before the cache existed
    loss_again, _, _ = model(views, 0.5, 20, 200)
    loss_again.backward()
    torch.testing.assert_close(loss_again, loss)
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(param.grad, cached[name], msg=name)


def test_non_finite_loss_names_the_objective() -> None:
    model, views = model_and_views()
    views.global_crops[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="'dino'"):
        model(views, 0.5, 20, 200)
