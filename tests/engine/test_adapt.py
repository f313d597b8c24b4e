"""backbone.freeze and backbone.lora: what trains, what the EMA and optimiser see, export."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medssl.builtins.backbones import VisionTransformer
from medssl.engine import checkpoint as ckpt
from medssl.engine.freeze import FreezeOptions, freeze_backbone
from medssl.engine.lora import LoraOptions, add_lora, has_lora, merge_lora

from .engine_worker import HEAD, recipe, registry, train

OBJECTIVES = {"dino": {**HEAD, "centering": "mean"}, "ibot": dict(HEAD)}


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(embed_dim=32, depth=3, num_heads=2, img_size=56)


def test_freeze_names_exactly_the_embedding_and_first_blocks() -> None:
    model = _vit()
    frozen = freeze_backbone(model, FreezeOptions(patch_embed=True, blocks=2))
    names = [n for n, _ in model.named_parameters()]
    expected = {
        n
        for n in names
        if n.startswith(("vit.patch_embed.", "vit.blocks.0.", "vit.blocks.1."))
        or n in {"vit.cls_token", "vit.pos_embed", "mask_token"}
    }
    assert set(frozen) == expected
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected


def test_freeze_by_prefix_list() -> None:
    model = _vit()
    options = FreezeOptions.model_validate(["vit.blocks.2.mlp", "vit.norm"])
    frozen = freeze_backbone(model, options)
    assert frozen == sorted(
        ["vit.blocks.2.mlp.fc1.weight", "vit.blocks.2.mlp.fc1.bias", "vit.blocks.2.mlp.fc2.weight"]
        + ["vit.blocks.2.mlp.fc2.bias", "vit.norm.weight", "vit.norm.bias"]
    )


def _frozen_run(tmp_path: Path, freeze: Any) -> Any:
    config = recipe(tmp_path / "run", OBJECTIVES, {"steps": 2, "batch_size": 4})
    config["backbone"]["freeze"] = freeze
    return train(config)


def test_frozen_parameters_stay_out_of_optimiser_and_ema_and_do_not_change(
    tmp_path: Path,
) -> None:
    torch.manual_seed(3)
    trainer = _frozen_run(tmp_path, {"patch_embed": True, "blocks": 1})
    model = trainer.raw_model
    frozen = {n for n, p in model.student.named_parameters() if not p.requires_grad}
    assert "vit.blocks.0.attn.qkv.weight" in frozen and "vit.blocks.1.attn.qkv.weight" not in frozen
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    params = dict(model.student.named_parameters())
    assert not any(id(params[n]) in in_optimizer for n in frozen)
    # The same recipe built again (seeded the same) gives the initial weights.
    from medssl.config import build_component, resolve_recipe

    config = recipe(tmp_path / "x", OBJECTIVES, {"steps": 2, "batch_size": 4})
    torch.manual_seed(3)
    resolved = resolve_recipe(config, registry(), "test")
    torch.manual_seed(3)
    initial = dict(build_component(registry(), resolved.backbone).named_parameters())
    teacher = dict(model.teacher.backbone.named_parameters())
    for name in frozen:
        assert torch.equal(params[name], initial[name]), name
        assert torch.equal(teacher[name], initial[name]), name
    assert not torch.equal(
        params["vit.blocks.1.attn.qkv.weight"], initial["vit.blocks.1.attn.qkv.weight"]
    )
    # The teacher holds the student's frozen tensors, not copies; the trained ones are its own.
    for name, value in teacher.items():
        assert (value is params[name]) == (name in frozen), name
    # Checkpoints store the shared tensors once (under the student's name).
    saved = load_file(
        str(ckpt.latest_valid_checkpoint(tmp_path / "run" / "checkpoints") / ckpt.MODEL_FILE)
    )
    assert "student.vit.blocks.0.attn.qkv.weight" in saved
    assert "teacher.backbone.vit.blocks.0.attn.qkv.weight" not in saved
    assert "teacher.backbone.vit.blocks.1.attn.qkv.weight" in saved


@pytest.mark.parametrize(
    ("freeze", "key"),
    [
        ({"blocks": 5}, "backbone.freeze.blocks"),
        (["vit.nothing"], "backbone.freeze.params.0"),
        ({"first_blocks": 2}, "backbone.freeze.first_blocks"),
        ({"blocks": -1}, "backbone.freeze.blocks"),
        ({"params": ["vit", "mask_token"]}, "backbone.freeze:"),
    ],
)
def test_validate_names_the_freeze_key(
    freeze: Any, key: str, tiny_recipe: Path, medssl_cli: Any
) -> None:
    config = yaml.safe_load(tiny_recipe.read_text())
    config["backbone"]["freeze"] = freeze
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = medssl_cli(["validate", str(tiny_recipe)], expect=1)
    assert key in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("lora", "key"),
    [
        ({"targets": ["q_proj"]}, "backbone.lora.targets"),
        ({"blocks": [7]}, "backbone.lora.blocks"),
        ({"rank": 0}, "backbone.lora.rank"),
    ],
)
def test_validate_names_the_lora_key(
    lora: Any, key: str, tiny_recipe: Path, medssl_cli: Any
) -> None:
    pytest.importorskip("peft")
    config = yaml.safe_load(tiny_recipe.read_text())
    config["backbone"]["lora"] = lora
    tiny_recipe.write_text(yaml.safe_dump(config))
    result = medssl_cli(["validate", str(tiny_recipe)], expect=1)
    assert key in result.output
    assert "Traceback" not in result.output


def test_merged_lora_equals_unmerged_and_loads_in_automodel(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from transformers import AutoModel

    from medssl.export.huggingface import export_hf_dinov2

    model = _vit().eval()
    add_lora(model, LoraOptions(rank=4, alpha=8, targets=["qkv", "fc2"], blocks=2))
    assert has_lora(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0: make the adapters do something
                p.normal_(0, 0.1)
    x = torch.randn(2, 1, 56, 56)
    with torch.no_grad():
        before = model(x)
        merge_lora(model)
        after = model(x)
    assert not has_lora(model)
    torch.testing.assert_close(after.cls, before.cls, atol=1e-5, rtol=0)
    folder = export_hf_dinov2(model, tmp_path / "hf", channels=1)
    hf = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = hf(pixel_values=x).last_hidden_state
    torch.testing.assert_close(hidden[:, 0], before.cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[:, 1:], before.patch, atol=1e-5, rtol=0)


def _lora_config(run_dir: Path, steps: int = 4) -> dict[str, Any]:
    config = recipe(run_dir, OBJECTIVES, {"steps": steps, "batch_size": 4, "checkpoint_every": 2})
    config["backbone"]["lora"] = {"rank": 2, "alpha": 4, "targets": ["qkv", "proj", "fc1", "fc2"]}
    return config


def test_lora_trains_only_adapters_and_resumes_identically(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from medssl.config import resolve_recipe
    from medssl.engine.trainer import Trainer

    config = _lora_config(tmp_path / "a")
    torch.manual_seed(0)
    first = train(config)
    student = dict(first.raw_model.student.named_parameters())
    trainable = {n for n, p in student.items() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    in_optimizer = sum(p.numel() for g in first.optimizer.param_groups for p in g["params"])
    head = sum(p.numel() for o in first.raw_model.objectives.values() for p in o.parameters())
    assert in_optimizer <= sum(student[n].numel() for n in trainable) + head
    # Only the adapters changed: base weights equal a freshly seeded build.
    from medssl.config import build_component

    resolved = resolve_recipe(config, registry(), "test")
    torch.manual_seed(3)
    initial = build_component(registry(), resolved.backbone).state_dict()
    for name, value in student.items():
        plain = name.replace(".base_layer", "")
        if ".lora_" in name:
            continue
        assert torch.equal(value, initial[plain]), name
    assert any(student[n].abs().sum() > 0 for n in trainable if "lora_B" in n)
    # The teacher is the EMA of the adapted student: it has the adapters too.
    assert has_lora(first.raw_model.teacher.backbone)
    # The run's backbone.safetensors is a plain backbone: adapters merged.
    plain = load_file(str(tmp_path / "a" / "backbone.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in plain)

    # Resume from step 2 of a copy: ends where the uninterrupted run ended.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / f"{ckpt.PREFIX}{4:08d}")
    config_b = _lora_config(tmp_path / "b")
    reg = registry()
    resumed = Trainer(resolve_recipe(config_b, reg, "test"), reg, resume=True, progress_bar=False)
    resumed.fit()
    a_state = first.raw_model.state_dict()
    for name, value in resumed.raw_model.state_dict().items():
        assert torch.equal(value, a_state[name]), name
