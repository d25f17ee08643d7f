"""The tutorial's brain-tumour training settings (``BRAIN_SETTINGS``) and the script that trained
the shipped models: what they normalise, and that the script still matches the shipped cards."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("monai")

from medlab.data import brain_mri
from medlab.deep import pretrained_models
from medlab.deep.preprocessing import intensity_record, normalise_intensity
from medlab.deep.train_models import BRAIN_SETTINGS, MODELS

GREY, OEDEMA = 4, 7


def _flair_tissues(seed: int, intensity) -> tuple[float, float]:
    """Mean normalised FLAIR of grey matter and of oedema in one small phantom."""
    p = brain_mri(seed=seed, size=(48, 48, 24), spacing=(4.0, 4.0, 16 / 3), contrasts=("flair",))
    x = normalise_intensity(p.flair.array, intensity_record(intensity))
    labels = p.labels.array
    return float(x[labels == GREY].mean()), float(x[labels == OEDEMA].mean())


def _grey_shift(intensity) -> float:
    """How far grey matter moves between a phantom with a large oedema (seed 0) and one with a
    small oedema (seed 8), as a fraction of the oedema-grey contrast of the first."""
    grey_large, oedema_large = _flair_tissues(0, intensity)
    grey_small, _ = _flair_tissues(8, intensity)
    return abs(grey_small - grey_large) / (oedema_large - grey_large)


def test_tutorial_normalisation_does_not_depend_on_the_size_of_the_oedema():
    # percentiles: the 99.5th falls on grey matter when the bright oedema is small, and grey
    # matter moves by most of the oedema's contrast (what held the whole-tumour Dice at 0.85-0.90)
    assert _grey_shift("percentile") > 0.5
    assert _grey_shift(BRAIN_SETTINGS["intensity"]) < 0.2


def test_the_training_script_still_describes_the_shipped_models():
    """``python -m medlab.deep.train_models`` must reproduce the shipped weights: its settings are
    the ones each card records, even where the tutorial's settings have moved on since."""
    cards = pretrained_models()
    for name, spec in MODELS.items():
        if name not in cards:
            continue
        recorded = dict(cards[name]["training"]["settings"])
        recorded.setdefault("val_interval", 1)  # cards from before val_interval: validated every epoch
        assert recorded == json.loads(json.dumps(spec["settings"])), name
    if "brain_tumour" in cards:
        assert cards["brain_tumour"]["preprocessing"]["intensity"]["transform"] == "ScaleIntensityRangePercentiles"
        assert BRAIN_SETTINGS["intensity"] != MODELS["brain_tumour"]["settings"]["intensity"]


def test_tutorial_settings_are_accepted_by_train_segmenter():
    """Every key of BRAIN_SETTINGS is a train_segmenter argument with a valid value (one tiny epoch)."""
    from medlab.deep import brain_tumour_cases, train_segmenter

    cases = brain_tumour_cases(range(3), size=(24, 24, 12), spacing=(8.0, 8.0, 10.6), contrasts=("t1", "flair"))
    settings = {**BRAIN_SETTINGS, "config": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
                "patch_size": (16, 16, 8), "epochs": 1, "samples_per_image": 1, "validation": 1}
    model = train_segmenter(cases.images, cases.labels, classes=cases.classes, threads=1, **settings).model
    assert model.preprocessing["intensity"] == intensity_record(BRAIN_SETTINGS["intensity"])
    assert np.isfinite(model.metrics["dice_mean"])
