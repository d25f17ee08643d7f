"""Deep segmentation numbers of issue 8, section 7, with the peers measured in the same run.

1. **Brain tumour U-Net on phantoms.** Training data: twelve brain phantoms at the phantom's
   default size (128 x 128 x 64, 1.5 x 1.5 x 2 mm; post-contrast T1 and FLAIR as two
   channels, as in BraTS), seeds 0-11; test data:
   four held-out phantoms (seeds 100-103). Both contenders get the same network (MONAI 3D
   UNet, channels 8-64, the tutorial's settings: ``medlab.deep.train_models.BRAIN_SETTINGS``),
   the same data and the same wall-clock budget (``--budget``, default 170 s: under 3 minutes):

   * medlab: ``train_segmenter`` with the tutorial's settings (``max_time`` = budget), then
     ``deep_segment`` on each test phantom;
   * a plain MONAI script of about 30 lines, as a user would write it: percentile scaling,
     whole volumes in batches of two, Dice + cross-entropy, Adam, then
     ``sliding_window_inference`` (the script is :func:`plain_monai_training` below);
   * the same script with the MONAI spleen tutorial's sampling (``RandCropByPosNegLabeld``,
     four patches of the tutorial's patch size per volume);
   * the same again with the MONAI BraTS tutorial's normalisation (``NormalizeIntensityd``,
     channel-wise z-scores, which the tutorial's settings use too) instead of percentiles.

   Scores: Dice per class (enhancing tumour, necrotic core, oedema) and of the whole tumour,
   by :func:`medlab.metrics.dice`, mean and minimum over the four test phantoms.
2. **Inference overhead.** Sliding-window inference on a 128^3 phantom volume with the trained
   network: ``deep_segment`` (preprocessing, checks, probabilities back on the input grid,
   label map with names) against plain MONAI (``ScaleIntensityRangePercentiles`` +
   ``sliding_window_inference`` + arg-max) with the same network, window, overlap and
   blending, alternated, best of ``--repeats``. Measured at the start and again at the end.
3. **Shipped models** (``medlab.deep.pretrained``) on held-out phantoms and on the real shared
   brain image (``labels/brain1_image.nrrd`` against ``brain1_label.nrrd``).

Usage::

    python benchmarks/bench_deep.py                # about 15 minutes on 2 idle cores
    python benchmarks/bench_deep.py --budget 60    # a shorter training budget
    python benchmarks/bench_deep.py --contenders medlab,patches-zscore --no-inference

The machine's cores may be shared: times are wall clock, and CPU seconds of this process are
printed beside them; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

CLASSES = {8: "enhancing tumour", 9: "necrotic core", 7: "oedema"}
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from medlab import metrics

    row = {name: metrics.dice(pred, truth, label=value) for value, name in CLASSES.items()}
    row["whole tumour"] = metrics.dice(np.isin(pred, list(CLASSES)), np.isin(truth, list(CLASSES)))
    return row


def summary(rows: list[dict[str, float]]) -> str:
    cols = [*CLASSES.values(), "whole tumour"]
    return " | ".join(f"{np.mean([r[c] for r in rows]):.3f} ({np.min([r[c] for r in rows]):.3f})" for c in cols)


# ----------------------------------------------------------------------------- contenders
def medlab_training(train, test, budget: float, settings: dict) -> dict:
    from medlab.deep import deep_segment, train_segmenter

    t0, c0 = time.monotonic(), time.process_time()
    result = train_segmenter(train.images, train.labels, classes=train.classes, channel_names=train.channels,
                             max_time=budget, **{**settings, "epochs": 10_000})
    seconds, cpu = time.monotonic() - t0, time.process_time() - c0

    def segment(img) -> np.ndarray:
        return deep_segment(*img[:1], result.model, *img[1:])[0].array

    rows = [scores(segment(img), lab.array) for img, lab in zip(test.images, test.labels)]
    m = result.model.metrics
    return {"rows": rows, "seconds": seconds, "cpu": cpu, "model": result.model, "segment": segment,
            "note": f"{m['epochs_run']} epochs, best {m['epoch']}, {m['validations']} validations, "
                    f"{m['optimiser_steps']} optimiser steps"}


def plain_monai_training(train, test, budget: float, settings: dict, patches: bool = False,
                         zscore: bool = False) -> dict:
    """The peer: a plain MONAI script, same network, data and budget. Whole volumes in batches of
    two, or (``patches``) the MONAI spleen tutorial's sampling: ``RandCropByPosNegLabeld`` with the
    tutorial's patch size, four patches per volume. Intensities: 0.5-99.5th percentiles to 0..1,
    or (``zscore``) the MONAI BraTS tutorial's channel-wise z-scores."""
    import monai.transforms as mt
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.utils import set_determinism

    t0, c0, epochs, steps = time.monotonic(), time.process_time(), 0, 0
    set_determinism(0)
    remap = np.zeros(16, np.int64)
    for k, value in enumerate(CLASSES, 1):
        remap[value] = k
    data = [{"image": np.stack([c.array for c in img]).astype(np.float32), "label": remap[lab.array][None]}
            for img, lab in zip(train.images, train.labels)]
    scale = (mt.NormalizeIntensityd("image", channel_wise=True) if zscore else
             mt.ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True, channel_wise=True))
    transform = scale
    if patches:
        patch = tuple(settings["patch_size"][::-1])
        transform = mt.Compose([scale, mt.RandCropByPosNegLabeld(["image", "label"], "label", patch, pos=1, neg=1,
                                                                  num_samples=settings["samples_per_image"])])
    loader = DataLoader(CacheDataset(data, transform, progress=False), batch_size=2, shuffle=True)
    cfg = settings["config"]
    net = UNet(3, len(train.channels), 4, cfg["channels"], cfg["strides"], num_res_units=cfg["num_res_units"])
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), settings["learning_rate"])
    while time.monotonic() - t0 < budget:
        net.train()
        for batch in loader:
            if time.monotonic() - t0 >= budget:
                break
            optimiser.zero_grad()
            loss = loss_function(net(batch["image"]), batch["label"])
            loss.backward()
            optimiser.step()
            steps += 1
        epochs += 1
    seconds, cpu = time.monotonic() - t0, time.process_time() - c0
    net.eval()
    roi = tuple(settings["patch_size"][::-1]) if patches else (64, 128, 128)

    def segment(img) -> np.ndarray:
        x = scale({"image": np.stack([c.array for c in img]).astype(np.float32)})["image"]
        with torch.no_grad():
            logits = sliding_window_inference(torch.as_tensor(x)[None], roi, 1, net, overlap=0.25, mode="gaussian")
        return np.array([0, *CLASSES])[logits.argmax(1)[0].numpy()]

    rows = [scores(segment(img), lab.array) for img, lab in zip(test.images, test.labels)]
    return {"rows": rows, "seconds": seconds, "cpu": cpu, "segment": segment, "note": f"{epochs} epochs, {steps} optimiser steps"}


# ----------------------------------------------------------------------------- inference overhead
def inference_overhead(model, repeats: int) -> dict:
    import monai.transforms as mt
    import torch
    from monai.inferers import sliding_window_inference

    from medlab.data import brain_mri
    from medlab.deep import deep_segment, network_from_checkpoint

    spacing = tuple(model.preprocessing["spacing"])
    phantom = brain_mri(size=(128, 128, 128), spacing=spacing, seed=500, contrasts=("t1", "flair"))
    t1, flair = phantom.t1, phantom.flair
    net = network_from_checkpoint(model)
    roi = tuple(model.preprocessing["patch_size"][::-1])
    values = np.array([0, *model.preprocessing["label_values"]])

    def plain():
        x = np.stack([t1.array, flair.array]).astype(np.float32)
        x = mt.ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True, channel_wise=True)(x)
        with torch.no_grad():
            logits = sliding_window_inference(torch.as_tensor(x)[None], roi, 1, net, overlap=0.25, mode="gaussian",
                                              padding_mode="replicate")
        return values[logits.argmax(1)[0].numpy()]

    def ours():
        return deep_segment(t1, model, flair)[0].array

    times = {"plain": [], "medlab": []}
    outs = {}
    for _ in range(repeats):
        for name, fn in (("plain", plain), ("medlab", ours)):
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    agree = float(np.mean(outs["plain"] == outs["medlab"]))
    return {"plain": min(times["plain"]), "medlab": min(times["medlab"]), "agree": agree,
            "all": {k: [round(v, 2) for v in t] for k, t in times.items()}}


def print_overhead(row: dict, when: str) -> None:
    ratio = row["medlab"] / row["plain"]
    print(f"| {when} | {row['plain']:.2f} | {row['medlab']:.2f} | {100 * (ratio - 1):+.1f} % | "
          f"{row['agree']:.5f} | {row['all']['plain']} / {row['all']['medlab']} |")


# ----------------------------------------------------------------------------- shipped models
def shipped_models() -> None:
    from medlab import metrics
    from medlab.deep import deep_segment, pretrained, pretrained_models
    from medlab.deep.train_models import MODELS, held_out_dice

    print("\n## Shipped models: held-out phantoms (recomputed now) and the card's validation Dice\n")
    print("| model | validation Dice (card) | held-out phantoms: Dice per class and union | seconds |")
    print("|---|---|---|---|")
    for name, card in pretrained_models().items():
        spec = MODELS[name]
        t = time.monotonic()
        test = held_out_dice(pretrained(name), spec["cases"](spec["test_seeds"]), spec["whole"])
        val = ", ".join(f"{k.removeprefix('dice ')} {v:.3f}" for k, v in card["validation"].items())
        held = ", ".join(f"{k} {v:.3f}" for k, v in test["mean"].items())
        print(f"| {name} | {val} | {held} | {time.monotonic() - t:.1f} |")
    image_path, truth_path = SHARED / "labels/brain1_image.nrrd", SHARED / "labels/brain1_label.nrrd"
    if not image_path.is_file():
        print("\n(real brain image not found: ../shared/data absent)")
        return
    from medlab.io import load

    image, truth = load(image_path), load(truth_path)
    labels = deep_segment(image, pretrained("brain_tumour_t1"))[0]
    mask = truth.array != 0
    print("\n## brain_tumour_t1 on the real post-contrast T1 (brain1_image.nrrd, 0.78 x 0.78 x 6.5 mm)\n")
    print(f"truth: brain1_label.nrrd, {int(mask.sum())} voxels (binary lesion mask)\n")
    print("| predicted classes vs the lesion mask | Dice | HD95 mm | sensitivity | precision | voxels predicted |")
    print("|---|---|---|---|---|---|")
    for what, values in (("enhancing", (8,)), ("enhancing + necrotic", (8, 9)), ("any class (with oedema)", (7, 8, 9))):
        pred = np.isin(labels.array, values)
        row = metrics.segmentation_scores(image.with_array(pred.astype(np.uint8), kind="label"),
                                          truth.with_array(mask.astype(np.uint8), kind="label"))[0]
        print(f"| {what} | {row['dice']:.3f} | {row['hausdorff95_mm']:.1f} | {row['sensitivity']:.3f} | "
              f"{row['precision']:.3f} | {int(pred.sum())} |")


CONTENDERS = {
    "medlab": ("medlab train_segmenter + deep_segment", medlab_training),
    "volumes": ("plain MONAI script, whole volumes", plain_monai_training),
    "patches": ("plain MONAI script, spleen-tutorial patches", partial(plain_monai_training, patches=True)),
    "patches-zscore": ("plain MONAI script, spleen-tutorial patches, BraTS-tutorial z-scores",
                       partial(plain_monai_training, patches=True, zscore=True)),
}
VALIDATION_SEEDS = range(200, 212)
"""Phantoms for choosing settings (``--validation``): same generator as the training seeds 0-11,
never the held-out test seeds 100-103."""


def contender_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in CONTENDERS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"contenders: a comma-separated list of {', '.join(CONTENDERS)}; got {text!r}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=170.0, help="training wall-clock budget, seconds")
    parser.add_argument("--repeats", type=int, default=3, help="inference timing repeats")
    parser.add_argument("--contenders", type=contender_names, default=list(CONTENDERS),
                        help=f"trainings to run, comma-separated (default all: {','.join(CONTENDERS)})")
    parser.add_argument("--validation", action="store_true",
                        help=f"also score every trained network on validation phantoms (seeds "
                             f"{VALIDATION_SEEDS.start}-{VALIDATION_SEEDS.stop - 1}): choose settings on these, "
                             "not on the held-out test phantoms")
    parser.add_argument("--no-inference", action="store_true", help="skip the inference-overhead timings")
    parser.add_argument("--no-shipped", action="store_true", help="skip the shipped models' section")
    args = parser.parse_args()

    import torch

    from medlab.deep import brain_tumour_cases, pretrained, pretrained_models
    from medlab.deep.train_models import BRAIN_SETTINGS

    torch.set_num_threads(2)
    print(f"# bench_deep: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")
    header = ("| when | plain MONAI s | medlab s | overhead | label agreement | all runs plain / medlab |\n"
              "|---|---|---|---|---|---|")
    model = pretrained("brain_tumour") if "brain_tumour" in pretrained_models() else None
    if model is not None and not args.no_inference:
        print("## Inference overhead on a 128^3 volume (shipped brain_tumour network), at the start\n")
        print(header)
        print_overhead(inference_overhead(model, args.repeats), "start")

    t = time.monotonic()
    train = brain_tumour_cases(range(12), contrasts=("t1", "flair"))
    test = brain_tumour_cases(range(100, 104), contrasts=("t1", "flair"))
    val = brain_tumour_cases(VALIDATION_SEEDS, contrasts=("t1", "flair")) if args.validation else None
    print(f"\n(phantoms made in {time.monotonic() - t:.1f} s: 12 training, 4 held-out test"
          f"{', 12 validation' if val else ''}, 128 x 128 x 64)\n")
    settings = dict(BRAIN_SETTINGS)
    print(f"## Brain tumour U-Net on held-out phantoms, training budget {args.budget:.0f} s wall clock\n")
    print(f"settings: {settings}\n")
    print("| contender | enhancing | necrotic core | oedema | whole tumour | train s (CPU s) | notes |")
    print("|---|---|---|---|---|---|---|")
    results = {}
    for key in args.contenders:
        name, fn = CONTENDERS[key]
        r = results[key] = fn(train, test, args.budget, settings)
        whole = ", ".join(f"{row['whole tumour']:.3f}" for row in r["rows"])
        print(f"| {name} | {summary(r['rows'])} | {r['seconds']:.0f} ({r['cpu']:.0f}) | {r['note']}; "
              f"whole per phantom {whole} |", flush=True)
        if val is not None:
            r["val"] = [scores(r["segment"](img), lab.array) for img, lab in zip(val.images, val.labels)]
        model = model or r.get("model")
    print("\nDice: mean (minimum) over the 4 held-out phantoms (seeds 100-103). CPU s: this process, both threads.")
    if val is not None:
        print(f"\n## The same networks on validation phantoms (seeds {val.seeds[0]}-{val.seeds[-1]})\n")
        print("| contender | enhancing | necrotic core | oedema | whole tumour |\n|---|---|---|---|---|")
        for key, r in results.items():
            print(f"| {CONTENDERS[key][0]} | {summary(r['val'])} |")

    if not args.no_shipped:
        shipped_models()

    if model is not None and not args.no_inference:
        print("\n## Inference overhead on a 128^3 volume, again at the end\n")
        print(header)
        print_overhead(inference_overhead(model, args.repeats), "end")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")

if __name__ == "__main__":
    main()
