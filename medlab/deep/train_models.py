"""Train the small models shipped in ``medlab/deep/weights`` on phantoms, and write their cards.

Run from the repository root (it rewrites the shipped files, atomically)::

    python -m medlab.deep.train_models                 # both models
    python -m medlab.deep.train_models brain_tumour    # one

Each model is trained by :func:`medlab.deep.train_segmenter` with the settings below (the
tutorial's, for the brain), on phantoms whose seeds are listed, with a fixed training seed
and a fixed number of epochs, so the run is reproducible on the same thread count. Beside
``<name>.pt`` it writes ``<name>.json`` (the card: settings, seeds, validation Dice from the
checkpoint, Dice on held-out phantoms, and on the real shared images when ``../shared/data``
is there) and refreshes ``README.md`` in that folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from .cases import brain_tumour_cases, lung_nodule_cases

WEIGHTS = Path(__file__).with_name("weights")

BRAIN_SETTINGS: dict[str, Any] = {
    "config": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1},
    "intensity": "zscore", "patch_size": [48, 48, 24], "batch_size": 2, "samples_per_image": 4,
    "learning_rate": 3e-3, "validation": 2, "patience": 40, "augment": True, "seed": 0,
}
"""The tutorial's training settings for the brain tumour U-Net (default phantom size).

Intensities are z-scored per image and channel (nnU-Net's and the MONAI BraTS tutorial's choice
for MRI), not mapped from the 0.5th-99.5th percentiles: the oedema is the brightest tissue on
FLAIR, so when it and the rim fill less than about 0.5 % of the image (a quarter of the phantoms) the 99.5th
percentile falls on grey matter, oedema and enhancing rim are both clipped to 1 and grey matter
moves from about 0.54 to 0.88. A network trained on the usual large oedemas then misses the
small ones (whole-tumour Dice about 0.85 on them instead of 0.97; see benchmarks/RESULTS.md).
Patience 40: with two validation cases the Dice is noisy, and patience 15 stopped a 3-minute
run after 2 minutes at a worse model (chosen on validation phantoms, not the test ones)."""

_SHIPPED_BRAIN = {"intensity": "percentile", "patience": 15, "val_interval": 1}
"""The shipped brain models were trained before the tutorial moved to z-scores and patience 40
(and validated after every epoch, before ``val_interval="auto"``): kept here so this script still
reproduces them (their cards record the settings they were trained with)."""

_UNET = {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}

MODELS: dict[str, dict[str, Any]] = {
    "brain_tumour": {
        "task": "brain tumour on MRI, post-contrast T1 + FLAIR: enhancing tumour, necrotic core, oedema",
        "cases": lambda seeds: brain_tumour_cases(seeds, contrasts=("t1", "flair"), bias=0.1),
        "data": "medlab.data.brain_mri(seed=s, contrasts=('t1', 'flair'), bias=0.1): 128 x 128 x 64, 1.5 x 1.5 x 2 mm",
        "train_seeds": list(range(16)), "test_seeds": list(range(1000, 1004)),
        "settings": {**BRAIN_SETTINGS, **_SHIPPED_BRAIN, "epochs": 80},
        "whole": (7, 8, 9),
    },
    "brain_tumour_t1": {
        "task": "brain tumour on post-contrast T1 alone: enhancing tumour, necrotic core, oedema",
        "cases": lambda seeds: brain_tumour_cases(seeds, contrasts=("t1",), bias=0.1),
        "data": "medlab.data.brain_mri(seed=s, contrasts=('t1',), bias=0.1): 128 x 128 x 64, 1.5 x 1.5 x 2 mm",
        "train_seeds": list(range(16)), "test_seeds": list(range(1000, 1004)),
        "settings": {**BRAIN_SETTINGS, **_SHIPPED_BRAIN, "epochs": 40, "patience": 15},
        "whole": (7, 8, 9),
    },
    "lung_nodules": {
        "task": "lung nodules on chest CT (HU): solid and ground-glass",
        "cases": lambda seeds: lung_nodule_cases(seeds),
        "data": "medlab.data.chest_ct(seed=s): 192 x 192 x 64, 1 x 1 x 2.5 mm, noise 20 HU, 3 solid + 2 ground-glass nodules",
        "train_seeds": list(range(16)), "test_seeds": list(range(1000, 1004)),
        "settings": {**BRAIN_SETTINGS, "config": _UNET, "intensity": "ct_lung", "epochs": 150, "patience": 40, "max_time": 3000,
                     "val_interval": 1},
        "whole": (9, 10),
    },
}


def held_out_dice(model, cases, whole: tuple[int, ...]) -> dict[str, Any]:
    """Dice per class and of the union of classes on held-out cases (mean and per case)."""
    from .. import metrics
    from .inference import deep_segment

    rows = []
    for image, truth in zip(cases.images, cases.labels):
        channels = image if isinstance(image, tuple) else (image,)
        labels = deep_segment(channels[0], model, *channels[1:])[0]
        row = {name: metrics.dice(labels, truth, label=value) for value, name in cases.classes.items()}
        row["whole"] = metrics.dice(np.isin(labels.array, whole), np.isin(truth.array, whole))
        rows.append(row)
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
    return {"seeds": cases.seeds, "mean": mean, "per_case": [{k: round(v, 4) for k, v in r.items()} for r in rows]}


def real_brain_dice(model) -> dict[str, Any] | None:
    """The brain model on the real shared T1 (pyradiomics brain1) against its binary tumour mask."""
    from .. import metrics
    from ..io import load
    from .inference import deep_segment

    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labels"
    if not (root / "brain1_image.nrrd").is_file():
        return None
    image, truth = load(root / "brain1_image.nrrd"), load(root / "brain1_label.nrrd")
    labels = deep_segment(image, model)[0]
    mask = truth.array != 0
    out = {"image": "labels/brain1_image.nrrd", "truth": "labels/brain1_label.nrrd (binary tumour mask)",
           "truth_voxels": int(mask.sum())}
    for name, values in (("whole tumour", (7, 8, 9)), ("enhancing + necrotic", (8, 9)), ("enhancing", (8,))):
        pred = np.isin(labels.array, values)
        out[name] = {"dice": round(metrics.dice(pred, mask), 4), "predicted_voxels": int(pred.sum())}
    return out


def train_model(name: str, *, threads: int = 2) -> dict[str, Any]:
    """Train one shipped model, save it with its card; returns the card."""
    import torch

    from ..io.atomic import atomic_write_text
    from .train import train_segmenter

    if name not in MODELS:
        raise ParameterError(f"unknown model {name!r}; models: {sorted(MODELS)}")
    spec = MODELS[name]
    settings = dict(spec["settings"])
    cases = spec["cases"](spec["train_seeds"])
    load = os.getloadavg()[0]
    start = time.monotonic()
    result = train_segmenter(cases.images, cases.labels, classes=cases.classes, channel_names=cases.channels,
                             threads=threads, **settings)
    seconds = time.monotonic() - start
    model = result.model
    test = held_out_dice(model, spec["cases"](spec["test_seeds"]), spec["whole"])
    model.metrics["test_dice_mean"] = round(float(np.mean([test["mean"][c] for c in cases.classes.values()])), 4)
    WEIGHTS.mkdir(exist_ok=True)
    model.save(WEIGHTS / f"{name}.pt", overwrite=True)
    card = {
        "name": name, "task": spec["task"], "channels": cases.channels,
        "classes": {str(k): v for k, v in cases.classes.items()}, "network": model.config,
        "preprocessing": model.preprocessing, "seed": settings["seed"],
        "training": {"data": spec["data"], "phantom_seeds": spec["train_seeds"], "settings": settings,
                     "seconds": round(seconds, 1), "load_average_at_start": round(load, 1),
                     "epochs_run": model.metrics.get("epochs_run"), "best_epoch": model.metrics["epoch"],
                     "threads": threads, "torch": torch.__version__, "monai": _monai_version()},
        "validation": {k: v for k, v in model.metrics.items() if k.startswith("dice")},
        "test_phantoms": test,
        "size_bytes": (WEIGHTS / f"{name}.pt").stat().st_size,
    }
    if name == "brain_tumour_t1":
        card["real_data"] = real_brain_dice(model)
    atomic_write_text(WEIGHTS / f"{name}.json", json.dumps(card, indent=1) + "\n", overwrite=True)
    return card


def _monai_version() -> str:
    import monai

    return monai.__version__


def write_readme() -> None:
    """``weights/README.md``: one section per shipped model, from the cards."""
    from ..io.atomic import atomic_write_text
    from .pretrained import pretrained_models

    lines = ["# Shipped models", "",
             "Trained on medlab's phantoms by `python -m medlab.deep.train_models` (CPU). Numbers are",
             "measured by that script; see each `<name>.json` for everything (settings, seeds, per-case",
             "Dice). Training seconds are wall clock on a shared 2-core machine (one thread per model).", ""]
    for name, card in pretrained_models().items():
        lines += [f"## {name}", "", card["task"] + ".", "",
                  f"- data: `{card['training'].get('data', '')}`",
                  (f"- input channels: {', '.join(card['channels'])}; seed {card['seed']}; "
                  f"{len(card['training']['phantom_seeds'])} phantoms (seeds {card['training']['phantom_seeds'][0]}"
                  f"–{card['training']['phantom_seeds'][-1]}), best epoch {card['training']['best_epoch']} of "
                  f"{card['training']['epochs_run']}, {card['training']['seconds']:.0f} s; "
                  f"{card['size_bytes'] / 1e6:.1f} MB"),
                  "- validation Dice: " + ", ".join(f"{k.removeprefix('dice ')} {v:.3f}"
                                                    for k, v in card["validation"].items()),
                  "- held-out phantoms (seeds " + ", ".join(map(str, card["test_phantoms"]["seeds"])) + "): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in card["test_phantoms"]["mean"].items())]
        real = card.get("real_data")
        if real:
            lines.append(f"- real image `{real['image']}` vs `{real['truth']}`: "
                         + ", ".join(f"{k} Dice {v['dice']:.3f} ({v['predicted_voxels']} voxels predicted, "
                                     f"{real['truth_voxels']} true)" for k, v in real.items()
                                     if isinstance(v, dict)))
        lines.append("")
    atomic_write_text(WEIGHTS / "README.md", "\n".join(lines), overwrite=True)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="Train the shipped models on phantoms.")
    parser.add_argument("names", nargs="*", help=f"models to train (default all: {', '.join(MODELS)})")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the card records them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in args.names or list(MODELS):
        card = train_model(name, threads=args.threads)
        print(json.dumps({k: card[k] for k in ("name", "validation", "test_phantoms")}, indent=1))
    write_readme()


if __name__ == "__main__":
    main()
