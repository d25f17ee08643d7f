"""Training a segmentation network on image/label pairs, on a CPU, reproducibly.

:func:`train_segmenter` is a plain function, not a declared stage: its inputs are *lists* of
images, which the stage contract has no input type for yet. It still talks to whoever runs it
through the stage context (:func:`medlab.stage.progress_to`): progress and Cancel, and live
results through :func:`medlab.stage.publish` every epoch (``history``: the loss curves,
``dice``: the validation Dice curves, ``model``: the best checkpoint so far). Cancel raises
:class:`~medlab.errors.Cancelled` whose ``result`` holds the best checkpoint so far.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import Cancelled, ImageError, ParameterError
from ..image import Image, as_image, check_finite
from ..outputs import Checkpoint, Curve
from ..stage import Result, check_cancelled, publish, report
from .networks import build_network, network_config, size_divisor
from .preprocessing import (
    channels_on_one_grid,
    direction_of,
    intensity_record,
    labels_to_network,
    median_spacing,
    to_network,
)

__all__ = ["train_segmenter"]

log = logging.getLogger("medlab.deep")

MAX_CLASSES = 63
"""Most classes a network learns (its outputs, background included, are at most 64)."""
MAX_STEP_VOXELS = 2**25
"""Largest optimiser step (batch_size x samples_per_image x patch voxels)."""
DEFAULT_PATCH = {3: (48, 48, 24), 2: (128, 128)}
"""Training patch (and sliding window) size in voxels, (x, y[, z]): small enough for about two
optimiser steps per second on two CPU cores, large enough to hold a brain tumour with its oedema
at 1.5 x 1.5 x 2 mm."""
AUTO_VALIDATION_RATIO = 6.0
"""With ``val_interval="auto"``, validate once training since the last validation has taken at least
this many times as long as that validation: validation then takes at most about 1/7 (14 %) of
the time, and the rest goes to optimiser steps."""


def train_segmenter(images: Sequence[Image | Sequence[Image]], labels: Sequence[Image], *,
                    classes: Mapping[int, str] | None = None, network: str = "unet",
                    config: Mapping[str, Any] | None = None, intensity: str | Mapping = "percentile",
                    spacing: str | Sequence[float] | None = "median", patch_size: Sequence[int] | None = None,
                    epochs: int = 40, batch_size: int = 2, samples_per_image: int = 4,
                    learning_rate: float = 3e-3, validation: float = 0.2, patience: int = 10,
                    val_interval: int | str = "auto", max_time: float | None = None, augment: bool = True,
                    channel_names: Sequence[str] | None = None, seed: int = 0, threads: int | None = None) -> Result:
    """Train a MONAI segmentation network; returns the best checkpoint and the learning curves.

    Each image is normalised (a MONAI intensity transform), resampled onto the network grid
    (patient axes, the training set's median voxel size) and cached (MONAI ``CacheDataset``);
    every epoch draws random patches centred on background and on each class equally often
    (MONAI ``RandCropByLabelClassesd``: a small necrotic core is seen as often as a large
    oedema), with intensity jitter and left-right flips if ``augment``. The loss is Dice + cross-entropy
    (MONAI ``DiceCELoss``), the optimiser Adam. After the first epoch, then every
    ``val_interval`` epochs (by default as often as keeps validation near a seventh of the time)
    and after the last, the held-out validation images are segmented whole (sliding window)
    and scored with :func:`medlab.metrics.dice`; the checkpoint with the best mean validation
    Dice is kept, and training stops early when it has not improved for ``patience`` epochs.

    Parameters
    ----------
    images : sequence of Image, or of sequences of Images
        One image per case; for several contrasts per case, a tuple of Images (channels)
        whose later members are resampled onto the first one's grid.
    labels : sequence of Image
        One label map per case, on its image's grid (the first channel's).
    classes : mapping of int to str, optional
        The label values to learn and their names, e.g. ``{8: "enhancing tumour"}``; other
        values count as background. Default: every non-zero value present, named as in the
        label maps.
    network : {'unet', 'segresnet'}
        The MONAI network; ``config`` sets its options (see :func:`network_config`).
    intensity : str or dict
        A preset of :data:`~medlab.deep.preprocessing.INTENSITY_PRESETS` (``"percentile"``
        for MR, ``"ct_lung"`` for CT ...) or a MONAI intensity transform as a dict. Where the
        target is the brightest tissue and its size varies (oedema on FLAIR), prefer
        ``"zscore"``: a high percentile then depends on the lesion's size, and so does every
        normalised intensity.
    spacing : 'median', None or sequence of float
        Voxel size of the network grid in mm (x, y, z): the training set's median, the image's
        own (None), or given.
    patch_size : sequence of int, optional
        Training patch and sliding window, in voxels (x, y[, z]); multiples of the network's
        downsampling factor. Default (48, 48, 24) in 3D, (128, 128) in 2D.
    epochs : int
        Most passes over the training images (each gives ``samples_per_image`` patches per image).
    batch_size, samples_per_image : int
        Images per optimiser step, and patches drawn from each (a step sees their product).
    learning_rate : float
        Adam's step size.
    validation : float or int
        Fraction (below 1) or number of the cases held out for validation; 0 for none (the
        last epoch is then kept).
    patience : int
        Stop after this many *epochs* (not validations) since the epoch of the best validation
        Dice; checked when the network is validated, so a run stops at the first validation at
        least ``patience`` epochs after the best.
    val_interval : int or 'auto'
        Validate after the first epoch, then after every ``val_interval``-th epoch (MONAI's
        ``val_interval``), and always after the last one (``epochs`` reached or ``max_time``
        out). ``"auto"``: after an epoch when training since the last validation took at least
        :data:`AUTO_VALIDATION_RATIO` (6) times as long as that validation, so validation
        costs at most about 14 % of the time (segmenting the validation images whole is slow
        against one epoch of small patches). Which epochs ``"auto"`` validates depends on the
        machine's speed, and so may the chosen checkpoint: give an integer (1 = every epoch)
        for a reproducible run. The curves get a training loss every epoch and validation
        points at the validated epochs.
    max_time : float, optional
        Stop training when this many seconds have passed since the call (data preparation
        included), then validate once more. A run stopped by time is not reproducible (where
        it stops depends on the machine's load): fix ``epochs`` for a reproducible run.
    augment : bool
        Random intensity scaling and shifts and left-right flips of the patches.
    channel_names : sequence of str, optional
        What each channel is (``["t1", "flair"]``), recorded in the checkpoint.
    seed : int
        Seeds torch, numpy, Python and MONAI (``set_determinism``) and the data order: the same
        seed, data, settings and thread count give identical weights. The global random
        states are restored afterwards.
    threads : int, optional
        Torch threads while training (restored afterwards); default: torch's current setting
        (all cores). The other defaults are sized for a two-core CPU: data cached in memory and
        loaded in this process (no worker processes), batches of 2 x 4 small patches, a
        network of 8 to 64 features.

    Returns
    -------
    Result
        ``model`` (:class:`~medlab.outputs.Checkpoint` with the best weights; its
        ``metrics`` hold the validation Dice per class, the epoch, the seed and the training
        time, and after the run ``epochs_run``, ``validations`` and ``optimiser_steps``),
        ``history`` (:class:`~medlab.outputs.Curve` of training loss per epoch and validation
        loss per validated epoch) and ``dice`` (validation Dice per class and mean per
        validated epoch).

    Raises
    ------
    Cancelled
        When cancelled through :func:`medlab.stage.progress_to`; ``exc.result`` holds the best
        checkpoint and the curves so far (``exc.result.cancelled`` is True).
    KeyboardInterrupt
        Ctrl-C (a notebook's stop button) stays a KeyboardInterrupt, and once an epoch has
        ended it too carries the best checkpoint so far in ``exc.result``
        (``sys.last_value.result`` in a notebook).
    ParameterError
        Bad settings or label values, naming them (before any data is prepared).

    Examples
    --------
    >>> from medlab.deep import brain_tumour_cases, train_segmenter
    >>> cases = brain_tumour_cases(range(6), size=(48, 48, 24))            # doctest: +SKIP
    >>> result = train_segmenter(cases.images, cases.labels, classes=cases.classes,
    ...                          epochs=5, seed=0)                          # doctest: +SKIP
    >>> result.model.metrics["dice_mean"]                                   # doctest: +SKIP
    """

    cases = _check_cases(images, labels)
    classes = _check_classes(classes, [lab for _, lab in cases])
    _check_numbers(epochs=epochs, batch_size=batch_size, samples_per_image=samples_per_image,
                   learning_rate=learning_rate, patience=patience, max_time=max_time, seed=seed, threads=threads)
    _check_val_interval(val_interval)
    ndim = cases[0][0][0].ndim
    n_channels = len(cases[0][0])
    cfg = network_config(network, spatial_dims=ndim, in_channels=n_channels, out_channels=len(classes) + 1,
                         **dict(config or {}))
    patch = _check_patch(patch_size, ndim, size_divisor(cfg))
    if batch_size * samples_per_image * math.prod(patch) > MAX_STEP_VOXELS:
        raise ParameterError(f"batch_size x samples_per_image x patch voxels is {batch_size} x {samples_per_image} x "
                             f"{math.prod(patch)}, more than {MAX_STEP_VOXELS} voxels per optimiser step (too much "
                             "memory for a CPU); use a smaller patch_size, batch_size or samples_per_image")
    prep = _preprocessing(cases, intensity, spacing, patch, classes, channel_names, n_channels)
    train_idx, val_idx = _split(len(cases), validation, seed)

    start = time.monotonic()
    with _threads(threads), _seeded(seed):
        report(0.0, "preparing images")
        data = []
        for i, case in enumerate(cases):   # Cancel is honoured while the images are prepared
            report(0.0, f"preparing image {i + 1}/{len(cases)}")
            data.append(_prepare_case(case, prep, classes))
        net = build_network(cfg)
        check_cancelled()
        loop = _Loop(net, cfg, prep, classes, [data[i] for i in train_idx], [data[i] for i in val_idx],
                     batch_size=batch_size, samples_per_image=samples_per_image, learning_rate=learning_rate,
                     augment=augment, seed=seed)
        return loop.run(epochs=epochs, patience=patience, val_interval=val_interval,
                        n_cases=(len(train_idx), len(val_idx)), start=start, deadline=None if max_time is None else start + max_time)


# ---------------------------------------------------------------------------- the loop
class _Loop:
    """One training run: the data pipeline, the network and optimiser, the curves and the best model."""

    def __init__(self, net, cfg, prep, classes, train, val, *, batch_size, samples_per_image,
                 learning_rate, augment, seed):
        import torch
        from monai.data import CacheDataset, DataLoader
        from monai.losses import DiceCELoss

        self.net, self.cfg, self.prep, self.classes = net, cfg, prep, classes
        self.val = val
        self.seed = seed
        ndim = cfg["spatial_dims"]
        patch_zyx = tuple(prep["patch_size"][::-1])
        # CacheDataset caches the output of the transforms before the first random one
        transforms = _transforms(patch_zyx, samples_per_image, augment, ndim, len(classes))
        self.dataset = CacheDataset(train, transforms, progress=False, copy_cache=False)
        # MONAI's DataLoader seeds the random transforms from this generator (num_workers=0)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                                 generator=torch.Generator().manual_seed(seed))
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
        self.history = Curve("history", x_label="epoch", y_label="Dice + cross-entropy loss", lower_is_better=True)
        self.dice = Curve("dice", x_label="epoch", y_label="validation Dice", lower_is_better=False)
        self.best: Checkpoint | None = None
        self.best_score = -math.inf
        self.best_epoch = 0
        self.validations = 0
        self.steps = 0

    def run(self, *, epochs, patience, val_interval, n_cases, start: float, deadline: float | None) -> Result:
        steps_per_epoch = len(self.loader)
        epoch = 0
        trained = 0.0          # training seconds since the last validation
        last_validation = 0.0  # how long the last validation took
        try:
            for epoch in range(1, epochs + 1):
                t0 = time.monotonic()
                train_loss = self._epoch(epoch, epochs, steps_per_epoch, deadline)
                t1 = time.monotonic()
                trained += t1 - t0
                self.history.append("training", epoch, train_loss)
                out_of_time = deadline is not None and t1 >= deadline
                last = epoch == epochs or out_of_time
                if last or _due(epoch, val_interval, trained, last_validation):
                    score, per_class, val_loss = self._validate(epoch)
                    last_validation, trained = time.monotonic() - t1, 0.0
                    self.validations += 1
                    elapsed = time.monotonic() - start
                    if score > self.best_score + 1e-6 or self.best is None:
                        self.best_score, self.best_epoch = score, epoch
                        self.best = self._checkpoint(epoch, per_class, val_loss, train_loss, elapsed, n_cases)
                    log.info("epoch %d: training loss %.4f%s", epoch, train_loss,
                             f", validation Dice {score:.4f}" if self.val else "")
                    stop = self.val and epoch - self.best_epoch >= patience
                    # time ran out while validating: that was the last validation
                    out_of_time = deadline is not None and time.monotonic() >= deadline
                else:
                    log.info("epoch %d: training loss %.4f", epoch, train_loss)
                    stop = False
                publish(history=self.history, dice=self.dice, model=self.best, epoch=epoch)
                report(epoch / epochs, f"epoch {epoch}/{epochs}")
                if stop:
                    log.info("early stop: no better validation Dice for %d epochs", patience)
                    break
                if out_of_time:
                    log.info("stopped after %.0f s (max_time)", time.monotonic() - start)
                    break
        except (Cancelled, KeyboardInterrupt) as exc:
            # Ctrl-C (the notebook's stop button) stays a KeyboardInterrupt, but like Cancel it
            # carries the best checkpoint so far: ``sys.last_value.result`` in a notebook
            if self.best is not None:
                exc.result = Result({"model": self.best, "history": self.history, "dice": self.dice},
                                    stage="train_segmenter", cancelled=True)
                if isinstance(exc, KeyboardInterrupt):
                    log.warning("training interrupted at epoch %d; the best checkpoint so far (epoch %d) is in the "
                                "exception's .result (sys.last_value.result in a notebook)", epoch, self.best_epoch)
            raise
        self.best.metrics["epochs_run"] = epoch
        self.best.metrics["validations"] = self.validations
        self.best.metrics["optimiser_steps"] = self.steps
        self.best.metrics["training_seconds"] = round(time.monotonic() - start, 1)
        return Result({"model": self.best, "history": self.history, "dice": self.dice}, stage="train_segmenter")

    def _epoch(self, epoch: int, epochs: int, steps_per_epoch: int, deadline: float | None) -> float:
        self.net.train()
        total, n = 0.0, 0
        for i, batch in enumerate(self.loader):
            check_cancelled()
            if deadline is not None and n and time.monotonic() >= deadline:
                break  # out of time: validate what was learnt so far
            x, y = _plain(batch["image"]), _plain(batch["label"])
            self.optimiser.zero_grad(set_to_none=True)
            loss = self.loss(self.net(x), y)
            loss.backward()
            self.optimiser.step()
            self.steps += 1
            total, n = total + float(loss.detach()), n + 1
            report((epoch - 1 + (i + 1) / steps_per_epoch) / epochs, f"epoch {epoch}/{epochs}")
        return total / max(n, 1)

    def _validate(self, epoch: int) -> tuple[float, dict[int, float], float | None]:
        """Whole validation images, sliding window: mean Dice over classes, per class, and loss."""
        import torch

        from ..metrics import dice
        from .inference import sliding_window

        if not self.val:
            last = self.history.last("training")
            return -last[1], {}, None
        per_class: dict[int, list[float]] = {k: [] for k in range(1, len(self.classes) + 1)}
        losses = []
        self.net.eval()
        for case in self.val:
            check_cancelled()
            # windows side by side (no overlap): a third of the work of inference's 0.25, for model selection
            logits = sliding_window(self.net, case["image"], self.prep, overlap=0.0)
            target = torch.from_numpy(np.ascontiguousarray(case["label"]))[None]
            with torch.no_grad():
                losses.append(float(self.loss(logits, target)))
            pred = logits[0].argmax(0).numpy()
            truth = case["label"][0]
            for k, scores in per_class.items():
                scores.append(dice(pred, truth, label=k))
        mean_by_class = {k: float(np.mean(v)) for k, v in per_class.items()}
        values = list(self.classes.values())
        for k, v in mean_by_class.items():
            self.dice.append(values[k - 1], epoch, v)
        score = float(np.mean(list(mean_by_class.values())))
        self.dice.append("mean", epoch, score)
        val_loss = float(np.mean(losses))
        self.history.append("validation", epoch, val_loss)
        return score, mean_by_class, val_loss

    def _checkpoint(self, epoch, per_class, val_loss, train_loss, elapsed, n_cases) -> Checkpoint:
        state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        names = list(self.classes.values())
        metrics: dict[str, Any] = {"epoch": epoch, "seed": self.seed, "training_loss": round(train_loss, 5),
                                   "n_training": n_cases[0], "n_validation": n_cases[1],
                                   "training_seconds": round(elapsed, 1)}
        if per_class:
            metrics["validation_loss"] = round(val_loss, 5)
            for k, v in per_class.items():
                metrics[f"dice {names[k - 1]}"] = round(v, 4)
            metrics["dice_mean"] = round(float(np.mean(list(per_class.values()))), 4)
        return Checkpoint(state, self.cfg, labels=self.classes, preprocessing=self.prep, metrics=metrics)


def _plain(tensor):
    """A MetaTensor as a plain tensor: the network runs faster without MONAI's metadata tracking."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _transforms(patch_zyx, samples: int, augment: bool, ndim: int, n_classes: int):
    """Cached: padding to the patch size, voxel indices of each class. Random: patches centred on
    background and on each class equally often (MONAI ``RandCropByLabelClassesd``: a small
    class such as a necrotic core is seen as often as a large one), flips and intensity jitter."""
    import monai.transforms as mt

    steps = [mt.SpatialPadd("image", patch_zyx, mode="replicate"),
             mt.SpatialPadd("label", patch_zyx, mode="constant"),
             mt.ClassesToIndicesd("label", num_classes=n_classes + 1, max_samples_per_class=200_000),
             mt.RandCropByLabelClassesd(["image", "label"], "label", patch_zyx, ratios=[1.0] * (n_classes + 1),
                                        num_classes=n_classes + 1, num_samples=samples,
                                        indices_key="label_cls_indices", warn=False)]
    if augment:
        steps += [mt.RandFlipd(["image", "label"], prob=0.5, spatial_axis=ndim - 1),   # x: left-right
                  mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                  mt.RandShiftIntensityd("image", offsets=0.05, prob=0.5)]
    steps.append(mt.DeleteItemsd("label_cls_indices"))
    return mt.Compose(steps)


# ---------------------------------------------------------------------------- preparation
def _prepare_case(case, prep, classes) -> dict[str, np.ndarray]:
    channels, label = case
    x, grid = to_network(channels, prep)
    y = labels_to_network(label, grid, channels[0])
    # one comparison per class, not a look-up table as long as the largest label value (a label
    # map holding 2**31 - 1 would need 16 GB) and no negative index into one
    y = np.asarray(y)
    mapped = np.zeros(y.shape, np.int64)
    for k, value in enumerate(classes, 1):
        mapped[y == value] = k
    return {"image": x, "label": mapped[None]}


def _preprocessing(cases, intensity, spacing, patch, classes, channel_names, n_channels) -> dict[str, Any]:
    firsts = [channels[0] for channels, _ in cases]
    direction = direction_of(firsts)
    if isinstance(spacing, str):
        if spacing != "median":
            raise ParameterError(f"spacing must be 'median', None or {firsts[0].ndim} numbers in mm; got {spacing!r}")
        spacing = median_spacing(firsts, direction)
    elif spacing is not None:
        try:
            spacing = [float(s) for s in spacing]
        except (TypeError, ValueError):
            spacing = []
        if len(spacing) != firsts[0].ndim or not all(0.05 <= s <= 50 for s in spacing):
            raise ParameterError(f"spacing must be {firsts[0].ndim} voxel sizes in mm (0.05 to 50); got {spacing!r}")
    names = list(channel_names) if channel_names is not None else [
        str(channels[i].metadata.get("sequence") or channels[i].modality or f"channel {i + 1}")
        for channels, _ in cases[:1] for i in range(n_channels)]
    if len(names) != n_channels:
        raise ParameterError(f"channel_names has {len(names)} names for {n_channels} channels")
    colours = {}
    for _, lab in cases:
        for value in classes:
            if value in lab.labels and value not in colours:
                colours[value] = list(lab.labels[value].color)
    return {"channels": names, "intensity": intensity_record(intensity), "direction": direction.tolist(),
            "spacing": spacing, "patch_size": list(patch), "overlap": 0.25,
            "label_values": list(classes), "label_colours": {str(k): v for k, v in colours.items()},
            "modality": firsts[0].modality}


def _check_cases(images, labels) -> list[tuple[list[Image], Image]]:
    if isinstance(images, (Image, str, bytes)) or not isinstance(images, Sequence):
        raise ParameterError("images must be a list of Images (or of tuples of Images, one per channel)")
    if isinstance(labels, (Image, str, bytes)) or not isinstance(labels, Sequence):
        raise ParameterError("labels must be a list of label Images, one per image")
    if len(images) != len(labels):
        raise ParameterError(f"{len(images)} images but {len(labels)} label maps: give one label map per image")
    if len(images) < 1:
        raise ParameterError("train_segmenter needs at least one image/label pair")
    cases = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        what = f"image {i}"
        chans = [img] if not isinstance(img, (list, tuple)) else list(img)
        if not chans:
            raise ParameterError(f"{what} has no channels")
        chans = [as_image(c, what) for c in chans]
        for c in chans:
            if c.is_label or c.rgb:
                raise ImageError(f"{what} must be an intensity image; got a {'colour' if c.rgb else 'label'} image")
            check_finite(c, what)
        lab = as_image(lab, f"labels[{i}]")
        if not lab.is_label:
            if lab.dtype.kind not in "biu":
                raise ImageError(f"labels[{i}] must be a label map (integers); got {lab.dtype} intensities")
            lab = lab.with_array(lab.array, kind="label")
        if lab.ndim != chans[0].ndim:
            raise ImageError(f"labels[{i}] is {lab.ndim}D but {what} is {chans[0].ndim}D")
        chans = channels_on_one_grid(chans, what)
        cases.append((chans, lab))
    ndims = {c[0][0].ndim for c in cases}
    nchan = {len(c[0]) for c in cases}
    if len(ndims) > 1 or len(nchan) > 1:
        raise ParameterError(f"all images must have the same dimension and channel count; got {sorted(ndims)}D "
                             f"and {sorted(nchan)} channels")
    return cases


def _check_classes(classes, labels: list[Image]) -> dict[int, str]:
    present: set[int] = set()
    for lab in labels:
        present |= {int(v) for v in np.unique(lab.array) if v != 0}
    if classes is None:
        if not present:
            raise ParameterError("the label maps are empty (all zero): there is nothing to learn")
        negative = sorted(v for v in present if v < 0)
        if negative:
            raise ParameterError(f"the label maps hold negative values {negative[:5]}; a class is a positive label "
                                 "value: give classes={value: name, ...} for the ones to learn (others count as "
                                 "background)")
        if len(present) > MAX_CLASSES:
            raise ParameterError(f"the label maps hold {len(present)} different values (at most {MAX_CLASSES} "
                                 "classes can be learnt): are they label maps? Give classes={value: name, ...}")
        names = {}
        for value in sorted(present):
            name = next((lab.labels[value].name for lab in labels if value in lab.labels), f"label {value}")
            names[value] = name
        return names
    if not isinstance(classes, Mapping) or not classes:
        raise ParameterError(f"classes must map label values to names, e.g. {{1: 'tumour'}}; got {classes!r}")
    out = {}
    for value, name in classes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value < 2**31:
            raise ParameterError(f"classes: label values must be positive integers below 2**31; got {value!r}")
        out[int(value)] = str(name)
    if len(out) > MAX_CLASSES:
        raise ParameterError(f"classes: at most {MAX_CLASSES} classes can be learnt; got {len(out)}")
    missing = sorted(set(out) - present)
    if missing:
        raise ParameterError(f"classes {missing} appear in none of the label maps (values present: {sorted(present)})")
    return out


def _check_numbers(**values) -> None:
    rules = {"epochs": (1, 100000), "batch_size": (1, 256), "samples_per_image": (1, 64), "patience": (1, 100000),
             "seed": (0, 2**31 - 1), "threads": (1, 256)}
    for name, (lo, hi) in rules.items():
        v = values[name]
        if name == "threads" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
            raise ParameterError(f"{name} must be an integer in [{lo}, {hi}]; got {v!r}")
    lr = values["learning_rate"]
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real) or not 1e-7 <= lr <= 1.0:
        raise ParameterError(f"learning_rate must be a number in [1e-7, 1]; got {lr!r}")
    mt = values["max_time"]
    if mt is not None and (isinstance(mt, (bool, np.bool_)) or not isinstance(mt, numbers.Real) or not mt > 0):
        raise ParameterError(f"max_time must be a positive number of seconds or None; got {mt!r}")


def _due(epoch: int, val_interval: int | str, trained: float, last_validation: float) -> bool:
    """Whether to validate after this (not last) epoch; ``trained``: training seconds since the last validation."""
    if epoch == 1:
        return True  # the live Dice curve starts at once, and Cancel has a model to keep
    if val_interval == "auto":
        return trained >= AUTO_VALIDATION_RATIO * last_validation
    return epoch % val_interval == 0


def _check_val_interval(val_interval) -> None:
    if val_interval == "auto" and isinstance(val_interval, str):
        return
    if isinstance(val_interval, (bool, np.bool_)) or not isinstance(val_interval, (int, np.integer)) \
            or not 1 <= val_interval <= 100000:
        raise ParameterError(f"val_interval must be 'auto' or a whole number of epochs in [1, 100000]; "
                             f"got {val_interval!r}")


def _check_patch(patch_size, ndim: int, divisor: int) -> list[int]:
    from .preprocessing import check_patch

    return check_patch(DEFAULT_PATCH[ndim] if patch_size is None else patch_size, ndim, divisor, "patch_size")


def _split(n: int, validation, seed: int) -> tuple[list[int], list[int]]:
    """Training and validation case indices, drawn by the seed."""
    if isinstance(validation, bool) or not isinstance(validation, (int, float, np.integer, np.floating)):
        raise ParameterError(f"validation must be a fraction in [0, 1) or a number of cases; got {validation!r}")
    if not validation >= 0:  # also NaN
        raise ParameterError(f"validation must be a fraction in [0, 1) or a number of cases (≥ 0); got {validation!r}")
    if validation < 1:
        n_val = 0 if validation == 0 else max(1, round(float(validation) * n))
    elif float(validation).is_integer():
        n_val = int(validation)
    else:
        raise ParameterError(f"validation must be a fraction in [0, 1) or a whole number of cases; got {validation!r}")
    if n_val >= n:
        raise ParameterError(f"validation keeps {n_val} of {n} cases for validation, leaving none to train on; "
                             "give more cases or a smaller validation")
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


@contextlib.contextmanager
def _threads(threads: int | None):
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed torch, numpy, random and MONAI; restore the global random states afterwards."""
    import torch
    from monai.utils import set_determinism

    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    set_determinism(seed=seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
