"""``medlab demo``: the brain tumour case study, run headless on the built-in phantom, as one report.

The story, from the raw scans to what a clinician would look at, each step measured against the
phantom's ground truth:

1. **Scans.** A post-contrast T1 with a coil bias field, and a T2 and a FLAIR of the same head
   acquired after the patient moved (a known rigid transform, :func:`medlab.data.registration_pair`).
2. **Bias correction and denoising.** N4 on the T1; non-local means on the T1 and the FLAIR.
3. **Registration.** T2 and FLAIR onto the T1 (rigid, Mattes mutual information); target
   registration error (TRE) at the phantom's landmarks.
4. **Tumour segmentation.** Region growing from one seed on the registered FLAIR, against the
   shipped U-Net (:func:`medlab.deep.pretrained`) when this installation has one: Dice, HD95.
5. **Tumour volume** in mL, and a 3D picture of its surface.
6. **Grad-CAM** of the shipped tumour classifier (:func:`medlab.explain.tumour_classifier`),
   with the model randomisation sanity check.

Everything runs inside one :class:`~medlab.recipe.Recipe`, which the report embeds (JSON and
Python) next to every figure and number. A step whose module or shipped model is not in this
installation is **skipped with a line in the report saying so**; a step that fails is reported
as failed (and the command exits with 1). Nothing is downloaded.

Examples
--------
>>> from medlab.demo import run_demo
>>> result = run_demo("demo_out", fast=True)                     # doctest: +SKIP
>>> result.report                                                # doctest: +SKIP
PosixPath('demo_out/brain_tumour_report.html')
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MedlabError, ParameterError, WriteError
from .image import Image
from .outputs import Table

__all__ = ["CASE_STUDIES", "CaseStudy", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class CaseStudy:
    """One clinical case study: what it shows, and whether ``medlab demo`` runs it headless."""

    name: str
    title: str
    story: str
    headless: bool


CASE_STUDIES: dict[str, CaseStudy] = {c.name: c for c in (
    CaseStudy("brain", "Brain tumour MRI",
              "bias correction and denoising; seeded vs U-Net tumour segmentation (Dice, HD95); T2/FLAIR to "
              "T1 registration (TRE); tumour volume in mL and a 3D picture; Grad-CAM with a sanity check",
              headless=True),
    CaseStudy("chest", "Chest CT nodule screening",
              "CT windowing and a lung mask; nodule candidates, classic and U-Net, with volume and diameter; "
              "a DICOM SEG of the findings; an explanation of a nodule classifier", headless=False),
    CaseStudy("fusion", "Multimodal fusion for surgical navigation",
              "CT-MR registration from landmarks or surface ICP, refined by mutual information; fused display "
              "and 3D view with the target; TRE and what 2 mm means at the target", headless=False),
    CaseStudy("mammo", "Mammography micro-calcifications (2D)",
              "CLAHE; calcification clusters by a classic detector with an SVM and by a small CNN; FROC and "
              "sensitivity at a fixed false-positive rate; Grad-CAM; a structured findings table", headless=False),
)}
"""The case studies of ``notebooks/case_studies/``; only ``brain`` runs headless so far."""

PHANTOMS = {False: {"size": (128, 128, 64), "spacing": (1.5, 1.5, 2.0)},
            True: {"size": (64, 64, 32), "spacing": (3.0, 3.0, 4.0)}}
"""Phantom grid of the full demo and of ``--fast`` (same field of view, 8x fewer voxels)."""

REPORT_NAME = "brain_tumour_report.html"
WHOLE_TUMOUR = (7, 8, 9)  # oedema, enhancing rim, necrotic core in medlab.data.brain_mri


@dataclass
class DemoResult:
    """What :func:`run_demo` made: the report's path, the recipe, every number, what was
    skipped or failed, and the time of each step."""

    report: Path
    recipe: Any
    numbers: Table
    skipped: list[dict[str, str]]
    failed: list[dict[str, str]]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


class _Skip(Exception):
    """A step cannot run in this installation (module or shipped model missing)."""


@dataclass
class _Run:
    """State shared by the steps: images by name, the report, timings, problems."""

    report: Any
    fast: bool
    seed: int
    values: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)

    def number(self, name: str, value, unit: str = "", note: str = "") -> None:
        self.report.add_number(name, value, unit=unit, note=note)


# ---------------------------------------------------------------------------- steps
def _step_scans(run: _Run) -> None:
    from .data import brain_mri, registration_pair

    grid = PHANTOMS[run.fast]
    phantom = brain_mri(seed=run.seed, bias=0.3, noise=0.03, **grid)
    pairs = {c: registration_pair(seed=run.seed, moving_contrast=c, noise=0.03, **grid) for c in ("t2", "flair")}
    for c, pair in pairs.items():
        if not np.array_equal(pair.fixed_labels.array, phantom.labels.array):   # same head in every scan
            raise MedlabError(f"internal: the {c} registration pair does not share the phantom's anatomy")
    truth = phantom.labels.with_array(np.isin(phantom.labels.array, WHOLE_TUMOUR).astype(np.uint8), kind="label",
                                      labels={1: ("whole tumour", (230, 159, 0))})
    run.values.update(phantom=phantom, pairs=pairs, truth=truth, t1=phantom.t1, t2=pairs["t2"].moving,
                      flair=pairs["flair"].moving)
    r = run.report
    r.add_section("The case")
    r.add_text(
        "A built-in brain MRI phantom with a glioma-like tumour (necrotic core, enhancing rim, oedema), so that "
        "every step can be measured against the truth. The post-contrast T1 carries a smooth coil bias field "
        "(±30 %); the T2 and FLAIR were acquired after the patient moved (a rigid transform the phantom knows). "
        f"Grid: {' × '.join(map(str, grid['size']))} voxels of {' × '.join(f'{s:g}' for s in grid['spacing'])} mm, "
        f"seed {run.seed}, Rician noise 3 %.")
    r.add_image(phantom.t1, caption="T1 post-contrast as acquired (note the bias: one side brighter)")
    r.add_image(pairs["flair"].moving, caption="FLAIR as acquired: the head has moved relative to the T1")
    run.number("true whole-tumour volume", _volume_ml(truth), "mL", "phantom ground truth")


def _step_preprocess(run: _Run) -> None:
    from . import metrics
    from .preprocess import n4_bias_correction, nlm_denoise
    from .render import montage

    p = run.values["phantom"]
    t1_n4, field_ = n4_bias_correction(run.values["t1"])
    t1_clean = nlm_denoise(t1_n4)
    flair_clean = nlm_denoise(run.values["flair"])
    run.values.update(t1_clean=t1_clean, flair_clean=flair_clean)
    wm = p.mask("white matter")
    brain = np.isin(p.labels.array, (4, 5, 7, 8, 9))
    clean = p.clean["t1"]
    r = run.report
    r.add_section("1. Bias correction and denoising")
    r.add_text(
        "N4 (SimpleITK) estimates the smooth multiplicative field on the T1; non-local means (medlab's 3D "
        "blockwise filter) removes noise. The white-matter coefficient of variation (CV) measures how uniform one "
        "tissue is, whatever the overall scale. N4 leaves the overall intensity scale free, so PSNR and SSIM "
        "against the noise-free phantom are measured after scaling each image to it (median ratio in the brain).")
    from .report import slice_figure

    images = {"as acquired": run.values["t1"], "after N4": t1_n4, "after N4 + NLM": t1_clean}
    pics = [slice_figure(img, planes=("axial",), size=260) for img in images.values()]
    r.add_image(montage(pics), caption="T1 axial: as acquired, after N4, after N4 and non-local means")
    rows = []
    for name, img in {**images, "noise-free truth": clean}.items():
        scaled = _scaled_to(img, clean, brain)
        rows.append({"T1": name, "white-matter CV": _cv(img, wm),
                     "PSNR": metrics.psnr(scaled, clean) if img is not clean else None,
                     "SSIM": metrics.ssim(scaled, clean) if img is not clean else None})
    r.add_table(Table(rows, units={"PSNR": "dB"}, title="T1 quality against the noise-free phantom"))
    corr = float(np.corrcoef(field_.array[brain], p.bias_field.array[brain])[0, 1])
    run.number("white-matter CV, T1 as acquired", rows[0]["white-matter CV"])
    run.number("white-matter CV, after N4", rows[1]["white-matter CV"])
    run.number("white-matter CV, after N4 + NLM", rows[2]["white-matter CV"])
    run.number("PSNR of T1 after N4 + NLM", rows[2]["PSNR"], "dB", "scaled to the noise-free phantom")
    run.number("SSIM of T1 after N4 + NLM", rows[2]["SSIM"])
    run.number("correlation of the N4 field with the true bias field", corr, "", "in the brain")


def _step_register(run: _Run) -> None:
    from .outputs import Transform
    from .register import linear_register, target_registration_error
    from .render import montage, resample_like
    from .report import slice_figure

    fixed = run.values["t1_clean"]
    r = run.report
    r.add_section("2. Registration of T2 and FLAIR to T1")
    r.add_text(
        "Rigid registration (6 parameters) by Mattes mutual information, which compares contrasts that differ "
        "(CSF is dark on T1 and bright on T2). The target registration error (TRE) is the distance between where "
        "the found transform and the true one send each landmark of the phantom: the tumour centre, the "
        "ventricles and points spread through the brain. Both scans moved by the same transform here (the "
        "patient moved once, between the T1 and the T2/FLAIR block).")
    rows = []
    for contrast, moving in (("FLAIR", run.values["flair_clean"]), ("T2", run.values["t2"])):
        pair = run.values["pairs"][contrast.lower()]
        transform, registered, history, level_report = linear_register(fixed, moving)
        tre = target_registration_error(transform, pair.landmarks, truth=pair.transform)
        truth = Transform(pair.transform).summary()
        found = transform.summary()
        rows.append({"scan": contrast, "TRE mean": float(tre.mean()), "TRE median": float(np.median(tre)),
                     "TRE max": float(tre.max()), "TRE at the tumour centre": float(tre[0]),
                     "landmarks": len(tre),
                     "true rotation": truth.get("rotation_deg"), "found rotation": found.get("rotation_deg"),
                     "true translation": truth.get("translation_mm"), "found translation": found.get("translation_mm")})
        run.values[f"{contrast.lower()}_registered"] = registered
        run.values[f"{contrast.lower()}_transform"] = transform
        run.number(f"{contrast} to T1: mean TRE", float(tre.mean()), "mm", f"{len(tre)} landmarks")
        run.number(f"{contrast} to T1: max TRE", float(tre.max()), "mm")
        if contrast == "FLAIR":
            before = resample_like(moving, fixed)
            pics = [slice_figure(fixed, second=before, planes=("axial", "coronal"), size=240),
                    slice_figure(fixed, second=registered, planes=("axial", "coronal"), size=240)]
            r.add_image(montage(pics, gap=12), caption="T1/FLAIR checkerboard: before registration (left pair) "
                                                       "and after (right pair); edges run on across the tiles when aligned")
        r.add_curve(history, caption=f"{contrast} to T1: Mattes MI per iteration (one series per resolution level)")
        r.add_table(level_report, caption=f"{contrast} to T1: per resolution level")
    r.add_table(Table(rows, units={"TRE mean": "mm", "TRE median": "mm", "TRE max": "mm",
                                   "TRE at the tumour centre": "mm", "true rotation": "°", "found rotation": "°",
                                   "true translation": "mm", "found translation": "mm"},
                      title="target registration error against the known motion"))


def _step_classic_segmentation(run: _Run) -> None:
    from scipy import ndimage

    from . import metrics, segment

    flair = run.values["flair_registered"]
    truth = run.values["truth"]
    oedema = run.values["phantom"].labels.array == 7
    depth = ndimage.distance_transform_edt(oedema, sampling=flair.spacing[::-1])
    seed = flair.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1])
    grown = segment.connected_threshold(flair, seeds=[tuple(float(c) for c in seed)], tolerance=0.25)
    tumour = segment.fill_holes(grown, mode="slices")
    run.values.update(classic=tumour, seed_mm=seed)
    scores = metrics.segmentation_scores(tumour, truth, labels=[1])[0]
    run.values["scores"] = {"seeded region growing": scores}
    r = run.report
    r.add_section("3. Tumour segmentation")
    r.add_text(
        "Seeded: region growing on the registered FLAIR from one seed (tolerance 0.25 of the FLAIR scale), then "
        "holes filled slice by slice. The seed stands in for a user's click inside the bright lesion; here it is "
        f"placed at the deepest point of the phantom's oedema, at ({', '.join(f'{c:.1f}' for c in seed)}) mm LPS. "
        "Scores are against the phantom's whole tumour (oedema, enhancing rim and necrotic core).")
    r.add_image(flair, labels=_agreement(tumour, truth), caption="Seeded segmentation on the registered FLAIR: "
                "green where it agrees with the truth, red where it adds, blue where it misses")
    run.number("seeded: Dice (whole tumour)", scores["dice"])
    run.number("seeded: HD95", scores["hausdorff95_mm"], "mm")
    run.number("seeded: ASSD", scores["assd_mm"], "mm")


def _step_unet(run: _Run) -> None:
    from . import metrics

    r = run.report
    model = run.values.get("segmenter")
    try:
        from .deep import deep_segment, pretrained, pretrained_models
    except ImportError as exc:
        raise _Skip(f"medlab.deep is not installed here ({exc})") from None
    if model is None:
        cards = pretrained_models()
        if "brain_tumour" not in cards:
            raise _Skip("this installation ships no 'brain_tumour' U-Net (medlab.deep.pretrained_models() lists "
                        f"{sorted(cards) or 'none'}); train it with python -m medlab.deep.train_models brain_tumour")
        model = pretrained("brain_tumour")
    names = list(model.preprocessing.get("channels") or ["t1"])
    images = {"t1": run.values["t1_clean"], "flair": run.values["flair_registered"], "t2": run.values["t2_registered"]}
    if any(n not in images for n in names):
        raise _Skip(f"the U-Net reads channels {names}; the demo has {sorted(images)}")
    channels = [images[n] for n in names]
    labels, _ = deep_segment(channels[0], model, *channels[1:])
    whole = labels.with_array(np.isin(labels.array, WHOLE_TUMOUR).astype(np.uint8), kind="label",
                              labels={1: "whole tumour"})
    truth = run.values["truth"]
    scores = metrics.segmentation_scores(whole, truth, labels=[1])[0]
    run.values["scores"]["U-Net"] = scores
    run.values["unet"] = whole
    per_class = metrics.segmentation_scores(labels, run.values["phantom"].labels, labels=list(WHOLE_TUMOUR))
    r.add_text(f"U-Net: the shipped model ({model.describe()}) on channels {', '.join(names)}; label map on the "
               "T1 grid.")
    held_out = model.metrics.get("test_dice_mean")
    if isinstance(held_out, (int, float)):
        r.add_text(f"On held-out phantoms like those it was trained on (coil bias ±10 %, scans as acquired) its "
                   f"card gives a mean Dice of {held_out:.2f} per class. Here it reads the T1 after N4 and NLM and a "
                   "FLAIR resampled by the registration, of a scan with ±30 % bias: inputs unlike its training "
                   "data. Where the scores below fall short of the card's, that is the gap between a network's "
                   "validation numbers and a new scan; the seeded method has no training data to differ from.")
    r.add_image(images[names[0]], labels=labels, outline=False,
                caption="U-Net labels (oedema, enhancing rim, necrotic core) on the T1")
    r.add_table(Table([{k: row[k] for k in ("name", "dice", "hausdorff95_mm", "volume_pred_ml", "volume_truth_ml")}
                       for row in per_class], units={"hausdorff95_mm": "mm", "volume_pred_ml": "mL",
                                                     "volume_truth_ml": "mL"}, title="U-Net per tumour class"))
    run.number("U-Net: Dice (whole tumour)", scores["dice"])
    run.number("U-Net: HD95", scores["hausdorff95_mm"], "mm")


def _step_volume(run: _Run) -> None:
    from .mesh import label_surface
    from .render import montage
    from .report import slice_figure, surface_picture

    r = run.report
    r.add_section("4. Tumour volume and 3D")
    rows = []
    for method, sc in run.values["scores"].items():
        rows.append({"method": method, "Dice": sc["dice"], "HD95": sc["hausdorff95_mm"], "ASSD": sc["assd_mm"],
                     "volume": sc["volume_pred_ml"], "true volume": sc["volume_truth_ml"],
                     "volume error": sc["volume_difference_ml"]})
    r.add_table(Table(rows, units={"HD95": "mm", "ASSD": "mm", "volume": "mL", "true volume": "mL",
                                   "volume error": "mL"}, title="whole tumour: methods side by side"))
    classic = run.values["classic"]
    volume = _volume_ml(classic)
    run.number("tumour volume (seeded segmentation)", volume, "mL", "voxel count × voxel volume")
    try:
        surface = label_surface(classic, 1, reduction=0.5 if run.fast else 0.8)
        surface = type(surface)(surface.vertices, surface.faces, 1, "tumour (seeded)", (230, 120, 20))
        ventricles = label_surface(run.values["phantom"].labels, 6, reduction=0.5 if run.fast else 0.8)
        run.number("tumour volume enclosed by its surface", surface.volume_ml, "mL",
                   "watertight" if surface.is_watertight else "surface not watertight: approximate")
        picture = surface_picture([surface, ventricles], title="tumour (orange) and ventricles (blue, phantom truth)")
        r.add_image(picture, caption="3D picture (matplotlib, headless): the segmented tumour beside the ventricles; "
                                     "axes in mm, patient's left to the right")
    except (ImportError, RuntimeError, ValueError, MemoryError) as exc:   # no headless 3D: three planes instead
        r.add_skipped("3D picture", f"could not render headless ({type(exc).__name__}: {exc}); three planes instead")
        r.add_image(montage([slice_figure(run.values["flair_registered"], labels=classic)]),
                    caption="three planes through the tumour")


def _step_grad_cam(run: _Run) -> None:
    try:
        from .explain import grad_cam, tumour_classifier
    except ImportError as exc:
        raise _Skip(f"medlab.explain is not installed here ({exc})") from None
    try:
        model = tumour_classifier()
    except MedlabError as exc:
        raise _Skip(f"the shipped tumour classifier is missing: {exc}") from None
    from .register import resample_image

    truth = run.values["truth"]
    # the classifier was trained on noisy, not denoised, FLAIR: it sees the FLAIR as acquired, carried onto the
    # T1 grid by the registration's transform (the denoised FLAIR is scored too, to show the difference)
    flair = resample_image(run.values["flair"], run.values["flair_transform"], run.values["t1_clean"])
    # one logit, the evidence for 'tumour' (index 0): its map is explained whatever the model predicts
    saliency, numbers = grad_cam(flair, model, truth, target_class=0)
    _, denoised_numbers = grad_cam(run.values["flair_registered"], model, truth, target_class=0)
    run.values.update(classifier=model, saliency=saliency, flair_for_model=flair)
    r = run.report
    r.add_section("5. Grad-CAM of the tumour classifier")
    held_out = model.metrics.get("held_out_accuracy")
    r.add_text(
        "The shipped 3D classifier (tumour / no tumour, trained on noisy FLAIR phantoms of 3 × 3 × 4 mm voxels"
        + (f", held-out accuracy {held_out:.2f}" if isinstance(held_out, float) else "")
        + ") explained by Grad-CAM (captum). Its one output is the evidence for 'tumour' (positive: tumour), and "
        "the map shows where that evidence comes from, whatever it predicts. It reads the FLAIR as "
        "acquired (not denoised), carried onto the T1 grid by the registration. The map is computed on the "
        "network's grid and resampled back onto the scan. 'Energy in mask' is the share of the map inside the "
        "true tumour; the pointing game asks whether the map's peak falls in it.")
    r.add_image(flair, heat=saliency, labels=truth, caption="Grad-CAM for 'tumour' on the FLAIR, through the true "
                "tumour (outlined); inferno from 0 to the map's maximum, below 20 % not drawn")
    r.add_table(numbers, caption="Grad-CAM: target, scores, layer and localisation")
    values = {row.get("quantity"): row.get("value") for row in numbers.rows}
    denoised = {row.get("quantity"): row.get("value") for row in denoised_numbers.rows}
    for key, name, unit in (("target probability", "classifier: probability of tumour", ""),
                            ("energy in mask", "Grad-CAM: energy in the true tumour", ""),
                            ("pointing game hit", "Grad-CAM: peak inside the tumour", "")):
        if key in values:
            run.number(name, values[key], unit)
    if "target probability" in denoised:
        run.number("classifier: probability of tumour on the denoised FLAIR", denoised["target probability"], "",
                   "the same scan after non-local means")
        p_raw, p_denoised = values.get("target probability", float("nan")), denoised["target probability"]
        verdict = ("so it relies on the noise texture it was trained with: its output is only meaningful for scans "
                   "like its training data (same noise, same resolution), whatever its accuracy on them"
                   if abs(p_raw - p_denoised) > 0.2 else
                   "so denoising, at least, does not change its answer on this scan")
        r.add_text(f"The classifier gives the tumour a probability of {p_raw:.3g} on this FLAIR and {p_denoised:.3g} "
                   f"on the same FLAIR after denoising, {verdict}.")


def _step_sanity(run: _Run) -> None:
    if "classifier" not in run.values:
        raise _Skip("needs the Grad-CAM step, which did not run")
    from .explain import model_randomisation_test

    flair, truth, model = run.values["flair_for_model"], run.values["truth"], run.values["classifier"]
    _original, randomised, similarity, table = model_randomisation_test(flair, model, truth, target_class=0,
                                                                       steps=2 if run.fast else 3)
    r = run.report
    r.add_text(
        "Sanity check (Adebayo et al. 2018): the classifier's layers are re-initialised from the output back, "
        "and the map recomputed. A map that barely changes does not show what the model learned. "
        f"Verdict: {table.title}.")
    r.add_image(flair, heat=randomised, labels=truth,
                caption="Grad-CAM after every layer was randomised (compare with the map above)")
    r.add_curve(similarity, caption="similarity of the randomised maps to the original, per cascade step")
    r.add_table(table, caption="model randomisation test")
    passed = not any(bool(row.get("barely changes")) for row in table.rows[-1:])
    run.number("sanity check passed (map changes when the model is randomised)", passed)


STEPS: list[tuple[str, Callable[[_Run], None], bool]] = [
    ("scans", _step_scans, False),
    ("bias correction and denoising", _step_preprocess, False),
    ("registration", _step_register, False),
    ("seeded segmentation", _step_classic_segmentation, False),
    ("U-Net segmentation", _step_unet, True),
    ("tumour volume and 3D", _step_volume, False),
    ("Grad-CAM", _step_grad_cam, True),
    ("sanity check", _step_sanity, True),
]
"""``(name, function, optional)``: an optional step that fails is reported and the run goes on."""


# ---------------------------------------------------------------------------- helpers
def _volume_ml(labels: Image) -> float:
    return float(np.count_nonzero(labels.array)) * float(np.prod(labels.spacing)) / 1000.0


def _cv(image: Image, mask: np.ndarray) -> float:
    values = image.array[mask].astype(np.float64)
    return float(values.std() / values.mean())


def _scaled_to(image: Image, reference: Image, mask: np.ndarray) -> Image:
    ratio = np.median(reference.array[mask] / np.maximum(image.array[mask], 1e-6))
    return image.with_array((image.array * ratio).astype(np.float32))


def _agreement(pred: Image, truth: Image) -> Image:
    p, t = pred.array != 0, truth.array != 0
    arr = np.zeros(p.shape, np.uint8)
    arr[p & t], arr[p & ~t], arr[~p & t] = 1, 2, 3
    return truth.with_array(arr, kind="label", labels={1: ("agrees", (0, 200, 80)), 2: ("added", (230, 40, 40)),
                                                      3: ("missed", (60, 120, 255))})


class _Progress:
    """A tqdm bar over the steps whose text follows what the running stage reports."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="medlab demo", unit="step", disable=not enabled, file=sys.stderr,
                        bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar:20}| {elapsed} {postfix}")
        self._last = 0.0

    def step(self, name: str) -> None:
        self.bar.set_description_str(f"medlab demo: {name}")

    def stage(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last > 0.25:
            self._last = now
            self.bar.set_postfix_str(f"{message[:40]} {100 * fraction:.0f}%", refresh=True)

    def done(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str("")

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------- the run
def run_demo(out, *, fast: bool = False, seed: int = 100, overwrite: bool = False, progress: bool = True,
             segmenter=None) -> DemoResult:
    """Run the brain tumour case study on the phantom and write its HTML report into ``out``.

    Parameters
    ----------
    out : path
        Folder for ``brain_tumour_report.html`` and ``brain_tumour_recipe.json`` (created).
    fast : bool
        A 64 × 64 × 32 phantom (3 × 3 × 4 mm) instead of 128 × 128 × 64 (1.5 × 1.5 × 2 mm).
    seed : int
        Phantom seed: anatomy, tumour, motion and noise.
    overwrite : bool
        Replace an earlier report in ``out``.
    progress : bool
        Show a progress bar (tqdm, on stderr).
    segmenter : Checkpoint, optional
        A U-Net to use instead of the shipped ``brain_tumour`` model (for a model you trained).

    Returns
    -------
    DemoResult
    """
    from . import __version__
    from .recipe import Recipe
    from .report import Report
    from .stage import progress_to

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer; got {seed!r}")
    out = Path(out)
    report_path, recipe_path = out / REPORT_NAME, out / "brain_tumour_recipe.json"
    for path in (report_path, recipe_path):
        if path.exists() and not overwrite:
            raise WriteError(f"{path} exists; pass --overwrite (overwrite=True) or choose another --out folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the output folder {out}: {exc.strerror}") from None
    grid = PHANTOMS[bool(fast)]
    report = Report("Brain tumour MRI: from the raw scans to a tumour volume",
                    subtitle=f"medlab demo{' --fast' if fast else ''} on the built-in phantom "
                             f"({' × '.join(map(str, grid['size']))} voxels), seed {int(seed)}")
    run = _Run(report, bool(fast), int(seed))
    if segmenter is not None:
        run.values["segmenter"] = segmenter
    bar = _Progress(len(STEPS), progress)
    start, cpu_start = time.monotonic(), time.process_time()
    try:
        with progress_to(bar.stage, publish=lambda stage, values: None):
            _timed(run, bar, "scans", _step_scans, False)
            v = run.values
            with Recipe.record(t1=v["t1"], t2=v["t2"], flair=v["flair"]) as recipe:
                for name, func, optional in STEPS[1:]:
                    _timed(run, bar, name, func, optional)
    finally:
        bar.close()
    total = (time.monotonic() - start, time.process_time() - cpu_start)
    _closing_sections(run, recipe, total, __version__)
    recipe.save(recipe_path, overwrite=overwrite)
    report.save(report_path, overwrite=overwrite)
    return DemoResult(report_path, recipe, report.numbers, report.skipped, run.failed, dict(run.seconds),
                      dict(run.cpu_seconds), time.monotonic() - start)


def _timed(run: _Run, bar: _Progress, name: str, func: Callable[[_Run], None], optional: bool) -> None:
    bar.step(name)
    wall, cpu = time.monotonic(), time.process_time()
    _run_step(run, name, func, optional)
    run.seconds[name] = time.monotonic() - wall
    run.cpu_seconds[name] = time.process_time() - cpu
    bar.done()


def _run_step(run: _Run, name: str, func: Callable[[_Run], None], optional: bool) -> None:
    try:
        func(run)
    except _Skip as exc:
        run.report.add_skipped(name, str(exc))
    except Exception as exc:  # an optional step's failure is reported, and the other steps still run
        if not optional:
            raise
        run.failed.append({"step": name, "error": f"{type(exc).__name__}: {exc}"})
        run.report.add_skipped(name, f"FAILED with {type(exc).__name__}: {exc}")


def _closing_sections(run: _Run, recipe, total: tuple[float, float], version: str) -> None:
    r = run.report
    r.add_section("Hand-off to the clinician")
    r.add_text("In the notebook, the maps go to the review app, where a clinician rates each one without seeing "
               "code: medlab review STUDY --reviewer NAME (served on 127.0.0.1 only). The demo stops here.")
    r.add_section("Limitations")
    r.add_text(
        "This is a phantom, not a patient: tissues are ellipsoids with smooth texture, the noise is ideal Rician, "
        "the motion is rigid and known, and the tumour is brighter than anything near it on FLAIR, which makes "
        "region growing look better than it is on real scans (see medlab's benchmarks on the real brain1 MRI). "
        "The seed was placed from the truth, as a stand-in for a click. The shipped models were trained on "
        "phantoms from the same generator and are teaching models, not diagnostic ones; the classifier's held-out "
        "accuracy is stated above. A Grad-CAM map shows where the network's last convolutional features raised "
        "the score, at their coarse resolution: it is not a segmentation, and the sanity check says whether it "
        "depends on the trained weights at all.")
    r.add_section("Timing")
    cores = os.cpu_count() or 1
    rows = [{"step": k, "wall clock": round(v, 2), "CPU": round(run.cpu_seconds[k], 2)} for k, v in run.seconds.items()]
    rows.append({"step": "total", "wall clock": round(total[0], 2), "CPU": round(total[1], 2)})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    r.add_table(Table(rows, units={"wall clock": "s", "CPU": "s"},
                      title=f"time on this machine: {cores} cores, load average {load:.1f} at the end (CPU time "
                            "sums every thread of this process; wall clock grows when other work shares the cores)"))
    run.number("total wall-clock time", total[0], "s")
    r.add_section("Recipe")
    r.add_text("Every stage call above, recorded with where its inputs came from; it replays bit-identically "
               "with medlab.recipe.Recipe.load(...).run(t1=..., t2=..., flair=..., ...), and is saved beside this "
               "report as brain_tumour_recipe.json.")
    r.add_recipe(recipe)


def main_demo(case: str, out, *, fast: bool, open_browser: bool, overwrite: bool, seed: int,
              progress: bool = True) -> int:
    """What ``medlab demo`` does: run, print where the report is, open it if asked; the exit code."""
    study = CASE_STUDIES.get(case)
    if study is None:
        raise ParameterError(f"unknown case study {case!r}; choose one of {sorted(CASE_STUDIES)}")
    if not study.headless:
        print(f"medlab demo {case}: {study.title} is notebook only for now; it is not run headless. "
              "Open the case-study notebooks in notebooks/case_studies/ (when present), or run "
              "`medlab demo brain`.", file=sys.stderr)
        return 2
    result = run_demo(out, fast=fast, seed=seed, overwrite=overwrite, progress=progress)
    print(f"medlab demo: report written to {result.report.resolve()}")
    print(f"recipe: {result.report.parent.resolve() / 'brain_tumour_recipe.json'} ({len(result.recipe)} steps); "
          f"{result.total_seconds:.0f} s")
    for s in result.skipped:
        if not s["reason"].startswith("FAILED"):
            print(f"skipped: {s['step']}: {s['reason']}")
    for f in result.failed:
        print(f"FAILED: {f['step']}: {f['error']}", file=sys.stderr)
    if open_browser:
        import webbrowser

        webbrowser.open(result.report.resolve().as_uri())
    return 0 if result.ok else 1
