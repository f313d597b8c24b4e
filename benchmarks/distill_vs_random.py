"""Does distillation beat training the same student from random weights, at equal wall-clock?

Not in CI (an hour on 2 cores). Two arms train the same small student (the 96-d, 4-block
ViT of ``recipes/distill_vits_cpu.yaml``) on the demo DRRs, one seed at a time:

* ``random``: ``recipes/quickstart.yaml`` with the student's backbone, from random
  weights, for the quickstart's ``--steps`` (600);
* ``distilled``: ``recipes/distill_vits_cpu.yaml`` with the teacher a finished quickstart
  run of the same seed (``--teachers/quickstart_600_s{seed}``), for as many steps as take
  the ``random`` arm's wall-clock: ``steps × t_random / t_distilled`` with the per-step
  times of ``calibrate``.

``calibrate`` times both arms in fresh processes, alternating (random, distilled,
distilled, random, ...), each for ``--calib-steps`` steps; a step's time is the median
interval between consecutive step starts after the first 5. The ratio is the median of
the per-pair ratios. Both arms are probed as ``benchmarks/learning_quality.py`` probes
(frozen features of all 480 DRRs; the headline is the linear probe on ``cls+mean_patch``
of the dataset's split), and the seed-mean difference distilled − random gets a paired
bootstrap interval over the scored images (the same resamples for both arms and seeds).

    python benchmarks/distill_vs_random.py calibrate --rounds 3
    python benchmarks/distill_vs_random.py train --seeds 0 1 2 --distill-steps N
    python benchmarks/distill_vs_random.py probe --seeds 0 1 2 --distill-steps N
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ["backbone.embed_dim=96", "backbone.num_heads=3"]
RECIPES = {"random": "quickstart.yaml", "distilled": "distill_vits_cpu.yaml"}
KEYS = {
    "linear:cls+mean_patch:split": "linear AUROC, split (headline)",
    "linear:cls+mean_patch:heldout": "linear AUROC, held-out CT",
    "knn:cls+mean_patch:split": "k-NN AUROC, split",
    "linear:cls+mean_patch:cv": "linear AUROC, train CV",
}


def _overrides(arm: str, seed: int, steps: int, out: Path, teachers: Path) -> list[str]:
    overrides = [
        f"output_dir={out}",
        f"seed={seed}",
        f"train.steps={steps}",
        f"train.checkpoint_every={steps}",
        "train.threads=1",
        "eval=[]",
    ]
    if arm == "random":
        return [*overrides, *STUDENT]
    return [*overrides, f"objectives.distillation.teacher={teachers / f'quickstart_600_s{seed}'}"]


def _child(arm: str, steps: int, teachers: Path, seed: int) -> None:
    """One timed arm in this process: prints the median step time (JSON)."""
    import medssl.engine.model as model
    from medssl.config import load_recipe
    from medssl.engine.trainer import Trainer
    from medssl.plugins import load_registry

    starts: list[float] = []
    forward = model.SSLModel.forward

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        starts.append(time.perf_counter())
        return forward(self, *args, **kwargs)

    model.SSLModel.forward = timed  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as out:
        registry = load_registry()
        overrides = _overrides(arm, seed, steps, Path(out), teachers)
        recipe = load_recipe(ROOT / "recipes" / RECIPES[arm], overrides, registry)
        Trainer(recipe, registry, progress_bar=False).fit()
    gaps = [b - a for a, b in zip(starts[5:], starts[6:], strict=False)]
    print(json.dumps({"arm": arm, "step_s": statistics.median(gaps), "n": len(gaps)}))


def calibrate(args: argparse.Namespace) -> None:
    pairs = []
    for i in range(args.rounds):
        pair = {}
        for arm in ("random", "distilled") if i % 2 == 0 else ("distilled", "random"):
            cmd = [sys.executable, __file__, "_child", "--arm", arm, "--seeds", "0"]
            cmd += ["--calib-steps", str(args.calib_steps), "--teachers", str(args.teachers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if proc.returncode:
                sys.exit(f"{arm} failed:\n{proc.stderr[-2000:]}")
            pair[arm] = json.loads(proc.stdout.strip().splitlines()[-1])["step_s"]
            print(f"{arm}: {pair[arm]:.3f} s/step; load {_load()}", flush=True)
        pairs.append(pair)
    ratio = statistics.median(p["random"] / p["distilled"] for p in pairs)
    print(
        f"median step time random {statistics.median(p['random'] for p in pairs):.3f} s, "
        f"distilled {statistics.median(p['distilled'] for p in pairs):.3f} s; median ratio "
        f"{ratio:.3f}: distilled steps for {args.steps} random steps = "
        f"{round(args.steps * ratio)}; load {_load()}"
    )


def _run_dir(args: argparse.Namespace, arm: str, seed: int) -> Path:
    steps = args.steps if arm == "random" else args.distill_steps
    return args.runs / f"student_{arm}_{steps}_s{seed}"


def train(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        teacher = args.teachers / f"quickstart_600_s{seed}"
        if not (teacher / "done").is_file():
            sys.exit(f"the teacher {teacher} is not finished (no `done` file)")
        for arm in ("random", "distilled") if seed % 2 == 0 else ("distilled", "random"):
            run_dir = _run_dir(args, arm, seed)
            if (run_dir / "done").is_file():
                continue
            steps = args.steps if arm == "random" else args.distill_steps
            cmd = [sys.executable, "-m", "medssl.cli", "run", str(ROOT / "recipes" / RECIPES[arm])]
            cmd += _overrides(arm, seed, steps, run_dir, args.teachers)
            start = time.time()
            print(f"{arm} s{seed}: {steps} steps, load {_load()}", flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if proc.returncode:
                sys.exit(f"{arm} s{seed} failed:\n{proc.stderr[-2000:]}")
            seconds = time.time() - start
            (run_dir / "done").write_text(f"{seconds:.0f}\n")
            print(f"{arm} s{seed}: {seconds:.0f} s, load {_load()}", flush=True)


def probe(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import learning_quality as lq  # noqa: PLC0415 (a sibling script, not a package)
    import torch

    from medssl.config import load_recipe
    from medssl.eval.bootstrap import percentile_ci, resample_indices
    from medssl.eval.encoder import encoder_from_recipe, random_encoder
    from medssl.plugins import load_registry

    torch.set_num_threads(1)
    registry = load_registry()
    rows = lq._demo_rows()
    labels = lq._features_labels(rows)
    cache = args.out / "probes"
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, Any]] = {"random": {}, "distilled": {}, "init": {}}
    for seed in args.seeds:
        for arm in ("random", "distilled"):
            run_dir = _run_dir(args, arm, seed)
            recipe = load_recipe(run_dir / "config.yaml", ["eval=[]"], registry)
            weights = run_dir / "backbone.safetensors"
            results[arm][seed] = lq._cached(
                cache,
                run_dir.name,
                lambda recipe=recipe, weights=weights: lq.probe_encoder(
                    lq._features(encoder_from_recipe(recipe, registry, weights), registry), rows
                ),
            )
            if arm == "random":
                results["init"][seed] = lq._cached(
                    cache,
                    f"student_init_s{seed}",
                    lambda recipe=recipe: lq.probe_encoder(
                        lq._features(random_encoder(recipe, registry), registry), rows
                    ),
                )
    lines = [
        f"seeds {args.seeds}; random arm {args.steps} steps, distilled arm "
        f"{args.distill_steps} steps; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load {_load()}. Mean over seeds [95 % paired bootstrap interval over the scored "
        "images, 1,000 resamples].",
        "",
        "| probe | distilled | trained from random | Δ distilled − random | random init |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    summary: dict[str, Any] = {}
    for key, title in KEYS.items():
        n = len(results["random"][args.seeds[0]][key]["rows"])
        idx = resample_indices(n, args.bootstrap, seed=0)
        points: dict[str, list[float]] = {}
        boots: dict[str, np.ndarray] = {}
        for arm, by_seed in results.items():
            values = [lq._metric(by_seed[s][key], labels, idx) for s in args.seeds]
            points[arm] = [v[0] for v in values]
            boots[arm] = np.mean([v[1] for v in values], 0)
        mean = {arm: float(np.mean(p)) for arm, p in points.items()}
        lo, hi = percentile_ci(boots["distilled"] - boots["random"])
        cell = {}
        for arm in points:
            a, b = percentile_ci(boots[arm])
            cell[arm] = f"{mean[arm]:.3f} [{a:.3f}, {b:.3f}]"
        summary[key] = {"per_seed": points, "mean": mean, "delta_ci": [lo, hi]}
        lines.append(
            f"| {title} | {cell['distilled']} | {cell['random']} | "
            f"{mean['distilled'] - mean['random']:+.3f} [{lo:+.3f}, {hi:+.3f}] | {mean['init']:.3f} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "distill_vs_random.md").write_text(text)
    (args.out / "distill_vs_random.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["calibrate", "train", "probe", "_child"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="the random arm's steps")
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calib-steps", type=int, default=30)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--teachers", type=Path, default=Path("/work/runs"))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "distill_vs_random")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill_vs_random"
    )
    parser.add_argument("--arm", choices=sorted(RECIPES))
    args = parser.parse_args()
    if args.stage == "_child":
        _child(args.arm, args.calib_steps, args.teachers, args.seeds[0])
        return
    {"calibrate": calibrate, "train": train, "probe": probe}[args.stage](args)


if __name__ == "__main__":
    main()
