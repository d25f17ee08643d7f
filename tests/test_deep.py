"""medlab.deep: networks from configs, reproducible training, checkpoints, inference geometry,
Cancel keeping the best weights, and the shipped models. Tiny networks on tiny phantoms."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")

from medlab import metrics
from medlab.data import brain_mri
from medlab.deep import (
    brain_tumour_cases,
    build_network,
    deep_segment,
    network_config,
    pretrained,
    pretrained_models,
    train_segmenter,
)
from medlab.errors import Cancelled, ImageError, ParameterError, ReadError
from medlab.image import Image
from medlab.outputs import Checkpoint
from medlab.stage import progress_to

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
FAST = {"config": TINY, "patch_size": (16, 16, 8), "epochs": 2, "batch_size": 1, "samples_per_image": 1,
        "validation": 1, "threads": 1}


@pytest.fixture(scope="module")
def cases():
    return brain_tumour_cases(range(3), size=(24, 24, 12), spacing=(8.0, 8.0, 10.6))


@pytest.fixture(scope="module")
def tiny(cases):
    return train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=1, **FAST)


def _oblique(image: Image, degrees=(20.0, 0.0, 25.0), spacing=(2.1, 1.7, 3.3)) -> Image:
    """``image`` resampled onto a rotated, anisotropic grid covering it (the same anatomy)."""
    import SimpleITK as sitk

    rot = sitk.Euler3DTransform()
    rot.SetRotation(*np.deg2rad(degrees))
    direction = np.array(rot.GetMatrix()).reshape(3, 3)
    lo, hi = image.bounds()
    centre = (lo + hi) / 2
    size = np.ceil((hi - lo).max() / np.array(spacing)).astype(int)
    origin = centre - direction @ (np.array(spacing) * (size - 1) / 2)
    ref = Image(np.zeros(size[::-1], np.uint8), spacing, origin, direction)
    from medlab.preprocess import resample_to

    return resample_to(image, reference=ref)


# ------------------------------------------------------------------ networks and checkpoints
def test_network_configs_build_2d_and_3d_unet_and_segresnet():
    import torch

    for network, dims in (("unet", 2), ("unet", 3), ("segresnet", 2), ("segresnet", 3)):
        opts = TINY if network == "unet" else {"init_filters": 4, "blocks_down": [1, 1], "blocks_up": [1]}
        net = build_network(network_config(network, spatial_dims=dims, in_channels=2, out_channels=3, **opts))
        out = net(torch.zeros((1, 2) + (16,) * dims))
        assert out.shape == (1, 3) + (16,) * dims
    with pytest.raises(ParameterError, match="chanels"):
        network_config("unet", chanels=[8, 16])
    with pytest.raises(ParameterError, match="strides"):
        network_config("unet", channels=[8, 16, 32], strides=[2])


def test_checkpoint_round_trip_gives_the_same_segmentation(tiny, cases, tmp_path):
    path = tiny.model.save(tmp_path / "model.pt")
    loaded = Checkpoint.load(path)
    assert loaded.fingerprint() == tiny.model.fingerprint()
    assert loaded.labels == cases.classes and loaded.preprocessing == tiny.model.preprocessing
    assert loaded.metrics["seed"] == 1 and "dice oedema" in loaded.metrics
    a = deep_segment(cases.images[0], tiny.model)[0]
    b = deep_segment(cases.images[0], loaded)[0]
    assert np.array_equal(a.array, b.array) and a.labels == b.labels


def test_mismatched_checkpoints_are_refused_naming_the_tensors(tiny, cases, tmp_path):
    wrong = Checkpoint(tiny.model.state_dict, {**tiny.model.config, "channels": [4, 16]},
                       labels=tiny.model.labels, preprocessing=tiny.model.preprocessing)
    with pytest.raises(ParameterError, match=r"do not match the network config.*wrong shape.*model\.1\.submodule\.conv\.weight \(8, 4, 3, 3, 3\) vs \(16"):
        deep_segment(cases.images[0], wrong)
    state = dict(tiny.model.state_dict)
    state.pop(next(iter(state)))
    with pytest.raises(ParameterError, match="1 missing"):
        deep_segment(cases.images[0], Checkpoint(state, tiny.model.config, labels=tiny.model.labels,
                                                 preprocessing=tiny.model.preprocessing))
    with pytest.raises(ParameterError, match="label values for a network with 3 outputs"):
        deep_segment(cases.images[0], Checkpoint(tiny.model.state_dict, {**tiny.model.config, "out_channels": 3},
                                                 labels=tiny.model.labels, preprocessing=tiny.model.preprocessing))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReadError, match="bad.pt"):
        Checkpoint.load(tmp_path / "bad.pt")


# ------------------------------------------------------------------ training
def test_training_is_deterministic_with_a_seed(tiny, cases):
    import torch

    again = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=1, **FAST)
    assert again.model.state_dict.keys() == tiny.model.state_dict.keys()
    assert all(torch.equal(again.model.state_dict[k], v) for k, v in tiny.model.state_dict.items())
    assert again.history.data() == tiny.history.data()
    other = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=2, **FAST)
    assert not all(torch.equal(other.model.state_dict[k], v) for k, v in tiny.model.state_dict.items())


def test_training_publishes_curves_and_the_best_model_each_epoch(cases):
    seen = []
    with progress_to(None, publish=lambda stage, values: seen.append(values)):
        result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                                 **{**FAST, "epochs": 3})
    epochs = [v["epoch"] for v in seen]
    assert epochs == [1, 2, 3]
    assert [len(v["history"].series("training")[0]) for v in seen][-1] == 3
    assert set(result.dice.series_names) == {"enhancing tumour", "necrotic core", "oedema", "mean"}
    xs, ys = result.dice.series("mean")
    assert result.model.metrics["epoch"] == xs[int(np.argmax(ys))]
    assert all(isinstance(v["model"], Checkpoint) for v in seen)


def test_cancel_keeps_the_best_checkpoint_so_far(cases):
    cancel = threading.Event()
    published = []

    def on_publish(stage, values):
        published.append(values["model"])
        if values["epoch"] == 2:
            cancel.set()

    with progress_to(None, cancel, publish=on_publish), pytest.raises(Cancelled) as info:
        train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0, **{**FAST, "epochs": 50})
    kept = info.value.result
    assert kept.cancelled and kept.model is published[-1]
    assert len(kept.history.series("training")[0]) == 2
    assert kept.model.metrics["epoch"] in (1, 2)


def test_bad_training_input_is_refused(cases):
    with pytest.raises(ParameterError, match="3 images but 2 label maps"):
        train_segmenter(cases.images, cases.labels[:2])
    with pytest.raises(ParameterError, match=r"classes \[42\] appear in none"):
        train_segmenter(cases.images, cases.labels, classes={42: "nothing"})
    with pytest.raises(ParameterError, match="patch_size"):
        train_segmenter(cases.images, cases.labels, classes=cases.classes, patch_size=(15, 16, 8), config=TINY)
    nan = cases.images[0].with_array(np.where(cases.labels[0].array == 8, np.nan, cases.images[0].array))
    with pytest.raises(ImageError, match="NaN"):
        train_segmenter([nan, *cases.images[1:]], cases.labels, classes=cases.classes)
    with pytest.raises(ParameterError, match="validation"):
        train_segmenter(cases.images, cases.labels, classes=cases.classes, validation=3)


class _FakeClock:
    """A clock that moves only when told: one epoch takes 1 s, one validation 2 s."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def slow_validation(monkeypatch):
    """train_segmenter on a fake clock where validating takes twice as long as an epoch;
    ``scores`` (if set) replace the validation Dice, in order; the validated epochs are recorded."""
    from medlab.deep import train as train_module

    clock, state = _FakeClock(), {"scores": None, "validated": []}
    epoch, validate = train_module._Loop._epoch, train_module._Loop._validate

    def fake_epoch(self, *args, **kwargs):
        clock.now += 1.0
        return epoch(self, *args, **kwargs)

    def fake_validate(self, n):
        clock.now += 2.0
        state["validated"].append(n)
        score, per_class, loss = validate(self, n)
        if state["scores"] is not None:
            score = state["scores"][len(state["validated"]) - 1]
        return score, per_class, loss

    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(train_module._Loop, "_epoch", fake_epoch)
    monkeypatch.setattr(train_module._Loop, "_validate", fake_validate)
    return state


def test_auto_val_interval_validates_less_often_when_validation_is_slow(cases, slow_validation):
    seen = []
    with progress_to(None, publish=lambda stage, values: seen.append(values["epoch"])):
        result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                                 **{**FAST, "epochs": 30, "patience": 100})
    # validation takes 2 s, so "auto" waits for 6 x 2 = 12 s of training: epochs 1, 13, 25 and the last
    assert slow_validation["validated"] == [1, 13, 25, 30]
    assert seen == list(range(1, 31))                                    # published every epoch
    assert result.history.series("training")[0] == list(range(1, 31))   # training loss every epoch
    assert result.history.series("validation")[0] == [1, 13, 25, 30]
    xs, ys = result.dice.series("mean")
    assert xs == [1, 13, 25, 30]
    assert result.model.metrics["epoch"] == xs[int(np.argmax(ys))]        # the best validated model
    assert result.model.metrics["dice_mean"] == round(max(ys), 4)
    assert result.model.metrics["validations"] == 4 and result.model.metrics["epochs_run"] == 30
    assert result.model.metrics["optimiser_steps"] == 30 * 2


def test_val_interval_every_n_epochs_and_patience_counts_epochs(cases, slow_validation):
    result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                             **{**FAST, "epochs": 7, "val_interval": 3})
    assert slow_validation["validated"] == [1, 3, 6, 7]   # the first, every third, the last
    slow_validation["validated"].clear()
    slow_validation["scores"] = [0.1, 0.5, 0.4, 0.45, 0.3, 0.2, 0.2]
    result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                             **{**FAST, "epochs": 50, "val_interval": 2, "patience": 4})
    # best at epoch 2; the first validation at least 4 epochs later (epoch 6) stops the run
    assert slow_validation["validated"] == [1, 2, 4, 6]
    assert result.model.metrics["epoch"] == 2 and result.model.metrics["epochs_run"] == 6


def test_training_time_budget_ends_with_a_validation(cases, slow_validation):
    result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                             **{**FAST, "epochs": 1000, "max_time": 8.5})
    # epoch 1 (1 s) + validation (2 s), then epochs until the clock passes 8.5 s: 6 more, validated
    assert slow_validation["validated"] == [1, 7]
    assert result.model.metrics["epochs_run"] == 7
    slow_validation["validated"].clear()
    result = train_segmenter(cases.images, cases.labels, classes=cases.classes, seed=0,
                             **{**FAST, "epochs": 1000, "max_time": 2.5})
    # time runs out while epoch 1 is validated: no further epoch, no further validation
    assert slow_validation["validated"] == [1] and result.model.metrics["epochs_run"] == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "often", None, "AUTO", 10**6])
def test_bad_val_interval_is_refused(cases, bad):
    with pytest.raises(ParameterError, match="val_interval must be 'auto' or a whole number of epochs"):
        train_segmenter(cases.images, cases.labels, classes=cases.classes, val_interval=bad, **{
            k: v for k, v in FAST.items() if k != "val_interval"})


# ------------------------------------------------------------------ inference geometry
def test_labels_come_back_on_the_input_grid_of_an_oblique_anisotropic_image(tiny, cases):
    oblique = _oblique(cases.images[0])
    assert oblique.is_oblique and len(set(oblique.spacing)) == 3
    labels, prob = deep_segment(oblique, tiny.model, probabilities=True)
    for out in (labels, prob):
        assert out.same_grid(oblique) and out.size == oblique.size
        assert out.spacing == oblique.spacing and out.origin == oblique.origin
        assert np.array_equal(out.direction, oblique.direction)
    assert labels.is_label and {lab.name for lab in labels.labels.values()} == set(cases.classes.values())
    assert set(np.unique(labels.array)) <= {0, 7, 8, 9}


def test_a_reoriented_input_gives_the_same_labels_in_physical_space(tiny, cases):
    image = cases.images[1]
    flipped = image.reorient("RAI")  # same voxels, other axis directions: no interpolation
    a = deep_segment(image, tiny.model)[0]
    b = deep_segment(flipped, tiny.model)[0]
    assert b.same_grid(flipped)
    assert np.array_equal(b.reorient("LPS").array, a.array)


def _tumour_crop(p, half=(12, 20, 20)):
    """The phantom's images and labels cropped around the tumour (for speed), geometry kept."""
    centre = p.labels.physical_to_index(p.info["tumour_centre_mm"]).round().astype(int)
    box = tuple(slice(max(c - h, 0), c + h) for c, h in zip(centre[::-1], half))
    origin = p.labels.index_to_physical([s.start for s in box][::-1])
    crop = {name: Image(im.array[box], im.spacing, origin, metadata=im.metadata) for name, im in p.images.items()}
    return crop, Image(p.labels.array[box], p.labels.spacing, origin, kind="label")


def _tumour_dice(labels: Image, truth: Image) -> float:
    return metrics.dice(np.isin(labels.array, (7, 8, 9)), np.isin(truth.array, (7, 8, 9)))


def test_shipped_brain_model_segments_an_oblique_tumour_where_it_is():
    """The pretrained T1 + FLAIR model on a held-out phantom, then on the same anatomy seen
    through an oblique anisotropic grid: the label map overlays the truth in mm."""
    from medlab.preprocess import resample_to

    crop, truth = _tumour_crop(brain_mri(seed=321, contrasts=("t1", "flair")))
    model = pretrained("brain_tumour")
    labels = deep_segment(crop["t1"], model, crop["flair"])[0]
    assert _tumour_dice(labels, truth) > 0.85
    oblique_t1 = _oblique(crop["t1"])
    oblique_flair = resample_to(crop["flair"], reference=oblique_t1)
    seen = deep_segment(oblique_t1, model, oblique_flair)[0]
    assert seen.same_grid(oblique_t1)
    assert _tumour_dice(seen, resample_to(truth, reference=oblique_t1, interpolator="nearest")) > 0.8


def test_shipped_models_load_with_their_cards():
    cards = pretrained_models()
    assert {"brain_tumour", "brain_tumour_t1", "lung_nodules"} <= set(cards)
    for name, card in cards.items():
        model = pretrained(name)
        assert model.metrics["seed"] == card["seed"]
        assert model.metrics["dice_mean"] == pytest.approx(card["validation"]["dice_mean"])
        assert model.n_weights() * 4 < 8e6  # a few MB
    with pytest.raises(ParameterError, match="brain_tumour"):
        pretrained("brain")


def test_shipped_checkpoints_carry_the_checksum_that_load_verifies(tmp_path):
    import shutil

    import torch

    from medlab.deep.pretrained import WEIGHTS
    from medlab.explain import classifier

    files = [WEIGHTS / f"{name}.pt" for name in pretrained_models()]
    files.append(Path(classifier.__file__).with_name("tumour_classifier.pt"))
    for path in files:
        data = torch.load(path, map_location="cpu", weights_only=True)
        assert data["sha256"] == Checkpoint.load(path).fingerprint(), path.name
        assert path.stat().st_size == pretrained_models().get(path.stem, {}).get("size_bytes", path.stat().st_size)
    # a flipped weight in a copy of a shipped file is caught on load
    copy = tmp_path / "brain_tumour.pt"
    shutil.copy(files[0], copy)
    data = torch.load(copy, map_location="cpu", weights_only=True)
    key = next(iter(data["state_dict"]))
    data["state_dict"][key] = data["state_dict"][key] + 1e-3
    torch.save(data, copy)
    with pytest.raises(ReadError, match="damaged"):
        Checkpoint.load(copy)


def test_shipped_lung_model_finds_a_nodule():
    from medlab.data import chest_ct

    p = chest_ct(seed=77)
    nodule = p.info["nodules"][0]
    centre = p.ct.physical_to_index(nodule["centre_mm"]).round().astype(int)
    box = tuple(slice(max(c - h, 0), c + h) for c, h in zip(centre[::-1], (10, 24, 24)))
    origin = p.ct.index_to_physical([s.start for s in box][::-1])
    ct = Image(p.ct.array[box], p.ct.spacing, origin, metadata=p.ct.metadata)
    truth = p.labels.array[box]
    labels = deep_segment(ct, pretrained("lung_nodules"))[0]
    assert labels.same_grid(ct)
    assert metrics.dice(np.isin(labels.array, (9, 10)), np.isin(truth, (9, 10))) > 0.5


def test_inference_refuses_wrong_inputs(tiny, cases):
    with pytest.raises(ParameterError, match="Checkpoint"):
        deep_segment(cases.images[0], build_network(tiny.model.config))
    with pytest.raises(ParameterError, match="1 channel"):
        deep_segment(cases.images[0], tiny.model, cases.images[1])
    flat = Image(np.zeros((24, 24), np.float32))
    with pytest.raises(ImageError, match="3D"):
        deep_segment(flat, tiny.model)
    assert cases.images[0].array.flags.writeable is False  # input untouched (read-only view)


def test_inference_replays_bit_identically_from_a_recipe(tiny, cases):
    from medlab.recipe import Recipe

    image = cases.images[2]
    with Recipe.record(image=image, model=tiny.model) as recipe:
        labels, _ = deep_segment(image, tiny.model, overlap=0.5)
    assert recipe.steps[0].inputs == {"image": "image", "model": "model"}
    again = Recipe.from_json(recipe.to_json()).run(image=image, model=tiny.model)
    assert np.array_equal(again["step1.labels"].array, labels.array) and again["step1.labels"].same_grid(image)
