"""The training loop: gradient accumulation, exact resume after SIGKILL, SIGTERM, compile."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medssl.engine import checkpoint as ckpt
from medssl.engine.trainer import make_strategy
from medssl.testing.pytest_plugin import TINY_RECIPE

from .engine_worker import HEAD, recipe, train
from .test_distributed import assert_same_weights, assert_scaled_close

# -- gradient accumulation ----------------------------------------------------------------

# Batch-separable objectives: every term is a mean of per-image terms with nothing shared
# across the batch. DINO/iBOT with mean centring and center_momentum 1 (the centre would
# otherwise move after each micro-batch, changing the next micro-batch's targets), MAE with
# masks fixed by the image. Not separable: Sinkhorn-Knopp (normalises over the batch),
# KoLeo (nearest neighbour within the batch), a moving centre.
SEPARABLE = {
    "dino": {**HEAD, "centering": "mean", "center_momentum": 1.0},
    "ibot": {**HEAD, "separate_head": True, "centering": "mean", "center_momentum": 1.0},
    "mae": {"view": "global", "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
}


@pytest.mark.slow
def test_two_micro_batches_of_two_equal_one_batch_of_four(tmp_path: Path) -> None:
    full = train(recipe(tmp_path / "full", SEPARABLE, {"batch_size": 4, "steps": 2}))
    accum = train(
        recipe(tmp_path / "accum", SEPARABLE, {"batch_size": 2, "grad_accumulation": 2, "steps": 2})
    )
    assert full.global_batch == accum.global_batch == 4
    assert full.peak_lr == accum.peak_lr
    # Measured: ~1e-7 relative (fp32 summation order).
    assert_scaled_close(accum.first_grads, full.first_grads, 1e-5, "accumulated gradient")
    assert_same_weights(accum.raw_model.state_dict(), full.raw_model.state_dict())


@pytest.mark.slow
def test_accumulation_is_not_equivalent_for_sinkhorn_knopp(tmp_path: Path) -> None:
    """The control: Sinkhorn-Knopp over 2 rows is not Sinkhorn-Knopp over 4."""
    objectives = {"dino": {**HEAD, "centering": "sinkhorn_knopp"}}
    full = train(recipe(tmp_path / "full", objectives, {"batch_size": 4, "steps": 1}))
    accum = train(
        recipe(
            tmp_path / "accum", objectives, {"batch_size": 2, "grad_accumulation": 2, "steps": 1}
        )
    )
    with pytest.raises(AssertionError):
        assert_scaled_close(accum.first_grads, full.first_grads, 1e-3, "sinkhorn")


def test_lr_scales_with_the_effective_batch(tmp_path: Path) -> None:
    objectives = {"dino": {**HEAD, "centering": "mean"}}
    config = recipe(tmp_path / "a", objectives, {"batch_size": 2, "steps": 1}, n_images=8)
    config["train"].pop("lr")
    one = train(config)
    config = recipe(tmp_path / "b", objectives, {"batch_size": 2, "steps": 1}, n_images=8)
    config["train"].pop("lr")
    config["train"]["grad_accumulation"] = 4
    four = train(config)
    assert (one.global_batch, four.global_batch) == (2, 8)
    # DINOv2's rule: base_lr x sqrt(global batch / 1024).
    assert four.peak_lr == pytest.approx(one.peak_lr * 2.0)


def test_cpu_optimiser_is_fused_adamw(tmp_path: Path) -> None:
    """One fused AdamW kernel per tensor on the CPU too (4x faster than tensor by tensor
    on ViT-S + a 65,536-prototype head, benchmarks/RESULTS.md), and it trains."""
    trainer = train(recipe(tmp_path, {"dino": HEAD}, {"batch_size": 2, "steps": 1}))
    optimizer = trainer.optimizer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True
    steps = {float(state["step"]) for state in optimizer.state.values()}
    assert steps == {1.0}  # the step ran and built the moments of every trained tensor


@pytest.mark.parametrize("scale", [1e-3, 10.0])
def test_cpu_clip_is_bit_identical_to_clip_grad_norm(tmp_path: Path, scale: float) -> None:
    """Below the threshold the CPU clip skips the multiply by 1; above it, it scales."""
    trainer = train(recipe(tmp_path, {"dino": HEAD}, {"batch_size": 2, "steps": 1}))
    params = [p for p in trainer.raw_model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    expected = [p.grad.clone() for p in params]
    total = torch.nn.utils.clip_grad_norm_([_with_grad(g) for g in expected], 3.0)
    trainer._clip_gradients(3.0)
    assert (float(total) > 3.0) == (scale > 1.0)
    for p, g in zip(params, expected, strict=True):
        assert torch.equal(p.grad, g)


def _with_grad(grad: torch.Tensor) -> torch.Tensor:
    """A stand-in parameter whose ``.grad`` is ``grad`` itself (clipped in place)."""
    holder = torch.zeros_like(grad, requires_grad=True)
    holder.grad = grad
    return holder


# -- kill and resume ----------------------------------------------------------------------


#: ``backbone.lora`` for the resume test with adapters: dropout draws from the global RNG.
LORA = {"rank": 2, "alpha": 4, "dropout": 0.1, "targets": ["qkv", "proj", "fc1", "fc2"]}


def _resume_recipe(
    tmp_path: Path,
    steps: int,
    checkpoint_every: int,
    shards: Path | None = None,
    lora: dict | None = None,
) -> Path:
    """The tiny recipe with iBOT and KoLeo, drop-path (global RNG), the real multi-crop
    policy (per-rank generator), two epochs (sampler reshuffle), one thread; with
    ``shards``, the streaming adapter on them through 2 loader workers (litdata's state);
    with ``lora``, adapters on the backbone."""
    config = yaml.safe_load(yaml.safe_dump(TINY_RECIPE))
    if shards is not None:
        config["data"] = {"name": "streaming", "root": str(shards), "image_size": 64}
        config["train"]["num_workers"] = 2
    config["output_dir"] = str(tmp_path / "run")
    config["backbone"]["drop_path_rate"] = 0.1
    if lora is not None:
        config["backbone"]["lora"] = lora
    config["objectives"]["ibot"] = {"weight": 1.0}
    config["objectives"]["koleo"] = {"weight": 0.1}
    config["train"].update(
        steps=steps, checkpoint_every=checkpoint_every, threads=1, diagnostics_every=1
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _medssl(*args: str) -> list[str]:
    return [sys.executable, "-m", "medssl.cli", "run", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(recipe_path: Path) -> subprocess.Popen[bytes]:
    """``medssl run`` in the background, its output in files (a full pipe would block it)."""
    folder = recipe_path.parent
    with (folder / "stdout.txt").open("wb") as out, (folder / "stderr.txt").open("wb") as err:
        return subprocess.Popen(_medssl(str(recipe_path)), env=_env(), stdout=out, stderr=err)


def _output(recipe_path: Path, name: str) -> str:
    return (recipe_path.parent / f"{name}.txt").read_text()


def _loss_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("loss")} for r in rows]


def _synthetic_shards(folder: Path) -> Path:
    """The tiny recipe's 16 synthetic images as streaming shards of 3 images."""
    from PIL import Image

    from medssl.data import SyntheticImages
    from medssl.data.prepare import prepare

    images = SyntheticImages(n_images=16, image_size=64)
    for i in range(16):
        pixels = (images[i]["image"][0].numpy() * 65535).round().astype("uint16")
        (folder / "src").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "src" / f"{i}.png")
    prepare(folder / "src", folder / "shards", size=64, fmt="shards", workers=1, shard_images=3)
    return folder / "shards"


@pytest.mark.slow
@pytest.mark.parametrize("data", ["map-style", "streaming", "lora"])
def test_sigkill_then_resume_ends_bit_identical(tmp_path: Path, data: str) -> None:
    if data == "streaming":
        pytest.importorskip("litdata")
    if data == "lora":
        pytest.importorskip("peft")
    shards = _synthetic_shards(tmp_path / "data") if data == "streaming" else None
    lora = LORA if data == "lora" else None
    steps, every = 7, 2
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    ref_recipe = _resume_recipe(reference_dir, steps, every, shards, lora)
    proc = subprocess.run(_medssl(str(ref_recipe)), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    recipe_path = _resume_recipe(killed_dir, steps, every, shards, lora)
    run_dir = killed_dir / "run"
    first = run_dir / "checkpoints" / f"{ckpt.PREFIX}{every:08d}" / ckpt.MANIFEST_FILE
    proc = _start(recipe_path)
    deadline = time.monotonic() + 600
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it was killed:\n" + _output(
        recipe_path, "stderr"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = run_dir / "checkpoints" / f"{ckpt.PREFIX}{steps:08d}"
    assert not finished.exists()

    proc = subprocess.run(
        _medssl(str(recipe_path), "--resume"), env=_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr

    ref_run = reference_dir / "run"
    for name in ("backbone.safetensors", f"checkpoints/{finished.name}/{ckpt.MODEL_FILE}"):
        got, want = load_file(str(run_dir / name)), load_file(str(ref_run / name))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {key} differs after resume"
        if lora is not None and name.startswith("checkpoints"):
            assert any(".lora_A" in key for key in got), "the checkpoint holds the adapters"
    _, got_state = ckpt.load_checkpoint(finished)
    _, want_state = ckpt.load_checkpoint(ref_run / finished.relative_to(run_dir))
    for index, slot in want_state["optimizer"]["state"].items():
        for key, value in slot.items():
            assert torch.equal(got_state["optimizer"]["state"][index][key], value)
    assert got_state["diagnostics"]["history"] == want_state["diagnostics"]["history"]
    if shards is not None:  # litdata's loader state, as JSON in state.json (no pickle)
        assert got_state["data"] == want_state["data"]
        assert got_state["data"]["dataset"]["num_workers"] == 2
        assert "input_dir_path" not in got_state["data"]["dataset"]
    # One metrics row per step, the losses of the uninterrupted run.
    rows = _loss_rows(run_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
    assert rows == _loss_rows(ref_run)
    assert (run_dir / "loss_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    recipe_path = _resume_recipe(tmp_path, steps=500, checkpoint_every=400)
    run_dir = tmp_path / "run"
    proc = _start(recipe_path)
    metrics = run_dir / "metrics.csv"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, _output(recipe_path, "stderr")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    stdout, stderr = _output(recipe_path, "stdout"), _output(recipe_path, "stderr")
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]  # documented: 143
    assert "stopping at step" in stderr and "SIGTERM" in stderr and "--resume" in stderr
    assert "run directory" in stdout
    saved = ckpt.latest_valid_checkpoint(run_dir / "checkpoints")
    assert saved is not None and 2 <= int(saved.name[len(ckpt.PREFIX) :]) < 500
    assert (run_dir / "backbone.safetensors").is_file()


# -- throughput options -------------------------------------------------------------------


def _compile_works() -> bool:
    try:
        layer = torch.nn.Linear(2, 2)
        layer.compile()
        layer(torch.ones(1, 2)).sum().backward()
        return True
    except Exception:  # inductor needs a working C++ toolchain
        return False


@pytest.mark.slow
def test_compile_option_trains(tmp_path: Path) -> None:
    if not _compile_works():
        pytest.skip("torch.compile (inductor) does not work on this machine")
    objectives = {"dino": {**HEAD, "centering": "mean"}}
    trainer = train(
        recipe(tmp_path / "c", objectives, {"batch_size": 4, "steps": 2, "compile": True})
    )
    assert trainer.raw_model.student._compiled_call_impl is not None
    names = set(load_file(str(tmp_path / "c" / "backbone.safetensors")))
    assert not any("_orig_mod" in name for name in names)


def test_fsdp_strategy_shards_blocks_with_original_parameters() -> None:
    from lightning_fabric.strategies import FSDPStrategy
    from timm.models.vision_transformer import Block

    strategy = make_strategy("fsdp")
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"
    assert strategy._fsdp_kwargs["use_orig_params"] is True
    policy = strategy._fsdp_kwargs["auto_wrap_policy"]
    assert Block in policy._module_classes
    assert make_strategy("ddp") == "ddp"


def test_fsdp_on_the_cpu_names_the_recipe_keys() -> None:
    from types import SimpleNamespace

    from medssl.config import RecipeError
    from medssl.engine.fabric_setup import make_fabric

    train = SimpleNamespace(
        precision="32", accelerator="cpu", strategy="fsdp", devices=2, num_nodes=1
    )
    with pytest.raises(RecipeError, match=r"train.strategy: 'fsdp' .* train.accelerator is 'cpu'"):
        make_fabric(train)
