"""The DINO head's layout, and loading heads saved by facebookresearch/dinov2."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medssl.builtins.objectives import DINO, IBOT
from medssl.builtins.objectives.heads import DINOHead, load_dinov2_head, normalize_rows
from medssl.testing.objectives import objective_context

K, BOTTLENECK, HIDDEN, EMBED = 32, 8, 16, 12


class DINOv2StyleHead(nn.Module):
    """dinov2/layers/dino_head.py's layout: old-style ``weight_norm`` with the gain fixed at 1."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(EMBED, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, BOTTLENECK),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm
            self.last_layer = nn.utils.weight_norm(nn.Linear(BOTTLENECK, K, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def save_checkpoint(tmp_path: Path, head: nn.Module, prefix: str = "dino_head") -> Path:
    state = {f"{prefix}.{k}": v for k, v in head.state_dict().items()}
    state["backbone.cls_token"] = torch.zeros(1, 1, EMBED)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": state}, path)
    return path


def test_head_layout_and_weight_norm() -> None:
    head = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK, n_layers=3)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    torch.testing.assert_close(head.prototypes.norm(dim=1), torch.ones(K))
    x = torch.randn(4, EMBED)
    weight_normed = torch.nn.utils.parametrizations.weight_norm(
        torch.nn.Linear(BOTTLENECK, K, bias=False)
    )
    with torch.no_grad():
        weight_normed.parametrizations.weight.original0.fill_(1.0)  # gain fixed at 1 (DINOv2)
        weight_normed.parametrizations.weight.original1.copy_(head.last_layer.weight)
    expected = weight_normed(F.normalize(head.mlp(x), dim=-1))
    torch.testing.assert_close(head(x), expected)
    assert sum(isinstance(m, torch.nn.Linear) for m in DINOHead(EMBED, 8, n_layers=1).mlp) == 1


def test_dino_starts_from_a_dinov2_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = DINOv2StyleHead()
    path = save_checkpoint(tmp_path, reference)
    dino = DINO(prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK, head_init=str(path))
    dino.setup(objective_context())
    x = torch.randn(5, EMBED)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(dino.head(x), expected)
    torch.testing.assert_close(dino.teacher_head(x), expected)


def test_ibot_own_head_loads_the_ibot_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = DINOv2StyleHead()
    path = save_checkpoint(tmp_path, reference, prefix="ibot_head")
    ibot = IBOT(prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK, head_init=str(path))
    ibot.setup(objective_context())
    x = torch.randn(3, EMBED)
    torch.testing.assert_close(ibot.head(x), reference(x).detach())


def test_bad_head_checkpoints(tmp_path: Path) -> None:
    head = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    with pytest.raises(FileNotFoundError, match="head_init"):
        load_dinov2_head(head, str(tmp_path / "absent.pth"))
    reference = DINOv2StyleHead()
    reference.last_layer.weight_g.data.fill_(2)
    with pytest.raises(ValueError, match="gain other than 1"):
        load_dinov2_head(head, str(save_checkpoint(tmp_path, reference)))
    other = DINOHead(EMBED, prototypes=2 * K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    with pytest.raises(ValueError, match="does not fit"):
        load_dinov2_head(other, str(save_checkpoint(tmp_path, DINOv2StyleHead())))
    torch.save({"backbone.x": torch.zeros(1)}, tmp_path / "nohead.pth")
    with pytest.raises(ValueError, match="no 'dino_head"):
        load_dinov2_head(head, str(tmp_path / "nohead.pth"))


def test_medssl_head_round_trips_through_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    head = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    save_file(
        {f"dino_head.{k}": v for k, v in head.state_dict().items()}, tmp_path / "h.safetensors"
    )
    fresh = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    load_dinov2_head(fresh, str(tmp_path / "h.safetensors"))
    x = torch.randn(2, EMBED)
    torch.testing.assert_close(fresh(x), head(x))


def test_normalize_rows_matches_f_normalize_and_its_gradient() -> None:
    v = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_rows, (v,))
    with torch.no_grad():
        v[2] = 0.0  # a clamped row: divided by eps, no projection in the gradient
        v[4] *= 1e-14
    grad = torch.randn(6, 5, dtype=torch.float64)
    ours = normalize_rows(v)
    expected = F.normalize(v, dim=1)
    assert torch.equal(ours, expected)
    (g_ours,) = torch.autograd.grad(ours, v, grad)
    (g_expected,) = torch.autograd.grad(expected, v, grad)
    torch.testing.assert_close(g_ours, g_expected, rtol=1e-12, atol=0.0)
    with pytest.raises(ValueError, match="2-D"):
        normalize_rows(torch.randn(2, 3, 4))


def test_normalize_rows_into_bf16_equals_normalise_then_cast() -> None:
    v = torch.randn(40, 8, requires_grad=True)
    with torch.no_grad():
        v[5] = 0.0
    grad = torch.randn(40, 8).to(torch.bfloat16)
    ours = normalize_rows(v, torch.bfloat16)
    expected = F.normalize(v, dim=1).to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, expected)
    (g_ours,) = torch.autograd.grad(ours, v, grad)
    (g_expected,) = torch.autograd.grad(expected, v, grad)
    assert g_ours.dtype == torch.float32
    torch.testing.assert_close(g_ours, g_expected, rtol=1e-5, atol=1e-5)


def test_step_cache_normalises_once_and_sums_the_gradients() -> None:
    head = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    a, b = torch.randn(K, BOTTLENECK), torch.randn(K, BOTTLENECK)
    assert head.prototypes is not head.prototypes  # no cache outside a step
    expected = torch.autograd.grad(
        (head.prototypes * a).sum() + (head.prototypes * b).sum(), head.last_layer.weight
    )[0]
    with head.step_cache():
        first = head.prototypes
        assert head.prototypes is first
        with torch.no_grad():
            detached = head.prototypes
        assert detached is not first and not detached.requires_grad
        assert head.prototypes is first
        loss = (first * a).sum() + (head.prototypes * b).sum()
    assert head.prototypes is not first  # closed: the next step sees the updated weight
    (grad,) = torch.autograd.grad(loss, head.last_layer.weight)
    torch.testing.assert_close(grad, expected)


def test_prototypes_as_caches_the_cast_within_a_step() -> None:
    head = DINOHead(EMBED, prototypes=K, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    a, b = torch.randn(K, BOTTLENECK), torch.randn(K, BOTTLENECK)
    with head.step_cache():
        with torch.no_grad():
            cast = head.prototypes_as(torch.bfloat16)
            assert cast.dtype == torch.bfloat16
            assert head.prototypes_as(torch.bfloat16) is cast
            torch.testing.assert_close(cast, head.prototypes.to(torch.bfloat16))
        first = head.prototypes_as(torch.bfloat16)
        assert first is not cast and first.requires_grad
        assert head.prototypes_as(torch.bfloat16) is first
        assert head.prototypes_as(torch.float32) is head.prototypes
        loss = (first.float() * a).sum() + (head.prototypes_as(torch.bfloat16).float() * b).sum()
    assert head.prototypes_as(torch.bfloat16) is not first
    (grad,) = torch.autograd.grad(loss, head.last_layer.weight)
    expected = torch.autograd.grad(
        (head.prototypes.to(torch.bfloat16).float() * (a + b)).sum(), head.last_layer.weight
    )[0]
    # Each use's gradient is rounded to bf16 before they add up: a few bf16 steps (2^-8)
    # of the gradient's scale (a and b may cancel, so no relative bound per element).
    torch.testing.assert_close(grad, expected, rtol=0.0, atol=0.02 * float(expected.abs().max()))
