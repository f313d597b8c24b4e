"""One DINOv2 training step (ViT-S/14, DINO + iBOT + KoLeo): medssl and a lightly reference.

The lightly reference follows lightly's own example (``examples/pytorch/dinov2.py`` in
lightly-ai/lightly): ``MaskedVisionTransformerTIMM`` student and teacher, separate
``DINOv2ProjectionHead`` student/teacher heads shared by DINO and iBOT, ``DINOLoss``,
``IBOTPatchLoss``, ``KoLeoLoss`` on each global crop's CLS token (weight 0.1), block masks
from ``random_block_mask`` on every global crop, AdamW over all parameters, weight-decay
schedule, and ``update_momentum`` EMA of backbone and heads. medssl runs the step its
engine runs (``Trainer.forward_backward`` + ``Trainer.optimizer_step``) from a recipe
with the same model, crops, prototypes, optimiser and precision (no gradient clipping,
as lightly's example).

Both steps start from views made beforehand (the augmentation is not part of the step:
lightly's happens in DataLoader workers, medssl's on the device before the forward).

Run one configuration in a fresh process (what the memory figures need)::

    python benchmarks/train_step_workload.py --impl medssl --precision 32 --rounds 3

Memory, both sides alike, of the first step: the peak of the bytes PyTorch's CPU allocator
holds above the start (``allocator_peak_bytes``, from the profiler's memory events), and
the process's high-water RSS minus its RSS before the step (allocator-dependent).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BATCH = 8
GLOBAL, LOCAL, N_LOCAL = 112, 56, 8
PROTOTYPES = 65_536
EMBED, DEPTH, HEADS, PATCH = 384, 12, 6, 14
THREADS = 2
DROP_PATH = 0.1
LR = 1e-3


def _rss_bytes() -> int:
    """Resident set size now (``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def allocator_peak_bytes(fn: Callable[[], None]) -> int:
    """Run ``fn`` and return the peak, above the start, of the bytes held by PyTorch's CPU
    allocator during it.

    ``torch.profiler`` with ``profile_memory`` records every allocation and free of the c10
    CPU allocator (what every tensor is made of) with its size; the running sum of those
    events in time order peaks at the step's tensor-memory high-water mark. Unlike RSS it
    does not depend on whether glibc kept or returned earlier freed blocks, and unlike a
    Python-side tracker it changes nothing in the run (a reference held to a gradient's
    storage, for one, would turn autograd's in-place gradient sums into copies).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def medssl_step(precision: str) -> Callable[[], None]:
    """The medssl engine's step on fixed views, built from a recipe."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medssl.config import resolve_recipe
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    config = {
        "seed": 0,
        "output_dir": "/tmp/medssl-bench-train-step",
        "data": {"name": "synthetic", "n_images": BATCH, "image_size": 128, "channels": 1},
        "augmentation": {
            "name": "dinov2_multicrop",
            "global_crop_size": GLOBAL,
            "local_crop_size": LOCAL,
            "n_local_crops": N_LOCAL,
            "channels": 1,
            "mean": [0.5],
            "std": [0.25],
        },
        "backbone": {
            "name": "vit_small_patch14",
            "in_chans": 1,
            "img_size": GLOBAL,
            "drop_path_rate": DROP_PATH,
        },
        "objectives": {
            "dino": {"prototypes": PROTOTYPES},
            "ibot": {},
            "koleo": {"weight": 0.1},
        },
        "train": {
            "batch_size": BATCH,
            "steps": 100,
            "lr": LR,
            "warmup_epochs": 0,
            # lightly's example does not clip gradients (DINOv2, and medssl's default, clip
            # at 3.0): the same update rule on both sides
            "clip_grad": None,
            "threads": THREADS,
            "precision": precision,
            "accelerator": "cpu",
        },
    }
    registry = load_registry()
    trainer = Trainer(resolve_recipe(config, registry, "benchmark"), registry, progress_bar=False)
    trainer._build()
    trainer.model.train()
    images = torch.stack([trainer.dataset[i]["image"] for i in range(BATCH)])
    with torch.no_grad():
        views = trainer.policy(images, trainer.request, trainer.generator)
    # Past DINOv2's frozen-prototype epoch, so the step includes the prototypes' update.
    step = trainer.steps_per_epoch * 2

    def run() -> None:
        scheduled = trainer._set_schedules(step)
        trainer.forward_backward(views, step, 2, last=True)
        trainer.optimizer_step(2, scheduled["momentum"])

    return run


def lightly_step(precision: str) -> Callable[[], None]:
    """lightly's DINOv2 example's step, at the same model size, crops and precision."""
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import random_block_mask, update_drop_path_rate, update_momentum
    from lightly.utils.scheduler import cosine_schedule
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=GLOBAL,
        patch_size=PATCH,
        in_chans=1,
        embed_dim=EMBED,
        depth=DEPTH,
        num_heads=HEADS,
        pos_embed="learn",
        dynamic_img_size=True,
        init_values=1e-5,
        num_classes=0,
    )
    teacher = MaskedVisionTransformerTIMM(vit=vit, antialias=False, pos_embed_initialization="skip")
    student = copy.deepcopy(teacher)
    update_drop_path_rate(student.vit, drop_path_rate=DROP_PATH, mode="uniform")
    teacher_head = DINOv2ProjectionHead(input_dim=EMBED, output_dim=PROTOTYPES)
    student_head = DINOv2ProjectionHead(input_dim=EMBED, output_dim=PROTOTYPES)
    for module in (teacher, teacher_head):
        for p in module.parameters():
            p.requires_grad = False
        module.eval()
    dino_loss, ibot_loss, koleo_loss = DINOLoss(PROTOTYPES), IBOTPatchLoss(PROTOTYPES), KoLeoLoss()
    params = [*student.parameters(), *student_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=LR)
    g = torch.Generator().manual_seed(0)
    global_views = torch.randn(2 * BATCH, 1, GLOBAL, GLOBAL, generator=g)
    local_views = torch.randn(N_LOCAL * BATCH, 1, LOCAL, LOCAL, generator=g)
    autocast = precision == "bf16-mixed"

    def run() -> None:
        n = len(global_views)
        h, w = student.vit.patch_embed.grid_size
        block_mask = random_block_mask(size=(n, h, w), device=global_views.device)
        mask = global_views.new_zeros((n, h * w + 1), dtype=torch.bool)
        mask[:, 1:] = block_mask.flatten(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            with torch.no_grad():
                t_features = teacher.encode(global_views)
                t_cls = teacher_head(t_features[:, 0])
                t_masked = teacher_head(t_features[mask])
            s_features = student.encode(global_views, mask=mask)
            s_global_cls = student_head(s_features[:, 0])
            s_masked = student_head(s_features[mask])
            s_local_cls = student_head(student.encode(local_views)[:, 0])
            s_cls = torch.cat([s_global_cls, s_local_cls])
            loss = (
                dino_loss(
                    teacher_out=t_cls.float().chunk(2),
                    student_out=s_cls.float().chunk(2 + N_LOCAL),
                    teacher_temp=0.04,
                )
                + ibot_loss(
                    teacher_out=t_masked.float(),
                    student_out=s_masked.float(),
                    mask=block_mask,
                    teacher_temp=0.04,
                )
                + 0.1 * sum(koleo_loss(t.float()) for t in s_features[:, 0].chunk(2))
            )
        loss.backward()
        wd = cosine_schedule(step=1, max_steps=100, start_value=0.04, end_value=0.4)
        for group in optimizer.param_groups:
            group["weight_decay"] = wd
        optimizer.step()
        optimizer.zero_grad()
        m = cosine_schedule(step=1, max_steps=100, start_value=0.992, end_value=1.0)
        update_momentum(student, teacher, m=m)
        update_momentum(student_head, teacher_head, m=m)

    return run


BUILDERS: dict[str, Callable[[str], Callable[[], None]]] = {
    "medssl": medssl_step,
    "lightly": lightly_step,
}


def measure(impl: str, precision: str, rounds: int) -> dict[str, Any]:
    """Step times, and the first step's peak memory (AdamW's state, allocated by that step,
    counts on both sides): the allocator's peak above the start (``allocator_peak_bytes``),
    and the high-water RSS minus the RSS once the model is built (allocator-dependent)."""
    torch.set_num_threads(THREADS)
    step = BUILDERS[impl](precision)
    rest = _rss_bytes()
    start = time.perf_counter()
    tensor_peak = allocator_peak_bytes(step)
    first = time.perf_counter() - start
    peak = _max_rss_bytes() - rest
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "impl": impl,
        "precision": precision,
        "first_step_s": first,
        "step_s": sorted(times)[len(times) // 2] if times else first,
        "step_times_s": times,
        "peak_tensor_memory_gib": tensor_peak / 2**30,
        "peak_step_memory_gib": peak / 2**30,
        "model_rss_gib": rest / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.impl, args.precision, args.rounds)))


if __name__ == "__main__":
    main()
