"""DDP through Fabric on the CPU (gloo): 2 processes x 2 images == 1 process x 4 images.

What makes the two runs comparable, and which terms are reduced across ranks:

- The views come from :class:`FixedViews` (resizes and flips of the image, content-chosen
  masks with the same count per image), so rank ``r`` sees exactly the views of images
  ``2r, 2r+1`` of the single process' batch. Real policies draw from a per-rank generator
  (seeded ``seed * 1000 + rank``) on purpose; that seeding is checked separately.
- DINO and iBOT losses are per-rank batch means; DDP averages the gradients over ranks,
  which is the mean over the global batch — the single process' loss.
- DINO here uses Sinkhorn-Knopp centring: its normalisations all-reduce the totals and the
  per-prototype sums, so targets are computed over the global batch (a per-rank
  Sinkhorn-Knopp over 2 rows would give different targets and gradients).
- iBOT here uses mean centring: the centre update all-reduces the batch mean, so the
  centre after each step (and the targets of the next step) match the global batch. iBOT
  masks the same number of patches in every image, so per-rank token counts agree.
- KoLeo is per-rank, as in DINOv2 (nearest neighbours within the rank's own crops), so it
  is not part of this comparison: with it a 2-rank run is *meant* to differ.

Tolerance: gradients of the first step match to 1e-5 of each tensor's largest gradient
(measured: about 1e-7, the fp32 summation order of the all-reduce); parameters, teacher
and centres after 3 AdamW steps (lr 1e-3) as :func:`assert_same_weights` states.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .engine_worker import HEAD, recipe, train

WORKER = Path(__file__).with_name("engine_worker.py")
OBJECTIVES = {
    "dino": {**HEAD, "centering": "sinkhorn_knopp"},
    "ibot": {**HEAD, "separate_head": True, "centering": "mean"},
}
STEPS = 3


def assert_scaled_close(a: dict, b: dict, rel: float, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different keys {sorted(set(a) ^ set(b))[:5]}"
    for key in a:
        scale = b[key].abs().max().item()
        diff = (a[key] - b[key]).abs().max().item()
        assert diff <= rel * scale + 1e-12, f"{what} {key}: max diff {diff:.3g}, scale {scale:.3g}"


def assert_same_weights(got: dict, want: dict) -> None:
    """Parameters after a few AdamW steps: within 1e-4 (a tenth of one step at lr 1e-3)
    everywhere, and within 1e-6 for all but 0.5% of the elements. AdamW divides by the
    gradient's running RMS, so an element whose gradient is near zero turns fp32
    summation-order noise into a visible step (measured: max 8.9e-6, 2 of ~40k elements
    beyond 1e-6; a wrong reduction moves most elements by ~lr)."""
    beyond, total = 0, 0
    for key, value in got.items():
        diff = (value.float() - want[key].float()).abs()
        assert diff.max().item() <= 1e-4, f"{key}: max diff {diff.max().item():.3g}"
        beyond += int((diff > 1e-6).sum())
        total += diff.numel()
    assert beyond <= 0.005 * total, f"{beyond} of {total} elements differ by more than 1e-6"


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_combined_batch(tmp_path: Path) -> None:
    config = recipe(
        tmp_path / "ddp",
        OBJECTIVES,
        {"batch_size": 2, "steps": STEPS, "accelerator": "cpu", "strategy": "ddp", "devices": 2},
    )
    config_path = tmp_path / "ddp.json"
    config_path.write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(config_path), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    single = train(recipe(tmp_path / "single", OBJECTIVES, {"batch_size": 4, "steps": STEPS}))

    infos = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["world_size"] for i in infos] == [2, 2]
    assert [i["backend"] for i in infos] == ["gloo", "gloo"]
    seed = config["seed"]
    # Per-rank streams: the augmentation generator and the global RNG differ by rank.
    assert [i["policy_seed"] for i in infos] == [seed * 1000, seed * 1000 + 1]
    assert [i["torch_seed"] for i in infos] == [seed, seed + 1]

    states = [load_file(str(out / f"rank{r}_state.safetensors")) for r in range(2)]
    # Student, EMA teacher, heads and centres: bit-identical on every rank.
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), f"ranks differ in {key}"
    assert any(k.startswith("teacher.") for k in states[0])

    grads = load_file(str(out / "rank0_grads.safetensors"))
    assert_scaled_close(grads, single.first_grads, 1e-5, "first-step gradient")
    reference = single.raw_model.state_dict()
    assert_same_weights(states[0], reference)
    # The iBOT centre moved (mean centring) and matches the global-batch centre.
    assert reference["objectives.ibot.center"].abs().sum() > 0
    torch.testing.assert_close(
        states[0]["objectives.ibot.center"], reference["objectives.ibot.center"]
    )
