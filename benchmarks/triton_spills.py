"""Register, spill and shared-memory report of the Triton loss-head kernels, without a GPU.

Compiles each head kernel of :mod:`medssl.losses.triton_kernels` at its configured tiles
(``_HEAD_CONFIGS``) for a CUDA target (default sm_90, the H100/H200) and runs the ptxas
that ships with Triton on the result with ``-v``. Spilled registers go to local memory
(slow); shared memory above the card's limit fails at launch. Runs on a CPU machine::

    python benchmarks/triton_spills.py [--arch 90] [--dim 256]

Exits 1 if a kernel spills or needs more shared memory than ``--shared-limit`` bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from medssl.losses import triton_kernels as tk

_T = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def signatures(dt: str) -> dict[str, tuple]:
    """(kernel, pointer/scalar signature, constexpr names) per config name."""
    i32 = "i32"
    lazy = {"TF": f"*{dt}", "TW": f"*{dt}", "Col2": "*fp32", "Row2": "*fp32",
            "stride_tf": i32, "stride_tw": i32, "tscale2": "fp32"}  # fmt: skip
    return {
        "lse": (tk._lse_kernel, {"F": f"*{dt}", "W": f"*{dt}", "Stats": "*fp32",
                "Col2": "*fp32", "B": i32, "K": i32, "D": i32, "stride_fb": i32,
                "stride_wk": i32, "scale2": "fp32"}, {"PRECISION", "HAS_COL"}),
        "features": (tk._ce_bwd_features_kernel, {"F": f"*{dt}", "W": f"*{dt}", "LSE2": "*fp32",
                     "SoftScale": "*fp32", "GradF": "*fp32", "B": i32, "K": i32, "D": i32,
                     "stride_fb": i32, "stride_wk": i32, "scale2": "fp32"}, {"PRECISION"}),
        "prototypes": (tk._ce_bwd_prototypes_kernel, {"F": f"*{dt}", "W": f"*{dt}",
                       "LSE2": "*fp32", "SoftScale": "*fp32", "P": "*fp32", "XHi": f"*{dt}",
                       "XLo": f"*{dt}", "GradW": f"*{dt}", "B": i32, "K": i32, "D": i32, "TB": i32,
                       "stride_fb": i32, "stride_wk": i32, "stride_pb": i32, "stride_gk": i32,
                       "scale2": "fp32", **lazy}, {"BLOCK_T", "PRECISION", "SPLIT", "LAZY",
                       "HAS_COL"}),
        "targets": (tk._targets_times_prototypes_kernel, {"P": "*fp32", "W": f"*{dt}",
                    "Out": "*fp32", "Mass": "*fp32", "TB": i32, "K": i32, "D": i32,
                    "stride_pb": i32, "stride_wk": i32, **lazy}, {"PRECISION", "SPLIT", "LAZY",
                    "HAS_COL"}),
        "logits": (tk._scaled_logits_kernel, {"F": f"*{dt}", "W": f"*{dt}", "C": "*fp32",
                   "Out": "*fp32", "TileMax": "*fp32", "TileSum": "*fp32", "B": i32, "K": i32,
                   "D": i32, "stride_fb": i32, "stride_wk": i32, "stride_ob": i32,
                   "inv_t": "fp32"}, {"HAS_CENTER", "PRECISION"}),
    }  # fmt: skip


def report(name: str, dtype: torch.dtype, arch: int, dim: int, lazy: bool = False) -> dict:
    """Compile kernel ``name`` (``lazy``: computing the targets from the teacher's features)
    and return its tiles, registers, spill bytes (stores + loads) and shared memory."""
    kernel, sig, extra = signatures(_T[dtype])[name]
    cfg = tk._HEAD_CONFIGS[dtype][name]
    low = dtype != torch.float32
    values = {"BLOCK_B": cfg["BLOCK_B"], "BLOCK_K": cfg["BLOCK_K"], "BLOCK_D": tk._block_d(dim),
              "DOT_F32": False, "BLOCK_T": tk._BLOCK_T, "PRECISION": tk._precision(dtype),
              "SPLIT": low, "HAS_CENTER": True, "LAZY": lazy, "HAS_COL": lazy}  # fmt: skip
    names = ["BLOCK_B", "BLOCK_K", "BLOCK_D", *sorted(extra), "DOT_F32"]
    full = {**sig, **dict.fromkeys(names, "constexpr")}
    order = list(kernel.arg_names)
    full = {n: full[n] for n in order}
    src = ASTSource(fn=kernel, signature=full,
                    constexprs={(order.index(n),): values[n] for n in names})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg["num_warps"],
                                       "num_stages": cfg["num_stages"]})  # fmt: skip
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    os.unlink(f.name)
    spills = sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    return {"kernel": name + (" (lazy)" if lazy else ""), "dtype": _T[dtype], **cfg, "registers": regs,
            "spill_bytes": spills, "shared_bytes": compiled.metadata.shared}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shared-limit", type=int, default=232448, help="bytes (H100/H200)")
    args = parser.parse_args()
    bad = 0
    print(
        "| kernel | dtype | tiles (rows x prototypes) | warps | stages | registers | spill bytes | shared KiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        for name, lazy in [(n, False) for n in tk._KERNELS] + [
            ("targets", True),
            ("prototypes", True),
        ]:
            r = report(name, dtype, args.arch, args.dim, lazy)
            ok = r["spill_bytes"] == 0 and r["shared_bytes"] <= args.shared_limit
            bad += not ok
            print(f"| {r['kernel']} | {r['dtype']} | {r['BLOCK_B']} x {r['BLOCK_K']} | {r['num_warps']} "
                  f"| {r['num_stages']} | {r['registers']} | {r['spill_bytes']} "
                  f"| {r['shared_bytes'] / 1024:.0f}{'' if ok else ' ✗'} |")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
