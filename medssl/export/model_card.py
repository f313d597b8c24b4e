"""The model card (``README.md``) of an exported folder, in the Hugging Face Hub's format.

The Hub reads a YAML metadata header (``library_name``, ``tags``, ``license``, ...) and a
Markdown body (https://huggingface.co/docs/hub/model-cards). The body here is built from
what the run directory holds: ``config.yaml`` (recipe summary, dataset description),
``run.json`` (versions, batch, learning rate), ``metrics.csv`` (steps, final losses) and
``eval.json`` (the probe table with its floors). No patient data: recipe options that
are paths, or look like one, are left out, and nothing is read from the images.
The licence is left for the user to fill in: the terms of the training data decide it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from medssl.engine.run_info import public_options

__all__ = ["write_model_card", "model_card"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _final_metrics(metrics_csv: Path) -> tuple[int | None, dict[str, float]]:
    """The last logged step and its ``loss*`` values (the last finite one of each)."""
    if not metrics_csv.is_file():
        return None, {}
    with metrics_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None, {}
    losses: dict[str, float] = {}
    for row in rows:
        for key, text in row.items():
            if key and key.startswith("loss") and text not in ("", None):
                value = float(text)
                if math.isfinite(value):
                    losses[key] = value
    return int(rows[-1]["step"]), losses


def _eval_table(payload: Mapping[str, Any]) -> str | None:
    from medssl.eval import markdown_table
    from medssl.eval.base import EvalResult, Row

    results = [
        EvalResult(**{**r, "rows": [Row(**row) for row in r["rows"]]})
        for r in payload.get("results", [])
    ]
    return markdown_table(results) if results else None


def _yaml_block(data: Any) -> str:
    return "```yaml\n" + yaml.safe_dump(data, sort_keys=False).rstrip() + "\n```"


def model_card(
    run_dir: str | Path | None,
    hf_config: Mapping[str, Any],
    preprocessor: Mapping[str, Any],
    *,
    name: str,
    grey_source: bool = False,
) -> str:
    """The text of ``README.md`` for an exported folder made from ``run_dir``."""
    run = Path(run_dir) if run_dir is not None else None
    config: dict[str, Any] = {}
    if run is not None and (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    info = _read_json(run / "run.json") if run else {}
    evaluation = _read_json(run / "eval.json") if run else {}
    last_step, losses = _final_metrics(run / "metrics.csv") if run else (None, {})
    objectives = {
        k: v.get("weight", 1.0) if isinstance(v, Mapping) else v
        for k, v in (config.get("objectives") or {}).items()
    }
    objectives = {k: w for k, w in objectives.items() if w}
    data = public_options(config.get("data") or {})
    dataset = data.get("name", "unknown")
    channels = int(hf_config.get("num_channels", 3))

    tags = ["medssl", "dinov2", "self-supervised-learning", "medical-imaging", "vision"]
    tags += [f"medssl-{k}" for k in objectives]
    tags.append(f"dataset-{dataset}")
    header = {
        "library_name": "transformers",
        "pipeline_tag": "image-feature-extraction",
        "tags": tags,
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).rstrip(),
        "# license: set the licence of these weights here (the training data's terms may "
        "restrict it); see https://huggingface.co/docs/hub/repositories-licenses",
        "---",
        "",
        f"# {name}",
        "",
        "A vision transformer encoder pre-trained with self-supervision by medssl "
        f"{info.get('medssl_version', '')}".rstrip()
        + ", saved as a `transformers` `Dinov2Model` (the layout of `microsoft/rad-dino`).",
        "",
        "## Model",
        "",
        f"- ViT: {hf_config.get('num_hidden_layers')} blocks, width "
        f"{hf_config.get('hidden_size')}, {hf_config.get('num_attention_heads')} heads, "
        f"patch {hf_config.get('patch_size')} px, trained at "
        f"{preprocessor.get('crop_size', {}).get('height')} px.",
        "- Input: "
        + (
            "RGB. The encoder was trained on grey images; its patch embedding is spread "
            "over R, G and B (a third each), so a grey image converted to RGB gives the "
            "grey encoder's features exactly. The image processor converts to RGB."
            if channels == 3 and grey_source
            else ("RGB." if channels == 3 else "one grey channel (no RGB conversion).")
        ),
        f"- Normalisation: mean {preprocessor.get('image_mean')}, std "
        f"{preprocessor.get('image_std')} after scaling to [0, 1].",
        "",
    ]
    if objectives:
        lines += [
            "## Training",
            "",
            "Objectives (weight): "
            + ", ".join(f"{k} ({w:g})" for k, w in objectives.items())
            + ".",
            "",
        ]
        facts = [
            ("steps", last_step if last_step is not None else info.get("total_steps")),
            ("global batch", info.get("global_batch")),
            ("peak learning rate", info.get("peak_lr")),
            ("precision", (config.get("train") or {}).get("precision")),
            ("devices", info.get("world_size")),
            ("seed", config.get("seed", info.get("seed"))),
            ("medssl commit", info.get("git_commit")),
        ]
        lines += [f"- {k}: {v}" for k, v in facts if v is not None]
        if losses:
            lines += [
                "- final losses (step "
                f"{last_step}): " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items())
            ]
        lines += [
            "",
            "Backbone and augmentation blocks of the recipe:",
            "",
            _yaml_block(
                {
                    "backbone": public_options(config.get("backbone") or {}),
                    "augmentation": public_options(config.get("augmentation") or {}),
                }
            ),
            "",
        ]
    lines += [
        "## Training data",
        "",
        f"Dataset adapter `{dataset}` with these options (paths left out):",
        "",
        _yaml_block(data) if data else "(no recipe found beside the weights)",
        "",
        "Describe the source here: institution type, modality, number of patients and "
        "images, inclusion criteria, and the data licence or agreement.",
        "",
    ]
    table = _eval_table(evaluation) if evaluation else None
    lines += ["## Evaluation", ""]
    if table:
        lines += [
            "Frozen-feature probes run by `medssl eval`, each beside its floors:",
            "",
            table.rstrip(),
            "",
        ]
    else:
        lines += ["No evaluation in the run directory (`medssl eval RUN_DIR` writes one).", ""]
    convert = "convert('RGB')" if channels == 3 else "convert('L')"
    lines += [
        "## How to use",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModel",
        "",
        'model = AutoModel.from_pretrained("path/to/this/folder").eval()',
        'processor = AutoImageProcessor.from_pretrained("path/to/this/folder")',
        f'image = Image.open("image.png").{convert}',
        'outputs = model(**processor(image, return_tensors="pt"))',
        "cls_token = outputs.last_hidden_state[:, 0]      # global features",
        "patch_tokens = outputs.last_hidden_state[:, 1:]  # one per patch",
        "```",
        "",
        "Continue pre-training from it with medssl: `medssl run RECIPE "
        "backbone.init=path/to/this/folder` (`heads.safetensors`, when present, carries "
        "the DINO/iBOT heads).",
        "",
    ]
    return "\n".join(lines)


def write_model_card(
    out_dir: str | Path,
    run_dir: str | Path | None,
    *,
    name: str,
    grey_source: bool = False,
) -> Path:
    """Write ``README.md`` into an exported folder (after its config files)."""
    out = Path(out_dir)
    hf_config = json.loads((out / "config.json").read_text())
    preprocessor = _read_json(out / "preprocessor_config.json")
    path = out / "README.md"
    path.write_text(
        model_card(run_dir, hf_config, preprocessor, name=name, grey_source=grey_source)
    )
    return path
