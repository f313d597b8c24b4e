"""VisionTransformer's stochastic depth: above a rate of 0.1 a residual branch runs only on
the samples it keeps (DINOv2's ``drop_add_residual_stochastic_depth``)."""

from __future__ import annotations

import torch

from medssl.builtins.backbones import VisionTransformer

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 16}


def _vit(rate: float) -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(**TINY, drop_path_rate=rate).double()
    for p in vit.parameters():  # LayerScale starts at 1e-5: make the branches count
        p.data.normal_(0, 0.2)
    return vit


def test_branch_runs_on_the_kept_samples_only(monkeypatch) -> None:
    """Depth 2 at rate 0.8: timm's linear rates are 0 and 0.8, so block 1 keeps
    int(8 * 0.2) = 1 sample per branch, scaled by 8; block 0 runs as usual."""
    vit = _vit(0.8).train()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.arange(n, device=device))
    seen = []
    vit.vit.blocks[1].attn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    got = vit(x).cls
    # the same by hand: block 0 whole, block 1's branches on sample 0 only
    tokens = vit.vit.blocks[0](vit._embed(x, None))
    b1 = vit.vit.blocks[1]
    for norm, branch, scale in ((b1.norm1, b1.attn, b1.ls1), (b1.norm2, b1.mlp, b1.ls2)):
        tokens = tokens.clone()
        tokens[:1] = tokens[:1] + 8 * scale(branch(norm(tokens[:1])))
    want = vit.vit.norm(tokens)[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert seen[0] == 1  # the hook ran once for the kept sample, not for all 8
    got.sum().backward()
    assert all(
        p.grad is not None for p in vit.parameters() if p.requires_grad and p is not vit.mask_token
    )


def test_eval_and_low_rates_are_timm_s_blocks() -> None:
    """Evaluation ignores drop-path; at rates <= 0.1 training uses timm's DropPath as is."""
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    vit = _vit(0.8).eval()
    want = vit.vit.norm(vit.vit.blocks(vit._embed(x, None)))[:, 0]
    torch.testing.assert_close(vit(x).cls, want, rtol=0, atol=0)
    low = _vit(0.1).train()
    torch.manual_seed(3)
    got = low(x).cls
    torch.manual_seed(3)
    want = low.vit.norm(low.vit.blocks(low._embed(x, None)))[:, 0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_subset_drop_path_is_seeded() -> None:
    vit = _vit(0.8).train()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    torch.manual_seed(5)
    a = vit(x).cls
    torch.manual_seed(5)
    b = vit(x).cls
    torch.manual_seed(6)
    c = vit(x).cls
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
