"""CLIP: symmetric InfoNCE against its formula (float64), text encoders, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medssl.builtins.objectives import CLIP
from medssl.builtins.objectives.clip import ByteTokenizer
from medssl.testing.objectives import make_step, make_views, objective_context, tiny_backbone

OPTIONS = {
    "projection_dim": 8,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 32,
}


def build(**kw):
    torch.manual_seed(0)
    clip = CLIP(**{**OPTIONS, **kw})
    clip.setup(objective_context(embed_dim=32))
    return clip, tiny_backbone(embed_dim=32)


def test_matches_symmetric_infonce_float64() -> None:
    clip, backbone = build()
    clip.double()
    backbone.double()
    views = make_views(clip.request(4), batch_size=4, image_size=16)
    views.single_view = views.single_view.double()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(1 / 0.05))
    got = clip.loss(make_step(backbone, views)).loss
    image = clip.image_projection(backbone(views.single_view).cls)
    text = clip.text_projection(clip.text_encoder(views.text))
    logits = clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
    # -log softmax of the matching pair, rows (image -> text) and columns (text -> image).
    i2t = -torch.diagonal(logits.log_softmax(dim=1)).mean()
    t2i = -torch.diagonal(logits.log_softmax(dim=0)).mean()
    expected = (i2t + t2i) / 2
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    params = [clip.logit_scale, clip.text_projection.weight, backbone.vit.cls_token]
    for a, b in zip(
        torch.autograd.grad(got, params), torch.autograd.grad(expected, params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_logit_scale_starts_at_1_over_0_07_and_is_clamped() -> None:
    clip, backbone = build()
    torch.testing.assert_close(clip.logit_scale.exp().item(), 1 / 0.07)
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)
    views = make_views(clip.request(4), batch_size=2, image_size=16)
    assert clip.loss(make_step(backbone, views)).metrics["logit_scale"] == pytest.approx(100.0)


def test_global_crop_zero_is_used_when_asked() -> None:
    clip, backbone = build(view="global")
    request = clip.request(4)
    assert request.text and request.global_crops and not request.single_view
    views = make_views(request, batch_size=2, image_size=16)
    step = make_step(backbone, views)
    loss = clip.loss(step).loss
    views.single_view = views.global_crops[:2]
    clip_single, _ = build()
    clip_single.load_state_dict(clip.state_dict())
    step_single = make_step(backbone, views)
    step_single.student_global = None
    torch.testing.assert_close(clip_single.loss(step_single).loss, loss)


def test_missing_text_is_a_clear_error() -> None:
    clip, backbone = build()
    views = make_views(clip.request(4), batch_size=2, image_size=16)
    views.text = None
    with pytest.raises(ValueError, match="needs report text but views.text is None"):
        clip.loss(make_step(backbone, views))
    views.text = ["only one"]
    with pytest.raises(ValueError, match="1 entries for a batch of 2"):
        clip.loss(make_step(backbone, views))


def test_byte_tokenizer() -> None:
    ids, eos = ByteTokenizer(8)(["ab", "épanchement pleural"])
    assert ids[0, :4].tolist() == [256, 97, 98, 257] and eos[0] == 3
    assert (ids[0, 4:] == 258).all()
    assert eos[1] == 7 and ids[1, 7] == 257  # truncated to 6 bytes
    assert ids[1, 1:3].tolist() == list("é".encode())


def _tiny_hf_text_model(folder: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lungs", "clear", "no", "effusion"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)


@pytest.mark.slow
def test_local_hugging_face_text_model(tmp_path: Path) -> None:
    _tiny_hf_text_model(tmp_path)
    clip, backbone = build(text_model=str(tmp_path))
    assert clip.text_projection.in_features == 16
    views = make_views(clip.request(4), batch_size=2, image_size=16)
    loss = clip.loss(make_step(backbone, views)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in clip.text_encoder.parameters())


def test_missing_text_model_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="text_model"):
        build(text_model=str(tmp_path / "absent"))


def _split(views, rank: int, per_rank: int):
    from medssl.types import Views

    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    part = Views(batch_size=per_rank)
    part.single_view = views.single_view[rows]
    part.text = views.text[rows]
    return part


def _clip_rank(rank: int, world: int, init_file: str, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        clip, backbone = build()
        clip.double()
        backbone.double()
        views = make_views(clip.request(4), batch_size=6, image_size=16)
        views.single_view = views.single_view.double()
        loss = clip.loss(make_step(backbone, _split(views, rank, 3))).loss
        params = [clip.logit_scale, clip.text_projection.weight, clip.image_projection.weight]
        out[rank] = (loss.detach(), [g.detach() for g in torch.autograd.grad(loss, params)])
    finally:
        dist.destroy_process_group()


def test_gathers_the_global_batch_across_ranks(tmp_path: Path) -> None:
    """Two gloo ranks with 3 pairs each: the mean of their losses and of their gradients
    (what DDP applies) equal one process's on all 6 pairs."""
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(_clip_rank, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    clip, backbone = build()
    clip.double()
    backbone.double()
    views = make_views(clip.request(4), batch_size=6, image_size=16)
    views.single_view = views.single_view.double()
    loss = clip.loss(make_step(backbone, views)).loss
    params = [clip.logit_scale, clip.text_projection.weight, clip.image_projection.weight]
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close((out[0][0] + out[1][0]) / 2, loss.detach(), rtol=1e-12, atol=1e-12)
    for i, g in enumerate(grads):
        torch.testing.assert_close((out[0][1][i] + out[1][1][i]) / 2, g, rtol=1e-10, atol=1e-12)
