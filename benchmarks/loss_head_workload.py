"""The DINO loss-head workload of issue 7, shared by the CPU benchmark and the GPU script.

One DINO step's head: 2 global + 8 local student crops and 2 global teacher crops of
``images`` images, bottleneck ``dim`` (L2-normalised), ``k`` prototypes; teacher targets
with softmax centring (a fixed centre, plus the centre's batch update), every student crop
against every teacher crop of another view (lightly's ``DINOLoss`` pairing), forward and
backward to the bottleneck features and the prototypes. Variants:

- ``lightly``: lightly's ``DINOLoss`` on the outputs of a linear prototype layer;
- ``eager``: the plain DINOv2 formula (``dino_clstoken_loss.py``) on full ``[rows, K]`` logits;
- ``chunked``: ``medssl.losses.prototype_targets(lazy=True)`` + ``prototype_cross_entropy``
  (torch path; the teacher targets are never materialised);
- ``chunked_dense``: the same with the ``[B_t, K]`` targets materialised (``lazy=False``);
- ``triton``: the dense targets with ``impl="triton"``; ``triton_lazy``: lazy targets, computed
  inside the Triton kernels; ``compiled``: ``torch.compile`` of ``eager``.

The prototypes are the parameter (the weight-normalised last layer's weight): weight
normalisation costs the same in every variant and is left out.

Memory mode (``python benchmarks/loss_head_workload.py --memory VARIANT``) prints JSON
with the activation memory of one step measured in a fresh process (see ``measure_memory``).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.losses import prototype_cross_entropy, prototype_targets

N_GLOBAL, N_LOCAL = 2, 8
STUDENT_TEMP, TEACHER_TEMP = 0.1, 0.04
VARIANTS = ("lightly", "eager", "chunked", "chunked_dense", "triton", "triton_lazy", "compiled")


@dataclass
class HeadInputs:
    student: Tensor  # [(N_GLOBAL + N_LOCAL) * images, dim], requires grad
    teacher: Tensor  # [N_GLOBAL * images, dim]
    prototypes: Tensor  # [k, dim], requires grad
    center: Tensor  # [1, k]
    images: int

    @property
    def n_terms(self) -> int:
        return N_GLOBAL * (N_GLOBAL + N_LOCAL) - N_GLOBAL

    def zero_grad(self) -> None:
        self.student.grad = None
        self.prototypes.grad = None


def make_inputs(
    images: int = 102, dim: int = 256, k: int = 65536, device: str = "cpu", dtype=torch.float32
) -> HeadInputs:
    g = torch.Generator().manual_seed(0)
    student = F.normalize(torch.randn((N_GLOBAL + N_LOCAL) * images, dim, generator=g), dim=-1)
    teacher = F.normalize(torch.randn(N_GLOBAL * images, dim, generator=g), dim=-1)
    protos = F.normalize(torch.randn(k, dim, generator=g), dim=-1)
    center = torch.randn(1, k, generator=g) * 0.01
    return HeadInputs(
        student.to(device, dtype).requires_grad_(),
        teacher.to(device, dtype),
        protos.to(device, dtype).requires_grad_(),
        center.to(device),
        images,
    )


def lightly_step(x: HeadInputs, loss_fn) -> Tensor:
    """lightly: DINOLoss on the prototype layer's outputs, per view lists."""
    s_out = (x.student @ x.prototypes.T).chunk(N_GLOBAL + N_LOCAL)
    with torch.no_grad():
        t_out = (x.teacher @ x.prototypes.T).chunk(N_GLOBAL)
    loss = loss_fn(list(t_out), list(s_out))
    loss.backward()
    return loss


def eager_step(x: HeadInputs) -> Tensor:
    """The plain formula of DINOv2's DINOLoss on full logits, forward and backward."""
    loss = eager_loss(x)
    loss.backward()
    return loss


def eager_loss(x: HeadInputs) -> Tensor:
    """The plain formula of DINOv2's DINOLoss on full logits (forward only)."""
    lsm = torch.log_softmax((x.student @ x.prototypes.T) / STUDENT_TEMP, dim=-1)
    with torch.no_grad():
        z_t = x.teacher @ x.prototypes.T
        probs = torch.softmax((z_t - x.center) / TEACHER_TEMP, dim=-1)
        x.center.mul_(0.9).add_(z_t.mean(0, keepdim=True), alpha=0.1)
    loss = lsm.new_zeros(())
    for i, p in enumerate(probs.chunk(N_GLOBAL)):
        for j, s in enumerate(lsm.chunk(N_GLOBAL + N_LOCAL)):
            if i != j:
                loss = loss - (p * s).sum(-1).mean()
    return loss / x.n_terms


def fused_step(x: HeadInputs, impl: str = "torch", lazy: bool = False) -> Tensor:
    """medssl.losses: targets tile by tile (``lazy``: never materialised), one streamed CE
    call for all crops."""
    b = x.images
    with torch.no_grad():
        probs = prototype_targets(
            x.teacher, x.prototypes, TEACHER_TEMP, center=x.center, impl=impl, lazy=lazy
        )
        # the centre's batch update is linear in the features: no logits needed
        batch_center = x.teacher.mean(0, keepdim=True).float() @ x.prototypes.T.float()
        x.center.mul_(0.9).add_(batch_center, alpha=0.1)
    # student crop c against teacher crop t, except a global crop against itself
    weights = torch.ones(N_GLOBAL + N_LOCAL, N_GLOBAL, device=x.student.device)
    weights[:N_GLOBAL].fill_diagonal_(0.0)
    per_row = prototype_cross_entropy(
        x.student, probs.view(N_GLOBAL, b, -1), x.prototypes, STUDENT_TEMP, impl=impl,
        crop_weights=weights,
    )  # fmt: skip
    loss = per_row.sum() / (x.n_terms * b)
    loss.backward()
    return loss


def make_step(variant: str, x: HeadInputs) -> Callable[[], Tensor]:
    if variant == "lightly":
        from lightly.loss import DINOLoss

        loss_fn = DINOLoss(
            output_dim=x.prototypes.shape[0], teacher_temp=TEACHER_TEMP, student_temp=STUDENT_TEMP
        ).to(x.student.device)
        loss_fn.center.copy_(x.center[None])
        return lambda: lightly_step(x, loss_fn)
    if variant == "eager":
        return lambda: eager_step(x)
    if variant == "chunked":
        return lambda: fused_step(x, "torch", lazy=True)
    if variant == "chunked_dense":
        return lambda: fused_step(x, "torch")
    if variant == "triton":
        return lambda: fused_step(x, "triton")
    if variant == "triton_lazy":
        return lambda: fused_step(x, "triton", lazy=True)
    if variant == "compiled":
        compiled = torch.compile(eager_loss)

        def compiled_step() -> Tensor:
            loss = compiled(x)
            loss.backward()
            return loss

        return compiled_step
    raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1))


def measure_memory(variant: str, **shape) -> dict:
    """Activation memory of one CPU step, by the process's resident set (Linux).

    torch's CPU allocator does not cache, and with a fixed glibc mmap threshold (set by the
    caller: ``MALLOC_MMAP_THRESHOLD_=65536``) every large tensor is its own mmap, returned
    to the OS when freed; so resident memory follows live tensors. After a warm-up step
    (thread pools, lazy init), gradients are dropped, the peak counter is reset
    (``/proc/self/clear_refs`` = 5), and one step runs. Activation memory =
    peak RSS - RSS before the step - bytes of the gradients the step creates.
    """
    x = make_inputs(**shape)
    step = make_step(variant, x)
    step()
    x.zero_grad()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    step()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (x.student, x.prototypes))
    return {
        "variant": variant,
        "activation_mib": (peak - base) / 1024 - grad_bytes / 2**20,
        "peak_above_base_mib": (peak - base) / 1024,
        "grad_mib": grad_bytes / 2**20,
        "step_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memory", choices=VARIANTS, required=True)
    parser.add_argument("--images", type=int, default=102)
    parser.add_argument("--k", type=int, default=65536)
    args = parser.parse_args()
    print(json.dumps(measure_memory(args.memory, images=args.images, k=args.k)))


if __name__ == "__main__":
    main()
