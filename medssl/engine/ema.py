"""Exponential moving average of student weights into a teacher (the DINO / DINOv2 teacher).

``teacher = m * teacher + (1 - m) * student`` for every parameter, done in place with the
``torch._foreach`` kernels as DINOv2's ``SSLMetaArch.update_teacher`` does (one fused
launch per device and dtype instead of one per tensor; here one ``lerp`` rather than a
``mul`` and an ``add``, so one pass over each teacher tensor). Buffers are copied;
frozen student parameters (``requires_grad=False``) are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """Move each teacher of ``(student, teacher)`` ``pairs`` towards its student.

    ``momentum`` 1 keeps the teacher, 0 copies the student. The two modules of a pair
    must have the same parameter names and shapes.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    student_params: list[Tensor] = []
    teacher_params: list[Tensor] = []
    for i, (student, teacher) in enumerate(pairs):
        s_named = dict(student.named_parameters())
        t_named = dict(teacher.named_parameters())
        if s_named.keys() != t_named.keys():
            diff = sorted(set(s_named) ^ set(t_named))[:5]
            raise ValueError(f"ema_update: pair {i} has different parameters ({diff})")
        for name, t in t_named.items():
            s = s_named[name]
            if not s.requires_grad:
                # Frozen (backbone.freeze, or LoRA's base weights): the teacher already
                # equals the student there, and lerp would only re-write it.
                continue
            if s.shape != t.shape:
                raise ValueError(
                    f"ema_update: pair {i} parameter {name!r} has shape {tuple(s.shape)} in the "
                    f"student and {tuple(t.shape)} in the teacher"
                )
            student_params.append(s.detach().to(t.dtype))
            teacher_params.append(t.data)
        s_buffers = dict(student.named_buffers())
        for name, buf in teacher.named_buffers():
            if name in s_buffers:
                buf.copy_(s_buffers[name])
    if not teacher_params:
        return
    # t + (1 - m)(s - t) = m t + (1 - m) s
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
