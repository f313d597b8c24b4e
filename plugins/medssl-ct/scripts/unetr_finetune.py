"""Fine-tune MONAI's UNETR on a lesion mask from a medssl encoder, or from random weights.

The worked example of this plugin's README: the encoder exported by
``medssl export RUN --format monai_unetr --out DIR`` initialises UNETR's ``vit``; the
decoder starts at random either way. Training: lung1's lesion mask (the pyradiomics
fixture), 3D crops drawn half on the lesion and half off it (MONAI's
``RandCropByPosNegLabel``), DiceCE loss, AdamW. Validation: lung2's lesion, the whole
volume by sliding window, Dice. One lung window (level -600, width 1500 HU) mapped to
[0, 1] and normalised as the pre-training views were ((x - 0.5) / 0.25).

    python plugins/medssl-ct/scripts/unetr_finetune.py --encoder DIR [--random] [--epochs 2]

Prints one JSON line: init, epochs, the training loss of each epoch, validation Dice, and
the keys UNETR reported missing / unexpected when loading the encoder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from medssl_ct.volume import _load
from medssl_ct.window import WINDOW_PRESETS

VOLUMES = Path(__file__).parents[1] / "tests" / "fixtures" / "volumes"


def _volume(name: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[1, X, Y, Z]`` image and lesion mask, padded to at least ``size`` on every side."""
    hu, labels = _load(
        str(VOLUMES / f"{name}_ct.nrrd"), str(VOLUMES / f"{name}_ct_mask.nrrd"), None
    )
    assert labels is not None
    level, width = WINDOW_PRESETS["lung"]
    x = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0)
    pad = [(0, max(0, size - n)) for n in x.shape]
    x = np.pad((x - 0.5) / 0.25, pad, constant_values=-2.0)  # -2: air after the window
    mask = np.pad(labels > 0, pad)
    return torch.from_numpy(x[None]).float(), torch.from_numpy(mask[None]).long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="a monai_unetr export folder")
    parser.add_argument("--random", action="store_true", help="ignore its weights (baseline)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=8, help="batches per epoch")
    parser.add_argument("--batch", type=int, default=4, help="crops per batch")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--feature-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.networks.nets import UNETR
    from monai.transforms import RandCropByPosNegLabel
    from safetensors.torch import load_file

    folder = Path(args.encoder)
    kwargs = json.loads((folder / "unetr.json").read_text())
    size = int(kwargs["img_size"])
    torch.manual_seed(args.seed)
    model = UNETR(out_channels=2, feature_size=args.feature_size, **kwargs)
    report: dict[str, object] = {"init": "random" if args.random else "medssl"}
    if not args.random:
        missing, unexpected = model.load_state_dict(
            load_file(str(folder / "unetr_encoder.safetensors")), strict=False
        )
        report["missing_encoder_keys"] = [k for k in missing if k.startswith("vit.")]
        report["missing_decoder_keys"] = len([k for k in missing if not k.startswith("vit.")])
        report["unexpected_keys"] = list(unexpected)

    image, label = _volume("lung1", size)
    crop = RandCropByPosNegLabel(
        spatial_size=(size,) * 3, pos=1, neg=1, num_samples=args.batch, allow_smaller=True
    )
    crop.set_random_state(seed=args.seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-5)
    losses, started = [], time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        total = 0.0
        for _ in range(args.iters):
            pairs = crop(torch.cat([image, label.float()]), label=label)
            batch = torch.stack([torch.as_tensor(p) for p in pairs])
            x, y = batch[:, :1], batch[:, 1:].round().long()
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss)
        losses.append(round(total / args.iters, 4))

    val_image, val_label = _volume("lung2", size)
    model.eval()
    with torch.no_grad():
        logits = sliding_window_inference(val_image[None], (size,) * 3, 4, model, overlap=0.25)
    pred = logits.argmax(1, keepdim=True)
    dice = DiceMetric(include_background=False)
    dice(
        torch.nn.functional.one_hot(pred[:, 0], 2).permute(0, 4, 1, 2, 3),
        torch.nn.functional.one_hot(val_label, 2).permute(0, 4, 1, 2, 3),
    )
    report.update(
        epochs=args.epochs,
        train_loss_per_epoch=losses,
        val_dice_lung2_lesion=round(float(dice.aggregate()), 4),
        seconds=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
