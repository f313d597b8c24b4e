"""Experiment trackers (``train.loggers``) through Lightning's logger interface.

``metrics.csv`` (the ``csv`` entry) is always written: ``loss_curves.png``, the model
card and ``medssl ablate`` read it. The others are Lightning loggers, each imported only
when named, from its optional extra:

=============  ==========================================  ============================
name           logger                                      install
=============  ==========================================  ============================
tensorboard    ``lightning_fabric.loggers.TensorBoardLogger``  ``medssl[tensorboard]``
mlflow         ``pytorch_lightning.loggers.MLFlowLogger``      ``medssl[mlflow]``
wandb          ``pytorch_lightning.loggers.WandbLogger``       ``medssl[wandb]``
=============  ==========================================  ============================

Each run logs the recipe (paths left out, as they may name patients) and ``run.json``
as parameters, every ``log_every`` step's metrics, and ``loss_curves.png`` as an artefact
at the end. Offline by default: TensorBoard writes ``RUN_DIR/tensorboard``; MLflow uses
``MLFLOW_TRACKING_URI`` when set, else a local SQLite store ``mlflow.db`` in the working
directory (so the variants of an ablation land in one store, one run each) with the
artefacts in ``mlartifacts`` beside the database; W&B runs
offline into ``RUN_DIR/wandb`` unless ``WANDB_MODE`` says otherwise. The tracker run ids
are kept in ``RUN_DIR/trackers.json`` so ``--resume`` continues the same tracker run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["TRACKERS", "Trackers", "eval_metrics", "log_eval_scores", "missing_tracker_packages"]

# name -> (modules it needs, the extra that installs them)
TRACKERS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "csv": ((), None),
    "tensorboard": (("tensorboard",), "tensorboard"),
    "mlflow": (("mlflow", "pytorch_lightning"), "mlflow"),
    "wandb": (("wandb", "pytorch_lightning"), "wandb"),
}
_IDS_FILE = "trackers.json"


def missing_tracker_packages(names: Sequence[str]) -> list[str]:
    """One line per named tracker whose packages are not installed (what to install)."""
    lines = []
    for name in names:
        modules, extra = TRACKERS[name]
        absent = [m for m in modules if importlib.util.find_spec(m) is None]
        if absent:
            lines.append(f"{name!r} needs {', '.join(absent)} (pip install 'medssl[{extra}]')")
    return lines


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def _image(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class Trackers:
    """The named trackers of one run (rank 0 only), fed the same metrics as metrics.csv."""

    def __init__(self, loggers: dict[str, Any], run_dir: Path) -> None:
        self.loggers = loggers
        self.run_dir = run_dir

    @classmethod
    def open(
        cls,
        names: Sequence[str],
        run_dir: Path,
        recipe: Mapping[str, Any],
        run_info: Mapping[str, Any],
        resume: bool = False,
    ) -> Trackers:
        """Start (or on ``resume`` continue) a tracker run per name; log the parameters."""
        from medssl.engine.run_info import public_options

        ids_file = run_dir / _IDS_FILE
        ids: dict[str, str] = {}
        if resume and ids_file.is_file():
            ids = json.loads(ids_file.read_text())
        loggers = {}
        for name in dict.fromkeys(names):
            if name != "csv":
                loggers[name] = _make_logger(name, run_dir, ids.get(name))
        trackers = cls(loggers, run_dir)
        new_ids = {name: trackers._run_id(name) for name in loggers}
        new_ids = {k: v for k, v in new_ids.items() if v}
        if new_ids:
            ids_file.write_text(json.dumps(new_ids, indent=2) + "\n")
        params = _flatten({"recipe": public_options(recipe), "run": public_options(run_info)})
        for name, logger in loggers.items():
            if name == "mlflow" and name in ids:
                continue  # MLflow parameters cannot change within a run; logged at start
            logger.log_hyperparams(params)
        return trackers

    def _run_id(self, name: str) -> str | None:
        logger = self.loggers[name]
        if name == "mlflow":
            return str(logger.run_id)
        if name == "wandb":
            return str(logger.experiment.id)
        return None

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        for logger in self.loggers.values():
            logger.log_metrics(dict(values), step=step)

    def finish(self, stopped: bool = False) -> None:
        """Log ``loss_curves.png`` as an artefact and close every tracker run."""
        plot = self.run_dir / "loss_curves.png"
        for name, logger in self.loggers.items():
            if plot.is_file():
                try:
                    _log_artifact(name, logger, plot)
                except Exception as exc:  # a tracker hiccup must not lose the run
                    log.warning("%s: could not log loss_curves.png (%s)", name, exc)
            logger.finalize("finished" if stopped else "success")


def eval_metrics(payload: Mapping[str, Any]) -> dict[str, float]:
    """``eval.json`` as flat metrics: ``eval/<evaluator>/<target>/<metric>`` and its floors."""
    out: dict[str, float] = {}
    for result in payload.get("results", []):
        for row in result.get("rows", []):
            key = re.sub(r"[^A-Za-z0-9_.\-/]+", "_", f"eval/{result['evaluator']}/{row['target']}")
            key = f"{key}/{row['metric']}"
            out[key] = float(row["score"])
            for floor, value in (row.get("floors") or {}).items():
                out[f"{key}/floor_{floor}"] = float(value)
    return out


def log_eval_scores(names: Sequence[str], run_dir: Path, payload: Mapping[str, Any]) -> None:
    """Add a run's evaluation (``eval.json``) to its tracker runs, reopened by id.

    ``medssl ablate`` calls this after evaluating each variant, so the trackers compare
    variants on their probe scores, not only on their losses.
    """
    ids_file = run_dir / _IDS_FILE
    ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
    metrics = eval_metrics(payload)
    if not metrics:
        return
    for name in dict.fromkeys(names):
        if name == "csv" or (name != "tensorboard" and name not in ids):
            continue
        logger = _make_logger(name, run_dir, ids.get(name))
        logger.log_metrics(metrics, step=0)
        logger.finalize("success")


def _log_artifact(name: str, logger: Any, path: Path) -> None:
    if name == "mlflow":
        logger.experiment.log_artifact(logger.run_id, str(path))
    elif name == "tensorboard":
        logger.experiment.add_image(path.stem, _image(path), dataformats="HWC")
    elif name == "wandb":
        import wandb

        logger.experiment.log({path.stem: wandb.Image(str(path))})


def _make_logger(name: str, run_dir: Path, run_id: str | None) -> Any:
    group = run_dir.resolve().parent.name  # the ablation folder, for variants
    if name == "tensorboard":
        from lightning_fabric.loggers import TensorBoardLogger

        # version="" keeps one folder per run directory: RUN_DIR/tensorboard.
        return TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version="")
    if name == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        artifacts = None
        if uri.startswith("sqlite:///"):
            # Beside the database, not MLflow's default ./mlruns under the working directory.
            artifacts = str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
        return MLFlowLogger(
            experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "medssl"),
            run_name=run_dir.name,
            tracking_uri=uri,
            artifact_location=artifacts,
            tags={"medssl.run_dir": run_dir.name, "medssl.group": group},
            run_id=run_id,
        )
    if name == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        # Offline unless the user chose a mode: images of patients stay on the machine.
        return WandbLogger(
            name=run_dir.name,
            save_dir=str(run_dir),
            project=os.environ.get("WANDB_PROJECT", "medssl"),
            group=group,
            offline=os.environ.get("WANDB_MODE") is None,
            id=run_id,
            resume="allow" if run_id else None,
        )
    raise ValueError(f"train.loggers: unknown tracker {name!r}")
