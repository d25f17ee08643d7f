"""Write the tutorial notebooks from the cell lists below (no outputs stored).

    python notebooks/_build.py

The notebooks are the product; this file is only their editable source, so a diff of a
tutorial reads as code. tests/test_notebooks.py executes every notebook.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def md(text):
    return new_markdown_cell(text.strip())


def code(text, tags=(), **medlab):
    """A code cell; ``tags`` (``parameters``, ``exercise``, ``raises-exception``) and ``medlab``
    metadata (``wrong_answers=[...]``, ``expected_error=...``) are what tests/test_notebooks.py reads."""
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    if medlab:
        cell.metadata["medlab"] = medlab
    return cell


START_HERE = [
    md("""
# Start here: images that know where they are

medlab keeps every image together with its **geometry**: voxel spacing (mm), origin (mm) and
direction (which way each array axis points in the patient). This notebook

1. loads a built-in phantom and two real scans that ship with installed packages,
2. shows them in the medlab viewer (scroll, window/level, labels, click-to-point),
3. makes the two classic geometry mistakes on purpose, and fixes them,
4. records what it did as a recipe that reruns.

**You will learn to**

1. tell an image's voxel array from its geometry (spacing, origin, direction) and why both matter;
2. read a scan in the viewer: scroll, window/level, readout in mm, labels, points;
3. avoid the two classic mistakes: ignoring the spacing, and overlaying by index instead of position;
4. turn what you did into a recipe that reruns bit-identically.

Everything runs offline on a laptop CPU.
"""),
    code("""
import os
FAST = os.environ.get("MEDLAB_FAST") == "1"   # CI sets it: smaller phantoms, same steps
SIZE = (64, 64, 32) if FAST else (128, 128, 64)
""", tags=["parameters"]),
    code("""
import numpy as np
import matplotlib.pyplot as plt
import medlab
from medlab.widgets import Viewer, link

medlab.__version__
"""),
    md("""
## 1. A built-in phantom with ground truth

`medlab.data.brain_mri` draws a head (scalp, skull, CSF, ventricles, grey and white matter, and a
tumour with necrotic core, enhancing rim and oedema) in T1, T2 and FLAIR contrast, with Rician
noise and an optional bias field. The same seed always gives the same images. A bare image in a
notebook shows a static three-plane thumbnail with its size, spacing and intensity range.
"""),
    code("""
brain = medlab.data.brain_mri(seed=0, size=SIZE)
brain.t1
"""),
    code("""
print(brain.labels.describe())
{value: label.name for value, label in brain.labels.labels.items()}
"""),
    md("""
## 2. The viewer

Scroll with the slider, the mouse wheel or the arrow keys; drag with the right mouse button
(or use the numeric boxes and presets) to change window/level; the readout under the cursor
gives the voxel index, the position in millimetres and the value. The label map is drawn in
the image's physical space, with a legend — here as **outlines**, so the scan stays readable
(`set_labels(..., outline=False, opacity=0.4)` fills them instead).
"""),
    code("""
viewer = Viewer(brain.flair, layout="three")
viewer.set_labels(brain.labels, outline=True)
viewer
"""),
    md("""
Switch on point mode (the **✚ points** button, or `viewer.point_mode = "edit"`) and click: the
points arrive in Python as physical coordinates in millimetres (LPS), ready to be seeds or
landmarks. A viewer can hold several named point sets (seeds and background, fixed and moving
landmarks), each with its own colour and marker; the chips under the picture pick the set a
click adds to. Here we place one point from Python, at the centre of the tumour, and read it back.
"""),
    code("""
tumour_value = brain.label_value("enhancing tumour")
zyx = np.argwhere(brain.mask("enhancing tumour", "necrotic core")).mean(axis=0)   # array order: z, y, x
centre_mm = brain.labels.index_to_physical(zyx[::-1])                             # index order: x, y, z
viewer.points = [centre_mm.tolist()]
viewer.position = centre_mm.tolist()
print("tumour centre (mm, LPS):", np.round(viewer.points[0], 1))
"""),
    md("""
## 3. Real scans that your installation already has

pydicom ships a small CT slice, nibabel a low-resolution T1 head. `medlab.data.list_samples()`
lists what is available with its licence; `medlab.load` reads any DICOM file or folder, NIfTI,
NRRD, MHA or PNG/JPEG/TIFF, and CT values come out in Hounsfield units.
"""),
    code("""
[(s["name"], s["licence"]) for s in medlab.data.list_samples(available_only=True)]
"""),
    code("""
ct = medlab.data.load_sample("ct_small")
print(ct.describe())
ct_viewer = Viewer(ct)
ct_viewer.window, ct_viewer.level = medlab.render.CT_PRESETS["abdomen"]
ct_viewer
"""),
    code("""
t1 = medlab.data.load_sample("t1_brain_small")
print(t1.describe(), "| orientation:", t1.orientation)
Viewer(t1, layout="three")
"""),
    md("""
## 4. Mistake 1: forgetting the spacing

Clinical volumes are rarely isotropic: thick-slice MRI has 0.8 mm pixels and 5–7 mm slices.
Below, the phantom is resampled to 6 mm slices (as a fast clinical sequence would be), then shown
twice: once as a bare array (what `plt.imshow(array[:, y, :])` does) and once in physical space.
"""),
    code("""
thick = medlab.preprocess.resample(brain.t1, spacing=(1.5, 1.5, 6.0))
print("array shape (z, y, x):", thick.shape, "| spacing (x, y, z) mm:", thick.spacing)
y = thick.shape[1] // 2
fig, ax = plt.subplots(1, 2, figsize=(8, 4))
ax[0].imshow(thick.array[:, y, :], cmap="gray", origin="lower")
ax[0].set_title("mistake: array pixels, squashed head")
coronal = medlab.render.extract_slice(thick, "coronal", medlab.render.slice_count(thick, "coronal") // 2)
h_mm = coronal.size[1] * coronal.spacing[1]
w_mm = coronal.size[0] * coronal.spacing[0]
ax[1].imshow(coronal.array, cmap="gray", extent=(0, w_mm, 0, h_mm))
ax[1].set_title("fixed: millimetres on both axes")
plt.show()
squash = (thick.shape[0] / thick.shape[2])
true_ratio = (thick.size[2] * thick.spacing[2]) / (thick.size[0] * thick.spacing[0])
print(f"height/width as array: {squash:.2f}, in the patient: {true_ratio:.2f}")
"""),
    md("""
**Exercise 1.** How far apart, in millimetres, are the centres of two neighbouring slices of
`thick` (along z)? Put your answer in `my_step` (the value filled in is the answer; change it and
the check tells you why it is wrong).
"""),
    code("""
def check_step(step):
    true = thick.spacing[2]
    if abs(step - true) < 1e-6:
        print(f"✓ right: {true} mm, the z spacing (thick.spacing is in x, y, z order)")
    elif any(abs(step - s) < 1e-6 for s in thick.spacing[:2]):
        print(f"✗ {step} mm is an in-plane pixel size (x or y); slices follow each other along z")
    elif abs(step - 1.0) < 1e-6:
        print("✗ 1 is the step in array index, not in millimetres: multiply by the spacing")
    else:
        print(f"✗ {step} mm: read it from thick.spacing, whose last value is z")

my_step = 6.0
check_step(my_step)
""", tags=["exercise"], wrong_answers=["1.5", "1.0", "3.0"]),
    md("""
## 5. Mistake 2: overlaying by array index instead of by position

Two files can cover the same anatomy with differently ordered axes: a label map saved with its
y axis flipped (direction `diag(1, -1, 1)`) holds the same anatomy upside down in the array.
Overlaying it voxel by voxel puts the tumour in the wrong place; overlaying it by physical
position (what the viewer and `medlab.render.resample_like` do) puts it back.
"""),
    code("""
lab = brain.labels
flip = np.diag([1.0, -1.0, 1.0])
far_corner = lab.index_to_physical([0, lab.size[1] - 1, 0])
flipped = medlab.Image(lab.array[:, ::-1, :], lab.spacing, (lab.origin[0], far_corner[1], lab.origin[2]),
                       lab.direction @ flip, kind="label", labels=lab.labels)
truth = lab.array == tumour_value
naive = flipped.array == tumour_value                                  # by index: wrong
honest = medlab.render.resample_like(flipped, lab).array == tumour_value  # by position: right
dice = medlab.metrics.dice
print(f"Dice with the truth, overlay by index: {dice(naive, truth):.2f}; by position: {dice(honest, truth):.2f}")
"""),
    md("""
**Exercise 2.** Which overlay puts the tumour where it is, `"index"` or `"position"`? Set
`my_overlay`.
"""),
    code("""
def check_overlay(answer):
    scores = {"index": dice(naive, truth), "position": dice(honest, truth)}
    if answer not in scores:
        print(f"✗ answer 'index' or 'position', not {answer!r}")
    elif answer == "position":
        print(f"✓ right: by position the overlay matches the truth (Dice {scores['position']:.2f}); "
              "the two files store the same anatomy with opposite y directions")
    else:
        print(f"✗ by index the flipped file lands upside down (Dice {scores['index']:.2f}): "
              "the arrays differ even though the anatomy is the same")

my_overlay = "position"
check_overlay(my_overlay)
""", tags=["exercise"], wrong_answers=["'index'", "'pixels'"]),
    code("""
fixed_view = Viewer(brain.t1)
fixed_view.set_labels(flipped, opacity=0.4)   # resampled into the T1's physical space
fixed_view.position = centre_mm.tolist()
fixed_view
"""),
    md("""
## 6. Before/after views and snapshots

`link(a, b)` keeps two viewers on the same position and window/level; `snapshot()` returns a PNG
of the current view, for a report.
"""),
    code("""
smoothed = medlab.preprocess.gaussian_smooth(brain.t1, sigma=1.5)
before, after = Viewer(brain.t1), Viewer(smoothed)
unlink = link(before, after)
before.position = centre_mm.tolist()
png = after.snapshot()
print("after-view follows the before-view:", after.position == before.position, "| snapshot bytes:", len(png))
"""),
    md("""
## 7. Recipes: what you did, as code that reruns

Every processing step in medlab is a **stage**: a plain function whose inputs (images), parameters
and outputs are declared once. Inside `Recipe.record(...)`, each stage call is written down with
where its inputs came from, so the recipe can rerun the exact computation on the same or on
new data, save itself as JSON (input descriptions and checksums, never voxels) and print itself
as Python. Here two images go in, and one step has two outputs.
"""),
    code("""
from medlab.recipe import Recipe
from medlab.preprocess import gaussian_smooth, n4_bias_correction

small = medlab.data.brain_mri(seed=3, size=(64, 64, 24), bias=0.3)
with Recipe.record(t1=small.t1, flair=small.flair) as recipe:
    t1_smooth = gaussian_smooth(small.t1, sigma=1.0)
    flair_corrected, bias_field = n4_bias_correction(small.flair, iterations=10, levels=2)
print(recipe)
print(recipe.to_python())
"""),
    code("""
outputs = recipe.run(t1=small.t1, flair=small.flair)   # every output of every step, by name
print(sorted(outputs))
same = np.array_equal(outputs["step2.image"].array, flair_corrected.array)
print("replay is bit-identical:", same, "| the field keeps the geometry:", outputs["step2.field"].same_grid(small.flair))
"""),
    md("""
## Run it on your own data

`medlab.load` takes a DICOM file or folder (pick a series with `series=` when a folder holds
several; `medlab.io.list_series(folder)` lists them), NIfTI, NRRD, MHA or a PNG/JPEG/TIFF:

```python
scan = medlab.load("my_scans/patient_001/")      # a folder of DICOM slices -> one volume in mm
print(scan.describe())
Viewer(scan, layout="three")
```

Everything above works the same on it: the viewer places it in physical space, the readout
gives millimetres and (for CT) Hounsfield units, and `Recipe.record(image=scan)` records what
you do to it.
"""),
    md("""
Next: `02_preprocessing.ipynb` (denoising, contrast, resampling, bias correction, the
preprocess widget and its recipe). For any group of stages, `medlab.widgets.Workbench(images,
group=...)` gives the same interface: pick a stage, fill its inputs, preview, apply, export.
Bridges to other viewers: `medlab.widgets.open_in_napari(image, labels=...)` (with the `napari`
extra) and `medlab.widgets.view_itk(image)` (the `itk` extra; its viewer loads from the internet).
"""),
]


PREPROCESSING = [
    md("""
# Preprocessing: noise, contrast, geometry, bias — and a recipe you can rerun

Every step below is a medlab **stage**: a plain function with validated parameters that also
appears in the interactive widget and in the exported recipe. We measure everything against the
phantom's noise-free ground truth.

**You will learn to**

1. tell Gaussian, Rician and Poisson noise apart, and why the model matters;
2. compare denoisers on noise *and* edges, with numbers (PSNR, SSIM, edge preservation);
3. choose a CT window and see what CLAHE and N4 bias correction do (and cost);
4. resample without inventing labels;
5. tune a stage live in the preprocess widget and export the exact recipe.
"""),
    code("""
import os
FAST = os.environ.get("MEDLAB_FAST") == "1"   # CI sets it: smaller phantoms, same steps
SIZE = (64, 64, 32) if FAST else (128, 128, 64)
""", tags=["parameters"]),
    code("""
import numpy as np
import matplotlib.pyplot as plt
import medlab
from medlab import metrics
from medlab.preprocess import (nlm_denoise, anisotropic_diffusion, gaussian_smooth, window_level, clahe,
                               resample, n4_bias_correction)
from medlab.widgets import PreprocessWidget
"""),
    md("""
## 1. Noise models and why they matter

* **Gaussian**: additive, zero mean — CT after reconstruction is close to it.
* **Rician**: the magnitude of complex Gaussian noise — every MR magnitude image. In air the
  signal is 0 but the image is not: it shows a positive *noise floor* (mean ≈ 1.25 σ), and low
  signal is biased upwards. A denoiser that ignores this leaves a grey haze in the background.
* **Poisson**: photon counting — X-ray and mammography; the variance grows with the signal.
"""),
    code("""
rng = np.random.default_rng(0)
signal = np.linspace(0, 1, 400)
sigma = 0.1
gauss = signal + rng.normal(0, sigma, (2000, 400))
rice = np.hypot(signal + rng.normal(0, sigma, (2000, 400)), rng.normal(0, sigma, (2000, 400)))
poisson = rng.poisson(signal * 50, (2000, 400)) / 50
plt.figure(figsize=(6, 3))
for name, x in [("Gaussian", gauss), ("Rician", rice), ("Poisson", poisson)]:
    plt.plot(signal, x.mean(axis=0) - signal, label=name)
plt.axhline(0, color="k", lw=0.5); plt.xlabel("true signal"); plt.ylabel("mean bias"); plt.legend(); plt.show()
print(f"Rician mean in air: {rice[:, 0].mean():.3f} (theory 1.253 σ = {1.2533 * sigma:.3f})")
"""),
    md("""
## 2. NLM versus diffusion versus Gaussian, on edges

Smoothing removes noise *and* edges. We measure both: PSNR and SSIM against the noise-free
phantom, and edge preservation (how well the result's gradients follow the true edges).
"""),
    code("""
brain = medlab.data.brain_mri(seed=1, noise=0.05, size=SIZE)
noisy, clean = brain.t1, brain.clean["t1"]
results = {
    "noisy": noisy,
    "gaussian σ=1 mm": gaussian_smooth(noisy, sigma=1.0),
    "diffusion": anisotropic_diffusion(noisy),
    "non-local means": nlm_denoise(noisy),
}
rows = []
for name, img in results.items():
    rows.append((name, metrics.psnr(img, clean), metrics.ssim(img, clean), metrics.edge_preservation(img, clean)))
print(f"{'method':18s} {'PSNR dB':>8s} {'SSIM':>6s} {'edges':>6s}")
for r in rows:
    print(f"{r[0]:18s} {r[1]:8.2f} {r[2]:6.3f} {r[3]:6.3f}")
"""),
    code("""
z = noisy.shape[0] // 2
fig, axes = plt.subplots(1, 4, figsize=(14, 4))
for ax, (name, img) in zip(axes, results.items()):
    ax.imshow(img.array[z, 30:100, 30:100], cmap="gray", vmin=0, vmax=1); ax.set_title(name); ax.axis("off")
plt.show()
"""),
    md("""
**Exercise 1.** The Gaussian *lowers* PSNR here: the phantom's folded cortex is as fine as the
noise, so blurring removes anatomy as fast as noise. Non-local means averages only similar
patches. Its strength `h` is a multiple of the estimated noise σ: too low leaves noise, too
high flattens texture. Which of the candidates below gives the best PSNR? Put it in `my_h`
(the value filled in is the answer; change it and the check says so).
"""),
    code("""
candidates = [0.4, 0.8, 1.2, 2.0, 3.0]
scores = {h: metrics.psnr(nlm_denoise(noisy, h=h), clean) for h in candidates}
print({h: round(v, 2) for h, v in scores.items()})
best = max(scores, key=scores.get)

def check_h(h):
    if h not in scores:
        print(f"✗ pick one of the candidates {candidates}")
    elif h == best:
        print(f"✓ right: h={h} gives the best PSNR, {scores[h]:.2f} dB")
    elif h < best:
        print(f"✗ h={h} is too weak: noise is left ({scores[h]:.2f} dB against {scores[best]:.2f})")
    else:
        print(f"✗ h={h} is too strong: it flattens texture ({scores[h]:.2f} dB against {scores[best]:.2f})")

my_h = best
check_h(my_h)
""", tags=["exercise"], wrong_answers=["0.4", "3.0"]),
    md("""
## 3. CT windowing

CT values are Hounsfield units spanning −1000 (air) to +3000 (dense bone); a screen shows 256
grey levels. A *window* (width) and *level* (centre) choose which HU range gets those levels.
"""),
    code("""
chest = medlab.data.chest_ct(seed=0)
ct = chest.ct
z = ct.shape[0] // 2
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, preset in zip(axes, ["lung", "mediastinum", "bone"]):
    shown = window_level(ct, preset=preset)
    ax.imshow(shown.array[z], cmap="gray", vmin=0, vmax=1); ax.set_title(preset + " " + str(medlab.render.CT_PRESETS[preset])); ax.axis("off")
plt.show()
"""),
    md("""
**Exercise 2.** Which preset shows the ground-glass nodules (about −600 HU) as mid-grey, not black or
white? Set `my_preset`.
"""),
    code("""
def check_preset(preset):
    if preset not in medlab.render.CT_PRESETS:
        print(f"✗ choose one of {sorted(medlab.render.CT_PRESETS)}")
        return
    w, l = medlab.render.CT_PRESETS[preset]
    grey = (-600 - (l - w / 2)) / w
    if 0.15 < grey < 0.85:
        print(f"✓ right: in the {preset} window (W {w:g}, L {l:g}) -600 HU is {grey:.0%} grey")
    else:
        shade = "black" if grey <= 0.15 else "white"
        print(f"✗ in the {preset} window -600 HU is {shade} ({grey:.2f} of the grey range): "
              "the window must reach down to lung density")

my_preset = "lung"
check_preset(my_preset)
""", tags=["exercise"], wrong_answers=["'mediastinum'", "'bone'", "'brain'"]),
    md("""
## 4. CLAHE and its artefacts

Contrast-limited adaptive histogram equalisation boosts local contrast. The clip limit caps how
much: too high, and noise in flat regions is amplified into texture that is not anatomy.
"""),
    code("""
mammo = medlab.data.mammogram(seed=0)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, clip in zip(axes, [None, 0.01, 0.1]):
    img = mammo.mammo if clip is None else clahe(mammo.mammo, clip_limit=clip)
    ax.imshow(img.array, cmap="gray"); ax.set_title("original" if clip is None else f"CLAHE clip {clip}"); ax.axis("off")
plt.show()
bg = mammo.labels.array == 0
for clip in [0.01, 0.1]:
    out = clahe(mammo.mammo, clip_limit=clip)
    print(f"clip {clip}: noise in the background std = {out.array[bg].std():.4f}")
"""),
    md("""
## 5. N4 bias-field correction

A smooth multiplicative field (coil sensitivity) makes the same tissue brighter on one side. N4
estimates it; we compare the estimated field with the phantom's true one.
"""),
    code("""
biased = medlab.data.brain_mri(seed=2, noise=0.02, bias=0.4, size=SIZE)
corrected, field = n4_bias_correction(biased.t1, shrink_factor=4)
wm = biased.mask("white matter")
cv = lambda img: img.array[wm].std() / img.array[wm].mean()
print(f"white-matter coefficient of variation: before {cv(biased.t1):.3f}, after N4 {cv(corrected):.3f}")
r = np.corrcoef(field.array[wm], biased.bias_field.array[wm])[0, 1]
print(f"correlation of the estimated and the true field in white matter: {r:.2f}")
"""),
    md("""
## 6. Resampling, and the label-interpolation trap

Resampling an intensity image uses linear (or B-spline) interpolation. Doing that to a label map
invents labels: halfway between label 2 and label 4 is "3", a tissue that is not there.
"""),
    code("""
lab = brain.labels
as_intensity = medlab.Image(lab.array.astype(np.float32), lab.spacing, lab.origin, lab.direction)
wrong = resample(as_intensity, spacing=(2.3, 2.3, 2.3), interpolator="linear")
right = resample(lab, spacing=(2.3, 2.3, 2.3))   # a label map: nearest/label-aware automatically
invented = set(np.unique(np.rint(wrong.array)).astype(int)) - set(np.unique(lab.array))
fractional = np.mean(wrong.array != np.rint(wrong.array))
print(f"linear: {fractional:.1%} voxels are not a label at all; label-aware: values {np.unique(right.array).tolist()}")
print("geometry kept:", right.spacing, right.direction.tolist() == lab.direction.tolist())
"""),
    md("""
## 7. Live: the preprocess widget, and the recipe

Pick a stage, move a slider: the preview on the current slice updates within a blink, with the
quality numbers. **Apply** runs on the whole volume with a progress bar (and Cancel). **Export recipe**
shows the Python code and writes the JSON. Here we drive the same widget from code.
"""),
    code("""
w = PreprocessWidget(noisy)
w
"""),
    code("""
w.select("nlm_denoise")
w.set(h=1.0)
w.apply(wait=True)
w.select("clahe")
w.apply(wait=True)
recipe = w.recipe
print(recipe.to_python("t1.nii.gz", "t1_clean.nii.gz"))
"""),
    md("""
**Exercise 3.** Replay the recipe on the original image and check it is *bit-identical* to what the
widget produced.
"""),
    code("""
def check_replay(image):
    if image is None or not hasattr(image, "array"):
        print("✗ recipe.run(noisy) returns the final image: pass that")
    elif image.shape != w.image.shape:
        print("✗ a different shape: did you run the recipe on the original image?")
    elif np.array_equal(image.array, w.image.array):
        print("✓ bit-identical: the recipe reruns exactly what the widget did")
    else:
        print(f"✗ it differs (largest difference {np.abs(image.array - w.image.array).max():.3g}): "
              "run the recipe on the original, not on the widget's result")

replayed = recipe.run(noisy)
check_replay(replayed)
""", tags=["exercise"], wrong_answers=["w.image.with_array(w.image.array + 1)", "None"]),
    md("""
## Run it on your own data

Load your scan, open the widget on it, and export what you keep:

```python
scan = medlab.load("my_scans/t1.nii.gz")
w = PreprocessWidget(scan)          # try stages live; Apply what you keep
w.export("recipes/my_t1.json")      # then, on a whole folder: medlab run recipes/my_t1.json my_scans/ --out results/
```

For CT, start from a window preset; for MR, from N4 then NLM (with `noise_model="rician"`).
"""),
]


SEGMENTATION_CLASSIC = [
    md("""
# Segmentation, the classic way: thresholds, seeds, clean-up, and honest scores

A brain tumour on an MRI phantom (which comes with its ground truth), then a real MRI, segmented
without any training: global thresholds, region growing from a seed given in millimetres,
post-processing with sizes in mm, and corrections by hand that stay in the recipe.

**You will learn to**

1. read a histogram, and see why one global threshold rarely isolates a lesion (and what multi-Otsu changes);
2. grow a region from a seed placed in **mm**, tune its tolerance, and stop a leak with a background point;
3. clean a label map (holes, pieces) and correct it by hand (brush, remove a piece) as replayable steps;
4. score a segmentation against a ground truth, and see why **Dice alone misleads** (small structures,
   errors far away);
5. export it as NIfTI, as a **DICOM SEG** on its source series, and as a surface mesh, and look at it in 3D;
6. see where the same recipe fails on a real scan.

Everything runs offline on a CPU, in about a minute.
"""),
    code("""
import os
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt
from scipy import ndimage

import medlab
from medlab import metrics, segment
from medlab.widgets import SegmentWidget, View3D

medlab.__version__
"""),
    code("""
FAST = os.environ.get("MEDLAB_FAST") == "1"       # CI sets it: nothing here is heavy, so only the CT shrinks
SIZE = (96, 96, 48)                                # the brain phantom, voxels (x, y, z) of 1.5 x 1.5 x 2 mm
CT_SIZE = (64, 64, 24) if FAST else (96, 96, 32)   # the chest CT phantom written as a DICOM series
""", tags=["parameters"]),
    md("""
## 1. The phantom and its ground truth

`medlab.data.brain_mri` draws a head with a glioma-like tumour: **oedema** (bright on FLAIR), an
**enhancing rim** (bright on post-contrast T1) and a **necrotic core** (dark on FLAIR). The whole
tumour is our target. The histogram shows the problem: the tumour's voxels are a small bump at the
bright end, and other tissues overlap it.
"""),
    code("""
brain = medlab.data.brain_mri(size=SIZE, seed=0)
flair = brain.flair
tumour = brain.labels.with_array(brain.mask("oedema", "enhancing tumour", "necrotic core"), kind="label",
                                 labels={1: "tumour"})
voxel_ml = np.prod(flair.spacing) / 1000
print(flair.describe())
print(f"whole tumour: {tumour.array.sum()} voxels = {tumour.array.sum() * voxel_ml:.1f} mL")

fig, ax = plt.subplots(figsize=(8, 3))
ax.hist(flair.array.ravel(), bins=128, log=True, color="0.75", label="all voxels")
for name in ["white matter", "grey matter", "oedema", "enhancing tumour", "necrotic core"]:
    ax.hist(flair.array[brain.mask(name)], bins=128, range=(0, 1.1), log=True, histtype="step", lw=1.5, label=name)
ax.set_xlabel("FLAIR intensity (a.u.)"); ax.set_ylabel("voxels (log)"); ax.legend(fontsize=8); plt.show()
"""),
    code("""
def scores(labels, truth=tumour):
    # every non-zero voxel of `labels` counts as tumour; distances in mm, volumes in mL
    mask = truth.with_array(np.asarray(labels.array) > 0, kind="label", labels={1: "tumour"})
    return metrics.segmentation_scores(mask, truth, labels=[1])[0]

def line(name, labels):
    s = scores(labels)
    return (f"{name:34s} Dice {s['dice']:.3f}   HD95 {s['hausdorff95_mm']:6.1f} mm   "
            f"volume {s['volume_pred_ml']:6.1f} mL (truth {s['volume_truth_ml']:.1f})")
"""),
    md("""
## 2. Global thresholds

Otsu, Li and the triangle method each pick **one** threshold from the histogram. Every segment
stage returns a label map on the input's grid and records the level it used in
`labels.metadata["thresholds"]` (the widget marks it on its histogram).
"""),
    code("""
for name, method in [("Otsu", segment.otsu_threshold), ("Li", segment.li_threshold),
                     ("triangle", segment.triangle_threshold)]:
    labels = method(flair)
    print(line(f"{name} (above {labels.metadata['thresholds'][0]:.3f})", labels),
          f"| labels {labels.array.mean():.0%} of the image")
"""),
    md("""
All three split the **head from the air** around it: the largest difference in the histogram. The
tumour is brighter than everything else on FLAIR, so more classes should help: multi-Otsu splits
the histogram into *n* classes at once, and its brightest class is a candidate tumour.

**Exercise 1.** How many classes does multi-Otsu need before its brightest class is the tumour?
Set `my_classes` (the value filled in is the answer: change it and the check says why it is not).
"""),
    code("""
candidates = {}
for classes in (2, 3, 4, 5):
    multi = segment.multi_otsu_threshold(flair, classes=classes)
    brightest = multi.with_array(multi.array == multi.array.max(), kind="label")
    candidates[classes] = scores(brightest)["dice"]
    print(f"{classes} classes: thresholds {np.round(multi.metadata['thresholds'], 3).tolist()}, "
          f"brightest class Dice {candidates[classes]:.3f}")

my_classes = 4

def check_classes(n):
    best = max(candidates, key=candidates.get)
    if n == best:
        print(f"✓ {n} classes: the brightest class is the tumour (Dice {candidates[n]:.3f})")
    elif n < best:
        print(f"✗ with {n} classes the brightest class still holds other bright tissue (Dice {candidates[n]:.3f})")
    else:
        print(f"✗ with {n} classes the tumour itself is split between two classes (Dice {candidates[n]:.3f})")

check_classes(my_classes)
""", wrong_answers=["3", "5", "2"]),
    md("""
That worked because this phantom's oedema is the brightest tissue on FLAIR. On real scans fat,
vessels or artefacts are often as bright, and the number of classes is a guess. A person points at
the lesion instead: **seeds**.

## 3. Region growing from a seed in millimetres

A seed is a point in **mm** in the patient's frame (LPS), not an array index, so it lands on the same
anatomy whatever the grid (a resampled image, a one-slice preview, another orientation). Here we put
it where a reader would click: the middle of the oedema.
"""),
    code("""
depth = ndimage.distance_transform_edt(brain.mask("oedema"), sampling=flair.spacing[::-1])
seed = flair.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1])      # (x, y, z) mm, LPS
seed_voxel = tuple(np.rint(flair.physical_to_index(seed)).astype(int)[::-1])
print("seed (mm, LPS):", np.round(seed, 1), f"| intensity there {flair.array[seed_voxel]:.3f}",
      f"| mean oedema intensity {flair.array[brain.mask('oedema')].mean():.3f}")

tolerances = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
grown = {t: segment.connected_threshold(flair, seeds=[seed], tolerance=t) for t in tolerances}
dices = [scores(grown[t])["dice"] for t in tolerances]
plt.figure(figsize=(5, 3)); plt.plot(tolerances, dices, "o-")
plt.xlabel("tolerance (a.u.)"); plt.ylabel("Dice"); plt.title("connected threshold from one seed"); plt.show()
"""),
    md("""
`connected_threshold` keeps the voxels within `tolerance` of the **seed voxel's own intensity** that
connect to the seed. That one voxel is noisy (compare its value with the oedema's mean above), so
the interval is off-centre: a small tolerance grows almost nothing. `confidence_connected` centres
the interval on the mean ± k·SD of a neighbourhood of the seed (radius in mm) instead.

**Exercise 2.** What is the smallest tolerance in the list that reaches Dice 0.85? Set `my_tolerance`.
"""),
    code("""
my_tolerance = 0.3

def check_tolerance(t):
    reach = [tol for tol, d in zip(tolerances, dices) if d >= 0.85]
    if t not in tolerances:
        print(f"✗ {t} is not one of the tolerances tried: {tolerances}")
    elif t == reach[0]:
        print(f"✓ {t}: Dice {dices[tolerances.index(t)]:.3f}")
    elif dices[tolerances.index(t)] < 0.85:
        print(f"✗ {t} gives Dice {dices[tolerances.index(t)]:.3f}: the region stops short of the oedema's edge")
    else:
        print(f"✗ {t} reaches 0.85, but a smaller tolerance already does")

check_tolerance(my_tolerance)
for k in (2.0, 2.5, 3.0):
    print(line(f"confidence connected, mean ± {k} SD", segment.confidence_connected(flair, seeds=[seed], multiplier=k)))
""", wrong_answers=["0.25", "0.35", "0.33"]),
    md("""
### A leak, and a background point that stops it

A larger tolerance lets the region **leak** through a bridge of similar voxels into healthy tissue.
A *background* point (clicked in another colour in the widget) caps the interval halfway between
the seed's intensity and its own, and is never part of the region.
"""),
    code("""
wm_depth = ndimage.distance_transform_edt(brain.mask("white matter"), sampling=flair.spacing[::-1])
background = flair.index_to_physical(np.unravel_index(wm_depth.argmax(), wm_depth.shape)[::-1])
leaky = segment.connected_threshold(flair, seeds=[seed], tolerance=0.6)
capped = segment.connected_threshold(flair, seeds=[seed], background=[background], tolerance=0.6)
print(line("tolerance 0.6", leaky), "| interval", np.round(leaky.metadata["thresholds"], 3))
print(line("tolerance 0.6 + a background point", capped), "| interval", np.round(capped.metadata["thresholds"], 3))
"""),
    md("""
## 4. Post-processing, with sizes in mm

The **necrotic core** is dark on FLAIR, so region growing from the oedema leaves a hole in the
middle. `fill_holes` fills background enclosed by the label (per slice with `mode="slices"`, which
also closes cavities open between slices). Radii of `opening`/`closing` are in mm, turned into voxels
per axis from the spacing. `connected_components` lists the pieces with their volume and centroid.
"""),
    code("""
region = grown[0.3]
filled = segment.fill_holes(region, mode="slices")
print(line("connected threshold 0.3", region))
print(line("  + fill holes (slices)", filled))
print(line("  + opening 2 mm", segment.opening(filled, radius=2.0)))
pieces, table = segment.connected_components(filled)
table.to_pandas()
"""),
    md("""
## 5. Why Dice alone misleads

**Small structures.** Remove one layer of voxels from each structure: the same one-voxel error
halves the Dice of a small (or thin) structure and barely dents a large one, while the surface
distance (HD95, in mm) stays in the same range of a few mm for all of them: the border moved by about
a voxel, whatever the size.
"""),
    code("""
rows = []
for name in ["necrotic core", "enhancing tumour", "oedema", "white matter"]:
    truth = brain.labels.with_array(brain.mask(name), kind="label")
    shrunk = truth.with_array(ndimage.binary_erosion(truth.array))
    s = metrics.segmentation_scores(shrunk, truth, labels=[1])[0]
    rows.append((name, truth.array.sum() * voxel_ml, s["dice"], s["hausdorff95_mm"]))
    print(f"{name:17s} {rows[-1][1]:6.2f} mL: one voxel layer less -> Dice {s['dice']:.2f}, HD95 {s['hausdorff95_mm']:.1f} mm")
"""),
    md("""
**An error far away.** A small false positive in the other hemisphere (painted here with the brush
stage, as a slip of the hand would) hardly changes Dice, which counts voxels: the blob is a few
percent of the volume. The surface distances measure how far the worst border points are, so they
jump; so does the number of pieces. (HD95 ignores the worst 5 % of border points: a blob smaller than
that would slip past it too, but not past the maximum, Hausdorff.)
"""),
    code("""
far = seed * np.array([-1.0, 1.0, 1.0])            # the same place in the other hemisphere (x -> -x)
slip = segment.paint_labels(filled, strokes=[far], radius=4.0)
compare = {"clean": scores(filled), "with a stray blob": scores(slip)}
for name, s in compare.items():
    print(f"{name:18s} Dice {s['dice']:.4f}  HD95 {s['hausdorff95_mm']:5.1f} mm  Hausdorff {s['hausdorff_mm']:5.1f} mm  "
          f"ASSD {s['assd_mm']:.2f} mm  volume {s['volume_pred_ml']:.2f} mL")
print("pieces:", len(segment.connected_components(slip)[1]))
"""),
    md("""
**Exercise 3.** Reporting only one score, with which one would you have missed the blob: `"dice"`,
`"hausdorff95_mm"`, `"hausdorff_mm"` or `"assd_mm"`? (The one that changed the least, relative to its
clean value.) Set `my_metric`.
"""),
    code("""
my_metric = "dice"

def check_metric(name):
    clean, blob = compare["clean"], compare["with a stray blob"]
    change = {k: abs(blob[k] - clean[k]) / max(abs(clean[k]), 0.01) for k in ("dice", "hausdorff95_mm", "hausdorff_mm", "assd_mm")}
    least = min(change, key=change.get)
    if name not in change:
        print(f"✗ {name!r} is not one of {list(change)}")
    elif name == least:
        print(f"✓ {name}: {clean[name]:.4f} -> {blob[name]:.4f}, a change you would not notice; report a surface "
              "distance beside it")
    else:
        print(f"✗ {name} went from {clean[name]:.3g} to {blob[name]:.3g}: that one shows the blob")

check_metric(my_metric)
""", wrong_answers=['"hausdorff_mm"', '"hausdorff95_mm"', '"assd_mm"', '"volume"']),
    md("""
**Exercise 4.** Remove the stray blob with `segment.remove_components` (the *Remove piece* tool of
the widget): give it a point on the piece, in mm. The check wants the clean segmentation back, voxel
for voxel.
"""),
    code("""
fixed = segment.remove_components(slip, pieces=[far])

def check_fixed(labels):
    if np.array_equal(labels.array, filled.array):
        print("✓ the blob is gone and nothing else changed; Hausdorff is back to",
              f"{scores(labels)['hausdorff_mm']:.1f} mm")
    else:
        diff = int((labels.array != filled.array).sum())
        print(f"✗ {diff} voxels differ from the clean segmentation: is your point on the blob?")

check_fixed(fixed)
""", wrong_answers=["slip", "segment.remove_components(slip, pieces=[seed])"]),
    md("""
## 6. The segment widget, and a recipe that replays

`SegmentWidget` is all of the above with the mouse: pick a method, **click a seed** in the left
image (seed picking is armed; background points have their own chip), watch the preview on the
right follow the sliders, then Apply. Threshold methods show the histogram with their
threshold(s); *Paint*, *Erase* and *Remove piece* edit the newest label map; the scores table
compares it with the ground truth after each Apply; the bottom panels save it (NIfTI, DICOM SEG,
mesh), export the recipe, open a 3D view and train a U-Net (next notebook).

Here we drive it from code, exactly as the buttons do.
"""),
    code("""
w = SegmentWidget(flair, truth=tumour)
w.before.position = seed.tolist()
w
"""),
    code("""
w.set(seeds=[seed.tolist()], tolerance=0.3)     # what a click and the slider do
w.apply(wait=True)
w.select("fill_holes"); w.set(mode="slices"); w.apply(wait=True)
w.edit("paint"); w.set(strokes=[far.tolist()], radius=4.0); w.apply(wait=True)     # a slip of the hand...
w.edit("remove"); w.set(pieces=[far.tolist()]); w.apply(wait=True)                 # ...clicked away
print(w.recipe.to_python())
print({k: round(v, 3) for k, v in w.scores[0].items() if k in ("dice", "hausdorff95_mm", "hausdorff_mm")})
"""),
    code("""
replayed = w.recipe.run(image=flair)            # every step again, from the recipe alone
same = np.array_equal(replayed[f"step{len(w.recipe)}.labels"].array, w.labels.array)
print("✓ the recipe replays bit for bit" if same else "✗ the replay differs")
"""),
    md("""
## 7. Export: NIfTI, a DICOM SEG on its source series, a mesh

A NIfTI keeps the geometry, so it overlays the scan in any viewer. A **DICOM SEG** refers to the
exact slices of the series it was made from, so a PACS or OHIF shows it on the original images. We
need a DICOM series for that: here the chest CT phantom is written as one (one file per slice, as a
scanner would, with SimpleITK), loaded back, and its lungs segmented by a HU range.
"""),
    code("""
out = Path("segmentation_outputs"); out.mkdir(exist_ok=True)
medlab.save(w.labels, out / "tumour.nii.gz", overwrite=True)
print("NIfTI overlays the scan:", medlab.load(out / "tumour.nii.gz").same_grid(flair))
mesh = medlab.mesh.label_surface(w.labels, 1)
print(mesh.describe(), "->", medlab.mesh.save_mesh(mesh, out / "tumour.stl", overwrite=True))
"""),
    code("""
import SimpleITK as sitk
from pydicom.uid import generate_uid

def write_dicom_series(image, folder):
    # one CT file per slice, with the tags a viewer needs to stack them (position, orientation, UIDs)
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.Cast(image.to_sitk(), sitk.sitkInt16)
    d = volume.GetDirection()
    shared = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": generate_uid(),
              "0020|000e": generate_uid(), "0020|0052": generate_uid(), "0008|103e": "chest phantom",
              "0010|0010": "Phantom^Chest", "0010|0020": "PHANTOM-1", "0028|1052": "0", "0028|1053": "1",
              "0018|0050": f"{volume.GetSpacing()[2]:.4f}",
              "0020|0037": "\\\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
    writer = sitk.ImageFileWriter(); writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        tags = {**shared, "0008|0018": generate_uid(), "0020|0013": str(k + 1),
                "0020|0032": "\\\\".join(f"{v:.4f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm")); writer.Execute(plane)
    return folder

series = write_dicom_series(medlab.data.chest_ct(seed=0, size=CT_SIZE).ct, out / "chest_ct_dicom")
ct = medlab.load(series)                 # from DICOM: metadata["source"] is the series folder
lungs = segment.ct_threshold(ct, preset="lung")
seg_path = segment.write_dicom_seg(lungs, series, out / "lungs_seg.dcm", overwrite=True)
back = medlab.load(seg_path)              # a SEG loads as a label map with its segment names
on_ct = medlab.preprocess.resample_to(back, reference=ct, interpolator="nearest")
print(back.describe(), back.labels[1].name)
print("✓ the SEG overlays the series voxel for voxel" if np.array_equal(on_ct.array > 0, lungs.array > 0)
      else "✗ the SEG does not overlay the series")
"""),
    md("""
In the widget, *Save DICOM SEG* is enabled when the image was loaded from a DICOM series
(`SegmentWidget(medlab.load(folder))`) and writes the same file.

## 8. In 3D

The 3D view renders the scan and the label's surface in millimetres, with a crosshair linked to
a 2D viewer (here the widget's left viewer: move one, the other follows). Drag to turn it.
"""),
    code("""
view = View3D(flair, w.labels, height=360)
unlink = view.link(w.before)
view
"""),
    md("""
## 9. A real MRI, honestly

`brain1` (pyradiomics' test data: a contrast-enhanced T1 MRI with 6.5 mm slices, and a mask of the
enhancing lesion, in two pieces) is in the project's shared test data, beside the repository. We
place the seed where a reader would, in the middle of the lesion, and run the same method. When the
shared data is not there, this section says so and moves on.
"""),
    code("""
shared = Path(os.environ.get("MEDLAB_SHARED_DATA", Path(medlab.__file__).resolve().parents[1].parent / "shared" / "data"))
real = shared / "labels" / "brain1_image.nrrd"
if not real.exists():
    print(f"(the shared test data is not here ({shared}): this section is skipped)")
else:
    mri = medlab.load(real)
    truth1 = medlab.load(shared / "labels" / "brain1_label.nrrd", kind="label")
    inside = ndimage.distance_transform_edt(truth1.array > 0, sampling=mri.spacing[::-1])
    seed1 = mri.index_to_physical(np.unravel_index(inside.argmax(), inside.shape)[::-1])
    print(mri.describe())
    for tol in (250.0, 300.0, 350.0):
        s = metrics.segmentation_scores(segment.connected_threshold(mri, seeds=[seed1], tolerance=tol), truth1,
                                        labels=[1])[0]
        print(f"tolerance {tol:.0f}: Dice {s['dice']:.3f}, HD95 {s['hausdorff95_mm']:6.1f} mm, "
              f"sensitivity {s['sensitivity']:.2f}, precision {s['precision']:.2f}, "
              f"volume {s['volume_pred_ml']:.1f} mL (truth {s['volume_truth_ml']:.1f})")
"""),
    md("""
What this shows (the numbers above, when the data is there):

* **±300** finds the seeded piece precisely (precision near 1) but only about half of the lesion:
  the lesion has **two pieces**, and one seed grows only the piece it is in.
* **±350 leaks**: the interval now reaches normal enhancing tissue, a bridge connects them, and the
  region floods the brain (Dice near 0, hundreds of mL). On a phantom the same step was harmless. One
  tolerance between "too little" and "everywhere" is a knife's edge on real data.
* With a seed in each piece, and closing and hole filling, `benchmarks/bench_segment.py` reaches
  Dice about 0.82: the tolerance was **tuned on this one image**, so that number is optimistic.

## Run it on your own data

```python
import medlab
from medlab.widgets import SegmentWidget

scan = medlab.load("path/to/scan.nii.gz")          # or a DICOM folder: then "Save DICOM SEG" works too
truth = medlab.load("path/to/mask.nii.gz", kind="label")   # optional: enables the scores table
w = SegmentWidget(scan, truth=truth)
w                                                  # click a seed, move the sliders, Apply, edit, save
```

Then `w.export("my_recipe.json")` keeps what you did, and `medlab.recipe.Recipe.load("my_recipe.json").run(image=other_scan)`
runs it on another scan (seeds stay where they were in mm: check that they land in the lesion).

Next: `04_segmentation_unet.ipynb`, where a network learns the three tumour classes.
"""),
]


SEGMENTATION_UNET = [
    md("""
# A U-Net on a CPU: train it on phantoms, segment a new scan, see where it fails

The classic methods of the previous notebook need a seed and a tolerance per scan. A network
learns what the structure looks like from examples instead. Here a small 3D U-Net (MONAI) learns
the brain phantom's tumour on a laptop CPU, with a fixed seed, and then segments scans it has
never seen, including some it should fail on.

**You will learn to**

1. turn images and label maps into training cases, and keep some back for validation;
2. train a U-Net (Dice + cross-entropy loss, Adam, best-epoch checkpoint) reproducibly, and read its
   loss and validation-Dice curves while it runs;
3. segment a new scan by sliding windows, and get the label map **on the scan's own grid** (spacing,
   orientation), whatever grid the network works on;
4. score it in mm and mL, compare with a model trained longer, and see **honestly where networks
   fail**: noise they did not see, a scan without tumour, a real MRI, a missing input contrast;
5. save the model and the result, look at it in 3D, and use the model in the segment widget.

The settings cell keeps the run to a few minutes on two CPU cores; with the environment variable
`MEDLAB_FAST=1` (what the test suite can use) it is smaller and rougher.
"""),
    code("""
import os
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import medlab
from medlab import metrics
from medlab.deep import brain_tumour_cases, deep_segment, pretrained, pretrained_models, train_segmenter
from medlab.deep.train_models import BRAIN_SETTINGS
from medlab.outputs import Checkpoint
from medlab.stage import progress_to
from medlab.widgets import SegmentWidget, View3D
from medlab.widgets.outputs import LiveView
"""),
    md("""
## Settings

Change them here, never in the code below. The network and data pipeline are medlab's settings for
the brain tumour (`BRAIN_SETTINGS`), which reach a whole-tumour Dice above 0.93 on full-size phantoms in
three minutes; here, with only a minute or two of CPU, fewer and smaller cases, fewer epochs, and a
larger learning rate (1e-2 instead of 3e-3: a few dozen optimiser steps, on one easy label). With 3e-3,
ten epochs here leave the validation Dice below 0.1.
"""),
    code("""
FAST = os.environ.get("MEDLAB_FAST") == "1"
N_CASES = 4 if FAST else 10                       # phantoms to learn from; 2 are held out for validation
SIZE = (32, 32, 16) if FAST else (48, 48, 24)     # voxels (x, y, z) of each small phantom, 1.5 x 1.5 x 2 mm
EPOCHS = 3 if FAST else 10
SEED = 0                                          # the same seed, data and settings give the same weights
SETTINGS = {**BRAIN_SETTINGS, "epochs": EPOCHS, "seed": SEED, "learning_rate": 1e-2,
            "patch_size": [min(p, s) for p, s in zip(BRAIN_SETTINGS["patch_size"], SIZE)]}
print(dict(FAST=FAST, N_CASES=N_CASES, SIZE=SIZE), SETTINGS)
""", tags=["parameters"]),
    md("""
## 1. Training cases: the whole tumour on FLAIR

`brain_tumour_cases` draws one phantom per seed: the image and the full tissue label map. We start
with the easiest task a network can learn in a minute on a CPU: the **whole tumour** (oedema,
enhancing rim and necrotic core as one label) on **FLAIR**, where the oedema is the brightest tissue.
The three classes apart, on T1, take much longer: section 4 shows a model trained for that.
"""),
    code("""
cases = brain_tumour_cases(range(N_CASES), contrasts=("flair",), size=SIZE)
TUMOUR = list(cases.classes)                                      # label values 8, 9, 7 of the phantom
def whole_tumour(labels):
    return labels.with_array(np.isin(labels.array, TUMOUR).astype(np.uint8), kind="label", labels={1: "tumour"})
targets = [whole_tumour(lab) for lab in cases.labels]

image, target = cases.images[0], targets[0]
z = int(np.argwhere(target.array)[:, 0].mean())
fig, ax = plt.subplots(1, 2, figsize=(8, 4))
ax[0].imshow(image.array[z], cmap="gray"); ax[0].set_title(f"FLAIR, case 0, slice {z}")
ax[1].imshow(image.array[z], cmap="gray"); ax[1].imshow(np.ma.masked_equal(target.array[z], 0), cmap="autumn", alpha=0.6)
ax[1].set_title("target: whole tumour")
for a in ax: a.axis("off")
plt.show()
"""),
    md("""
## 2. Training, live

`train_segmenter` normalises every image (here z-scores: mean 0, standard deviation 1), puts it on
the network's grid (patient axes, the cases' median voxel size), draws random patches around tumour
and background voxels, and minimises Dice + cross-entropy with Adam. Every few epochs (as often as keeps
this under about a seventh of the time: `val_interval="auto"`) and after the last, it segments the
validation cases whole and keeps the weights with the best Dice. Like every medlab stage it **publishes** its curves
while it runs: a live view plots them here (in the segment widget, Cancel keeps the best so far).

Why z-scores and not the 0.5th–99.5th percentiles? On FLAIR the oedema is the brightest tissue: when
it is small, the 99.5th percentile falls on grey matter, the oedema is clipped and grey matter comes
out much brighter than in the other cases, so a network that learnt on large oedemas misses the small
ones. A normalisation must not depend on the size of the thing you are looking for.
"""),
    code("""
live = LiveView()
display(live)
with progress_to(None, publish=lambda stage, values: live.update(values)):
    result = train_segmenter(cases.images, targets, classes={1: "tumour"}, **SETTINGS)
live.flush()
model = result.model
print(model.describe())
print({k: v for k, v in model.metrics.items() if k.startswith("dice") or k in ("epoch", "epochs_run", "training_seconds")})
"""),
    code("""
fig, ax = plt.subplots(1, 2, figsize=(10, 3))
for name, (x, y) in result.history.data().items():
    ax[0].plot(x, y, "o-", label=name)
ax[0].set_xlabel("epoch"); ax[0].set_ylabel("Dice + CE loss"); ax[0].legend()
for name, (x, y) in result.dice.data().items():
    ax[1].plot(x, y, "o-", label=name)
ax[1].set_xlabel("epoch"); ax[1].set_ylabel("validation Dice"); ax[1].legend(fontsize=8)
plt.show()
"""),
    md("""
**Exercise 1.** The network never sees an image at its own voxel size: every image is resampled
to the grid recorded in the checkpoint, and the label map is resampled back. What voxel size
(x, y, z in mm) does this network work at? Set `my_spacing`.
"""),
    code("""
my_spacing = (1.5, 1.5, 2.0)

def check_spacing(spacing):
    used = tuple(model.preprocessing["spacing"])
    if np.allclose(spacing, used):
        print(f"✓ {used} mm: the median voxel size of the training cases (recorded in model.preprocessing)")
    else:
        print(f"✗ the checkpoint records {used} mm (look at model.preprocessing['spacing'])")

check_spacing(my_spacing)
""", wrong_answers=["(1.0, 1.0, 1.0)", "(2.0, 1.5, 1.5)"]),
    md("""
### Same seed, same weights

Training is seeded (torch, numpy, MONAI, the data order), so a run can be repeated exactly on the
same number of threads. A tiny run, twice:
"""),
    code("""
tiny = [train_segmenter(cases.images[:2], targets[:2], classes={1: "tumour"}, epochs=1, seed=7, validation=0,
                        patch_size=(32, 32, 16)).model for _ in range(2)]
same = all(np.array_equal(tiny[0].state_dict[k].numpy(), tiny[1].state_dict[k].numpy()) for k in tiny[0].state_dict)
print("✓ identical weights from the same seed" if same else "✗ the two runs differ")
"""),
    md("""
## 3. A scan the network has never seen

A phantom with another seed (another head, another tumour), segmented whole by sliding windows.
The label map comes back on the scan's grid.
"""),
    code("""
new = medlab.data.brain_mri(seed=500, size=SIZE)
found, _ = deep_segment(new.flair, model)
truth = whole_tumour(new.labels)
print(found.describe(), "| on the scan's grid:", found.same_grid(new.flair))
COLUMNS = ["name", "dice", "hausdorff95_mm", "assd_mm", "volume_pred_ml", "volume_truth_ml"]
def table(pred, truth, labels):
    return pd.DataFrame([{c: r[c] for c in COLUMNS} for r in metrics.segmentation_scores(pred, truth, labels=labels)]).round(3)
table(found, truth, [1])
"""),
    md("""
**Exercise 2.** A scan rarely comes on the training grid. Resample the new scan to 1 × 1 × 3 mm and
store it in RAS order (another orientation), segment it, and say on which grid the label map comes
back: the `"input"` you gave, or the `"network"` grid? Set `my_grid`.
"""),
    code("""
other = medlab.preprocess.resample(new.flair, spacing=(1.0, 1.0, 3.0)).reorient("RAS")
found_other, _ = deep_segment(other, model)
my_grid = "input"

def check_grid(answer):
    on_input = found_other.same_grid(other)
    truth_there = medlab.preprocess.resample_to(truth, reference=other, interpolator="nearest")
    d = metrics.dice(found_other.array > 0, truth_there.array > 0)
    if (answer == "input") == on_input:
        print(f"✓ on the input's grid ({other.describe()}); Dice there {d:.3f}")
    else:
        print(f"✗ the label map is {'on' if on_input else 'not on'} the input's grid: compare found_other.same_grid(other)")

check_grid(my_grid)
""", wrong_answers=['"network"']),
    md("""
## 4. Three classes, trained longer

Telling the enhancing rim, the necrotic core and the oedema apart is a harder task. medlab ships
small models trained on phantoms by `python -m medlab.deep.train_models` with the same settings for
many more epochs; each comes with a card (seeds, epochs, time, Dice on held-out phantoms). When this
installation has them, here is the T1 + FLAIR one on a new head at the phantom's default size.
"""),
    code("""
shipped = pretrained_models()
print("shipped models:", sorted(shipped) or "none in this installation")
if "brain_tumour" in shipped:
    card = shipped["brain_tumour"]
    training = card.get("training", {})
    print(f"{card.get('task')}: best epoch {training.get('best_epoch')} of {training.get('epochs_run')}, "
          f"{training.get('seconds', 0) / 60:.0f} min of training; mean Dice on held-out phantoms:",
          card.get("test_phantoms", {}).get("mean"))
    three = pretrained("brain_tumour")
    head = medlab.data.brain_mri(seed=501)
    classes, _ = deep_segment(head.t1, three, head.flair)
    display(table(classes, head.labels, list(three.labels)))
else:
    print("(the three-class model is not shipped here: run python -m medlab.deep.train_models brain_tumour)")
"""),
    md("""
## 5. Where networks fail, honestly

A network is only as good as the data it saw. Tests the model trained above was not made for:

1. **more noise and a bias field** (another scanner, another coil);
2. **a head without tumour**: everything it calls tumour is a false positive;
3. **a real MRI** (the shared `brain1` scan, when it is there). It is a post-contrast T1 and has no
   FLAIR: the model trained here still runs on it (one channel in, one channel expected; nothing
   checks which contrast it is), and answers for the wrong contrast. The shipped T1-only model is
   tried too, when this installation has it.
"""),
    code("""
rows = []
for name, case in [("the new scan, as trained", new),
                   ("noise 8 % + bias field", medlab.data.brain_mri(seed=500, size=SIZE, noise=0.08, bias=0.4))]:
    s = metrics.segmentation_scores(deep_segment(case.flair, model)[0], whole_tumour(case.labels), labels=[1])[0]
    rows.append({"scan": name, **{c: s[c] for c in COLUMNS[1:]}})
display(pd.DataFrame(rows).round(3))

healthy = medlab.data.brain_mri(seed=502, size=SIZE, tumour=False)
called = deep_segment(healthy.flair, model)[0]
false_ml = float((called.array > 0).sum() * np.prod(called.spacing) / 1000)
print(f"a head without tumour: {false_ml:.2f} mL called tumour"
      + (" (every voxel of it a false positive)" if false_ml else ": no false positive on this head"))
"""),
    code("""
shared = Path(os.environ.get("MEDLAB_SHARED_DATA", Path(medlab.__file__).resolve().parents[1].parent / "shared" / "data"))
real = shared / "labels" / "brain1_image.nrrd"
if not real.exists():
    print(f"(the shared test data is not here ({shared}): the real-MRI test is skipped)")
else:
    mri = medlab.load(real)
    lesion = medlab.load(shared / "labels" / "brain1_label.nrrd", kind="label")
    print(mri.describe())
    tried = {f"the model trained here (on {model.preprocessing['channels'][0]}), given this T1": model}
    if "brain_tumour_t1" in pretrained_models():
        tried["the shipped T1-only model"] = pretrained("brain_tumour_t1")
    else:
        print("(no shipped T1-only model here: python -m medlab.deep.train_models brain_tumour_t1)")
    for name, m in tried.items():
        pred = deep_segment(mri, m)[0]
        s = metrics.segmentation_scores(pred.with_array(pred.array > 0), lesion.with_array(lesion.array > 0), labels=[1])[0]
        print(f"{name}: whole tumour vs the lesion mask: Dice {s['dice']:.3f}, HD95 {s['hausdorff95_mm']:.1f} mm, "
              f"volume {s['volume_pred_ml']:.1f} mL (mask {s['volume_truth_ml']:.1f} mL)")
"""),
    md("""
Read the numbers above before trusting a network:

* the **shifted** scan: the same head, with noise and a bias field it never saw. Intensity
  normalisation absorbs part of a bias field, not unseen noise;
* the **healthy** head: anything above 0 mL is tissue that would be reported as tumour;
* the **real** MRI: phantoms have no skull-base fat, no vessels, no 6.5 mm slices. A network trained
  only on them mostly fails there; a Dice near 0 is the honest result, not a bug. And a network needs
  exactly the inputs (contrasts) it was trained on: the checkpoint records them
  (`model.preprocessing["channels"]`), but matching them is your job. This is why a validation set must
  come from the data the network will be used on.

## 6. Save, look in 3D, and use the model in the widget
"""),
    code("""
out = Path("unet_outputs"); out.mkdir(exist_ok=True)
print(medlab.save(found, out / "tumour.nii.gz", overwrite=True))
print(model.save(out / "my_unet.pt", overwrite=True), "(weights, config, classes and preprocessing in one file)")
if found.array.any():
    view = View3D(new.flair, found, height=320)
    display(view)
else:
    print("the network found no tumour in this scan: nothing to show in 3D (train longer, or unset MEDLAB_FAST)")
"""),
    code("""
w = SegmentWidget(new.flair, truth=truth)
w.training.add_model(model)             # or train one in its "Train a U-Net" panel
w.training.segment_image(wait=True)     # the deep_segment stage, recorded in the widget's recipe
print(w.recipe.to_python())
w
"""),
    md("""
**Exercise 3.** The model file holds everything inference needs: load `unet_outputs/my_unet.pt` back
with `Checkpoint.load` and segment the new scan with it. The check wants the same label map as
before, voxel for voxel.
"""),
    code("""
reloaded = Checkpoint.load(out / "my_unet.pt")
again, _ = deep_segment(new.flair, reloaded)

def check_reloaded(labels):
    if not labels.same_grid(found):
        print("✗ that label map is on another grid: segment new.flair, the scan segmented before")
    elif np.array_equal(labels.array, found.array):
        print("✓ the same label map from the saved file (read with torch.load(..., weights_only=True))")
    else:
        print(f"✗ {(labels.array != found.array).sum()} voxels differ: is it the same scan and model file?")

check_reloaded(again)
""", wrong_answers=["found_other", "deep_segment(new.flair, tiny[0])[0]"]),
    md("""
## Run it on your own data

```python
import medlab
from medlab.deep import train_segmenter, deep_segment

images = [medlab.load(p) for p in ["case1_t1.nii.gz", "case2_t1.nii.gz"]]         # ... more cases
labels = [medlab.load(p, kind="label") for p in ["case1_mask.nii.gz", "case2_mask.nii.gz"]]
result = train_segmenter(images, labels, epochs=100, seed=0, validation=0.2)      # classes: the values present
result.model.save("my_unet.pt")
segmented, _ = deep_segment(medlab.load("new_case_t1.nii.gz"), result.model)
```

Or give the pairs to the widget, `SegmentWidget(scan, training_pairs=list(zip(images, labels)))`, and
use its *Train a U-Net* panel (live curves; Cancel keeps the best weights). On a CPU keep the images
small (crop around the organ, resample to 1.5–2 mm) and expect minutes to hours per model.
"""),
]


REGISTRATION = [
    md("""
# Registration: aligning two scans, and measuring the error in millimetres

Two scans of one patient rarely line up: the head moved between them, the scanner chose another
field of view, or one is a CT and the other an MRI. **Registration** finds the transform that maps
each point of one image (the *fixed* image) to the same tissue in the other (the *moving* image).
Every number in this notebook is in millimetres or degrees, and every result is checked against
a transform we know.

**You will learn to**

1. read a transform, resample an image through it in **physical space**, and get its direction right;
2. see **why mutual information works across modalities** (T1 against T2) where mean squares fails,
   from the joint histograms themselves;
3. use a **multi-resolution** schedule, and see why it reaches a far-off alignment;
4. register from **landmarks**, and tell fiducial localisation error (FLE), fiducial registration
   error (FRE) and target registration error (TRE) apart;
5. align **surfaces** with ICP;
6. undo a smooth **deformation** with a B-spline and with demons, and read the **Jacobian**;
7. **check** a registration (checkerboard, difference, green-magenta, TRE) and recognise a failure.

Everything runs offline on a CPU in a few minutes; `MEDLAB_FAST=1` makes it smaller and rougher.
"""),
    code("""
import os
import time

import numpy as np
import matplotlib.pyplot as plt
import SimpleITK as sitk

import medlab
from medlab.outputs import Transform
from medlab.register import (bspline_register, demons_register, fit_landmark_transform, fle_to_tre,
                             folded_voxels, jacobian_determinant, landmark_register, linear_register,
                             mutual_information, predicted_tre, resample_image, sample_points,
                             surface_register, target_registration_error)
from medlab.report import slice_figure
from medlab.widgets import RegisterWidget

medlab.__version__
"""),
    md("""
## Settings

Change them here, never in the code below.
"""),
    code("""
import os
import time

FAST = os.environ.get("MEDLAB_FAST") == "1"      # CI sets it: smaller phantoms and fewer iterations
SIZE = (64, 64, 32) if FAST else (96, 96, 48)          # phantom voxels (x, y, z)
SPACING = (3.0, 3.0, 3.75) if FAST else (2.0, 2.0, 2.5)  # mm
SAMPLES = 5000 if FAST else 20000                      # metric points per resolution level
BSPLINE = dict(grid_spacing_mm=40.0, shrink_factors=(2, 1), samples=2000 if FAST else 3000, iterations=8 if FAST else 15)
DEMONS_ITERATIONS = 10 if FAST else 20
started = time.perf_counter()
print(dict(FAST=FAST, SIZE=SIZE, SPACING=SPACING, SAMPLES=SAMPLES))
""", tags=["parameters"]),
    md("""
## 1. Transforms and resampling in physical space

`medlab.data.registration_pair` renders one head phantom twice: a **T1** image (fixed) and a **T2**
image (moving) that was moved by a known rigid transform (rotations up to 10°, shifts up to 10 mm).
It also gives landmarks in the fixed image (the tumour centre, the ventricles, points in the brain)
and where the same tissue lies in the moving image.

medlab (like SimpleITK, elastix and ANTs) stores a transform as a map **from fixed points to moving
points**, in mm in the patient's LPS frame. That is the direction resampling needs: each voxel centre
`p` of the fixed grid takes the moving image's value at `T(p)`, so the moving image lands on the
fixed grid without any inverse.
"""),
    code("""
pair = medlab.data.registration_pair(size=SIZE, spacing=SPACING, seed=3)
fixed, moving = pair.fixed, pair.moving
truth = Transform(pair.transform, name="true motion")
brain = pair.fixed_labels.with_array((pair.fixed_labels.array >= 4).astype(np.uint8), kind="label")
targets = sample_points(brain, 500, seed=0)          # TRE is measured at 500 points inside the brain
print(fixed.describe()); print(moving.describe()); print(truth.describe())

def tre(transform):
    e = target_registration_error(transform, targets, truth=pair.transform)
    return e.mean(), e.max()

def show(images, titles, plane="axial"):
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.4))
    for ax, img, title in zip(np.atleast_1d(axes), images, titles):
        s = medlab.render.extract_slice(img, plane, medlab.render.slice_count(img, plane) // 2)
        w, h = s.size[0] * s.spacing[0], s.size[1] * s.spacing[1]   # millimetres on both axes
        ax.imshow(s.array, cmap="gray", extent=(0, w, h, 0)); ax.set_title(title, fontsize=9); ax.axis("off")
    plt.show()

by_position = resample_image(moving, Transform(sitk.Euler3DTransform()), fixed)   # identity: same mm, no motion undone
undone = resample_image(moving, truth, fixed)                                      # through the true transform
show([fixed, by_position, undone], ["fixed T1", "moving T2 on the fixed grid, by position",
                                    "moving T2 through the true transform"])
print("TRE with no registration: mean %.2f mm, max %.2f mm" % tre(Transform(sitk.Euler3DTransform())))
print("resampled onto the fixed grid:", undone.same_grid(fixed))
"""),
    md("""
**Exercise 1: which way does a transform go?** Below, the T1 itself is moved **12 mm towards the
patient's left** (+x in LPS) to make `shifted`. Which translation `my_shift` (x, y, z in mm), as a
fixed → moving transform, brings `shifted` back onto `fixed`? The value filled in is the answer:
change its sign and the check says why.
"""),
    code("""
shifted = resample_image(fixed, Transform(sitk.TranslationTransform(3, (-12.0, 0.0, 0.0))), fixed)

my_shift = (12.0, 0.0, 0.0)

def check_shift(shift):
    inner = (slice(None), slice(None), slice(8, -8))        # away from the edges the shift leaves empty
    def difference(t):
        back = resample_image(shifted, Transform(sitk.TranslationTransform(3, tuple(map(float, t)))), fixed)
        return np.abs(back.array[inner] - fixed.array[inner]).mean()
    error, untouched = difference(shift), difference((0.0, 0.0, 0.0))
    if error < 0.2 * untouched:
        print(f"✓ {tuple(shift)}: the head is back (mean difference {error:.4f}, {untouched:.4f} before)")
    else:
        print(f"✗ {tuple(shift)} leaves a mean difference of {error:.3f} ({untouched:.3f} before). A transform maps "
              "FIXED points to MOVING points: tissue at p in the fixed image is at p + 12 mm (x) in the shifted one")

check_shift(my_shift)
""", wrong_answers=["(-12.0, 0.0, 0.0)", "(0.0, 12.0, 0.0)"]),
    md("""
## 2. Why mutual information works across modalities

On T1, CSF is dark and white matter bright; on T2 it is the other way round. **Mean squares**
(the average squared intensity difference) assumes the same tissue has the same value in both images,
so it is wrong for a T1/T2 pair. **Mutual information** (MI) only assumes that the intensity of one
image *predicts* the intensity of the other. The **joint histogram** shows it: count every pair (T1
value, T2 value) at the same point. When the images are aligned, each tissue makes one tight cluster;
misaligned, the clusters smear out. MI measures how concentrated the joint histogram is.
"""),
    code("""
head = fixed.array > 0.05

def moved_by(dx):
    extra = sitk.TranslationTransform(3, (float(dx), 0.0, 0.0))
    return resample_image(moving, Transform(sitk.CompositeTransform([pair.transform, extra])), fixed)

fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
for ax, dx in zip(axes, (0, 3, 10)):
    m = moved_by(dx)
    h, _, _ = np.histogram2d(fixed.array[head], m.array[head], bins=64, range=((0, 1), (0, 1)))
    ax.imshow(np.log1p(h).T, origin="lower", extent=(0, 1, 0, 1), cmap="magma")
    ax.set_xlabel("T1 intensity"); ax.set_ylabel("T2 intensity")
    ax.set_title(f"{dx} mm off: MI {mutual_information(fixed, m, mask=fixed.with_array(head.astype(np.uint8), kind='label')):.3f}",
                 fontsize=9)
plt.show()

offsets = np.arange(-16, 17, 2)
mi, ms = [], []
for dx in offsets:
    m = moved_by(dx)
    mi.append(mutual_information(fixed, m, mask=fixed.with_array(head.astype(np.uint8), kind="label")))
    ms.append(float(np.mean((fixed.array[head] - m.array[head]) ** 2)))
fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(offsets, mi, "o-"); ax[0].set_title("mutual information (higher is better)", fontsize=9)
ax[1].plot(offsets, ms, "o-", color="C3"); ax[1].set_title("mean squares (lower is better)", fontsize=9)
for a in ax: a.set_xlabel("shift away from the true alignment (mm)"); a.axvline(0, color="k", lw=0.5)
plt.show()
print(f"along this line MI is highest at {offsets[int(np.argmax(mi))]} mm, mean squares lowest at "
      f"{offsets[int(np.argmin(ms))]} mm; MI falls by {100 * (1 - min(mi) / max(mi)):.0f} %, mean squares varies by "
      f"{100 * (max(ms) / min(ms) - 1):.0f} %")
"""),
    md("""
MI has one clear peak. Mean squares barely changes along this line (a few per cent): it compares T1
and T2 values as if they should be equal, so shifting the head hardly helps or hurts it, and in six
dimensions it has better minima elsewhere. Now the registrations themselves. `linear_register`
optimises a rigid transform (3 rotations, 3 translations); its metric curve has one series per resolution level (section 3), and the report
gives each level's voxel size, samples, iterations and why it stopped. Medlab's MI metrics are
**negated** so that lower is better for every metric.
"""),
    code("""
results = {}
for metric in ("mattes_mi", "joint_histogram_mi", "mean_squares"):
    t0 = time.perf_counter()
    results[metric] = linear_register(fixed, moving, metric=metric, samples=SAMPLES)
    mean, worst = tre(results[metric].transform)
    print(f"{metric:19s} TRE mean {mean:6.2f} mm, max {worst:6.2f} mm   ({time.perf_counter() - t0:.1f} s)")
print()
print(results["mattes_mi"].transform.describe())
print(truth.describe())

def mean_squares(transform):
    m = resample_image(moving, transform, fixed)
    return float(np.mean((fixed.array[head] - m.array[head]) ** 2))
print(f"mean squares at the true alignment {mean_squares(truth):.4f}; at what mean squares found "
      f"{mean_squares(results['mean_squares'].transform):.4f}: lower, and wrong")
"""),
    md("""
**Exercise 2.** A colleague wants to align a **CT** (fixed) with an **MR** (moving) of the same head.
Which metric should they use? Set `my_metric` to one of `"mattes_mi"`, `"joint_histogram_mi"`,
`"correlation"`, `"mean_squares"`.
"""),
    code("""
my_metric = "mattes_mi"

def check_metric(metric):
    if metric in ("mattes_mi", "joint_histogram_mi"):
        print(f"✓ {metric}: mutual information only needs one image's intensity to predict the other's")
    elif metric in ("correlation", "mean_squares"):
        print(f"✗ {metric} assumes the same tissue has the same (or a linearly related) value in both images: bone "
              "is bright on CT and dark on most MR sequences")
    else:
        print(f"✗ {metric!r} is not one of medlab's metrics")

check_metric(my_metric)
""", wrong_answers=["'mean_squares'", "'correlation'", "'mutual_information'"]),
    md("""
## 3. Multi-resolution

Far from the answer, the metric surface of a detailed image is bumpy: a local optimiser stops in the
nearest dip. A **multi-resolution schedule** starts on a coarse, block-averaged copy (the bumps are
gone), then refines on finer copies. `shrink_factors=(8, 4, 2, 1)` (the default) runs four levels with
voxels 8, 4, 2 and 1 times the finest spacing; no axis is shrunk below 16 voxels, and `smoothing_mm`
adds Gaussian smoothing per level. Here the head starts up to 20° and 30 mm away.
"""),
    code("""
far = medlab.data.registration_pair(size=SIZE, spacing=SPACING, seed=11, max_rotation_deg=20, max_translation_mm=30)
far_brain = far.fixed_labels.with_array((far.fixed_labels.array >= 4).astype(np.uint8), kind="label")
far_targets = sample_points(far_brain, 500, seed=0)
print("TRE before: %.1f mm" % target_registration_error(sitk.Euler3DTransform(), far_targets, truth=far.transform).mean())
schedules = [(1,), (2, 1), (4, 2, 1), (8, 4, 2, 1)]
far_tre = {}
for schedule in schedules:
    t0 = time.perf_counter()
    r = linear_register(far.fixed, far.moving, shrink_factors=schedule, samples=SAMPLES)
    far_tre[schedule] = target_registration_error(r.transform, far_targets, truth=far.transform).mean()
    print(f"shrink factors {str(schedule):13s} TRE {far_tre[schedule]:7.2f} mm  "
          f"({r.report.rows[-1]['iterations']} iterations, {time.perf_counter() - t0:.1f} s)")
"""),
    code("""
for row in r.report.rows[:-1]:
    print(f"level {row['level']}: voxels {row['voxel size']} mm, {row['samples']} samples, "
          f"{row['iterations']} iterations, stopped: {row['stop reason'][:60]}")
fig, ax = plt.subplots(figsize=(6, 3))
for name in r.history.series_names:
    xs, ys = r.history.series(name)
    ax.plot(xs, ys, label=name)
ax.set_xlabel("iteration"); ax.set_ylabel("Mattes MI (negated)"); ax.legend(fontsize=8); plt.show()
"""),
    md("""
**Exercise 3.** Which schedule in `schedules` does **not** bring this far-off pair to a mean TRE under
1 mm? Set `my_schedule`.
"""),
    code("""
my_schedule = (1,)

def check_schedule(schedule):
    schedule = tuple(schedule)
    if schedule not in far_tre:
        print(f"✗ {schedule} was not tried; pick one of {schedules}")
    elif far_tre[schedule] >= 1.0:
        print(f"✓ {schedule} ends {far_tre[schedule]:.1f} mm off: at full resolution from so far away, the "
              "optimiser stops in the nearest dip of the metric")
    else:
        print(f"✗ {schedule} reaches {far_tre[schedule]:.2f} mm: its coarse levels see the whole head move first")

check_schedule(my_schedule)
""", wrong_answers=["(2, 1)", "(8, 4, 2, 1)", "(16, 1)"]),
    md("""
## 4. Landmarks: FLE, FRE and TRE

Point-based registration needs a few **landmarks** clicked at the same anatomy in both images. Three
errors are worth telling apart (Fitzpatrick, West and Maurer, 1998):

* **FLE**, fiducial localisation error: how far each click is from the true point;
* **FRE**, fiducial registration error: the residual distance between the landmarks after the fit;
* **TRE**, target registration error: the error at a point **not used in the fit** (the tumour you
  will operate on). TRE is what matters, and a small FRE does not promise a small TRE.

Here six landmarks are "clicked" in the moving image with 2 mm of localisation error; four more
points are held out as targets.
"""),
    code("""
rng = np.random.default_rng(0)
fle = 2.0                                                     # mm, RMS length of the click error
clicked = pair.moving_landmarks[:6] + rng.normal(0, fle / np.sqrt(3), (6, 3))
r_lm = landmark_register(fixed, moving, fixed_landmarks=pair.landmarks[:6].tolist(), moving_landmarks=clicked.tolist(),
                         fixed_targets=pair.landmarks[6:10].tolist(), moving_targets=pair.moving_landmarks[6:10].tolist())
for row in r_lm.errors.rows:
    print(f"{row['point']:12s} {row['use']:9s} error {row['error']:.2f} mm")
print("TRE over the brain: mean %.2f mm" % tre(r_lm.transform)[0])
"""),
    md("""
The simulation below repeats the experiment many times: it moves the fiducials by random errors of
known FLE, fits, and measures FRE and the TRE at targets farther and farther from the fiducials'
centroid. Fitzpatrick and West's formula predicts both.
"""),
    code("""
fiducials = pair.landmarks[:6]
centre = fiducials.mean(axis=0)
direction = np.array([1.0, 0.5, 0.2]) / np.linalg.norm([1.0, 0.5, 0.2])
far_points = centre + np.outer([0, 25, 50, 75, 100, 150], direction)
sim = fle_to_tre(fiducials, far_points, fle_rms=fle, trials=300)
rows = sim.rows[:-1]
d = [r["distance from centroid"] for r in rows]
plt.figure(figsize=(5, 3))
plt.plot(d, [r["simulated TRE"] for r in rows], "o", label="simulated")
plt.plot(d, [r["predicted TRE"] for r in rows], "-", label="Fitzpatrick–West")
plt.xlabel("target distance from the fiducials' centroid (mm)"); plt.ylabel("RMS TRE (mm)"); plt.legend(); plt.show()
print(f"FRE: simulated {sim.rows[-1]['simulated FRE']:.2f} mm, predicted {sim.rows[-1]['predicted FRE']:.2f} mm "
      f"(FLE {fle} mm: FRE is SMALLER than FLE, it hides part of the error)")
"""),
    md("""
**Exercise 4.** You may place six fiducials either **spread** over the head or **bunched** within 2 cm
of each other, in the same region. The target is the tumour. Which gives the smaller expected TRE
there? Set `my_layout` to `"spread"` or `"bunched"`.
"""),
    code("""
tumour = pair.landmarks[0]
spread = pair.landmarks[[1, 2, 10, 20, 30, 40]]
bunched = spread.mean(axis=0) + (spread - spread.mean(axis=0)) * (20.0 / np.ptp(spread, axis=0).max())
expected = {"spread": float(predicted_tre(spread, [tumour], fle)[0]), "bunched": float(predicted_tre(bunched, [tumour], fle)[0])}

my_layout = "spread"

def check_layout(layout):
    best = min(expected, key=expected.get)
    other = "bunched" if layout == "spread" else "spread"
    if layout == best:
        print(f"✓ {layout}: expected TRE at the tumour {expected[layout]:.2f} mm ({other}: {expected[other]:.2f} mm)")
    else:
        print(f"✗ {layout}: {expected.get(layout, float('nan')):.2f} mm; bunched fiducials pin the rotation poorly, and "
              "a small rotation error grows with the distance to the target")

check_layout(my_layout)
""", wrong_answers=["'bunched'"]),
    md("""
## 5. Surfaces: ICP

When no intensity metric fits (a surface scanned in the operating room, a model from another
segmentation), align **surfaces**. `surface_register` extracts each label's surface in mm (marching
cubes) and runs rigid iterative closest point: match each fixed point to its nearest moving point
(within its own label), solve the best rigid fit, repeat; pairs far beyond the median distance are
ignored as outliers.
"""),
    code("""
r_icp = surface_register(pair.fixed_labels, pair.moving_labels, max_points=3000)
xs, ys = r_icp.history.series("inliers")
plt.figure(figsize=(5, 3)); plt.plot(xs, ys, "o-")
plt.xlabel("ICP iteration"); plt.ylabel("RMS surface distance (mm)"); plt.show()
print("ICP: RMS distance %.2f -> %.2f mm, TRE mean %.2f mm" % (ys[0], ys[-1], tre(r_icp.transform)[0]))
"""),
    md("""
ICP lands within a few millimetres here, less precisely than mutual information: it uses only the
surfaces, taken from label maps at the voxel size (2–2.5 mm), where MI uses every voxel's intensity.
ICP's strengths are elsewhere: no intensities needed, and a good start for an intensity-based
refinement (give its transform as `initial=` to `linear_register`).
"""),
    md("""
## 6. Deformable registration and the Jacobian

Soft tissue does not move rigidly. We bend the T1 phantom with a known smooth deformation (two bumps
of 6–8 mm) and undo it with a **B-spline** (a grid of control points, here every 40 mm) and with
**diffeomorphic demons** (a dense displacement field; same contrast only). The **Jacobian determinant**
of a deformation tells what it does to each voxel's volume: 1 keeps it, above 1 expands, below 1
compresses, and **≤ 0 folds** the tissue inside out, which no anatomy does.
"""),
    code("""
base = medlab.data.brain_mri(size=SIZE, spacing=SPACING, noise=0.01, seed=3)
z, y, x = np.indices(base.t1.array.shape).astype(float)
points = np.stack([x, y, z], -1) * np.asarray(base.t1.spacing) + np.asarray(base.t1.origin)
u = np.zeros(points.shape)
for c, v in (((-20.0, 10.0, 0.0), (8.0, 0.0, 0.0)), ((25.0, -15.0, 5.0), (0.0, -6.0, 4.0))):
    u += np.exp(-np.sum((points - c) ** 2, -1) / (2 * 22.0 ** 2))[..., None] * np.asarray(v)
field = sitk.GetImageFromArray(u, isVector=True)
field.CopyInformation(base.t1.to_sitk())
bend = sitk.DisplacementFieldTransform(field)                      # fixed -> moving, known
warped = medlab.Image.from_sitk(sitk.Resample(sitk.Cast(base.t1.to_sitk(), sitk.sitkFloat32), base.t1.to_sitk(),
                                              bend, sitk.sitkLinear, 0.0))
d_fixed, d_moving = warped, base.t1
d_points = sample_points(base.labels.with_array((base.labels.array >= 4).astype(np.uint8), kind="label"), 500, seed=0)
before = target_registration_error(sitk.Euler3DTransform(), d_points, truth=bend).mean()
deformable = {
    "B-spline": bspline_register(d_fixed, d_moving, **BSPLINE),
    "demons": demons_register(d_fixed, d_moving, iterations=DEMONS_ITERATIONS),
}
print(f"mean landmark error before: {before:.2f} mm")
for name, r in deformable.items():
    after = target_registration_error(r.transform, d_points, truth=bend).mean()
    s = r.report.rows[-1]
    print(f"{name:9s} after: {after:.2f} mm ({100 * (1 - after / before):.0f} % less), folded voxels {s['folded voxels']}, "
          f"Jacobian {s['jacobian min']:.2f} to {s['jacobian max']:.2f}")
"""),
    code("""
truth_jacobian = jacobian_determinant(bend, d_fixed)
pics = [truth_jacobian, deformable["B-spline"].jacobian, deformable["demons"].jacobian]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
for ax, img, title in zip(axes, pics, ["true deformation", "B-spline", "demons"]):
    s = medlab.render.extract_slice(img, "axial", medlab.render.slice_count(img, "axial") // 2)
    im = ax.imshow(s.array, cmap="RdBu_r", vmin=0.7, vmax=1.3); ax.set_title(f"Jacobian: {title}", fontsize=9); ax.axis("off")
fig.colorbar(im, ax=axes, shrink=0.8, label="volume change (1 = kept)"); plt.show()
"""),
    md("""
**Exercise 5.** Demons compare intensities directly. Could demons undo the same bend if the moving
image were the **T2** of the same head (the fixed one staying the bent T1)? Set `my_prediction` to
`True` or `False`; the check runs it.
"""),
    code("""
my_prediction = False

def check_demons(prediction):
    r = demons_register(d_fixed, base.t2, iterations=10)
    after = target_registration_error(r.transform, d_points, truth=bend).mean()
    works = after < 0.5 * before
    if prediction == works:
        print(f"✓ {'it works' if works else 'it fails'}: error {before:.2f} -> {after:.2f} mm. Demons push each voxel "
              "towards equal intensity, which a T2 does not have where the T1 does")
    else:
        print(f"✗ error {before:.2f} -> {after:.2f} mm: {'it does reduce the error' if works else 'it does not help'}")

check_demons(my_prediction)
""", wrong_answers=["True"]),
    md("""
## 7. How to check a registration, and what failure looks like

The metric's value says little by itself. Look at the images:

* a **checkerboard** alternates tiles of the fixed and the registered image: aligned, the edges run on
  across the tiles; misaligned, they break at every tile border;
* a **difference** image is dark where two images of the same contrast agree (across modalities it
  shows contrast, not error);
* a **green-magenta** composite shows the fixed image in green and the moving in magenta: aligned
  structures are grey-white, misaligned ones have green and magenta fringes;
* and when anything is known about the truth (landmarks, a phantom), the **TRE** in mm.

Below: the T1/T2 pair by position, after mean squares (which failed), and after Mattes MI.
"""),
    code("""
checks = {"A: by position": by_position, "B: mean squares": results["mean_squares"].registered,
          "C: Mattes MI": results["mattes_mi"].registered}
fig, axes = plt.subplots(3, 1, figsize=(9, 13))
for ax, (name, img) in zip(axes, checks.items()):
    ax.imshow(slice_figure(fixed, second=img, planes=("axial", "coronal"), size=300)); ax.axis("off")
    ax.set_title(name, fontsize=10)
plt.show()
"""),
    code("""
def green_magenta(image):
    k = medlab.render.slice_count(fixed, "axial") // 2
    f = medlab.render.extract_slice(fixed, "axial", k).array
    m = medlab.render.extract_slice(image, "axial", k).array
    scale = lambda a: np.clip(a / np.percentile(a, 99.5), 0, 1)
    return np.stack([scale(m), scale(f), scale(m)], axis=-1)

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
for ax, (name, img) in zip(axes, checks.items()):
    ax.imshow(green_magenta(img)); ax.set_title(name + " (green: T1, magenta: T2)", fontsize=9); ax.axis("off")
plt.show()
"""),
    md("""
**Exercise 6.** One of A, B, C is a failed registration (B's metric *did* improve: mean squares
found what it was built for, equal intensities, which is the wrong thing here). Which registration
is **good**? Set `my_good` to `"A"`, `"B"` or `"C"`; the check uses the TRE, which you would not have on
a patient: there, the checkerboard is your evidence.
"""),
    code("""
my_good = "C"

def check_good(letter):
    transforms = {"A": Transform(sitk.Euler3DTransform()), "B": results["mean_squares"].transform,
                  "C": results["mattes_mi"].transform}
    errors = {k: tre(t)[0] for k, t in transforms.items()}
    best = min(errors, key=errors.get)
    if letter == best:
        print(f"✓ {letter}: TRE {errors[letter]:.2f} mm; the edges run on across the tiles")
    else:
        print(f"✗ {letter}: TRE {errors.get(letter, float('nan')):.1f} mm; look for edges that break at the tile borders")

check_good(my_good)
""", wrong_answers=["'A'", "'B'"]),
    md("""
### The register widget

Everything above in one widget: pick a stage, press **Start**; the metric curve (one line per level)
and the checkerboard over the fixed image update while it runs, and the notebook stays free.
**Cancel** keeps the best transform so far. The overlay can be a checkerboard (tile size in mm), an
alpha blend, a difference or green-magenta; the two viewers follow each other in mm. With the
*landmark* stage, click a landmark in the fixed image, then the same point in the moving image: the
table gives each pair's error (FRE, and TRE for targets), and the overlay follows the fit. Below it
is driven from code.
"""),
    code("""
w = RegisterWidget(fixed, moving, truth=pair.transform, targets=targets)
w.set(samples=SAMPLES)
w
"""),
    code("""
w.start()           # returns at once; w.cancel() would stop it and keep the best transform so far
w.wait()
for name, value in w.summary_rows:
    print(f"{name:14s} {value}")
"""),
    md("""
The widget's export saves the transform (`w.save_transform("t2_to_t1.h5")`), the registered image
(`w.save_registered("t2_on_t1.nii.gz")`) and the recipe (`w.export("registration.json")`), which
replays the same computation bit for bit on the same or other images.
"""),
    code("""
recipe = w.recipe
print(recipe.to_python())
again = recipe.run(fixed=fixed, moving=moving)
same = again["step1.transform"].fingerprint() == w.transform.fingerprint()
print("✓ the recipe replays the same transform" if same else "✗ the replay differs")
print(f"notebook ran in {time.perf_counter() - started:.0f} s")
"""),
    md("""
## Run it on your own data

```python
import medlab
from medlab.register import linear_register, bspline_register, resample_labels
from medlab.widgets import RegisterWidget

fixed = medlab.load("path/to/ct/")                   # a DICOM folder, NIfTI, NRRD ...
moving = medlab.load("path/to/mr.nii.gz")
w = RegisterWidget(fixed, moving)                     # Start, look at the checkerboard, Cancel, export
w

# or in a script (or over a cohort, from the exported recipe)
rigid, registered, history, report = linear_register(fixed, moving)          # Mattes MI: works CT <-> MR
warp = bspline_register(fixed, moving, rigid, grid_spacing_mm=30.0)          # local refinement, same modality best
labels_on_fixed = resample_labels(medlab.load("mr_labels.nii.gz", kind="label"), rigid, fixed)
rigid.save("mr_to_ct.h5")
```

Check the result with the checkerboard **before** trusting it, and measure TRE on landmarks you did
not use for the fit. With thick slices or a small overlap, start with `initialisation="moments"` or
from a few landmarks (`landmark_register(...).transform` as `initial`).
"""),
]


# ---------------------------------------------------------------- case studies (notebooks/case_studies/)
CASE_BRAIN_TUMOUR = [
    md("""
# Case study: a brain tumour on MRI, from the raw scans to a volume a clinician can check

A patient with a suspected glioma has three MRI sequences: a post-contrast **T1** (shaded by the
receive coil), and a **T2** and a **FLAIR** acquired a few minutes later, after the patient moved
their head. The neuro-oncologist's questions are simple: *where is the tumour, how big is it, and
can I trust the numbers?* This notebook goes from the raw scans to those answers with medlab's stage
widgets and functions, and **measures every step against the ground truth** of the built-in phantom:

1. bias correction (N4) and denoising (non-local means);
2. registration of the T2 and the FLAIR onto the T1, with the target registration error (TRE);
3. the tumour segmented by region growing from one seed, and by the shipped U-Net (Dice, HD95);
4. the tumour volume in mL, and a 3D view;
5. Grad-CAM of a tumour classifier, with sanity checks;
6. the hand-off to the clinician review app, and an HTML report.

**You will learn to**

1. chain preprocessing, registration, segmentation and explanation stages into one story, each step
   with the widget a person would use and the function a script would call;
2. check each step with the number that fits it: white-matter CV, TRE in mm, Dice and HD95, volume in mL;
3. compare a seeded classic method with a network on the same scan, and read the difference;
4. say what an explanation map shows, and test that it depends on the model at all;
5. hand the result to a clinician (a review study, a report) and state what it cannot do.

Everything runs offline on a CPU: about two minutes with `MEDLAB_FAST=1` (a coarser phantom), a few
minutes without. Prerequisites: the tutorials `02` to `05`.
"""),
    code("""
import os
FAST = os.environ.get("MEDLAB_FAST") == "1"             # CI sets it: a coarser phantom, a shorter sanity check
SIZE = (64, 64, 32) if FAST else (128, 128, 64)         # phantom voxels (x, y, z)
SPACING = (3.0, 3.0, 4.0) if FAST else (1.5, 1.5, 2.0)  # mm: the same head either way
SEED = 100                                              # the patient: anatomy, tumour, motion, noise (the shipped
                                                        # U-Net learned from phantoms 0-15: this one it has not seen)
TOLERANCE = 0.3                                         # region growing: FLAIR intensities around the seed's
SANITY_STEPS = 2 if FAST else 4                         # layer groups re-initialised by the sanity check
UNET_OVERLAP = 0.0 if FAST else 0.25                     # U-Net sliding windows: 0 is ~2.5x faster; seams cost Dice
""", tags=["parameters"]),
    code("""
import time
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt
import SimpleITK as sitk
from IPython.display import display
from scipy import ndimage

import medlab
from medlab import metrics
from medlab.deep import deep_segment, pretrained, pretrained_models
from medlab.explain import tumour_classifier
from medlab.outputs import Table, Transform
from medlab.preprocess import nlm_denoise
from medlab.register import linear_register, resample_image, target_registration_error
from medlab.report import Report, slice_figure, surface_picture
from medlab.review import ReviewStudy
from medlab.widgets import ExplainWidget, PreprocessWidget, RegisterWidget, SegmentWidget, View3D

started = time.perf_counter()

def show(pictures, titles, width=4.2):
    # pictures side by side (slice_figure draws planes in mm, radiological orientation, with edge letters)
    fig, axes = plt.subplots(1, len(pictures), figsize=(width * len(pictures), width * 0.75))
    for ax, picture, title in zip(np.atleast_1d(axes), pictures, titles):
        ax.imshow(picture); ax.set_title(title, fontsize=9); ax.axis("off")
    plt.show()

def volume_ml(labels):
    return float(np.count_nonzero(labels.array) * np.prod(labels.spacing) / 1000)
"""),
    md("""
## 1. The scans

The phantom is one head rendered as three MRI sequences, with Rician noise. The T1 carries a smooth
coil field (±30 %); the T2 and the FLAIR were acquired after the head moved by a rigid transform that
the phantom knows. Its label map is the ground truth: the **whole tumour** is the oedema, the
enhancing rim and the necrotic core together.
"""),
    code("""
phantom = medlab.data.brain_mri(seed=SEED, size=SIZE, spacing=SPACING, bias=0.3, noise=0.03)
moved = {c: medlab.data.registration_pair(seed=SEED, size=SIZE, spacing=SPACING, moving_contrast=c, noise=0.03)
         for c in ("t2", "flair")}
t1_raw, t2_raw, flair_raw = phantom.t1, moved["t2"].moving, moved["flair"].moving
assert all(np.array_equal(p.fixed_labels.array, phantom.labels.array) for p in moved.values())   # one head
truth = phantom.labels.with_array(phantom.mask("oedema", "enhancing tumour", "necrotic core").astype(np.uint8),
                                  kind="label", labels={1: "whole tumour"})
print(t1_raw.describe())
print(f"true whole-tumour volume: {volume_ml(truth):.1f} mL")
show([slice_figure(img, planes=("axial", "coronal"), size=220) for img in (t1_raw, t2_raw, flair_raw)],
     ["T1 post-contrast, as acquired (one side brighter)", "T2, as acquired (the head has moved)",
      "FLAIR, as acquired"])
"""),
    md("""
## 2. Bias correction and denoising

The **preprocess widget** on the T1: pick a stage, tune it on the live preview, Apply. Here it is driven
from code exactly as the buttons do: N4 bias correction with its defaults, then non-local means on the
corrected image. The FLAIR gets the same denoising by calling the stage as a function.
"""),
    code("""
prep = PreprocessWidget(t1_raw, stage="n4_bias_correction", height=240)
prep
"""),
    code("""
prep.panel.wait_preview()                  # let the live preview of the slice finish, as a person would
prep.apply(wait=True)                      # N4 (what the Apply button does)
t1_n4 = prep.image
prep.select("nlm_denoise")
prep.apply(wait=True)                      # then non-local means on the corrected T1
t1_clean = prep.image
flair_clean = nlm_denoise(flair_raw)       # the same stage, as a function

wm, brain = phantom.mask("white matter"), phantom.labels.array >= 4
noise_free = phantom.clean["t1"]

def cv(image):                              # coefficient of variation of one tissue: lower is more uniform
    v = image.array[wm].astype(float)
    return v.std() / v.mean()

def scaled(image):                          # N4 leaves the overall scale free: match it before PSNR/SSIM
    return image.with_array(image.array * np.median(noise_free.array[brain] / np.maximum(image.array[brain], 1e-6)))

quality = Table([{"T1": name, "white-matter CV": cv(img), "PSNR": metrics.psnr(scaled(img), noise_free),
                  "SSIM": metrics.ssim(scaled(img), noise_free)}
                 for name, img in [("as acquired", t1_raw), ("after N4", t1_n4), ("after N4 + NLM", t1_clean)]],
                units={"PSNR": "dB"}, title="T1 against the noise-free phantom")
estimated_field = t1_raw.array[brain] / np.maximum(t1_n4.array[brain], 1e-6)      # N4: corrected = raw / field
field_r = np.corrcoef(estimated_field, phantom.bias_field.array[brain])[0, 1]
display(quality.to_pandas().round(3))
print(f"correlation of N4's field with the true coil field, in the brain: {field_r:.2f}")
"""),
    md("""
N4 removes the shading (the white-matter CV drops: one tissue, one intensity again) and its field
follows the true one; non-local means removes noise. Both are measured here only because the phantom
knows its noise-free image: on a patient you would look at the CV of a tissue you can outline.

## 3. Registration: T2 and FLAIR onto the T1

The T1 is the reference (the *fixed* image). The **register widget** aligns the FLAIR to it by Mattes
mutual information, which compares contrasts that differ (the tumour is bright on FLAIR, the rim on T1).
Start runs in the background with a live metric curve and checkerboard; the summary gives the TRE at
the phantom's landmarks (tumour centre, ventricles, points through the brain), since it knows the true
motion. The T2 goes through the same stage as a function.
"""),
    code("""
reg = RegisterWidget(t1_clean, flair_clean, truth=moved["flair"].transform, targets=moved["flair"].landmarks,
                     height=240)
reg
"""),
    code("""
reg.start()                 # Start (returns at once); reg.cancel() would keep the best transform so far
reg.wait()
flair_transform, flair_on_t1 = reg.transform, reg.registered
t2_result = linear_register(t1_clean, t2_raw)
t2_transform, t2_on_t1 = t2_result.transform, t2_result.registered

tre = {}
for name, found, pair in [("FLAIR", flair_transform, moved["flair"]), ("T2", t2_transform, moved["t2"])]:
    before = target_registration_error(Transform(sitk.Euler3DTransform()), pair.landmarks, truth=pair.transform)
    after = target_registration_error(found, pair.landmarks, truth=pair.transform)
    tre[name] = {"scan": name, "TRE before": before.mean(), "TRE after": after.mean(), "TRE max after": after.max(),
                 "TRE at the tumour centre": after[0], "landmarks": len(after)}
tre_table = Table(list(tre.values()), units={k: "mm" for k in ("TRE before", "TRE after", "TRE max after",
                                                               "TRE at the tumour centre")},
                  title="target registration error against the known motion")
display(tre_table.to_pandas().round(2))
print(flair_transform.describe())
show([slice_figure(t1_clean, second=medlab.render.resample_like(flair_clean, t1_clean), planes=("axial", "coronal"),
                   size=240),
      slice_figure(t1_clean, second=flair_on_t1, planes=("axial", "coronal"), size=240)],
     ["T1 / FLAIR checkerboard, by position: edges break", "after registration: edges run on"])
"""),
    md("""
**Exercise 1.** The seed for the segmentation (next section) is placed on the T1's grid, where the
reader looks. On which FLAIR should it be used: the FLAIR as acquired (`"raw"`) or the FLAIR registered
onto the T1 (`"registered"`)? Set `my_flair`; the check measures how far the tumour centre lies from
where the T1 puts it in each.
"""),
    code("""
my_flair = "registered"

def check_flair(answer):
    centre = moved["flair"].landmarks[0]                       # tumour centre, T1 (fixed) coordinates
    off = {"raw": float(target_registration_error(Transform(sitk.Euler3DTransform()), [centre],
                                                   truth=moved["flair"].transform)[0]),
           "registered": float(target_registration_error(flair_transform, [centre], truth=moved["flair"].transform)[0])}
    if answer not in off:
        print(f"✗ {answer!r}: answer 'raw' or 'registered'")
    elif answer == "registered":
        print(f"✓ registered: there the tumour centre is {off['registered']:.2f} mm from where the T1 puts it "
              f"(as acquired: {off['raw']:.1f} mm)")
    else:
        print(f"✗ in the FLAIR as acquired the tumour centre is {off['raw']:.1f} mm away from the T1's: a seed "
              "placed from the T1 would land beside the lesion")

check_flair(my_flair)
""", wrong_answers=["'raw'", "'t1'"]),
    md("""
## 4. The tumour: region growing from one seed, and the U-Net

**Seeded.** In the **segment widget** a reader clicks inside the bright lesion on the registered FLAIR
and moves the tolerance slider; here the click is the deepest point of the phantom's oedema (a stand-in
for a reader's click, taken from the truth), and then holes (the dark necrotic core) are filled slice by
slice. The scores table compares each result with the ground truth.
"""),
    code("""
depth = ndimage.distance_transform_edt(phantom.mask("oedema"), sampling=SPACING[::-1])
seed = t1_clean.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1])    # (x, y, z) mm, LPS
seg = SegmentWidget(flair_on_t1, truth=truth, height=240)
seg.before.position = seed.tolist()
seg
"""),
    code("""
seg.set(seeds=[seed.tolist()], tolerance=TOLERANCE)     # a click, and the slider
seg.apply(wait=True)
seg.select("fill_holes"); seg.set(mode="slices"); seg.apply(wait=True)
seeded = seg.labels
scores = {"seeded region growing": metrics.segmentation_scores(seeded, truth, labels=[1])[0]}
print(f"seed at {np.round(seed, 1)} mm; Dice {scores['seeded region growing']['dice']:.3f}, "
      f"HD95 {scores['seeded region growing']['hausdorff95_mm']:.1f} mm")
"""),
    md("""
**U-Net.** medlab ships a small 3D U-Net trained on phantoms from the same generator
(`python -m medlab.deep.train_models brain_tumour`), with a card saying what it was trained on. It reads
the channels it was trained with, on the T1's grid, and labels the three tumour classes; the whole tumour
is their union. If this installation has no shipped model, the cell says so and the rest runs without it.
"""),
    code("""
cards = pretrained_models()
unet_labels = None
if "brain_tumour" not in cards:
    print("no shipped brain_tumour U-Net in this installation (medlab.deep.pretrained_models() lists "
          f"{sorted(cards) or 'none'}): train it with python -m medlab.deep.train_models brain_tumour")
else:
    unet = pretrained("brain_tumour")
    trained_on = cards["brain_tumour"].get("training", {}).get("phantom_seeds", [])
    assert SEED not in trained_on, f"phantom {SEED} is one the U-Net was trained on: its score would flatter it"
    channels = unet.preprocessing.get("channels") or ["t1"]
    print(f"{cards['brain_tumour'].get('task')}; reads {channels}")
    # fed twice: scans like its training data (as acquired, the others carried onto the T1 grid by the
    # registration), and the N4 + NLM scans the seeded method used
    inputs = {"as acquired": {"t1": t1_raw, "flair": resample_image(flair_raw, flair_transform, t1_raw),
                              "t2": resample_image(t2_raw, t2_transform, t1_raw)},
              "after N4 + NLM": {"t1": t1_clean, "flair": flair_on_t1, "t2": t2_on_t1}}
    for name, on_t1 in inputs.items():
        found, _ = deep_segment(on_t1[channels[0]], unet, *[on_t1[c] for c in channels[1:]], overlap=UNET_OVERLAP)
        whole = found.with_array((found.array > 0).astype(np.uint8), kind="label", labels={1: "whole tumour"})
        scores[f"U-Net, scans {name}"] = metrics.segmentation_scores(whole, truth, labels=[1])[0]
        unet_labels = found if unet_labels is None else unet_labels       # the pictures show the first
    per_class = metrics.segmentation_scores(unet_labels, phantom.labels, labels=sorted(unet.labels))
    display(Table([{k: r[k] for k in ("name", "dice", "hausdorff95_mm", "volume_pred_ml", "volume_truth_ml")}
                   for r in per_class], title="U-Net per tumour class (scans as acquired)").to_pandas().round(3))

comparison = Table([{"method": m, "Dice": s["dice"], "HD95": s["hausdorff95_mm"], "ASSD": s["assd_mm"],
                     "volume": s["volume_pred_ml"], "true volume": s["volume_truth_ml"]} for m, s in scores.items()],
                   units={"HD95": "mm", "ASSD": "mm", "volume": "mL", "true volume": "mL"},
                   title="whole tumour against the ground truth")
display(comparison.to_pandas().round(3))
"""),
    code("""
pictures = [slice_figure(flair_on_t1, labels=truth, planes=("axial",), size=260, at=seed),
            slice_figure(flair_on_t1, labels=seeded, planes=("axial",), size=260, at=seed)]
titles = ["ground truth", "seeded region growing"]
if unet_labels is not None:
    pictures.append(slice_figure(flair_on_t1, labels=unet_labels, planes=("axial",), size=260, at=seed))
    titles.append("U-Net (scans as acquired): oedema, enhancing rim, necrotic core")
show(pictures, titles, width=3.6)
"""),
    md("""
Read the table before the pictures. Dice counts overlapping voxels; HD95 is how far (in mm) the worst
5 % of the border is from the true border. The seeded method depends on one click and one tolerance
chosen by a person (here tuned on this very scan, so its score is optimistic); the U-Net needs no click
but only knows scans like its training phantoms. Compare its two rows: the same network and the same
patient, fed once scans like those it learned from and once the preprocessed ones. Preprocessing that
helps a person or a classic method changes intensities the network learned as they were (N4 leaves
the overall scale free, section 2): feed a network what it was trained on, and say so in the methods.
Even "as acquired" is not quite its training data: its card (`pretrained_models()["brain_tumour"]`)
says it learned from phantoms with a ±10 % coil field, and this T1 has ±30 %; where the network marks
tissue far from the tumour, HD95 jumps to tens of mm while Dice only drops.

## 5. The tumour volume, in mL, and a 3D view

A volume is a count of voxels times the volume of one voxel. The surface mesh gives a second estimate
(the volume it encloses), and the 3D view shows where the tumour sits; it is linked to the segment
widget's viewer (move one, the other follows).
"""),
    md("""
**Exercise 2.** How many mL is the seeded tumour? Compute it from the number of labelled voxels
`n_voxels` and the voxel size `seeded.spacing` (mm), and put it in `my_volume_ml`.
"""),
    code("""
n_voxels = int(np.count_nonzero(seeded.array))
my_volume_ml = n_voxels * np.prod(seeded.spacing) / 1000

def check_volume(value):
    right = n_voxels * float(np.prod(seeded.spacing)) / 1000
    if abs(value - right) <= 1e-6 * max(1.0, right):
        print(f"✓ {right:.2f} mL ({n_voxels} voxels of {np.prod(seeded.spacing):g} mm³; the truth is "
              f"{volume_ml(truth):.2f} mL)")
    elif abs(value - n_voxels) < 0.5:
        print(f"✗ {value:g} is a number of voxels: multiply by one voxel's volume (mm³) to get a volume")
    elif abs(value - right * 1000) <= 1e-3 * right * 1000:
        print(f"✗ {value:g} is in mm³; 1 mL is 1000 mm³")
    else:
        print(f"✗ {value:g} mL: voxels × spacing x × y × z (mm³) / 1000")

check_volume(my_volume_ml)
""", wrong_answers=["n_voxels", "n_voxels * np.prod(seeded.spacing)", "n_voxels / 1000"]),
    code("""
surface = medlab.mesh.label_surface(seeded, 1, reduction=0.5)
print(f"seeded tumour: {volume_ml(seeded):.1f} mL by voxel count, {surface.volume_ml:.1f} mL inside its surface "
      f"({'watertight' if surface.is_watertight else 'not watertight: approximate'}); truth {volume_ml(truth):.1f} mL")
view = View3D(flair_on_t1, seeded, height=320)
unlink = view.link(seg.before)
view
"""),
    md("""
## 6. Grad-CAM of a tumour classifier, with sanity checks

medlab ships a small 3D classifier (tumour / no tumour) trained on FLAIR phantoms as acquired (noisy,
not denoised), with its held-out accuracy on its card. The **explain widget** shows where its last
convolutional features raised the score for "tumour" (Grad-CAM), with the true tumour outlined and
localisation numbers (share of the map's energy inside the tumour, whether its peak falls inside).

A map can look convincing and still say nothing about the model: the **sanity check** (Adebayo et al.
2018) re-initialises the network's layers from the output back and recomputes the map. If the map
barely changes, it shows the image, not what the model learned.
"""),
    code("""
try:
    classifier = tumour_classifier()
except medlab.errors.MedlabError as exc:
    classifier = None
    print(f"no shipped tumour classifier here ({exc}): sections 6 and 7 are skipped")
if classifier is not None:
    try:
        shuffled = tumour_classifier(random_labels=True)     # its twin trained on shuffled labels (optional)
    except medlab.errors.MedlabError:
        shuffled = None
    # what the classifier was trained on: the FLAIR as acquired, carried onto the T1 grid by the registration
    flair_for_model = resample_image(flair_raw, flair_transform, t1_clean)
    print(classifier.describe())
    explain = ExplainWidget(flair_for_model, classifier, truth, random_label_model=shuffled, height=240)
    display(explain)
"""),
    code("""
saliency = sanity = None
if classifier is not None:
    explain.apply(wait=True)                                      # Apply: Grad-CAM for "tumour"
    saliency = explain.maps[list(explain.maps)[-1]]
    display(explain.numbers_table().to_pandas())
    sanity = explain.run_sanity_check(wait=True, steps=SANITY_STEPS)
    for step, s in zip(sanity.steps, sanity.scores):
        print(f"randomised {step}: Spearman {s['spearman']:.2f}, SSIM {s['ssim']:.2f} with the original map")
    print("sanity check:", "FLAGGED: the map barely depends on the weights" if sanity.flagged
          else "passed: the map changes when the model is randomised")
    show([slice_figure(flair_for_model, heat=saliency, labels=truth, planes=("axial", "coronal"), size=240),
          slice_figure(flair_for_model, heat=sanity.randomised[-1], labels=truth, planes=("axial", "coronal"), size=240)],
         ["Grad-CAM for 'tumour' (true tumour outlined)", "the same after every layer was re-initialised"])
"""),
    md("""
## 7. Hand-off to the clinician review app

A clinician should judge the map without code and without knowing which method made it. The explain
widget's hand-off writes a **review study**: the scan and the map as NIfTI, and a study file (maps
shown as "Map A", "Map B", prediction hidden). The review app serves it in the browser on this machine
only; the clinician rates each map (relevant, partly relevant, misleading...), with a confidence and a
click where they would look, and every verdict is kept. Start it in a terminal, not in the notebook:
"""),
    code("""
study_file = Path("review_study") / "study.json"
study = None
if classifier is None:
    print("(no classifier, no map: nothing to review)")
elif study_file.exists():
    study = ReviewStudy.load(study_file)
    print(f"(the review study from an earlier run is kept: delete the folder {study_file.parent} to make it again)")
else:
    study = explain.add_to_review(study_file.parent, truth="tumour")
if study is not None:
    for item in study.items("Dr Grey"):
        print(f"{item.case_id}: {item.method} is shown as {item.shown_as!r}")
    print("\\nIn a terminal (the app listens on 127.0.0.1 only and prints its address):")
    print(f'    medlab review {study_file} --reviewer "Dr Grey"')
    print(f"and afterwards: medlab review {study_file} --export review_results/")
"""),
    md("""
## 8. The report

`medlab.report.Report` gathers the figures, tables, measured numbers and recipes into **one HTML file**
that opens offline (pictures embedded), for the clinical team or the lab notebook.
"""),
    code("""
LIMITATIONS = (
    "This is a phantom, not a patient: tissues are smooth ellipsoids, the noise is ideal Rician, the motion is "
    "rigid and known, and the tumour is the brightest tissue on FLAIR, which flatters region growing (on the real "
    "brain1 MRI of 03_segmentation_classic the same method leaks). The seed and the tolerance were chosen with "
    "the truth at hand. The shipped U-Net and classifier were trained on phantoms from the same generator: they are "
    "teaching models, not diagnostic ones, and their scores here say nothing about real scans. Grad-CAM shows where "
    "the last convolutional features raised the score, no sharper than what each of their voxels sees (21 × 21 × 28 "
    "mm of the scan for this classifier): it is not a segmentation, and "
    "the sanity check only says whether it depends on the trained weights. No number here is a clinical measurement.")

report = Report("Brain tumour MRI: case study", subtitle=f"medlab {medlab.__version__}, phantom seed {SEED}, "
                f"{' × '.join(map(str, SIZE))} voxels of {' × '.join(f'{s:g}' for s in SPACING)} mm")
report.add_section("Scans")
report.add_image(t1_raw, caption="T1 post-contrast as acquired (coil shading)")
report.add_image(flair_raw, caption="FLAIR as acquired (the head has moved)")
report.add_number("true whole-tumour volume", volume_ml(truth), unit="mL", note="phantom ground truth")
report.add_section("Bias correction and denoising")
report.add_table(quality)
report.add_number("correlation of the N4 field with the true field", field_r)
report.add_section("Registration")
report.add_image(t1_clean, second=flair_on_t1, caption="T1 / registered FLAIR checkerboard")
report.add_table(tre_table)
for name, row in tre.items():
    report.add_number(f"{name} to T1: mean TRE", row["TRE after"], unit="mm")
report.add_section("Segmentation and volume")
report.add_image(flair_on_t1, labels=seeded, caption="seeded region growing on the registered FLAIR")
if unet_labels is not None:
    report.add_image(flair_on_t1, labels=unet_labels, outline=False, caption="shipped U-Net: the three tumour classes")
report.add_table(comparison)
for method, s in scores.items():
    report.add_number(f"{method}: Dice", s["dice"]).add_number(f"{method}: HD95", s["hausdorff95_mm"], unit="mm")
report.add_number("tumour volume (seeded)", volume_ml(seeded), unit="mL")
report.add_image(surface_picture([surface], title="seeded tumour surface"), caption="3D (mm, LPS)")
if saliency is not None:
    report.add_section("Grad-CAM and sanity check")
    report.add_image(flair_for_model, heat=saliency, labels=truth, caption="Grad-CAM for 'tumour', true tumour outlined")
    report.add_table(explain.numbers_table(), caption="Grad-CAM: target, layer and localisation")
    report.add_number("sanity check passed", not sanity.flagged)
report.add_section("Hand-off")
report.add_text(f"Review study: {study_file} (medlab review {study_file} --reviewer NAME)." if study is not None
                else "No review study (no classifier in this installation).")
report.add_section("Limitations")
report.add_text(LIMITATIONS)
report.add_section("Recipes")
report.add_recipe(prep.recipe, caption="preprocessing (the preprocess widget)")
report.add_recipe(seg.recipe, caption="segmentation (the segment widget)")
path = report.save("brain_tumour_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(report.numbers.rows)} numbers)")
"""),
    md("""
## Limitations, honestly

* **A phantom is not a patient.** Smooth tissues, ideal noise, a rigid and known motion, and a tumour
  brighter than everything else on FLAIR: every method looks better here than on real scans.
* **The seed and the tolerance came from the truth.** A reader's click and slider would vary; the
  seeded score is optimistic (it was tuned on this very scan).
* **The shipped models are teaching models**, trained on phantoms from the same generator. Their scores on a
  phantom say nothing about a patient; `04_segmentation_unet` shows them failing on a real MRI.
* **Grad-CAM is not a segmentation.** It shows where one layer's features raised one score, no sharper than
  what each of that layer's voxels sees (21 × 21 × 28 mm for this classifier; far more for a pooling network).
  The sanity check tells whether the map depends on the weights at all, not whether a clinician should
  trust it: that is what the review study is for.
* **TRE is measured at the phantom's landmarks** because the true motion is known; on a patient you only
  have landmarks you click (see `05_registration`), and the checkerboard.

## Run it on your own data

```python
import numpy as np
import medlab
from medlab.widgets import PreprocessWidget, RegisterWidget, SegmentWidget

t1 = medlab.load("patient/t1_post/")          # DICOM folders or NIfTI files
flair = medlab.load("patient/flair.nii.gz")
prep = PreprocessWidget(t1, stage="n4_bias_correction"); prep         # Apply N4, then non-local means
reg = RegisterWidget(prep.image, flair); reg                          # Start; check the checkerboard
seg = SegmentWidget(reg.registered); seg                              # click inside the lesion, Apply
print(np.count_nonzero(seg.labels.array) * np.prod(seg.labels.spacing) / 1000, "mL")   # the volume
```

Without a ground truth, replace every score above by what you can check: the checkerboard and a few
landmarks you click for the registration, a second reader's outline for the segmentation, and the
review app for the maps. `medlab demo` runs this case study headless and writes the same kind of report.
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST})")
"""),
]


CASE_CHEST_CT = [
    md("""
# Case study: screening a chest CT for lung nodules

Lung cancer screening with low-dose CT asks one question per scan: *are there nodules, and how big
are they?* The answer drives the follow-up (Fleischner and Lung-RADS rules are written in millimetres
and, more and more, in mm³), so a screening tool must find the nodules **and** measure them. This
notebook follows a scan from the scanner's DICOM files to a structured list of findings:

1. the scan arrives as a DICOM series; CT windowing presets show lung, mediastinum and bone;
2. a lung mask: a HU threshold, then post-processing (the two largest pieces, holes filled);
3. nodule candidates, by a classic detector (threshold inside the lungs, connected pieces, a size and
   shape filter) and by the shipped U-Net, each with its volume (mL) and diameter (mm), and detection
   against the phantom's known nodules;
4. the findings written as a **DICOM SEG** on the series they came from, for a PACS;
5. an explanation of the network's call on one nodule (Grad-CAM with a region target), with a sanity check;
6. the lung-mask recipe run unchanged on more patients (`medlab.cohort`);
7. a report.

**You will learn to**

1. choose a CT window for a task, and turn a HU range into a clean organ mask;
2. build a candidate detector from thresholds and connected components, and measure it as screening
   is measured: sensitivity and false positives per scan;
3. measure a nodule's volume and diameter in physical units, and see how the voxel size limits them;
4. hand findings to clinical systems as DICOM SEG;
5. explain a segmentation network's output for one finding, and check that the explanation depends
   on the model.

The phantom (`medlab.data.chest_ct`) knows every nodule's kind, centre and radius. Everything runs
offline on a CPU, in about two minutes with `MEDLAB_FAST=1`. Prerequisites: `02`, `03`, `04`.
"""),
    code("""
import os
FAST = os.environ.get("MEDLAB_FAST") == "1"              # CI sets it: a coarser scan, a shorter sanity check
SIZE = (128, 128, 40) if FAST else (192, 192, 64)        # voxels (x, y, z)
SPACING = (1.5, 1.5, 4.0) if FAST else (1.0, 1.0, 2.5)   # mm: the same chest either way
SEED = 100                                               # the patient (the shipped U-Net learned from phantoms 0-15)
CANDIDATE_HU = -700                                      # nodules are denser than this, aerated lung is not
SANITY_STEPS = 2 if FAST else 4
COHORT_SEEDS = [101, 102] if FAST else [101, 102, 103, 104]   # more patients for the lung-mask recipe (section 8)
COHORT_WORKERS = 1 if FAST else None                     # processes for the cohort (None: one per core)
UNET_OVERLAP = 0.0 if FAST else 0.25                     # U-Net sliding windows: 0 is ~2.5x faster; seams cost Dice
""", tags=["parameters"]),
    code("""
import time
from pathlib import Path

import numpy as np
import matplotlib.pyplot as plt
import SimpleITK as sitk
from IPython.display import display
from pydicom.uid import generate_uid
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

import medlab
from medlab import metrics, segment
from medlab.cohort import run_cohort
from medlab.deep import deep_segment, pretrained, pretrained_models
from medlab.explain import grad_cam
from medlab.outputs import Table
from medlab.preprocess import window_level
from medlab.report import Report, slice_figure
from medlab.widgets import ExplainWidget, SegmentWidget, View3D, Viewer

started = time.perf_counter()
out = Path("chest_ct_outputs"); out.mkdir(exist_ok=True)
"""),
    md("""
## 1. From the scanner: a DICOM series

A scanner sends one DICOM file per slice. The phantom is not DICOM, so we play the scanner: the cell
below writes it as a CT series (SimpleITK, one file per slice with the position and orientation tags a
viewer stacks them by; medlab reads DICOM but does not write image series). From then on the notebook
only uses what `medlab.load` reads back from the folder, as it would with a real scan.
"""),
    code("""
def write_ct_series(image, folder):
    # the scanner's part: one CT file per slice, with the tags that place it in space (position, orientation, UIDs)
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.Cast(image.to_sitk(), sitk.sitkInt16)
    d = volume.GetDirection()
    shared = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": generate_uid(),
              "0020|000e": generate_uid(), "0020|0052": generate_uid(), "0008|103e": "low-dose chest (phantom)",
              "0010|0010": "Phantom^Chest", "0010|0020": "PHANTOM-CHEST", "0028|1052": "0", "0028|1053": "1",
              "0018|0050": f"{volume.GetSpacing()[2]:.4f}",
              "0020|0037": "\\\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
    writer = sitk.ImageFileWriter(); writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        plane = volume[:, :, k]
        tags = {**shared, "0008|0018": generate_uid(), "0020|0013": str(k + 1),
                "0020|0032": "\\\\".join(f"{v:.4f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, k)))}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm")); writer.Execute(plane)
    return folder

phantom = medlab.data.chest_ct(seed=SEED, size=SIZE, spacing=SPACING)
series = write_ct_series(phantom.ct, out / "chest_ct_dicom")
ct = medlab.load(series)                                   # what the rest of the notebook works on
print(ct.describe())
print("same voxels and geometry as the phantom:", np.array_equal(ct.array, phantom.ct.array) and ct.same_grid(phantom.ct))
nodules = phantom.info["nodules"]                          # the truth: kind, centre (mm, LPS), radius (mm)
for k, n in enumerate(nodules, 1):
    print(f"true nodule {k}: {n['kind']:12s} diameter {2 * n['radius_mm']:4.1f} mm, "
          f"volume {4 / 3 * np.pi * n['radius_mm'] ** 3 / 1000:.3f} mL at {np.round(n['centre_mm'], 1)} mm")
"""),
    md("""
## 2. Windowing

CT values are Hounsfield units from −1000 (air) to over +1000 (bone); a screen shows 256 grey levels.
A **window** (width) and **level** (centre) choose which HU range gets them: the lung window shows
aerated lung and nodules, the mediastinal window soft tissue and vessels, the bone window bone. In the
viewer, drag with the right mouse button or type the numbers; here the lung preset is set from code.
"""),
    code("""
z_nodule = int(round(ct.physical_to_index(nodules[0]["centre_mm"])[2]))
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, preset in zip(axes, ["lung", "mediastinum", "bone"]):
    w, l = medlab.render.CT_PRESETS[preset]
    ax.imshow(window_level(ct, preset=preset).array[z_nodule], cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{preset}: W {w:g}, L {l:g} HU", fontsize=9); ax.axis("off")
plt.show()
viewer = Viewer(ct, height=300)
viewer.window, viewer.level = medlab.render.CT_PRESETS["lung"]
viewer.position = list(nodules[0]["centre_mm"])
viewer
"""),
    md("""
**Exercise 1.** The candidate detector below keeps voxels denser than `CANDIDATE_HU` inside the lungs.
Aerated lung is about −850 HU, a ground-glass nodule about −600 HU, a solid one about +30 HU. Which
threshold finds **both** kinds: −900, −700 or −400 HU? Set `my_threshold`; the check counts the voxels
of each kind of nodule that pass, and the lung voxels that would pass with them.
"""),
    code("""
my_threshold = -700

def check_threshold(hu):
    solid, ggo, lung = (phantom.mask(n) for n in ("solid nodule", "ground-glass nodule", "lung"))
    share = lambda mask: float(np.mean(ct.array[mask] > hu))
    s, g, l = share(solid), share(ggo), share(lung)
    facts = f"solid {s:.0%}, ground-glass {g:.0%}, aerated lung {l:.1%} of voxels pass"
    if s > 0.9 and g > 0.5 and l < 0.05:
        print(f"✓ {hu} HU: {facts}")
    elif l >= 0.05:
        print(f"✗ {hu} HU lets aerated lung through ({facts}): every candidate would merge with the lung")
    else:
        print(f"✗ {hu} HU misses the ground-glass nodules ({facts}): they are only a little denser than lung")

check_threshold(my_threshold)
""", wrong_answers=["-900", "-400", "0"]),
    md("""
## 3. The lung mask

`ct_threshold(preset="lung")` keeps −950 to −400 HU. That includes bits of air outside the body and in
the airways, and leaves holes where vessels and nodules are. In the **segment widget**: the threshold,
then `connected_components` with a minimum volume (only the two lungs are that large), then `fill_holes`
slice by slice (vessels and nodules inside the lungs belong to the lung field). The truth here is the
phantom's lung, nodules and the vessels they enclose.
"""),
    code("""
lung_values = [phantom.label_value(n) for n in ("lung", "solid nodule", "ground-glass nodule")]
lung_truth_array = np.stack([ndimage.binary_fill_holes(s) for s in np.isin(phantom.labels.array, lung_values)])
lung_truth = ct.with_array(lung_truth_array.astype(np.uint8), kind="label", labels={1: "lung field"})
lungs = SegmentWidget(ct, truth=lung_truth, stage="ct_threshold", height=260)
lungs.before.window, lungs.before.level = medlab.render.CT_PRESETS["lung"]
lungs
"""),
    code("""
lungs.set(preset="lung"); lungs.apply(wait=True)
scores_lung = {"HU threshold": lungs.scores[0]["dice"]}
lungs.select("connected_components"); lungs.set(min_volume=50_000.0); lungs.apply(wait=True)   # mm³: 50 mL
scores_lung["two largest pieces"] = lungs.scores[0]["dice"]
lungs.select("fill_holes"); lungs.set(mode="slices"); lungs.apply(wait=True)
scores_lung["holes filled"] = lungs.scores[0]["dice"]
lung_field = lungs.labels
for step, d in scores_lung.items():
    print(f"{step:20s} Dice with the lung field {d:.3f}")
print(f"lung volume {np.count_nonzero(lung_field.array) * np.prod(ct.spacing) / 1e6:.2f} L "
      f"(truth {lung_truth_array.sum() * np.prod(ct.spacing) / 1e6:.2f} L)")
"""),
    md("""
## 4. Nodule candidates, classic

A classic detector in four lines of medlab: voxels above `CANDIDATE_HU` inside the lung field, an
opening of 1.5 mm (cuts the thinnest vessels), connected pieces of at least 10 mm³, then a **size and
shape filter**: keep pieces whose equivalent diameter is 3–30 mm and that are round (longest axis at most
1.8 times the equivalent diameter: vessels are tubes). Each piece gets its volume and two diameters:

* the **equivalent-sphere diameter** $d = (6V/\\pi)^{1/3}$, from the volume;
* the **longest axis**: the largest distance between two voxel centres of the piece (3D).

A candidate is a **hit** when its centre lies within the radius of a true nodule plus 2 mm, or the true
nodule's centre lies inside it.
"""),
    code("""
def longest_axis_mm(mask, image):
    idx = np.argwhere(mask)[:, ::-1].astype(float)               # voxel indices (x, y, z)
    pts = idx @ (image.direction * np.asarray(image.spacing)).T + np.asarray(image.origin)   # mm, LPS
    if len(pts) < 2:
        return 0.0
    try:
        pts = pts[ConvexHull(pts).vertices]                     # the farthest pair lies on the hull
    except QhullError:                                          # flat pieces (one slice): use every point
        pass
    return float(pdist(pts).max())

def findings(pieces, table, name):
    # one row per piece: size, shape, and which true nodule it hits (its centre within the radius + 2 mm,
    # or the nodule's centre inside the piece)
    rows = []
    for r in table.rows:
        mask = pieces.array == r["component"]
        centre = np.array([r["centroid_x"], r["centroid_y"], r["centroid_z"]])
        d_eq = (6 * r["volume"] * 1000 / np.pi) ** (1 / 3)
        axis = longest_axis_mm(mask, pieces)
        hit = next((k for k, n in enumerate(nodules, 1) if np.linalg.norm(centre - n["centre_mm"]) <= n["radius_mm"] + 2
                    or mask[tuple(np.rint(pieces.physical_to_index(n["centre_mm"])).astype(int)[::-1])]), None)
        rows.append({"detector": name, "piece": r["component"], "volume": r["volume"], "equivalent diameter": d_eq,
                     "longest axis": axis, "elongation": axis / max(d_eq, 1e-6), "hits nodule": hit,
                     "x": centre[0], "y": centre[1], "z": centre[2]})
    for r in rows:
        r["kept"] = r in kept(rows)
    return rows

def kept(rows, max_elongation=1.8):
    # the size and shape filter: 3-30 mm, and round (vessels are tubes)
    return [r for r in rows if 3 <= r["equivalent diameter"] <= 30 and r["elongation"] <= max_elongation]

def detection(rows, max_elongation=1.8):
    chosen = kept(rows, max_elongation)
    found = {r["hits nodule"] for r in chosen if r["hits nodule"]}
    return {"true nodules": len(nodules), "found": len(found), "sensitivity": len(found) / len(nodules),
            "false positives": sum(r["hits nodule"] is None for r in chosen), "candidates kept": len(chosen)}

dense = segment.threshold(ct, mode="above", lower=CANDIDATE_HU)
in_lungs = dense.with_array(((dense.array > 0) & (lung_field.array > 0)).astype(np.uint8))
opened = segment.opening(in_lungs, radius=1.5)
classic_pieces, classic_table = segment.connected_components(opened, min_volume=10.0)
classic_rows = findings(classic_pieces, classic_table, "classic")
display(Table(classic_rows, units={"volume": "mL", "equivalent diameter": "mm", "longest axis": "mm"}).to_pandas().round(3))
print(detection(classic_rows))
"""),
    md("""
**Exercise 2.** A finding has a volume of 0.268 mL. What is its equivalent-sphere diameter in mm? Put
it in `my_diameter` (the formula is above; mind the units: 1 mL = 1000 mm³).
"""),
    code("""
my_diameter = (6 * 0.268 * 1000 / np.pi) ** (1 / 3)

def check_diameter(d):
    right = (6 * 268.0 / np.pi) ** (1 / 3)
    if abs(d - right) < 0.05:
        print(f"✓ {right:.1f} mm: a sphere of 0.268 mL; Lung-RADS would call a solid nodule of this size 'probably benign' "
              "below 6 mm and ask for follow-up above")
    elif abs(d - (6 * 0.268 / np.pi) ** (1 / 3)) < 0.05:
        print(f"✗ {d:.2f}: that treats mL as mm³; multiply by 1000 first")
    elif abs(d - right / 2) < 0.05:
        print(f"✗ {d:.2f} mm is the radius; the diameter is twice that")
    else:
        print(f"✗ {d:.2f} mm: d = (6 V / pi) ** (1/3) with V in mm³")

check_diameter(my_diameter)
""", wrong_answers=["(6 * 0.268 / np.pi) ** (1 / 3)", "(6 * 268 / np.pi) ** (1 / 3) / 2", "0.268"]),
    md("""
## 5. Nodule candidates, U-Net

medlab ships a small 3D U-Net for lung nodules on CT (trained on chest phantoms from the same generator
by `python -m medlab.deep.train_models lung_nodules`; its card gives its held-out Dice). It labels solid
and ground-glass nodules voxel by voxel, on the scan's own grid; its pieces go through the same
measurement and the same filter, so the two detectors are compared on equal terms. Without the shipped
model this section says so and the rest runs.
"""),
    code("""
cards = pretrained_models()
unet = unet_labels = None
unet_rows = []
if "lung_nodules" not in cards:
    print("no shipped lung_nodules U-Net in this installation (medlab.deep.pretrained_models() lists "
          f"{sorted(cards) or 'none'}): train it with python -m medlab.deep.train_models lung_nodules")
else:
    unet = pretrained("lung_nodules")
    trained_on = cards["lung_nodules"].get("training", {}).get("phantom_seeds", [])
    assert SEED not in trained_on, f"phantom {SEED} is one the U-Net was trained on: its score would flatter it"
    print(f"{cards['lung_nodules'].get('task')}; held-out Dice {cards['lung_nodules'].get('test_phantoms', {}).get('mean')}")
    unet_labels, _ = deep_segment(ct, unet, overlap=UNET_OVERLAP)
    found = unet_labels.with_array((unet_labels.array > 0).astype(np.uint8), kind="label", labels={1: "nodule"})
    unet_pieces, unet_table = segment.connected_components(found, min_volume=10.0)
    unet_rows = findings(unet_pieces, unet_table, "U-Net")
    nodule_truth = phantom.labels.with_array(np.isin(phantom.labels.array, lung_values[1:]).astype(np.uint8), kind="label")
    print(f"voxel Dice of all nodules together: {metrics.dice(found.array > 0, nodule_truth.array > 0):.3f}")
    display(Table(unet_rows, units={"volume": "mL", "equivalent diameter": "mm", "longest axis": "mm"}).to_pandas().round(3))

summary = [{"detector": "classic", **detection(classic_rows)}]
if unet is not None:
    summary.append({"detector": "U-Net", **detection(unet_rows)})
summary_table = Table(summary, title="detection against the phantom's nodules (one scan)")
display(summary_table.to_pandas().round(2))
"""),
    md("""
**Size against the truth.** For every true nodule, the best measurement each detector made of it
(kept or not): a diameter is only as good as the voxels it is counted in. With 4 mm slices a 6 mm
nodule spans two slices, and partial volume decides which voxels pass the threshold.
"""),
    code("""
size_rows = []
for k, n in enumerate(nodules, 1):
    row = {"nodule": k, "kind": n["kind"], "true diameter": 2 * n["radius_mm"],
           "true volume": 4 / 3 * np.pi * n["radius_mm"] ** 3 / 1000}
    for name, rows in (("classic", classic_rows), ("U-Net", unet_rows)):
        hits = [r for r in rows if r["hits nodule"] == k]
        best = max(hits, key=lambda r: r["volume"]) if hits else None
        row[f"{name}: eq. diameter"] = best["equivalent diameter"] if best else None
        row[f"{name}: volume"] = best["volume"] if best else None
    size_rows.append(row)
size_table = Table(size_rows, units={"true diameter": "mm", "true volume": "mL", "classic: eq. diameter": "mm",
                                     "classic: volume": "mL", "U-Net: eq. diameter": "mm", "U-Net: volume": "mL"},
                   title="nodule size: truth against each detector")
display(size_table.to_pandas().round(3))
"""),
    md("""
**The operating point.** The shape filter trades false positives for sensitivity. Moving its limit
traces the two against each other: this is how detectors are compared (a FROC curve: sensitivity against
false positives per scan, over hundreds of scans; here over one).
"""),
    code("""
limits = [1.2, 1.5, 1.8, 2.2, 3.0, np.inf]
plt.figure(figsize=(5, 3.2))
for name, rows in (("classic", classic_rows), ("U-Net", unet_rows)):
    if rows:
        points = [detection(rows, limit) for limit in limits]
        plt.plot([p["false positives"] for p in points], [p["sensitivity"] for p in points], "o-", label=name)
plt.xlabel("false positives on this scan"); plt.ylabel("sensitivity"); plt.ylim(-0.05, 1.05)
plt.title("shape filter from strict (left) to none (right)", fontsize=9); plt.legend(); plt.show()
"""),
    md("""
## 6. The findings as DICOM SEG

A **DICOM SEG** stores a segmentation as DICOM that refers to the exact slices of its source series, so
a PACS or OHIF shows it over the original images. Each kept candidate becomes one segment named with
its size. (Threshold detectors are "automatic"; the SEG records the algorithm.) The findings come from
the detector that did better on this scan, judged against the phantom's truth: on patients there is no
truth at hand, and the choice is made once, on a validation set.
"""),
    code("""
# the SEG carries the findings of the detector that did better on this scan: more nodules found, then fewer false marks
best = max(summary, key=lambda r: (r["sensitivity"], -r["false positives"]))
detector, rows, pieces = ((best["detector"], unet_rows, unet_pieces) if best["detector"] == "U-Net"
                          else ("classic", classic_rows, classic_pieces))
print(f"findings of the {detector} detector: {best['found']} of {best['true nodules']} nodules found, "
      f"{best['false positives']} false positives on this scan")
kept = [r for r in rows if r["kept"]]
finding_array = np.zeros(ct.shape, np.uint8)
names = {}
for k, r in enumerate(kept, 1):
    finding_array[pieces.array == r["piece"]] = k
    names[k] = f"nodule candidate {k}: {r['equivalent diameter']:.1f} mm, {r['volume'] * 1000:.0f} mm3"
finding_labels = ct.with_array(finding_array, kind="label", labels=names)
family = "ArtificialIntelligence" if detector == "U-Net" else "HistogramAnalysis"     # DICOM CID 7162
seg_path = segment.write_dicom_seg(finding_labels, series, out / "nodule_findings_seg.dcm", overwrite=True,
                                   series_description=f"nodule candidates ({detector})", algorithm_type="automatic",
                                   algorithm_family=family)
back = medlab.load(seg_path)                              # a SEG loads as a label map with its segment names
on_ct = medlab.preprocess.resample_to(back, reference=ct, interpolator="nearest")
print(f"{seg_path}: {len(kept)} segments from the {detector} detector")
for value, label in sorted(back.labels.items()):
    print(f"  segment {value}: {label.name}")
print("✓ the SEG overlays the series voxel for voxel" if np.array_equal(on_ct.array > 0, finding_array > 0)
      else "✗ the SEG does not overlay the series")
"""),
    code("""
view = View3D(ct, finding_labels, height=320)
view.position = list(nodules[0]["centre_mm"])
view
"""),
    md("""
## 7. Why did the network call this a nodule?

The U-Net is a classifier for every voxel. To explain one finding, the **explain widget** takes a
**region target**: the score explained is the network's "nodule" output summed over that finding's
voxels, and Grad-CAM shows which voxels of the scan raised it. A good explanation of a nodule should lie
on the nodule (and not on, say, the chest wall); the **sanity check** re-initialises the network's
layers and recomputes the map: if the map does not change, it was not about the model.
"""),
    code("""
explain = saliency = sanity = None
if unet is None:
    print("(no shipped U-Net: nothing to explain here; 01_brain_tumour_mri explains a classifier)")
else:
    hits = [r for r in unet_rows if r["kept"] and r["hits nodule"]]
    if not hits:
        print("the U-Net found no true nodule on this scan: nothing to explain")
    else:
        target = max(hits, key=lambda r: r["volume"])
        true_kind = nodules[target["hits nodule"] - 1]["kind"]
        region = ct.with_array((unet_pieces.array == target["piece"]).astype(np.uint8), kind="label",
                               labels={1: f"finding: {true_kind} nodule"})
        print(f"explaining the finding at {np.round([target['x'], target['y'], target['z']], 1)} mm "
              f"({target['equivalent diameter']:.1f} mm; truth: a {true_kind} nodule)")
        try:                                   # the stage as a function first: can it read this network?
            grad_cam(ct, unet, region)
        except medlab.errors.MedlabError as exc:
            print(f"Grad-CAM cannot explain this checkpoint in this version of medlab, so this section stops here. "
                  f"The error, as medlab gives it: {exc}")
        else:
            explain = ExplainWidget(ct, unet, region, height=260)
            explain.before.window, explain.before.level = medlab.render.CT_PRESETS["lung"]
            explain.before.position = [float(target["x"]), float(target["y"]), float(target["z"])]   # on the finding
            display(explain)
"""),
    code("""
if explain is not None:
    explain.apply(wait=True)
    saliency = explain.maps[list(explain.maps)[-1]]
    display(explain.numbers_table().to_pandas())
    sanity = explain.run_sanity_check(wait=True, steps=SANITY_STEPS)
    for step, s in zip(sanity.steps, sanity.scores):
        print(f"randomised {step}: Spearman {s['spearman']:.2f} with the original map")
    print("sanity check:", "FLAGGED: the map barely depends on the weights" if sanity.flagged
          else "passed: the map changes when the model is randomised")
"""),
    md("""
## 8. The same lung mask on more patients: a cohort

The segment widget recorded every step as a **recipe**. `medlab.cohort.run_cohort` runs it unchanged on
other scans, one task per case on Dask, and scores each output against the truth a manifest names
(here the lung field of each phantom). Each case gets a folder with its outputs and a record of what ran
and on which input; a second run skips the cases already done. Read the scores label by label: the
recipe's `connected_components` step numbers the pieces (1 = largest), so when the two lungs do not
touch they come out as labels 1 and 2, and the cohort compares label *k* of the output with label *k*
of the truth, which has only label 1 (the lung field). The union, from the saved outputs, is what was
meant: a recipe's scores are only as right as the question they answer.
"""),
    code("""
cohort_in = out / "cohort"; cohort_in.mkdir(exist_ok=True)
manifest_rows = []
for s in COHORT_SEEDS:                     # other patients, written as a scanner would leave them
    other = medlab.data.chest_ct(seed=s, size=SIZE, spacing=SPACING)
    field = np.stack([ndimage.binary_fill_holes(sl) for sl in np.isin(other.labels.array, lung_values)])
    medlab.save(other.ct, cohort_in / f"patient{s}_ct.nii.gz", overwrite=True)
    medlab.save(other.ct.with_array(field.astype(np.uint8), kind="label"), cohort_in / f"patient{s}_lungs.nii.gz",
                overwrite=True)
    manifest_rows.append(f"patient{s},patient{s}_ct.nii.gz,patient{s}_lungs.nii.gz")
(cohort_in / "manifest.csv").write_text("case,image,truth\\n" + "\\n".join(manifest_rows) + "\\n")

print(lungs.recipe.to_python())
cohort = run_cohort(lungs.recipe, cohort_in / "manifest.csv", out / "cohort_run", workers=COHORT_WORKERS,
                    progress=False, dashboard=False)
print(cohort.summary())
by_label = cohort.results.query("quantity == 'dice' and step == 'step3'")[["case", "label", "value"]]
union = []
for case in cohort.cases["case"]:
    found = medlab.load(out / "cohort_run" / "cases" / case / "step3_labels.nii.gz")
    truth_field = medlab.load(cohort_in / f"{case}_lungs.nii.gz", kind="label")
    union.append({"case": case, "labels in the output": int(found.array.max()),
                  "Dice of the union (lung field)": metrics.dice(found.array > 0, truth_field.array > 0)})
display(by_label.rename(columns={"value": "Dice of this label"}).round(3))
cohort_table = Table(union, title="lung-mask recipe on other patients")
display(cohort_table.to_pandas().round(3))
"""),
    md("""
## 9. The report
"""),
    code("""
LIMITATIONS = (
    "A phantom, not a patient: nodules are near-spheres of known size, vessels are smooth tubes, noise is "
    "stationary, and there is no motion, no emphysema, no scarring and no calcification. The classic detector's "
    "threshold and filters were chosen on phantoms like this one, and the U-Net was trained on phantoms from the "
    "same generator: their sensitivity and false positives here do not predict a real screening programme, which is "
    "measured on thousands of scans against expert consensus (e.g. LIDC-IDRI). Sizes are limited by the voxels: "
    "with thick slices small nodules lose volume to partial volume. No Lung-RADS category is given: it needs "
    "the nodule's type, growth on a prior scan and a radiologist's reading.")
report = Report("Chest CT nodule screening: case study",
                subtitle=f"medlab {medlab.__version__}, phantom seed {SEED}, {' × '.join(map(str, SIZE))} voxels")
report.add_section("Scan and lungs")
report.add_image(ct, labels=lung_field, window=1500, level=-600, caption="lung window, lung field outlined")
for step, d in scores_lung.items():
    report.add_number(f"lung mask Dice: {step}", d)
report.add_section("Nodule candidates")
report.add_image(ct, labels=finding_labels, window=1500, level=-600, at=nodules[0]["centre_mm"],
                 caption=f"kept candidates ({detector}) through the first true nodule")
report.add_table(summary_table)
report.add_table(size_table)
report.add_table(Table(classic_rows + unet_rows, title="every candidate"))
for row in summary:
    report.add_number(f"{row['detector']}: sensitivity", row["sensitivity"])
    report.add_number(f"{row['detector']}: false positives per scan", row["false positives"])
report.add_section("DICOM SEG")
report.add_text(f"{seg_path.name}: {len(kept)} segments referencing the series {series.name}.")
if saliency is not None:
    report.add_section("Explanation")
    report.add_image(ct, heat=saliency, labels=region, window=1500, level=-600,
                     caption="Grad-CAM of the U-Net's score summed over one finding (outlined)")
    report.add_table(explain.numbers_table())
    report.add_number("sanity check passed", not sanity.flagged)
report.add_section("Limitations")
report.add_text(LIMITATIONS)
report.add_recipe(lungs.recipe, caption="lung mask (the segment widget)")
report.add_section("The lung-mask recipe on other patients (cohort)")
report.add_table(cohort_table)
path = report.save(out / "chest_ct_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
"""),
    md("""
## Limitations, honestly

* **A phantom, not a patient.** Near-spherical nodules of known size, smooth vessels, no emphysema,
  scars or calcifications: the classic detector's handful of false positives here would be hundreds on real
  scans, where vessel junctions and scars look like nodules.
* **Tuned and trained on the same kind of data.** The threshold and the filter were chosen on such
  phantoms, and the U-Net learned from them. A screening tool is measured on thousands of real scans
  against expert consensus, with FROC curves (sensitivity against false positives per scan).
* **Sizes depend on voxels.** With thick slices, partial volume shrinks or grows small nodules; volumes
  under about 100 mm³ are uncertain by tens of per cent, which matters when growth is the criterion.
* **No Lung-RADS category.** It needs the nodule type as a radiologist reads it, growth since a prior
  scan, and the reading itself.
* **The explanation is of one output** (the summed score over one finding), at the resolution of the
  layer Grad-CAM uses; it does not say the network is right.

## Run it on your own data

```python
import medlab
from medlab import segment
from medlab.widgets import SegmentWidget

ct = medlab.load("patient/chest_ct/")                  # a DICOM folder: then the SEG can reference it
lungs = SegmentWidget(ct, stage="ct_threshold"); lungs # lung preset, components (min 50 mL), fill holes
# ... the candidate cells above, with ct and lungs.labels
segment.write_dicom_seg(finding_labels, "patient/chest_ct/", "findings_seg.dcm")
```

On real low-dose CT, raise the minimum volume of a candidate to the smallest nodule you report (e.g.
4 mm: 34 mm³), expect many vessel false positives from the classic detector, and check every finding
against the images.
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST})")
"""),
]


CASE_REAL_SCANS = [
    md("""
# Case study: the same building blocks on real scans

Phantoms know their truth; patients do not, and real scans hold traps phantoms never set: DICOM
headers that disagree with themselves, gas in the bowel that looks like lung, a head that moved between
two sequences. This notebook runs the building blocks of the other case studies on **real CT and MR
scans** from the project's shared test data (open licences, listed below), compares them with the
reference labels where there are some, and shows how to point everything at **your own DICOM folder**.

1. a real CT series from DICOM: what the header says, windowing;
2. CT thresholds and connected components against a reference segmentation: bone on the DICOM series
   (and why the reference must be overlaid by position), lungs on a 3 mm CT (and what else is air);
3. a brain tumour on a real post-contrast T1, grown from seeds, against its mask;
4. a real T1 and proton-density MRI of one subject, registered by mutual information: the gain in MI
   and a checkerboard, since no true transform is known;
5. your own scan.

**You will learn to**

1. read what a real DICOM series says about itself, and notice when it contradicts itself;
2. judge a threshold segmentation against a reference that is itself a model's prediction;
3. see what a seeded method needs on a real lesion (one seed per piece, and a tolerance tuned by eye);
4. check a registration without a ground truth;
5. respect a data licence, and run all of it on your own scans.

The shared data sits beside the repository (`../shared/data`, set `MEDLAB_SHARED_DATA` to use another
folder). **When it is absent, every section says so and the notebook still runs to the end.** About a
minute on a CPU.
"""),
    code("""
import os
from pathlib import Path
FAST = os.environ.get("MEDLAB_FAST") == "1"
SHARED = Path(os.environ.get("MEDLAB_SHARED_DATA", "../../../shared/data"))   # from notebooks/case_studies/
REGISTRATION_SPACING = 3.0 if FAST else 2.0      # mm: the T1/PD pair is resampled to this before registering
LESION_TOLERANCE = 250.0                          # brain1: intensity interval around the seeds (scanner units)
MY_SCAN = os.environ.get("MEDLAB_MY_SCAN", "")    # section 5: your own DICOM folder or NIfTI file
""", tags=["parameters"]),
    code("""
import json
import time
import warnings

import numpy as np
import matplotlib.pyplot as plt
import SimpleITK as sitk
from IPython.display import display
from scipy import ndimage

import medlab
from medlab import metrics, segment
from medlab.outputs import Table, Transform
from medlab.register import mutual_information, resample_image
from medlab.report import Report, slice_figure
from medlab.widgets import RegisterWidget, SegmentWidget, Viewer

started = time.perf_counter()
FILES = {
    "CT series (DICOM)": "ct_abdomen/example_ct_dicom",
    "CT series labels": "ct_abdomen/example_seg_dicom.nii.gz",
    "CT, 3 mm (NIfTI)": "ct_abdomen/example_ct_sm.nii.gz",
    "CT 3 mm labels": "ct_abdomen/example_seg.nii.gz",
    "label names": "ct_abdomen/labels_total.json",
    "brain MRI with tumour": "labels/brain1_image.nrrd",
    "its tumour mask": "labels/brain1_label.nrrd",
    "T1 head MRI": "noncommercial/chris_t1.nii.gz",
    "PD head MRI (same subject)": "noncommercial/chris_PD.nii.gz",
}

def have(*names):
    # True when every named file is there; otherwise say what is missing and where it was looked for
    missing = [FILES[n] for n in names if not (SHARED / FILES[n]).exists()]
    if missing:
        print(f"(skipped: {', '.join(missing)} not found under {SHARED}; set MEDLAB_SHARED_DATA to the folder "
              "that holds the shared data)")
    return not missing

if SHARED.is_dir():
    print(f"shared data: {SHARED}")
    for name, rel in FILES.items():
        print(f"  {'✔' if (SHARED / rel).exists() else 'missing'}  {name:28s} {rel}")
else:
    print(f"The shared test data is not here ({SHARED} does not exist). Every section below will say it is "
          "skipped; to run them, set MEDLAB_SHARED_DATA to the data folder (see its MANIFEST.md).")
"""),
    md("""
**Licences.** The CT files come from TotalSegmentator's tests (Apache-2.0), the brain tumour scan from
pyradiomics (BSD-3-Clause). The T1/PD pair (`noncommercial/chris_*`, from niivue-demo-images) is under
**CC BY-NC 4.0**: you may use it for teaching and research with attribution, **not commercially**, and it
is never copied into this repository or embedded in a product. None of the reference label maps is a
manual expert segmentation: the CT labels are a model's predictions, kept as that project's regression
reference.

## 1. A real CT series from DICOM

`medlab.io.list_series` tells what a folder holds before anything is read; `medlab.load` stacks the
slices by their position, and keeps what it noticed in `metadata["notes"]`.
"""),
    code("""
ct_dicom = None
if have("CT series (DICOM)"):
    folder = SHARED / FILES["CT series (DICOM)"]
    for info in medlab.io.list_series(folder):
        print(f"series {info.description!r}: {info.modality}, {info.n_slices} slices, {info.size}, "
              f"spacing {np.round(info.spacing, 3)} mm, SeriesInstanceUID {info.uid!r}")
    ct_dicom = medlab.load(folder)
    print(ct_dicom.describe())
    print("SliceThickness:", ct_dicom.metadata.get("slice_thickness"), "mm; step between slices:",
          ct_dicom.metadata.get("slice_step"), "mm")
    for note in ct_dicom.metadata.get("notes", []):
        print("note:", note)
"""),
    md("""
Two traps in one folder: the **Series Instance UID is empty** (so the slices are grouped by their
geometry), and **SliceThickness says 3 mm while the slices are 2 mm apart** (overlapping
reconstruction). The distance between slice positions is the z spacing; the thickness is how much
anatomy each slice averages.

**Exercise 1.** To turn a voxel count of this series into mL, which z size do you multiply by: the
header's `"thickness"` (3 mm) or the `"spacing"` between slices (2 mm)? Set `my_z`.
"""),
    code("""
my_z = "spacing"

def check_z(answer):
    thickness, step = 3.0, 2.0             # this series' header and slice positions (MANIFEST.md)
    if ct_dicom is not None:
        thickness, step = ct_dicom.metadata.get("slice_thickness", 3.0), ct_dicom.metadata.get("slice_step", 2.0)
    if answer == "spacing":
        print(f"✓ each voxel stands for the {step:g} mm between slice centres; with {thickness:g} mm every volume "
              f"would come out {thickness / step:.0%} of the truth")
    elif answer == "thickness":
        print(f"✗ slices {thickness:g} mm thick but {step:g} mm apart overlap: counting {thickness:g} mm per slice "
              f"inflates every volume by {thickness / step - 1:.0%}")
    else:
        print(f"✗ {answer!r}: answer 'thickness' or 'spacing'")

check_z(my_z)
""", wrong_answers=["'thickness'", "'pixel'"]),
    code("""
if ct_dicom is not None:
    k = ct_dicom.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, preset in zip(axes, ["abdomen", "lung", "bone"]):
        w, l = medlab.render.CT_PRESETS[preset]
        ax.imshow(medlab.preprocess.window_level(ct_dicom, preset=preset).array[k], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{preset}: W {w:g}, L {l:g} HU", fontsize=9); ax.axis("off")
    plt.show()
    ct_viewer = Viewer(ct_dicom, height=300)
    ct_viewer.window, ct_viewer.level = medlab.render.CT_PRESETS["bone"]
    display(ct_viewer)
"""),
    md("""
## 2. CT thresholds and components against a reference

**Bone on the DICOM series.** `ct_threshold(preset="bone")` keeps 250 HU and above. On a real scan that
includes the **patient table**, so bone is only looked for inside the body (tissue above −500 HU, its
largest piece, holes filled), and pieces under 1 mL go. The reference here is a label map saved **with its
y axis flipped** (direction `diag(1, −1, 1)`, "LAS"): the same anatomy, stored upside down in the array.
Compared index by index it is wrong; compared by position (resampled onto the CT's grid) it is right.
"""),
    code("""
def body_mask(ct):
    # the patient: tissue above -500 HU, its largest piece (not the table, not the air), holes filled slice by slice
    body = segment.keep_largest_component(segment.threshold(ct, mode="above", lower=-500.0))
    return segment.fill_holes(body, mode="slices")

names, bone_mask = {}, None
if have("label names"):
    names = {int(k): v for k, v in json.loads((SHARED / FILES["label names"]).read_text()).items()}
BONE = ("vertebrae", "rib", "costal", "sternum", "humerus", "scapula", "clavicula", "hip", "sacrum", "femur")
if ct_dicom is not None and have("CT series labels", "label names"):
    reference = medlab.load(SHARED / FILES["CT series labels"], kind="label")
    print(reference.describe(), "| direction diagonal:", np.diag(reference.direction).tolist())
    bone_values = [v for v, n in names.items() if n.startswith(BONE)]
    by_index = np.isin(reference.array, bone_values)
    by_position = np.isin(medlab.preprocess.resample_to(reference, reference=ct_dicom, interpolator="nearest").array,
                          bone_values)
    dense = segment.ct_threshold(ct_dicom, preset="bone")
    body = body_mask(ct_dicom)
    in_body = dense.with_array(((dense.array > 0) & (body.array > 0)).astype(np.uint8))
    bone_mask, pieces = segment.connected_components(in_body, min_volume=1000.0)        # mm³
    for step, mask in (("250 HU and above", dense), ("inside the body, pieces of 1 mL or more", bone_mask)):
        found = mask.array > 0
        print(f"{step}: Dice {metrics.dice(found, by_position):.3f}, precision {np.mean(by_position[found]):.2f}, "
              f"sensitivity {np.mean(found[by_position]):.2f} (reference by position)")
    found = bone_mask.array > 0
    print(f"the same, reference compared by index (wrong): Dice {metrics.dice(found, by_index):.3f}")
"""),
    md("""
The table alone lowered the precision a lot; inside the body, most of what the threshold calls bone is
bone. It still finds only part of what the reference calls bone (low sensitivity): the inside of a
vertebra is trabecular bone and marrow, often below 250 HU, and the reference model labels the whole
vertebra. Which one is "right" depends on the
question (cortical bone for a density measurement, whole vertebrae for anatomy).

A **DICOM SEG** of the bone mask refers to this series' slices. The series' empty UIDs get a warning:
the SEG references generated ones, the same at every export.
"""),
    code("""
if bone_mask is not None:
    out = Path("real_scans_outputs"); out.mkdir(exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg_file = segment.write_dicom_seg(bone_mask.with_array((bone_mask.array > 0).astype(np.uint8), labels={1: "bone"}),
                                           SHARED / FILES["CT series (DICOM)"], out / "bone_seg.dcm", overwrite=True,
                                           algorithm_type="automatic", algorithm_family="HistogramAnalysis")
    for w in caught:
        print("warning:", str(w.message)[:160])
    back = medlab.load(seg_file)
    same = np.array_equal(medlab.preprocess.resample_to(back, reference=ct_dicom, interpolator="nearest").array > 0,
                          bone_mask.array > 0)
    print(f"{seg_file}: {back.describe()}; overlays the series voxel for voxel: {same}")
"""),
    md("""
**Lungs on the 3 mm CT.** Its top slices cut through the lung bases. The lung preset (−950 to −400 HU)
also keeps air **outside** the body and **gas in the stomach and colon**. Two steps fix part of it: keep
only what lies inside the body (above −500 HU, holes filled), and keep pieces of at least 20 mL. The
table names, from the reference, what each remaining piece mostly is: a threshold cannot tell lung from
gas, only where the piece is (or its size) can.
"""),
    code("""
lung_scores = None
if have("CT, 3 mm (NIfTI)", "CT 3 mm labels", "label names"):
    ct3 = medlab.load(SHARED / FILES["CT, 3 mm (NIfTI)"])
    reference3 = medlab.load(SHARED / FILES["CT 3 mm labels"], kind="label")
    lung_ref = reference3.with_array(np.isin(reference3.array, [v for v, n in names.items() if n.startswith("lung")])
                                     .astype(np.uint8), kind="label", labels={1: "lung"})
    air = segment.ct_threshold(ct3, preset="lung")
    body = body_mask(ct3)
    inside = air.with_array(((air.array > 0) & (body.array > 0)).astype(np.uint8))
    pieces3, table3 = segment.connected_components(inside, min_volume=20_000.0)
    rows = []
    for r in table3.rows:
        values, counts = np.unique(reference3.array[pieces3.array == r["component"]], return_counts=True)
        top = values[np.argmax(counts)]
        rows.append({"piece": r["component"], "volume": r["volume"], "z (mm)": r["centroid_z"],
                     "mostly (reference)": names.get(int(top), "outside any label")})
    display(Table(rows, units={"volume": "mL"}).to_pandas().round(1))
    two = pieces3.with_array(np.isin(pieces3.array, [1, 2]).astype(np.uint8), kind="label", labels={1: "lung"})
    lung_scores = {}
    for name, mask in (("lung range, whole scan", air), ("inside the body", inside),
                       ("pieces of 20 mL or more", pieces3.with_array((pieces3.array > 0).astype(np.uint8))),
                       ("the two largest pieces", two)):
        s = metrics.segmentation_scores(mask.with_array((mask.array > 0).astype(np.uint8), kind="label"), lung_ref,
                                        labels=[1])[0]
        lung_scores[name] = s
        print(f"{name:26s} Dice {s['dice']:.3f}  precision {s['precision']:.2f}  sensitivity {s['sensitivity']:.2f}  "
              f"volume {s['volume_pred_ml']:7.1f} mL (reference {s['volume_truth_ml']:.1f})")
"""),
    md("""
## 3. A brain tumour on a real MRI, from seeds

`brain1` is a post-contrast T1 with 6.5 mm slices and a mask of the enhancing lesion, which has **two
pieces**. One seed grows only the piece it is in (see `03_segmentation_classic`), so the **segment
widget** gets a second seed in the other piece. Stand-ins for a reader's clicks: seed 1 at the deepest
point of the mask, seed 2 at the deepest point of the other piece among voxels within the tolerance of
seed 1's intensity (region growing keeps voxels within the tolerance of the seeds' intensities: a seed
outside that range would widen it). Then holes filled and a 2 mm closing.
"""),
    code("""
def deepest(mask, image):
    depth = ndimage.distance_transform_edt(mask, sampling=image.spacing[::-1])
    return image.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1]).tolist()

lesion_widget = None
if have("brain MRI with tumour", "its tumour mask"):
    mri = medlab.load(SHARED / FILES["brain MRI with tumour"])
    lesion = medlab.load(SHARED / FILES["its tumour mask"], kind="label")
    parts, n_parts = ndimage.label(lesion.array > 0)
    seeds = [deepest(lesion.array > 0, mri)]
    first = tuple(np.rint(mri.physical_to_index(seeds[0])).astype(int)[::-1])
    near = np.abs(mri.array.astype(float) - float(mri.array[first])) <= LESION_TOLERANCE
    other = (parts > 0) & (parts != parts[first]) & near
    if other.any():
        seeds.append(deepest(other, mri))
    print(mri.describe(), f"| the mask has {n_parts} pieces; seeds (mm):", np.round(seeds, 1).tolist())
    lesion_widget = SegmentWidget(mri, truth=lesion, height=300)
    lesion_widget.before.position = seeds[0]
    display(lesion_widget)
"""),
    code("""
brain1_scores = None
if lesion_widget is not None:
    lesion_widget.set(seeds=seeds[:1], tolerance=LESION_TOLERANCE); lesion_widget.apply(wait=True)
    one_seed = lesion_widget.scores[0]
    lesion_widget.set(seeds=seeds, tolerance=LESION_TOLERANCE); lesion_widget.apply(wait=True)
    lesion_widget.select("fill_holes"); lesion_widget.set(mode="slices"); lesion_widget.apply(wait=True)
    lesion_widget.select("closing"); lesion_widget.set(radius=2.0); lesion_widget.apply(wait=True)
    brain1_scores = lesion_widget.scores[0]
    wider = metrics.segmentation_scores(segment.connected_threshold(mri, seeds=seeds, tolerance=LESION_TOLERANCE + 50),
                                        lesion, labels=[1])[0]
    for name, s in (("one seed", one_seed), (f"{len(seeds)} seeds + holes + closing", brain1_scores),
                    (f"{len(seeds)} seeds, tolerance {LESION_TOLERANCE + 50:g}", wider)):
        print(f"{name:30s} Dice {s['dice']:.3f}, HD95 {s['hausdorff95_mm']:5.1f} mm, sensitivity {s['sensitivity']:.2f}, "
              f"precision {s['precision']:.2f}, volume {s['volume_pred_ml']:7.1f} mL (mask {s['volume_truth_ml']:.1f})")
"""),
    md("""
The last line is the same two seeds with a tolerance 50 units wider: the region **leaks** into normal
enhancing tissue through a bridge of similar voxels and floods the brain. The tolerance was chosen by
looking at this one scan, so the Dice of the second line is optimistic: it measures the method *with a
person tuning it*, not the method alone.

## 4. T1 and proton density of one subject: registration without a ground truth

A T1 (0.88 mm isotropic) and a proton-density scan (0.86 × 0.86 × 2.4 mm, **oblique** slices) of the
same head. No true transform is known, so the evidence is the **mutual information** before and after
(higher: each image's intensity predicts the other's better) and the **checkerboard**. Both are
resampled to a coarser isotropic grid first (the settings cell): enough for a rigid fit, and fast.
*CC BY-NC 4.0: non-commercial use only.*
"""),
    code("""
mri_pair = None
if have("T1 head MRI", "PD head MRI (same subject)"):
    t1 = medlab.load(SHARED / FILES["T1 head MRI"])
    pd = medlab.load(SHARED / FILES["PD head MRI (same subject)"])
    print(t1.describe()); print(pd.describe(), "| oblique:", not np.allclose(np.abs(pd.direction), np.eye(3)))
    grid = (REGISTRATION_SPACING,) * 3
    fixed = medlab.preprocess.resample(t1, spacing=grid)
    moving = medlab.preprocess.resample(pd, spacing=grid)
    mri_pair = RegisterWidget(fixed, moving, height=260)
    display(mri_pair)
"""),
    code("""
mi = None
if mri_pair is not None:
    mri_pair.start(); mri_pair.wait()
    by_position = resample_image(moving, Transform(sitk.Euler3DTransform()), fixed)
    mi = {"by position (header geometry)": mutual_information(fixed, by_position),
          "after rigid registration": mutual_information(fixed, mri_pair.registered)}
    for name, value in mi.items():
        print(f"mutual information, {name:30s} {value:.3f} nats")
    print(f"gain: {mi['after rigid registration'] - mi['by position (header geometry)']:+.3f} nats "
          f"({mi['after rigid registration'] / mi['by position (header geometry)'] - 1:+.0%})")
    print("found:", mri_pair.transform.describe())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (name, img) in zip(axes, [("by position", by_position), ("after registration", mri_pair.registered)]):
        ax.imshow(slice_figure(fixed, second=img, planes=("sagittal", "axial"), size=260))
        ax.set_title(f"T1 / PD checkerboard, {name}", fontsize=9); ax.axis("off")
    plt.show()
"""),
    md("""
Even with the header's geometry honoured (oblique slices included), the two scans are several degrees
and millimetres apart: the head moved between the sequences. The checkerboard after registration shows
edges (skull, ventricles) running on across tiles. A rigid transform cannot undo what is not rigid
(neck flexion, distortion in the PD's slices), and without landmarks nobody can say how many mm off the
result still is: click a few landmarks in both (the register widget's landmark stage) for a TRE.

**Exercise 2.** May a company put figures of `chris_t1` in the manual of a product it sells? Set
`my_commercial_use_ok` to `True` or `False`.
"""),
    code("""
my_commercial_use_ok = False

def check_licence(ok):
    if ok is False:
        print("✓ no: CC BY-NC 4.0 allows sharing and adapting with attribution, for non-commercial purposes only; "
              "a commercial use needs the author's permission")
    elif ok is True:
        print("✗ the licence is CC BY-NC 4.0: NC means non-commercial; a product manual is a commercial use")
    else:
        print(f"✗ {ok!r}: answer True or False")

check_licence(my_commercial_use_ok)
""", wrong_answers=["True", "'yes'"]),
    md("""
## 5. The report

What was measured on each scan, with the pictures, in one HTML file that opens offline. A section whose
data was absent says so instead of showing a number.
"""),
    code("""
report = Report("Real scans: case study", subtitle=f"medlab {medlab.__version__}, shared data: {SHARED.name}")
report.add_section("CT: bone by threshold (DICOM series)")
if bone_mask is not None:
    report.add_image(ct_dicom, labels=bone_mask, window=1800, level=400, caption="bone mask over the CT series")
else:
    report.add_text("skipped: the CT series or its reference labels are absent")
report.add_section("CT: lungs by threshold (3 mm NIfTI)")
if lung_scores is not None:
    report.add_table([{"step": name, "Dice": s["dice"], "precision": s["precision"], "sensitivity": s["sensitivity"],
                       "volume (mL)": s["volume_pred_ml"], "reference (mL)": s["volume_truth_ml"]}
                      for name, s in lung_scores.items()])
else:
    report.add_text("skipped: the 3 mm CT or its labels are absent")
report.add_section("Brain tumour from seeds (brain1)")
if brain1_scores is not None:
    report.add_image(mri, labels=lesion_widget.labels, at=seeds[0], caption="seeded region growing, holes filled, closed")
    report.add_number("Dice against the mask", brain1_scores["dice"], note="tolerance tuned on this scan: optimistic")
    report.add_number("HD95", brain1_scores["hausdorff95_mm"], unit="mm")
else:
    report.add_text("skipped: brain1 is absent")
report.add_section("T1 / PD registration (no ground truth)")
if mi is not None:
    report.add_image(fixed, second=mri_pair.registered, caption="T1 / PD checkerboard after rigid registration")
    for name, value in mi.items():
        report.add_number(f"mutual information, {name}", value, unit="nats")
    report.add_text("CC BY-NC 4.0 (chris_t1, chris_PD): non-commercial use only.")
else:
    report.add_text("skipped: the T1/PD pair is absent")
path = report.save("real_scans_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(report.numbers.rows)} numbers)")
"""),
    md("""
## 6. Limitations, honestly

* **No expert truth.** None of the reference label maps is a manual expert segmentation: the CT labels
  are a model's predictions (TotalSegmentator's regression reference), and the brain1 mask is a single
  mask of unknown provenance. A Dice here is agreement with another method, not accuracy.
* **One scan each.** Every number comes from one scan: another scanner, patient or reconstruction
  changes it, and no spread can be estimated from one case.
* **Tuned on the test.** The region-growing tolerance and the seeds were chosen by looking at brain1,
  so its Dice is that of the method with a person tuning it on this very scan (optimistic).
* **Thresholds know intensities, not organs.** The lung preset keeps bowel gas and outside air, the
  bone preset keeps the table and misses trabecular bone; the fixes used here (inside the body, a
  minimum size) are rules for these scans, not guarantees for yours.
* **No registration error.** The T1/PD pair has no known transform: higher mutual information and a
  clean checkerboard say the fit improved, not how many millimetres it is still off; only landmarks
  you did not fit on give a TRE. A rigid fit cannot undo non-rigid motion or slice distortion.
* **Licences.** The T1/PD pair is CC BY-NC 4.0: teaching and research only, never in a product.

## Run it on your own data

Point `MEDLAB_MY_SCAN` at a DICOM folder or a NIfTI/NRRD file before starting Jupyter
(`MEDLAB_MY_SCAN=path/to/dicom_folder jupyter lab`), or set `MY_SCAN` in the settings cell, and rerun
this cell. A folder with several series is listed first; pick one with `series=` (its number, its UID or
its description).

```python
import medlab
series = medlab.io.list_series("path/to/dicom_folder")     # what is there, before reading any pixels
scan = medlab.load("path/to/dicom_folder", series=series[0].uid or 0)
scan.describe(), scan.metadata.get("notes")                  # spacing, orientation, and what looked odd
```

Then every widget above takes it: `SegmentWidget(scan)`, `RegisterWidget(scan, other_scan)`,
`Viewer(scan)`, and `segment.write_dicom_seg(labels, "path/to/dicom_folder", "seg.dcm")` when the scan
came from DICOM. Remember what this notebook showed: read the notes, check thresholds against what the
piece actually is, one seed per piece, and a checkerboard before trusting a registration.
"""),
    code("""
if not MY_SCAN:
    print("MEDLAB_MY_SCAN is not set: nothing of yours to load (see the cell above)")
elif not Path(MY_SCAN).exists():
    print(f"MEDLAB_MY_SCAN points to {MY_SCAN}, which does not exist")
else:
    if Path(MY_SCAN).is_dir():
        for info in medlab.io.list_series(MY_SCAN):
            print(f"series {info.number} {info.description!r}: {info.modality}, {info.n_slices} slices")
    mine = medlab.load(MY_SCAN)
    print(mine.describe(), mine.metadata.get("notes", ""))
    display(Viewer(mine, layout="three", height=300))
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST}, shared data {'found' if SHARED.is_dir() else 'absent'})")
"""),
]
CASE_FUSION = [
    md("""
# Case study: fusing CT and MR for surgical navigation

A neurosurgeon plans a biopsy of a brain tumour. The tumour is seen on the **MR** (it enhances after
contrast); the navigation system in the operating room tracks the patient against the **CT** (bone
and skin are sharp there, and CT has no geometric distortion). Before the operation, the MR must
be **registered** to the CT, so that the target marked on the MR lands at the right place in the
patient. This case study does it as navigation software does: a rough start from landmarks (or from
the skin surface), a refinement by mutual information, a check on a fused display and in 3D, and
a measurement of the error at the target against a phantom whose true motion is known. Then it asks
the question a surgeon asks: what does an error of 2 mm mean for a 5 mm target?

**You will learn to**

1. build a CT and an MR of one head with a **known** transform between them, and mark a target;
2. start a registration from **landmarks** (skin fiducials) or from **surfaces** (ICP on the skin),
   and see when each start is good enough;
3. refine with **mutual information** across modalities, as **one recipe** that replays;
4. check the result on a **fused display** (checkerboard, blend) and in a **3D view** with the target;
5. measure the **target registration error** (TRE) at the target and throughout the brain, and tell
   it apart from the fiducial registration error (FRE) the software reports;
6. turn an error in mm into what matters in the operating room: the chance of a tool tip landing
   inside a 5 mm target, and the safety margin it costs.

Everything runs offline on a CPU; `MEDLAB_FAST=1` (what CI uses) makes the images coarser.
"""),
    code("""
import os
import time

import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
import SimpleITK as sitk
from IPython.display import display
from scipy import ndimage, stats
from skimage.filters import threshold_otsu

import medlab
from medlab.recipe import Recipe
from medlab.register import (landmark_register, linear_register, resample_image, resample_labels, sample_points,
                             surface_points, surface_register, target_registration_error)
from medlab.report import Report
from medlab.widgets import RegisterWidget, View3D, Viewer

started = time.perf_counter()
"""),
    md("""
## Settings

Change them here, never in the code below.
"""),
    code("""
FAST = os.environ.get("MEDLAB_FAST") == "1"
SIZE = (64, 64, 32) if FAST else (96, 96, 48)            # voxels (x, y, z) of both scans
SPACING = (3.0, 3.0, 3.75) if FAST else (2.0, 2.0, 2.5)  # mm
SAMPLES = 5000 if FAST else 20000                        # mutual-information points per resolution level
FLE_MM = 1.5              # RMS error of clicking a fiducial (fiducial localisation error)
TOOL_ERROR_MM = 2.0       # RMS error of the navigated tool tip, the figure a system quotes
TARGET_MM = 5.0           # diameter of the biopsy target
print(dict(FAST=FAST, SIZE=SIZE, SPACING=SPACING, SAMPLES=SAMPLES))
""", tags=["parameters"]),
    md("""
## 1. One head, two scanners, a known motion

`medlab.data.registration_pair` renders one head phantom twice, the second moved by a random rigid
transform (here up to 30° and 30 mm: the patient's head lies differently in the two scanners). We
keep its post-contrast **T1** as the MR (moving image), and turn the first one's tissue map into a
**CT**: each tissue gets its Hounsfield value (air -1000, soft tissue 20–40, CSF 5, bone 1200), with
a little blur and noise. The transform maps a point of the CT (the fixed image, the navigation
frame) to the same tissue in the MR, in mm: the **truth** every registration below is measured
against.
"""),
    code("""
pair = medlab.data.registration_pair(size=SIZE, spacing=SPACING, seed=7, fixed_contrast="t1", moving_contrast="t1",
                                     max_rotation_deg=30, max_translation_mm=30)
HOUNSFIELD = np.array([-1000, 30, 1200, 5, 40, 28, 5, 18, 38, 22], np.float32)   # by phantom label 0..9
tissue = pair.fixed_labels
rng = np.random.default_rng(0)
hu = ndimage.gaussian_filter(HOUNSFIELD[tissue.array], 0.6) + rng.normal(0.0, 10.0, tissue.shape)
ct = tissue.with_array(hu.astype(np.float32), kind="intensity",
                       metadata={"modality": "CT", "units": "HU", "description": "CT from the phantom's tissues"})
mr = pair.moving
truth = pair.transform
print("CT:", ct.describe()); print("MR:", mr.describe())
print("true motion:", medlab.outputs.Transform(truth, name="truth").describe())
"""),
    md("""
The **target** is the centre of the enhancing tumour, marked by the surgeon on the MR. Its true
place in the CT is known here (the phantom's landmark); in a patient it never is. 500 points
spread through the brain measure the error everywhere else.
"""),
    code("""
target_mr = pair.moving_landmarks[0]          # where the surgeon clicks, on the MR
target_ct = pair.landmarks[0]                 # where it truly is in the CT (unknown in a patient)
brain = tissue.with_array((tissue.array >= 4).astype(np.uint8), kind="label")
brain_points = sample_points(brain, 500, seed=0)

def errors(transform):
    \"\"\"TRE at the target and over the brain (mm), against the true motion.\"\"\"
    at_target = float(target_registration_error(transform, [target_ct], truth=truth)[0])
    spread = target_registration_error(transform, brain_points, truth=truth)
    return {"TRE at target (mm)": at_target, "mean TRE in brain (mm)": float(spread.mean()),
            "max TRE in brain (mm)": float(spread.max())}

identity = sitk.Euler3DTransform()
print("no registration:", {k: round(v, 1) for k, v in errors(identity).items()})
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (name, img, window) in zip(axes, (("CT (fixed)", ct, (-100, 150)), ("MR T1 (moving)", mr, (0, 1)))):
    k = medlab.render.slice_count(img, "axial") // 2
    s = medlab.render.extract_slice(img, "axial", k)
    ax.imshow(s.array, cmap="gray", vmin=window[0], vmax=window[1]); ax.set_title(name, fontsize=9); ax.axis("off")
plt.show()
"""),
    md("""
## 2. A first alignment: landmarks, or the skin surface

Mutual information is a local optimiser: from 30° away it may stop in the wrong place (we will see).
Navigation systems therefore start from something coarse and robust:

* **fiducials**: markers glued to the scalp, visible in both scans and touched with the tracked
  pointer; five here, each clicked with a 1.5 mm RMS error (FLE) in each scan;
* **surface matching**: the skin surface from each scan (a threshold of the CT, an Otsu threshold of
  the MR), aligned by iterative closest point (ICP), as when a laser scans the patient's face.
"""),
    code("""
head_ct = ct.with_array((ct.array > -300).astype(np.uint8), kind="label", labels={1: "head"})
mr_inside = ndimage.binary_closing(mr.array > 0.5 * threshold_otsu(mr.array), iterations=2)
head_mr = mr.with_array(ndimage.binary_fill_holes(mr_inside).astype(np.uint8), kind="label", labels={1: "head"})

# five scalp fiducials, spread out (farthest-point picks on the skin), inside both scans
skin = surface_points(tissue.with_array((tissue.array > 0).astype(np.uint8), kind="label"), max_points=4000)
in_mr = np.array([truth.TransformPoint(tuple(map(float, p))) for p in skin])
margin = 8.0
inside = (np.all((skin > ct.bounds()[0] + margin) & (skin < ct.bounds()[1] - margin), axis=1)
          & np.all((in_mr > mr.bounds()[0] + margin) & (in_mr < mr.bounds()[1] - margin), axis=1))
candidates = skin[inside]
fiducials = [candidates[np.argmax(candidates[:, 2])]]                   # the top of the head first
while len(fiducials) < 5:
    gap = np.min(np.linalg.norm(candidates[:, None] - np.array(fiducials)[None], axis=2), axis=1)
    fiducials.append(candidates[np.argmax(gap)])
fiducials = np.array(fiducials)
click = lambda points: points + rng.normal(0.0, FLE_MM / np.sqrt(3), points.shape)     # RMS FLE_MM in 3D
fiducials_ct = click(fiducials)
fiducials_mr = click(np.array([truth.TransformPoint(tuple(map(float, p))) for p in fiducials]))

by_landmarks = landmark_register(ct, mr, fixed_landmarks=fiducials_ct, moving_landmarks=fiducials_mr,
                                 fixed_targets=[target_ct], moving_targets=[target_mr])
by_skin = surface_register(head_ct, head_mr, max_points=3000)
display(by_landmarks.errors.to_pandas().round(2))
fre = by_landmarks.errors.rows[-2]["error"]
print(f"FRE (RMS over the fiducials) {fre:.2f} mm, what the navigation screen shows; "
      f"TRE at the target {errors(by_landmarks.transform)['TRE at target (mm)']:.2f} mm, what matters")
print(f"ICP on the skin: RMS surface distance {by_skin.history.series('inliers')[1][-1]:.2f} mm, "
      f"TRE at the target {errors(by_skin.transform)['TRE at target (mm)']:.2f} mm")
"""),
    md("""
The ICP fit looks excellent by its own measure (the skin surfaces lie within a few mm of each other)
and can still be far off at the target: a head is nearly an ellipsoid, so a rotation about its long
axis barely moves the skin. A small residual on the surface does not promise a small error inside,
just as a small FRE does not promise a small TRE.

## 3. Refinement by mutual information, as one recipe

Bone is bright on CT and dark on T1; mutual information only asks that one image's intensity
predicts the other's, so it works across the two (notebook `05_registration` shows why). We
refine each start with `linear_register` (Mattes MI, rigid, three resolution levels) and compare
with no start at all. The chain we keep (landmarks → MI → the MR resampled onto the CT) is recorded
as a **recipe**: it replays bit for bit, and exports as Python for the next patient.
"""),
    code("""
starts = {"none (image centres)": None, "landmarks": by_landmarks.transform, "skin ICP": by_skin.transform}
refined = {}
for name, start in starts.items():
    t0 = time.perf_counter()
    refined[name] = linear_register(ct, mr, start, samples=SAMPLES,
                                    shrink_factors=(8, 4, 2, 1) if start is None else (4, 2, 1))
    print(f"MI from {name:20s} {time.perf_counter() - t0:5.1f} s")

rows = [{"method": "no registration", **errors(identity)},
        {"method": "landmarks (5 fiducials)", **errors(by_landmarks.transform)},
        {"method": "skin ICP", **errors(by_skin.transform)}]
rows += [{"method": f"MI, started from {name}", **errors(r.transform)} for name, r in refined.items()]
summary = pd.DataFrame(rows).set_index("method")
summary.round(2)
"""),
    md("""
Read the table top to bottom: the start decides whether mutual information reaches the right
alignment or stops in a wrong one, and a good start is refined far below the fiducials' own error.
The recipe below is the chain we keep.
"""),
    code("""
with Recipe.record(fixed=ct, moving=mr) as recipe:
    start = landmark_register(ct, mr, fixed_landmarks=fiducials_ct, moving_landmarks=fiducials_mr)
    final = linear_register(ct, mr, start.transform, samples=SAMPLES, shrink_factors=(4, 2, 1))
    mr_on_ct = resample_image(mr, final.transform, ct)
replayed = Recipe.from_json(recipe.to_json()).run(fixed=ct, moving=mr)
same = (replayed["step2.transform"].fingerprint() == final.transform.fingerprint()
        and np.array_equal(replayed["step3.image"].array, mr_on_ct.array))
print(recipe.to_python())
print("✓ the recipe replays bit for bit" if same else "✗ the replay differs")
print({k: round(v, 2) for k, v in errors(final.transform).items()})
"""),
    md("""
## 4. The fused display

Before trusting a registration, look at it. The MR, resampled onto the CT's grid through the final
transform, is shown over the CT: as a **checkerboard** (edges must run on across tile borders) and
as an **alpha blend**. The register widget below does the same interactively, for any stage: pick
the overlay, move the tile size or the blend weight, scroll; its summary gives the TRE (the truth is
known here). It starts at the landmark fit; *Start* runs the MI refinement from it.
"""),
    code("""
fused = Viewer(ct, layout="three", height=300)
fused.window, fused.level = 160.0, 40.0                        # a brain window, in HU
fused.set_second_image(mr_on_ct, mode="checkerboard", checker=8)
fused.position = [float(c) for c in target_ct]
fused.add_point_set("target", color=(255, 60, 60), marker="plus", label="target (from the MR)",
                    points=[final.transform.inverse().transform_point(target_mr)])
fused
"""),
    code("""
w = RegisterWidget(ct, mr, truth=truth, targets=[target_ct], fixed_labels=head_ct, moving_labels=head_mr, height=300)
w.set_input("initial", by_landmarks.transform)
w.set(samples=SAMPLES, shrink_factors=(4, 2, 1))
w.set_transform(by_landmarks.transform, source="landmarks")
w
"""),
    md("""
**Exercise 1.** The surgeon marked the target on the **MR**. The navigation system works in the
**CT**'s frame. With `final.transform` (which maps CT points to MR points, SimpleITK's convention),
where is the target in the CT? Set `my_target_ct` to a point (x, y, z in mm).
"""),
    code("""
my_target_ct = final.transform.inverse().transform_point(target_mr)

def check_target(point):
    point = np.asarray(point, float)
    miss = float(np.linalg.norm(point - target_ct))
    if miss < 1.5:
        print(f"✓ {np.round(point, 1)} mm, {miss:.2f} mm from the true target: the transform maps CT -> MR, "
              "so an MR point goes back to the CT through its inverse")
    else:
        print(f"✗ {np.round(point, 1)} mm is {miss:.1f} mm from the true target. The transform maps CT points to "
              "MR points; a point marked on the MR needs the inverse")

check_target(my_target_ct)
""", wrong_answers=["final.transform.transform_point(target_mr)", "target_mr"]),
    md("""
## 5. In 3D: the target, the tumour and the skull

The tumour's tissue labels are carried from the MR to the CT through the final transform, and a
5 mm sphere is drawn at the target (where the transform puts the surgeon's mark). The 3D view shows
them inside the CT's skull, in mm; drag to turn it. The 2D viewer above and the 3D crosshair follow
each other.
"""),
    code("""
tumour_ct = resample_labels(pair.moving_labels, final.transform, ct)
planned = np.asarray(final.transform.inverse().transform_point(target_mr))
grid = ct.index_to_physical(np.indices(ct.shape).reshape(3, -1)[::-1].T.astype(float)).reshape(*ct.shape, 3)
scene = np.where(np.isin(tumour_ct.array, (7, 8, 9)), tumour_ct.array, 0).astype(np.uint8)
scene[np.linalg.norm(grid - planned, axis=-1) <= max(TARGET_MM / 2, 0.6 * max(ct.spacing))] = 20
scene[(ct.array > 300) & (scene == 0)] = 2
labels_3d = ct.with_array(scene, kind="label", labels={
    2: ("skull", (245, 245, 220)), 7: ("oedema", (240, 228, 66)), 8: ("enhancing tumour", (213, 94, 0)),
    9: ("necrotic core", (204, 121, 167)), 20: ("target (5 mm)", (255, 0, 0))})
view = View3D(ct, labels_3d, values=[2, 8, 20], height=380, mesh_opacity=0.8)
view.position = [float(c) for c in planned]
unlink = view.link(fused)
view
"""),
    md("""
(A 5 mm sphere on 3 mm voxels is a few voxels: with `MEDLAB_FAST=1` it is drawn at least two voxels
across so that it shows at all.)

## 6. What an error of 2 mm means at the target

Registration is one error among several: the tracking camera, the instrument's calibration, the
brain shifting once the skull is open. Navigation systems quote their total as one number, e.g.
**2 mm RMS** at the tool tip. RMS is not a maximum: if the error is random and the same in every
direction (an isotropic Gaussian with σ = 2/√3 mm per axis), its length follows a **Maxwell**
distribution, and

* only about **61 %** of tips land within 2 mm of where they aim;
* a tip aimed at the centre of a **5 mm** target (radius 2.5 mm) lands inside it with probability
  `maxwell.cdf(2.5 / σ)`;
* a **safety margin** around a vessel that 95 % of tips respect is `maxwell.ppf(0.95) × σ`, not 2 mm.

The cell computes these (and checks them by simulation), adds our registration's measured TRE at the
target as a fixed offset, and plots how the chance of a hit falls with the error.
"""),
    code("""
def hit_probability(rms_mm, radius_mm, offset_mm=0.0, n=200_000, seed=0):
    \"\"\"Chance that a tip with isotropic Gaussian error (RMS rms_mm in 3D), aimed offset_mm off the
    centre, lands within radius_mm of the centre (Monte Carlo; exact without offset: Maxwell).\"\"\"
    sigma = rms_mm / np.sqrt(3)
    tips = np.random.default_rng(seed).normal(0.0, sigma, (n, 3)) + np.array([offset_mm, 0.0, 0.0])
    return float(np.mean(np.linalg.norm(tips, axis=1) <= radius_mm))

sigma = TOOL_ERROR_MM / np.sqrt(3)
radius = TARGET_MM / 2
registration_tre = errors(final.transform)["TRE at target (mm)"]
numbers = {
    "tips within 2 mm of the aim": stats.maxwell.cdf(2.0 / sigma),
    f"hit a {TARGET_MM:g} mm target, aimed at its centre (exact)": stats.maxwell.cdf(radius / sigma),
    f"hit a {TARGET_MM:g} mm target, aimed at its centre (simulated)": hit_probability(TOOL_ERROR_MM, radius),
    f"hit it with our registration's {registration_tre:.2f} mm offset added": hit_probability(TOOL_ERROR_MM, radius,
                                                                                                 registration_tre),
    "margin 95 % of tips respect (mm)": stats.maxwell.ppf(0.95) * sigma,
    f"largest RMS error that still hits the {TARGET_MM:g} mm target 95 % of the time (mm)":
        radius / stats.maxwell.ppf(0.95) * np.sqrt(3),
}
display(pd.Series(numbers, name="value").round(3).to_frame())

rms = np.linspace(0.25, 5.0, 40)
fig, ax = plt.subplots(figsize=(6, 3.5))
for d in (5.0, 10.0, 20.0):
    ax.plot(rms, stats.maxwell.cdf((d / 2) / (rms / np.sqrt(3))), label=f"{d:g} mm target")
ax.axvline(TOOL_ERROR_MM, color="k", lw=0.6, ls="--")
ax.set_xlabel("RMS tool-tip error (mm)"); ax.set_ylabel("chance the tip lands inside"); ax.set_ylim(0, 1.02)
ax.legend(fontsize=8); plt.show()
"""),
    md("""
**Exercise 2.** A vessel runs next to the target. With a tool error of 2 mm RMS (isotropic), what
**safety margin** (mm) around the vessel keeps 95 % of tool tips out of it? Set `my_margin_mm`.
"""),
    code("""
my_margin_mm = 3.2

def check_margin(margin_mm):
    right = stats.maxwell.ppf(0.95) * TOOL_ERROR_MM / np.sqrt(3)
    inside = stats.maxwell.cdf(margin_mm / (TOOL_ERROR_MM / np.sqrt(3)))
    if abs(margin_mm - right) < 0.15:
        print(f"✓ {right:.2f} mm: 95 % of errors are shorter than that; the quoted 2 mm RMS is not a bound")
    else:
        print(f"✗ a {margin_mm} mm margin keeps {inside:.0%} of tips out, not 95 %: the length of a 3D Gaussian "
              "error follows a Maxwell distribution, use its 95th percentile")

check_margin(my_margin_mm)
""", wrong_answers=["2.0", "4.0", "1.0"]),
    md("""
## 7. The report

One HTML file for the planning meeting: the fused images, every error measured above, the hit
chances, and the recipe that made the registration (pictures embedded; it opens offline).
"""),
    code("""
LIMITATIONS = (
    "A phantom with a rigid, known motion: no MR distortion, no brain shift, a CT made from the same tissue map as "
    "the MR. Errors in mm are against that known motion; on a patient only FRE and the fused display are available. "
    "The hit chances assume an isotropic Gaussian tool error of the quoted RMS.")
report = Report("CT/MR fusion for surgical navigation: case study",
                subtitle=f"medlab {medlab.__version__}, {' × '.join(map(str, SIZE))} voxels of "
                         f"{' × '.join(f'{s:g}' for s in SPACING)} mm")
report.add_section("Registration")
report.add_image(ct, second=mr_on_ct, at=target_ct, window=80, level=40,
                 caption="CT / registered MR checkerboard through the target")
report.add_table(summary.reset_index().to_dict("records"), caption="errors of each start and refinement (mm)")
report.add_number("FRE of the landmark fit", fre, unit="mm", note="what the software reports")
report.add_number("TRE at the target after MI", errors(final.transform)["TRE at target (mm)"], unit="mm",
                  note="against the phantom's known motion")
report.add_section("At the target")
report.add_table([{"quantity": k, "value": v} for k, v in numbers.items()])
report.add_section("Limitations")
report.add_text(LIMITATIONS)
report.add_recipe(recipe, caption="landmarks, then mutual information")
path = report.save("fusion_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(report.numbers.rows)} numbers)")
"""),
    md("""
## 8. Limitations, honestly

* **A phantom with a rigid motion.** Real CT–MR fusion also meets MR **geometric distortion** (worst
  far from the magnet's centre and at air–tissue boundaries), different fields of view, and patient
  motion within a scan; none of these is simulated, so the sub-millimetre TRE here is a best case.
* **The truth is known here.** On a patient, only FRE and the fused display are available: check the
  checkerboard, and measure TRE on anatomical points you did not use for the fit.
* **Brain shift.** Once the dura is open, the brain moves by several mm: no preoperative
  registration, however exact, accounts for it (intraoperative imaging does).
* **Isotropic, random errors** in section 6; real errors have systematic parts and directions, which
  is why the registration's own offset was added separately.
* **The CT is built from the same tissue map as the MR**, so their boundaries agree perfectly, and
  the skin thresholds are easy; real CT has streaks from metal and real MR has bias fields.

## Run it on your own data

```python
import medlab
from medlab.register import landmark_register, linear_register, resample_image
from medlab.widgets import RegisterWidget

ct = medlab.load("path/to/ct_dicom_folder/")           # the navigation frame (fixed)
mr = medlab.load("path/to/t1_post_contrast.nii.gz")     # the planning image (moving)
w = RegisterWidget(ct, mr)                              # pick "Landmark registration", click pairs, then MI
w

# or in a script, with landmarks (mm, LPS) clicked in each scan
start = landmark_register(ct, mr, fixed_landmarks=[...], moving_landmarks=[...])
final = linear_register(ct, mr, start.transform, shrink_factors=(4, 2, 1))
medlab.save(resample_image(mr, final.transform, ct), "mr_on_ct.nii.gz")
final.transform.save("ct_to_mr.h5")                     # 3D Slicer, ANTs and elastix read it
```
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST})")
"""),
]


CASE_MAMMOGRAPHY = [
    md("""
# Case study: micro-calcification clusters on a mammogram

A screening mammogram is read for two signs of early breast cancer: masses, and **clusters of
micro-calcifications**: specks of calcium 0.1–0.5 mm across, grouped within a centimetre or so, the
commonest sign of ductal carcinoma in situ. They are tiny, bright and easy to miss in dense
tissue, and computer-aided detection (CAD) was first sold to mark them. This case study builds two
such detectors on a mammogram phantom whose every speck is known, and measures them the way the
field does: sensitivity against false marks per image (FROC), on images neither detector saw.

**You will learn to**

1. enhance a mammogram with **CLAHE**, and measure what it does to the specks' contrast-to-noise
   ratio (why a detector should not run on the enhanced picture);
2. find **candidate** spots with a difference-of-Gaussians detector set in millimetres, and read the
   sensitivity ceiling it sets for everything after it;
3. classify candidates with an **SVM on hand-made features** (as the clinical CAD literature did) and
   with a **small CNN on patches**, trained here on phantoms;
4. score both with the **FROC curve** and the **sensitivity at a fixed false-positive rate**, with
   an honest confidence interval;
5. check what the CNN looks at with **Grad-CAM**;
6. report clusters in a **structured findings table** (count, size, location), and say why it is
   not a **BI-RADS** grade.

Everything runs offline on a CPU; with `MEDLAB_FAST=1` (what CI uses) the phantoms are fewer and
smaller.
"""),
    code("""
import os
import time

import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display
from scipy import ndimage
from skimage.filters import threshold_otsu
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from statsmodels.stats.proportion import proportion_confint

import medlab
from medlab.detect import (FEATURES, cluster_findings, extract_patches, froc_curve, group_clusters,
                           match_points, spot_candidates, spot_features)
from medlab.explain import grad_cam
from medlab.explain.network import build_classifier, classifier_config
from medlab.report import Report
from medlab.widgets import ExplainWidget, PreprocessWidget, Viewer, Workbench

started = time.perf_counter()
"""),
    md("""
## Settings

Change them here, never in the code below.
"""),
    code("""
FAST = os.environ.get("MEDLAB_FAST") == "1"
SIZE = (384, 384) if FAST else (512, 512)   # pixels of each phantom mammogram, 0.1 mm each
N_TRAIN = 5 if FAST else 12                 # phantoms the classifiers learn from
N_TEST = 4 if FAST else 10                  # phantoms they are scored on, never seen in training
NOISE = 0.06                                # quantum-like noise, fraction of the range
CNN_EPOCHS = 15 if FAST else 30
FP_RATE = 1.0                               # the operating point: false marks per image
THREADS = 1   # small networks on a shared 2-core machine: 1 thread was 40x faster than 2 here (no oversubscription)
torch.set_num_threads(THREADS)
print(dict(FAST=FAST, SIZE=SIZE, N_TRAIN=N_TRAIN, N_TEST=N_TEST, CNN_EPOCHS=CNN_EPOCHS))
""", tags=["parameters"]),
    md("""
## 1. A mammogram whose every speck is known

`medlab.data.mammogram` draws a cranio-caudal view: the breast against the chest wall (the image's
left edge), fibroglandular tissue as power-law texture (bright, like dense tissue on a real
mammogram), and clusters of 5–15 specks 0.1–0.5 mm across. Pixels are 0.1 mm, as on a digital
mammography detector. The phantom records each speck's centre in mm.

Two specks closer than about 0.4 mm merge into one bright dot at this resolution; no detector can
tell them apart, so the ground truth below counts them as one **visible calcification**.
"""),
    code("""
def visible_calcifications(phantom, merge_mm=0.4):
    \"\"\"Centres (mm) of the specks inside the image, those closer than merge_mm counted as one.\"\"\"
    pts = np.array([c["centre_mm"] for c in phantom.info["calcifications"] if phantom.mammo.contains(c["centre_mm"])])
    groups = group_clusters(pts, max_distance_mm=merge_mm, min_count=1)
    return np.array([pts[groups == k].mean(axis=0) for k in range(groups.max() + 1)])

def phantom(seed):
    return medlab.data.mammogram(size=SIZE, spacing=0.1, noise=NOISE, seed=seed)

case = phantom(0)
mammo = case.mammo
truth = visible_calcifications(case)
true_clusters = case.info["clusters"]
print(mammo.describe())
print(f"{len(case.info['calcifications'])} specks, {len(truth)} visible calcifications, {len(true_clusters)} clusters:")
for c in true_clusters:
    print(f"  centre {np.round(c['centre_mm'], 1)} mm, radius {c['radius_mm']:.1f} mm, {c['count']} specks")
"""),
    code("""
calc_label = mammo.with_array((case.labels.array == 3).astype(np.uint8), kind="label",
                              labels={1: ("calcification", (213, 40, 40))})
viewer = Viewer(mammo, height=420)
viewer.set_labels(calc_label, outline=True)
viewer.add_point_set("truth", color=(0, 200, 0), marker="circle", label="true calcifications", points=truth)
viewer.position = list(true_clusters[0]["centre_mm"])
viewer
"""),
    md("""
Zoom in with the mouse wheel on a cluster (the green circles): most specks are a few pixels across.
Now imagine finding them in a whole breast, 2,500 × 3,300 pixels, four views per woman.

## 2. CLAHE: better for the eye, worse for the detector

Contrast-limited adaptive histogram equalisation stretches the contrast within each region
(`kernel_size` in mm), so faint specks in dense tissue stand out for a reader. The preprocess widget
below has it selected: move *clip limit* and watch the preview.
"""),
    code("""
clahe_widget = PreprocessWidget(mammo, stage="clahe", height=300)
clahe_widget.set(clip_limit=0.01, kernel_size=8.0)
clahe_widget
"""),
    md("""
A detector does not look: it measures. What matters to it is each speck's **contrast-to-noise
ratio** (CNR: its contrast over the noise of its surroundings). `spot_features` measures it at the
true calcifications, before and after CLAHE:
"""),
    code("""
versions = {"original": mammo}
for clip in (0.01, 0.03):
    versions[f"CLAHE, clip {clip}"] = medlab.preprocess.clahe(mammo, clip_limit=clip, kernel_size=8.0)
cnr = {name: np.median(spot_features(img, truth).column("cnr")) for name, img in versions.items()}
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
zoom = tuple(slice(int(c) - 40, int(c) + 40) for c in mammo.physical_to_index(true_clusters[0]["centre_mm"])[::-1])
for ax, (name, img) in zip(axes, versions.items()):
    ax.imshow(img.array[zoom], cmap="gray"); ax.set_title(f"{name}: median CNR {cnr[name]:.1f}", fontsize=9); ax.axis("off")
plt.show()
"""),
    md("""
CLAHE raises the specks' contrast, and the noise around them more: their CNR **falls**. Equalising
is a display choice for the reader; the detectors below run on the original pixels (exercise 1, after
the next section, checks what CLAHE does to the detector itself).

## 3. Candidates: a detector that misses little and finds too much

`spot_candidates` filters the image with two Gaussians (σ and 1.6σ, **in mm**, so the same setting
works at any pixel size), keeps the local maxima of their difference, and scores each in noise
units (robust standard deviations of the response within the breast). Low threshold: few true
specks missed, many false candidates in the texture, which the classifiers must then reject. Each
candidate comes with the features a classifier will use (`medlab.detect.FEATURES`).

The search is limited to the breast, 1 mm inside the skin line, where the edge itself would answer.
The workbench shows the stage with its controls (move *threshold*, press Apply); the code below does
the same.
"""),
    code("""
def breast_mask(image, inset_mm=1.0):
    \"\"\"The breast (Otsu threshold of a smoothed image), inset from the skin line.\"\"\"
    px = float(np.mean(image.spacing))
    smooth = ndimage.gaussian_filter(image.array, 1.0 / px)
    inside = ndimage.binary_erosion(smooth > threshold_otsu(smooth), iterations=max(1, round(inset_mm / px)))
    return image.with_array(inside.astype(np.uint8), kind="label", labels={1: "breast"})

breast = breast_mask(mammo)
detect_bench = Workbench({"mammogram": mammo, "breast": breast}, group="detect", stage="spot_candidates", height=300)
detect_bench.set_input("mask", "breast")
detect_bench
"""),
    code("""
DETECTOR = dict(sigma_mm=0.1, threshold=3.5, min_distance_mm=0.3)
HIT_MM = 0.5          # a candidate within 0.5 mm of a visible calcification finds it

candidates, features = spot_candidates(mammo, breast, **DETECTOR)
hits = match_points(candidates, truth, radius_mm=HIT_MM)
found = len(set(hits[hits >= 0]))
print(f"{len(candidates)} candidates: {int((hits >= 0).sum())} on calcifications, {int((hits < 0).sum())} false; "
      f"{found} of {len(truth)} visible calcifications found ({found / len(truth):.0%}: the ceiling)")
viewer.add_point_set("candidates", color=(255, 80, 0), marker="cross", label="candidates",
                     points=candidates.points[hits < 0])
display(features.to_pandas().head(6).round(3))
"""),
    md("""
**Exercise 1.** Run the candidate detector on the CLAHE image (clip limit 0.01) instead of the
original, on a few phantoms. Does the detector's own FROC summary (CPM of the `dog_snr` score) go
`"up"`, `"down"`, or stay the `"same"`? Set `my_clahe`; the check runs both.
"""),
    code("""
my_clahe = "down"

_clahe_cpm = {}

def detector_cpm(enhance, seeds=range(100, 104)):
    scores, all_hits, offset = [], [], 0
    for seed in seeds:
        p = phantom(seed)
        image = medlab.preprocess.clahe(p.mammo, clip_limit=0.01, kernel_size=8.0) if enhance else p.mammo
        vis = visible_calcifications(p)
        c, f = spot_candidates(image, breast_mask(p.mammo), **DETECTOR)
        h = match_points(c, vis, radius_mm=HIT_MM)
        scores.append(np.asarray(f.column("dog_snr") if len(f) else [], float))
        all_hits.append(np.where(h >= 0, h + offset, -1)); offset += len(vis)
    return froc_curve(np.concatenate(scores), np.concatenate(all_hits), n_lesions=offset, n_images=len(seeds)).cpm()

def check_clahe(answer):
    if not _clahe_cpm:                          # computed once, however many answers are checked
        _clahe_cpm.update(original=detector_cpm(False), clahe=detector_cpm(True))
    a, b = _clahe_cpm["original"], _clahe_cpm["clahe"]
    truth_ = "same" if abs(a - b) < 0.02 else ("up" if b > a else "down")
    if answer == truth_:
        print(f"✓ CPM {a:.2f} on the original, {b:.2f} after CLAHE: the enhancement amplifies the noise the detector "
              "measures against, so its specks stand out less")
    else:
        print(f"✗ CPM {a:.2f} on the original, {b:.2f} after CLAHE: what you see better, a detector that scores in "
              "noise units does not")

check_clahe(my_clahe)
""", wrong_answers=['"up"', '"same"']),
    md("""
**Exercise 2.** Your hospital's detector has **0.07 mm** pixels instead of 0.1 mm. To look for the
same specks, what `sigma_mm` do you pass to `spot_candidates`? Set `my_sigma_mm`.
"""),
    code("""
my_sigma_mm = 0.1

def check_sigma(sigma_mm):
    if abs(sigma_mm - DETECTOR["sigma_mm"]) < 1e-9:
        print(f"✓ {sigma_mm} mm: σ is in millimetres, and the specks have the same size in mm whatever the pixel; "
              "medlab converts it to pixels per axis (1.43 pixels at 0.07 mm)")
    elif abs(sigma_mm - DETECTOR["sigma_mm"] * 0.07 / 0.1) < 1e-3 or abs(sigma_mm - DETECTOR["sigma_mm"] * 0.1 / 0.07) < 1e-3:
        print(f"✗ {sigma_mm:.3g} mm rescales by the pixel size: that is what you would do with a σ in pixels. "
              "Here σ is in mm, so it does not change")
    else:
        print(f"✗ {sigma_mm} mm: the specks are the same size in mm; keep the σ that matches them")

check_sigma(my_sigma_mm)
""", wrong_answers=["0.07", "0.1 * 0.1 / 0.07", "0.3"]),
    md("""
## 4. Training data, and why accuracy is the wrong score

Each training phantom gives candidates; a candidate within 0.5 mm of a visible calcification is a
positive, every other a negative. The phantoms used for scoring (section 7) have other seeds: the
classifiers never see them.
"""),
    code("""
def candidates_of(seed):
    p = phantom(seed)
    vis = visible_calcifications(p)
    c, f = spot_candidates(p.mammo, breast_mask(p.mammo), **DETECTOR)
    return {"phantom": p, "truth": vis, "candidates": c, "features": f,
            "hits": match_points(c, vis, radius_mm=HIT_MM),
            "X": np.array([[row[k] for k in FEATURES] for row in f.rows]).reshape(-1, len(FEATURES))}

t0 = time.perf_counter()
train = [candidates_of(seed) for seed in range(1, 1 + N_TRAIN)]
test = [candidates_of(seed) for seed in range(1000, 1000 + N_TEST)]
X_train = np.concatenate([c["X"] for c in train])
y_train = np.concatenate([c["hits"] >= 0 for c in train])
print(f"{len(X_train)} training candidates from {N_TRAIN} phantoms, {y_train.mean():.1%} of them calcifications "
      f"({time.perf_counter() - t0:.1f} s)")
"""),
    md("""
**Exercise 3.** A classifier that answers "not a calcification" to every candidate: what is its
accuracy on these training candidates? Set `my_accuracy` (a fraction).
"""),
    code("""
my_accuracy = 1 - y_train.mean()

def check_accuracy(accuracy):
    true = float(1 - y_train.mean())
    if abs(accuracy - true) < 0.005:
        print(f"✓ {true:.1%} accurate, and it finds no calcification at all: when positives are a minority, "
              "accuracy rewards saying no. Detection is scored by sensitivity against false marks per image (FROC)")
    elif abs(accuracy - y_train.mean()) < 0.005:
        print(f"✗ {accuracy:.1%} is the share of calcifications: the classifier is right on the others")
    else:
        print(f"✗ {accuracy:.1%}: it is right on every negative candidate, wrong on every positive one")

check_accuracy(my_accuracy)
""", wrong_answers=["y_train.mean()", "0.5", "0.0"]),
    md("""
## 5. The classic way: an SVM on hand-made features

Clinical CAD systems of the 1990s and 2000s did exactly this: measure a few features per candidate
(contrast, size, shape, local noise) and train a support vector machine on them. scikit-learn's
`SVC` with an RBF kernel, the features standardised, the classes weighted by their rarity. Its
`decision_function` (distance from the boundary) is the candidate's score.
"""),
    code("""
svm = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0, gamma="scale", class_weight="balanced"))
svm.fit(X_train, y_train)

fig, ax = plt.subplots(figsize=(5, 3.5))
for label, colour, name in ((False, "C1", "false candidates"), (True, "C2", "calcifications")):
    ax.scatter(X_train[y_train == label, FEATURES.index("size_mm")], X_train[y_train == label, FEATURES.index("cnr")],
               s=6, c=colour, alpha=0.5, label=name)
ax.set_xlabel("size (mm, equivalent diameter)"); ax.set_ylabel("contrast-to-noise ratio"); ax.legend(fontsize=8)
plt.show()
"""),
    md("""
## 6. The deep way: a small CNN on patches

The same candidates, but the classifier sees a 1.6 × 1.6 mm patch (16 × 16 pixels) around each, and
learns its own features. The network is medlab's small classifier (3 × 3 convolutions, batch norm,
ReLU, one pooling step, global average pooling, a linear layer). Patches are turned by multiples of
90° and mirrored during training (a speck has no up), the loss weighs the positives by their rarity,
the seed is fixed.
"""),
    code("""
PATCH = 16

def patches_of(cases):
    p = np.concatenate([extract_patches(c["phantom"].mammo, c["candidates"], size=PATCH) for c in cases])
    return (p - p.mean(axis=(1, 2), keepdims=True)) / (p.std(axis=(1, 2), keepdims=True) + 1e-3)   # per patch

torch.manual_seed(0)
cnn = build_classifier(classifier_config("cnn_classifier", spatial_dims=2, channels=[16, 32, 64], downsample=1,
                                         out_channels=2))
x = torch.from_numpy(patches_of(train))[:, None]
y = torch.from_numpy(y_train.astype(np.int64))
weight = torch.tensor([1.0, float((1 - y_train.mean()) / y_train.mean())])
optimiser = torch.optim.Adam(cnn.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
losses, t0 = [], time.perf_counter()
for epoch in range(CNN_EPOCHS):
    cnn.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for i in range(0, len(x), 64):
        batch = order[i:i + 64]
        turned = torch.rot90(x[batch], int(torch.randint(0, 4, (1,), generator=generator)), dims=(2, 3))
        if int(torch.randint(0, 2, (1,), generator=generator)):
            turned = torch.flip(turned, dims=(3,))
        loss = torch.nn.functional.cross_entropy(cnn(turned), y[batch], weight=weight)
        optimiser.zero_grad(); loss.backward(); optimiser.step()
        total += float(loss.detach()) * len(batch)
    losses.append(total / len(x))
cnn.eval()
print(f"trained {CNN_EPOCHS} epochs in {time.perf_counter() - t0:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")

def cnn_scores(case):
    with torch.no_grad():
        logits = cnn(torch.from_numpy(patches_of([case]))[:, None])
    return (logits[:, 1] - logits[:, 0]).numpy()
"""),
    md("""
## 7. FROC: sensitivity against false marks per image, on unseen phantoms

For each classifier, every threshold on its score gives one operating point: the share of visible
calcifications with a candidate above the threshold (**sensitivity**) and the mean number of false
candidates above it per image. The curve of all of them is the FROC. The candidate detector's own
response (`dog_snr`) is a third, classifier-free baseline; no curve can go above the candidates'
ceiling. We read each at **1 false mark per image**, and give a 95 % Wilson interval for that
sensitivity: with a few hundred calcifications it is several points wide.
"""),
    code("""
def pooled_froc(scores):
    all_hits, offset = [], 0
    for c in test:                                     # calcification indices unique over the images
        all_hits.append(np.where(c["hits"] >= 0, c["hits"] + offset, -1))
        offset += len(c["truth"])
    return froc_curve(np.concatenate(scores), np.concatenate(all_hits), n_lesions=offset, n_images=len(test))

frocs = {
    "candidate detector (DoG response)": pooled_froc([c["X"][:, FEATURES.index("dog_snr")] for c in test]),
    "SVM on features": pooled_froc([svm.decision_function(c["X"]) if len(c["X"]) else np.zeros(0) for c in test]),
    "CNN on patches": pooled_froc([cnn_scores(c) for c in test]),
}
n_lesions = next(iter(frocs.values())).n_lesions
rows = []
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, f in frocs.items():
    ax.step(np.maximum(f.fp_per_image, 1e-2), f.sensitivity, where="post", label=name)
    s = f.sensitivity_at(FP_RATE)
    lo, hi = proportion_confint(round(s * n_lesions), n_lesions, method="wilson")
    rows.append({"classifier": name, f"sensitivity at {FP_RATE:g} FP/image": s, "95 % CI": f"{lo:.2f}-{hi:.2f}",
                 "at 0.25 FP/image": f.sensitivity_at(0.25), "CPM (1/8..8 FP/image)": f.cpm()})
ax.axvline(FP_RATE, color="k", lw=0.6, ls="--")
ceiling = frocs["candidate detector (DoG response)"].sensitivity[-1]
ax.axhline(ceiling, color="grey", lw=0.8, ls=":", label=f"candidates' ceiling ({ceiling:.2f})")
ax.set_xscale("log"); ax.set_xlim(0.05, 50); ax.set_ylim(0, 1)
ax.set_xlabel("false positives per image"); ax.set_ylabel("sensitivity (visible calcifications)")
ax.set_title(f"FROC on {N_TEST} unseen phantoms, {n_lesions} calcifications", fontsize=9); ax.legend(fontsize=8)
plt.show()
results = pd.DataFrame(rows).set_index("classifier")
results.round(3)
"""),
    md("""
Read the table, not only the curve: the interval says how far the next set of images could move
each number. The CPM (mean sensitivity at 1/8, 1/4 … 8 false marks per image) is the one-number
summary used by the lung-nodule challenges ANODE09 and LUNA16.

## 8. What does the CNN look at? Grad-CAM on patches

Grad-CAM (captum's `LayerGradCam`) weighs the last convolutional block's feature maps by the
gradient of the "calcification" score: where those features raise the score. On a true speck it
should sit on the speck; on a false candidate it shows what fooled the network. The disk of the
calcification (or, for a false candidate, of the candidate) is the mask the localisation numbers
are measured against.
"""),
    code("""
def patch_image(case, i):
    \"\"\"Candidate i's normalised patch as an image (0.1 mm pixels) and a 0.3 mm disk at its centre.\"\"\"
    arr = patches_of([case])[i]
    image = medlab.Image(arr, spacing=case["phantom"].mammo.spacing)
    yy, xx = np.indices(arr.shape)
    disk = ((yy - PATCH // 2) ** 2 + (xx - PATCH // 2) ** 2) * image.spacing[0] ** 2 <= 0.3 ** 2
    return image, image.with_array(disk.astype(np.uint8), kind="label", labels={1: "candidate"})

shown = test[0]
scores = cnn_scores(shown)
picks = {"true speck, highest score": int(np.argmax(np.where(shown["hits"] >= 0, scores, -np.inf))),
         "false candidate, highest score": int(np.argmax(np.where(shown["hits"] < 0, scores, -np.inf))),
         "true speck, lowest score": int(np.argmin(np.where(shown["hits"] >= 0, scores, np.inf)))}
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for k, (name, i) in enumerate(picks.items()):
    image, disk = patch_image(shown, i)
    saliency, numbers = grad_cam(image, cnn, disk, target_class=1)
    energy = next((r["value"] for r in numbers.rows if r["quantity"] == "energy in mask"), float("nan"))
    axes[0, k].imshow(image.array, cmap="gray"); axes[0, k].set_title(f"{name}\\nscore {scores[i]:.1f}", fontsize=8)
    axes[1, k].imshow(image.array, cmap="gray"); axes[1, k].imshow(saliency.array, cmap="inferno", alpha=0.55)
    axes[1, k].set_title(f"Grad-CAM: {energy:.0%} in the disk\\n(the disk is {disk.array.mean():.0%} of the patch)", fontsize=8)
    for a in axes[:, k]: a.axis("off")
plt.show()
"""),
    md("""
The maps are coarse (the last block works at half the patch's resolution: 8 × 8 cells of 0.2 mm),
which is Grad-CAM's nature. The explain widget holds the other methods and the sanity checks (does
the map change when the network's weights are randomised?); here on the highest-scoring false
candidate:
"""),
    code("""
fooled, fooled_disk = patch_image(shown, picks["false candidate, highest score"])
explain = ExplainWidget(fooled, cnn, fooled_disk, height=260)
explain
"""),
    md("""
## 9. The findings table: clusters, not specks

A radiologist acts on **clusters**, not single specks. We fix the SVM's operating point at 1 false
mark per image (its threshold from the FROC above, chosen on the test set here for simplicity: a
real study fixes it on separate data), keep the candidates above it on one unseen mammogram, and
group them: `cluster_findings` links detections closer than 5 mm and calls three or more a cluster.
The table gives each cluster's size and place in mm; the last columns say where it is in the
breast in words a report uses, and whether it is one of the phantom's true clusters.
"""),
    code("""
threshold = frocs["SVM on features"].threshold_at(FP_RATE)
report_case = test[0]
kept = report_case["candidates"].points[svm.decision_function(report_case["X"]) >= threshold]
clusters, findings = cluster_findings(report_case["phantom"].mammo, detections=kept, max_distance_mm=5.0, min_count=3)

image = report_case["phantom"].mammo
chest_wall_x = image.bounds()[0][0]                  # the image's left edge
nipple_y = float(np.mean([image.bounds()[0][1], image.bounds()[1][1]]))
depth = image.bounds()[1][0] - chest_wall_x
true_c = report_case["phantom"].info["clusters"]
table = findings.to_pandas()
if len(table):
    table["distance from chest wall (mm)"] = table["x"] - chest_wall_x
    table["third"] = pd.cut(table["distance from chest wall (mm)"], [0, depth / 3, 2 * depth / 3, depth],
                            labels=["posterior", "middle", "anterior"])
    table["off the nipple line (mm)"] = table["y"] - nipple_y
    hit = match_points(clusters, [c["centre_mm"] for c in true_c], radius_mm=[c["radius_mm"] + 2 for c in true_c])
    table["true cluster?"] = np.where(hit >= 0, "yes", "no (false cluster)")
found_c = set(hit[hit >= 0].tolist()) if len(table) else set()
print(f"{len(kept)} detections above the SVM threshold {threshold:.2f}; {len(clusters)} clusters reported; "
      f"{len(found_c)} of the phantom's {len(true_c)} true clusters among them")
display(table.round(1))
"""),
    code("""
report_view = Viewer(image, height=420)
report_view.add_point_set("detections", color=(255, 80, 0), marker="cross", label="detections", points=kept)
report_view.add_point_set("clusters", color=(0, 160, 255), marker="square", label="clusters", points=clusters.points)
report_view.add_point_set("truth", color=(0, 200, 0), marker="circle", label="true calcifications",
                          points=report_case["truth"])
if len(clusters):
    report_view.position = list(clusters.points[0])
report_view
"""),
    md("""
The same stage is in the workbench of section 3 (pick *Cluster findings*, the detections go in as
points), so a recipe can replay it.

### Why this is not a BI-RADS grade

A BI-RADS assessment (0 to 6) is a radiologist's conclusion about the **whole examination**: it
weighs the calcifications' **morphology** (amorphous, coarse heterogeneous, fine pleomorphic, fine
linear branching) and **distribution** (grouped, linear, segmental), both views (CC and MLO), earlier
mammograms, the other breast, ultrasound and the patient's history. This notebook has one view of a
phantom whose specks are round Gaussian dots: there is no morphology to grade, and nothing here was
validated on patients. A number from 0 to 6 printed under the table would look like a diagnosis and
carry none of that evidence. The table reports what was measured (how many, how large, where), which
is what a reader can check.

## 10. The report

One HTML file with the pictures, the FROC curves, the numbers with their intervals and the findings
table, for whoever reads the results after the class (pictures embedded; it opens offline).
"""),
    code("""
LIMITATIONS = (
    f"Phantoms, not patients: round Gaussian specks on smooth tissue. Scored on {N_TEST} unseen phantoms "
    f"({n_lesions} calcifications): the intervals are wide. The SVM's operating point was chosen on the test set. "
    "The candidate detector caps every sensitivity. The findings table is not a BI-RADS grade.")
report = Report("Mammography micro-calcifications: case study",
                subtitle=f"medlab {medlab.__version__}, {N_TRAIN} training and {N_TEST} test phantoms of "
                         f"{SIZE[0]} × {SIZE[1]} pixels (0.1 mm)")
report.add_section("The mammogram")
report.add_image(mammo, labels=calc_label, caption="phantom mammogram, calcifications outlined")
report.add_section("Detection: FROC on unseen phantoms")
for name, froc in frocs.items():
    report.add_curve(froc.to_curve(), caption=name)
report.add_table(results.reset_index().to_dict("records"), caption=f"sensitivity at {FP_RATE:g} false marks per image, CPM")
for name, f in frocs.items():
    report.add_number(f"{name}: sensitivity at {FP_RATE:g} false mark per image", f.sensitivity_at(FP_RATE),
                      note=f"{n_lesions} calcifications on {N_TEST} unseen phantoms")
    report.add_number(f"{name}: CPM", f.cpm())
report.add_section("Findings on one unseen mammogram")
report.add_table(table.astype({c: str for c in table.columns if str(table[c].dtype) == "category"}).round(1)
                 .to_dict("records"), caption="clusters (not a BI-RADS grade)")
report.add_number("true clusters found", len(found_c), note=f"of {len(true_c)} in this phantom")
report.add_section("Limitations")
report.add_text(LIMITATIONS)
path = report.save("mammography_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(report.numbers.rows)} numbers)")
"""),
    md("""
## 11. Limitations, honestly

* **Phantoms, not patients.** Real calcifications vary in shape and density; real tissue has
  vessels, skin folds, calcified arteries and benign calcifications that the phantom lacks. The
  numbers above say how the pipeline behaves on this phantom, nothing about patients.
* **Small test set.** A few unseen images: the confidence interval is wide, and the SVM and CNN
  curves overlap within it. Do not rank methods on a difference smaller than the interval.
* **Operating point chosen on the test set** (section 9), which flatters it; fix it on separate data.
* **The candidate detector caps everything**: a speck it misses, no classifier can find.
* **Truth by distance**: a candidate within 0.5 mm counts as a hit; a larger radius raises every
  sensitivity.

## Run it on your own data

```python
import medlab
from medlab.detect import spot_candidates, cluster_findings

mammo = medlab.load("path/to/mammogram.dcm")          # a DICOM MG image (FOR PROCESSING if you have it)
print(mammo.spacing)                                   # the detector works in mm: check the pixel size
candidates, features = spot_candidates(mammo, sigma_mm=0.1, threshold=3.5)
clusters, findings = cluster_findings(mammo, detections=candidates.points[:200])
findings.to_pandas()
```

Without ground truth there is no FROC: mark the calcifications you trust (in the viewer's point mode)
and score against those. Classifiers trained on phantoms will not transfer to your images: retrain them
on annotated cases from your own detector.
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST})")
"""),
]
CASE_FAST_MODELS = [
    md("""
# Case study: fast models — what a smaller, quantised U-Net costs in accuracy

Papers and vendors promise tumour segmentation in "real time" and "on the edge": on a laptop, a
scanner console, a tablet. The usual recipe has two steps: **distil** a large network into a smaller
one that learns from the large one's outputs, then **quantise** it (store and compute with 8-bit
integers or 16-bit floats instead of 32-bit floats). This case study applies both to the brain
tumour U-Net that ships with medlab (T1 + FLAIR: enhancing tumour, necrotic core, oedema) and
**measures, in this run, on this machine**, what each step buys in size and speed and what it costs
in Dice against the phantom's truth.

**You will learn to**

1. distil a 3D U-Net into one with half the channels per layer, initialised from the teacher and
   trained on the teacher's soft outputs (KL divergence) plus the true labels (Dice + cross-entropy);
2. quantise a network for CPU with torch: dynamic int8 (and why it does nothing to a conv U-Net),
   weight-only int8, bfloat16, and static int8 with calibration;
3. measure size, speed and accuracy side by side, the same way for every variant, and read the
   trade-off honestly;
4. say what such a table cannot tell you (phantoms, one machine, a machine shared with other jobs).

Everything runs offline on a CPU. With `MEDLAB_FAST=1` (what CI uses) the student trains for a few
hundred steps on two phantoms and is scored on one held-out phantom: its Dice is that of a rushed
distillation, and the notebook says so next to the numbers. Prerequisites: tutorial `04`
(training a U-Net) and the brain tumour case study `C1`.
"""),
    code("""
import copy
import io
import os
import time
import warnings
from pathlib import Path

import ipywidgets as W
import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display
from monai.losses import DiceCELoss

import medlab
from medlab import metrics
from medlab.deep import deep_segment, pretrained, pretrained_models
from medlab.deep.cases import brain_tumour_cases
from medlab.deep.inference import labels_from_probabilities, network_from_checkpoint, sliding_window
from medlab.deep.networks import build_network, network_config
from medlab.deep.preprocessing import from_network, labels_to_network, to_network
from medlab.outputs import Checkpoint, Curve
from medlab.report import Report
from medlab.widgets import Workbench

started = time.perf_counter()
"""),
    md("""
## Settings

Change them here, never in the code below.
"""),
    code("""
FAST = os.environ.get("MEDLAB_FAST") == "1"
N_TRAIN = 2 if FAST else 8                  # phantoms the student learns from (seeds 0..N_TRAIN-1: the teacher's own)
STEPS = 200 if FAST else 1500               # distillation steps (2 patches each)
TEST_SEEDS = [1000] if FAST else [1000, 1001, 1002, 1003]   # held out: neither network saw them
REPEATS = 2 if FAST else 5                  # inference timings per variant; the best one is reported
STUDENT_CHANNELS = [4, 8, 16, 32]           # the teacher has [8, 16, 32, 64]
TEMPERATURE = 2.0                           # softens the teacher's probabilities for the KL term
ALPHA = 0.5                                 # weight of the teacher (KL) against the labels (Dice + CE)
LEARNING_RATE = 3e-3
TUMOUR_PATCHES = 0.25                       # fraction of patches centred on the tumour; the rest anywhere
THREADS = 1   # one thread: on a shared 2-core machine more threads measured slower, and timings stay comparable
torch.set_num_threads(THREADS)
OUT = Path("fast_models")                   # saved weights, relative to the working folder
OUT.mkdir(exist_ok=True)
print(dict(FAST=FAST, N_TRAIN=N_TRAIN, STEPS=STEPS, TEST_SEEDS=TEST_SEEDS, REPEATS=REPEATS))
""", tags=["parameters"]),
    md("""
## 1. The teacher: the shipped brain tumour U-Net

`medlab.deep.pretrained("brain_tumour")` is a MONAI 3D U-Net trained on phantoms 0–15 for 80 epochs
(its card, `medlab/deep/weights/brain_tumour.json`, records everything). Its checkpoint carries the
**preprocessing** it was trained with (percentile intensity scaling, 1.5 × 1.5 × 2 mm voxels,
48 × 48 × 24 windows): the student below reuses it unchanged, so both read identical inputs.

The test phantoms are seeds 1000 and up, as on the card: never a training seed (0–15).
"""),
    code("""
teacher_model = pretrained("brain_tumour")
prep = teacher_model.preprocessing
teacher = network_from_checkpoint(teacher_model)
values = [int(v) for v in prep["label_values"]]            # 8 enhancing, 9 necrotic core, 7 oedema
names = [teacher_model.labels[v] for v in values]
train_seeds = set(pretrained_models()["brain_tumour"]["training"]["phantom_seeds"])   # from its card
assert not train_seeds & set(TEST_SEEDS), "a test phantom the teacher was trained on would flatter it"

def load_cases(seeds):                                      # the teacher's data: T1 + FLAIR, bias 0.1
    return brain_tumour_cases(seeds, contrasts=("t1", "flair"), bias=0.1)

test = load_cases(TEST_SEEDS)
n_params = lambda net: sum(p.numel() for p in net.parameters())
print(f"teacher: {teacher_model.config['channels']} channels, {n_params(teacher):,} parameters; "
      f"test phantoms {test.seeds}, {test.labels[0].describe()}")
"""),
    md("""
## 2. The student: half the channels, initialised from the teacher

The student is the same MONAI U-Net with half the features at every level, built with
`medlab.deep.build_network`. Trained from random weights, a network this small still painted oedema
over much of the head after 400 steps when we tried (whole-tumour Dice below 0.2), and a few hundred
steps are all a class can wait. So it starts from the teacher, as DistilBERT started from every other layer of BERT: each
layer keeps the **first half of the teacher's channels**, the same half everywhere, so that what one
layer writes is what the next reads. The decoder layers read a concatenation (skip connection +
upsampled features), and take the first half of each part.
"""),
    code("""
student_config = network_config("unet", in_channels=2, out_channels=len(values) + 1, channels=STUDENT_CHANNELS,
                                strides=teacher_model.config["strides"],
                                num_res_units=teacher_model.config["num_res_units"], norm="instance")
student = build_network(student_config)

def halve(teacher, student, channels):
    # Hand-written: torch.nn.utils.prune zeroes weights but keeps every channel (no smaller network),
    # and MONAI has no channel pruning. Slices each teacher tensor to the student's shape.
    concat = {"model." + "1.submodule." * i + "2.0.conv.weight":            # decoder inputs: skip + upsampled
              (channels[i], channels[i + 1] if i == len(channels) - 2 else channels[i])
              for i in range(len(channels) - 1)}
    big, small = teacher.state_dict(), student.state_dict()
    for key, target in small.items():
        w = big[key]
        for dim, (n_big, n_small) in enumerate(zip(w.shape, target.shape)):
            if n_big != n_small:
                if dim == 0 and key in concat:
                    a, b = concat[key]
                    keep = [*range(a // 2), *range(a, a + b // 2)]
                else:
                    keep = list(range(n_small))
                w = w.index_select(dim, torch.tensor(keep))
        small[key] = w.clone()
    student.load_state_dict(small)
    return student

student = halve(teacher, student, teacher_model.config["channels"])
pruned = copy.deepcopy(student).eval()                      # kept to show what training adds
print(f"student: {STUDENT_CHANNELS} channels, {n_params(student):,} parameters "
      f"({n_params(teacher) / n_params(student):.1f}x fewer than the teacher)")
"""),
    md("""
**Exercise 1.** Halving the channels of every layer divides the number of parameters by about how
much? Think of one 3 × 3 × 3 convolution with `c_in` inputs and `c_out` outputs. Give a whole number.
"""),
    code("""
def check_ratio(answer):
    measured = n_params(teacher) / n_params(student)
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return print("✗ give a number, e.g. 3")
    if abs(answer - measured) < 0.6:
        print(f"✓ a convolution has c_in x c_out x 27 weights: halving both divides it by 4; measured "
              f"{measured:.2f} (the first layer keeps its 2 inputs and the last its 4 outputs)")
    elif answer == 2:
        print("✗ that counts only the outputs: each weight connects an input channel to an output channel, "
              "and both counts are halved")
    else:
        print(f"✗ the weights of a convolution grow with c_in x c_out, so halving both divides them by "
              f"about 4; measured {measured:.2f}, not {answer}")

my_ratio = 4
check_ratio(my_ratio)
""", tags=["exercise"], wrong_answers=["2", "8"]),
    md("""
## 3. Distillation: learning from the teacher's soft outputs and from the labels

On each step two 48 × 48 × 24 patches are cut from the training phantoms (a quarter centred on the
tumour, the rest anywhere), the teacher's probabilities are computed on them, and the student
minimises

`loss = ALPHA · T² · KL(teacher_T ‖ student_T)  +  (1 − ALPHA) · (Dice + cross-entropy)(student, labels)`

where `_T` means softmax at temperature `T`: softened probabilities say *how* sure the teacher is
(oedema fading into brain), which a hard label does not. The training phantoms are the teacher's
own (seeds 0 and up); the student never sees a test phantom.
"""),
    code("""
train = load_cases(range(N_TRAIN))
assert set(train.seeds) <= train_seeds
inputs, targets = [], []
for channels, labels in zip(train.images, train.labels):
    x, grid = to_network(channels, prep)                    # the teacher's preprocessing, from its checkpoint
    y = labels_to_network(labels, grid, channels[0])
    classes = np.zeros(y.shape, np.int64)
    for k, value in enumerate(values, 1):
        classes[y == value] = k
    inputs.append(torch.from_numpy(x))
    targets.append(torch.from_numpy(classes))
PATCH = tuple(prep["patch_size"][::-1])                     # (z, y, x)
rng = np.random.default_rng(0)

def random_patch():
    i = int(rng.integers(len(inputs)))
    x, y = inputs[i], targets[i]
    if rng.random() < TUMOUR_PATCHES:
        tumour = torch.nonzero(y > 0)
        centre = tumour[rng.integers(len(tumour))].numpy()
    else:
        centre = np.array([rng.integers(n) for n in y.shape])
    start = [int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, PATCH, y.shape)]
    box = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
    return x[(slice(None), *box)], y[box]

torch.manual_seed(0)
optimiser = torch.optim.Adam(student.parameters(), LEARNING_RATE)
label_loss = DiceCELoss(to_onehot_y=True, softmax=True)
curve = Curve("distillation", x_label="step", y_label="loss", lower_is_better=True)
student.train()
t0 = time.perf_counter()
for step in range(1, STEPS + 1):
    batch = [random_patch() for _ in range(2)]
    x = torch.stack([b[0] for b in batch])
    y = torch.stack([b[1] for b in batch])[:, None]
    with torch.no_grad():
        soft = F.softmax(teacher(x) / TEMPERATURE, dim=1)
    logits = student(x)
    kl = F.kl_div(F.log_softmax(logits / TEMPERATURE, dim=1), soft, reduction="none").sum(1).mean()
    kd = TEMPERATURE ** 2 * kl
    hard = label_loss(logits, y)
    loss = ALPHA * kd + (1 - ALPHA) * hard
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    if step % 10 == 0 or step == 1:
        curve.append("teacher (KL)", step, kd.item())
        curve.append("labels (Dice + CE)", step, hard.item())
student.eval()
train_seconds = time.perf_counter() - t0
print(f"{STEPS} steps in {train_seconds:.0f} s; last losses: KL {kd.item():.3f}, Dice + CE {hard.item():.3f}")
fig, ax = plt.subplots(figsize=(6, 3))
for series in curve.series_names:
    ax.plot(*curve.series(series), label=series)
ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.set_yscale("log"); ax.legend(); plt.show()
"""),
    md("""
## 4. Quantisation for the CPU

Four ways torch offers, each applied to the trained student:

* **Dynamic int8** (`torch.ao.quantization.quantize_dynamic`): stores weights as int8 and quantises
  activations on the fly, but **only for `Linear` (and recurrent) layers**. A U-Net is convolutions;
  it has no `Linear` layer, so dynamic quantisation returns the same network. It is measured anyway,
  because that is what a tutorial that says "just call quantize_dynamic" gives you.
* **Weight-only int8**: each convolution's weights stored as int8 with one scale per output channel
  (4x smaller file), turned back into float32 when loaded: it saves disk and download, not time.
* **bfloat16**: weights and activations in 16-bit brain floats (same range as float32, 8 bits of
  mantissa); the speed depends on whether the CPU has bfloat16 instructions.
* **Static int8** (FX graph mode: `prepare_fx`, calibration, `convert_fx`): int8 weights *and*
  activations, with activation ranges measured on calibration patches; this is the one that can be
  faster, if the CPU's int8 kernels for 3D convolutions are good. It is done twice: with torch's
  default `x86` mapping, which also quantises MONAI's PReLU activations (one slope shared by all
  channels), and with the PReLUs left in float32. The cell prints how often each agrees with the
  float32 student: always compare a quantised network with its float original before trusting it.

`torch.ao.quantization` is deprecated in favour of the separate `torchao` package (not installed
here); it still works on torch 2.13, and the cell reports it if it does not.
"""),
    code("""
warnings.filterwarnings("ignore", message=".*(deprecated|reduce_range|quant_min).*")
from torch.ao.quantization import (QConfig, QConfigMapping, default_weight_observer,   # noqa: E402
                                   get_default_qconfig, get_default_qconfig_mapping, quantize_dynamic)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx                 # noqa: E402

dynamic = quantize_dynamic(copy.deepcopy(student), {torch.nn.Linear}, dtype=torch.qint8)
quantised_layers = sum("quantized" in type(m).__module__ for m in dynamic.modules())
print(f"dynamic int8: {quantised_layers} layers quantised, "
      f"{sum(isinstance(m, torch.nn.Linear) for m in student.modules())} Linear layers in the student")

def int8_weights(state):                     # symmetric, one scale per output channel
    out = {}
    for key, w in state.items():
        if w.ndim >= 2:
            scale = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True).clamp(min=1e-12) / 127
            out[key] = (torch.round(w / scale).to(torch.int8), scale.float())
        else:
            out[key] = w
    return out

def from_int8(stored):
    return {k: v[0].float() * v[1] if isinstance(v, tuple) else v for k, v in stored.items()}

stored_int8 = int8_weights(student.state_dict())
weight_only = build_network(student_config)
weight_only.load_state_dict(from_int8(stored_int8))
weight_only.eval()

class BFloat16(torch.nn.Module):             # float32 in and out, bfloat16 inside
    def __init__(self, net):
        super().__init__()
        self.net = copy.deepcopy(net).to(torch.bfloat16)
    def forward(self, x):
        return self.net(x.to(torch.bfloat16)).float()

bf16 = BFloat16(student).eval()

calibration = [torch.stack([random_patch()[0] for _ in range(2)]) for _ in range(8)]

def static_int8(net, mapping):               # FX graph mode: observe, calibrate, convert; None if unsupported
    try:
        prepared = prepare_fx(copy.deepcopy(net), mapping, (calibration[0],))
        with torch.inference_mode():
            for batch in calibration:        # activation ranges measured on training patches
                prepared(batch)
        quantised = convert_fx(prepared)
        quantised(calibration[0])
        return quantised, ""
    except (RuntimeError, NotImplementedError, AttributeError, AssertionError) as exc:   # an op without int8 kernel
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"

def agreement(net):                          # voxels where the arg-max matches the float32 student's
    with torch.inference_mode():
        return float((net(calibration[0]).argmax(1) == student(calibration[0]).argmax(1)).float().mean())

default_qconfig = get_default_qconfig("x86")
float_prelu = (QConfigMapping()              # everything torch's default quantises except MONAI's PReLU
               .set_object_type(torch.nn.Conv3d, default_qconfig)                    # per-channel weights
               .set_object_type(torch.nn.ConvTranspose3d,                            # per-channel: not supported
                                QConfig(activation=default_qconfig.activation, weight=default_weight_observer))
               .set_object_type(torch.nn.InstanceNorm3d, default_qconfig))
statics, static_problems = {}, {}
for name, mapping in (("student, static int8 (torch default)", get_default_qconfig_mapping("x86")),
                      ("student, static int8, PReLU in float", float_prelu)):
    net, problem = static_int8(student, mapping)
    if net is None:
        static_problems[name] = problem
        print(f"{name}: not supported for this network on torch {torch.__version__}: {problem}")
    else:
        statics[name] = net
        kinds = sorted({type(m).__name__ for m in net.modules() if "quantized" in type(m).__module__})
        print(f"{name}: int8 {', '.join(kinds)}; arg-max agrees with the float32 student on "
              f"{agreement(net):.1%} of a calibration patch's voxels")
"""),
    md("""
**Exercise 2.** How many layers of the student did dynamic quantisation turn into int8 layers?
"""),
    code("""
def check_dynamic(answer):
    if not isinstance(answer, int) or isinstance(answer, bool):
        return print("✗ give a whole number of layers")
    if answer == quantised_layers:
        print(f"✓ {quantised_layers}: quantize_dynamic only replaces Linear and recurrent layers, and a U-Net "
              "is convolutions; the 'quantised' network is the float32 one")
    else:
        print(f"✗ quantize_dynamic only replaces Linear (and LSTM/GRU) layers; the student has "
              f"{sum(isinstance(m, torch.nn.Linear) for m in student.modules())} of them, so {answer} is not it")

my_quantised_layers = 0
check_dynamic(my_quantised_layers)
""", tags=["exercise"], wrong_answers=["14", "1"]),
    md("""
## 5. Size, speed and Dice, side by side

Every variant is measured the same way in this run:

* **parameters**: numbers stored (the int8 ones count the same as float32 ones: they are smaller);
* **file size**: the state dict saved with `torch.save` (int8 weights with their scales for the
  weight-only variant);
* **inference**: wall-clock seconds of the sliding-window network pass over one whole held-out
  phantom (T1 + FLAIR, 128 × 128 × 64 voxels; preprocessing, the same for all, excluded), one
  thread, the best of `REPEATS` runs;
* **Dice** per tumour class and for the whole tumour, against the phantom's truth on the held-out
  phantoms `TEST_SEEDS`, on the image grid (probabilities resampled back as `deep_segment` does).
"""),
    code("""
variants = {"teacher (float32)": (teacher, teacher.state_dict()),
            "student, pruned, not trained": (pruned, pruned.state_dict()),
            "student (float32)": (student, student.state_dict()),
            "student, dynamic int8": (dynamic, dynamic.state_dict()),
            "student, weight-only int8": (weight_only, stored_int8),
            "student, bfloat16": (bf16, bf16.state_dict())}
variants.update({name: (net, net.state_dict()) for name, net in statics.items()})
test_inputs = [to_network(channels, prep) for channels in test.images]

def segment(net, k, repeats=1):               # label map on test case k's own grid, best seconds of the network pass
    x, grid = test_inputs[k]
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        logits = sliding_window(net, x, prep)
        best = min(best, time.perf_counter() - t)
    probs = torch.softmax(logits[0].float(), dim=0).numpy()
    image = test.images[k][0]
    return labels_from_probabilities(from_network(probs, grid, image), image, teacher_model), best

rows, segmentations = [], {}
for name, (net, state) in variants.items():
    path = OUT / (name.replace(", ", "_").replace(" ", "_").replace("(", "").replace(")", "") + ".pt")
    torch.save(state, path)
    row = {"variant": name,                  # int8 modules keep their weights as buffers, not parameters
           "parameters": n_params(student) if name.startswith("student") else n_params(net),
           "file (MB)": path.stat().st_size / 1e6}
    dice = []
    for k, truth in enumerate(test.labels):
        labels, best = segment(net, k, repeats=REPEATS if k == 0 else 1)   # timed on the first phantom
        if k == 0:
            row["inference (s)"], segmentations[name] = best, labels
        d = {c: metrics.dice(labels, truth, label=v) for v, c in zip(values, names)}
        d["whole tumour"] = metrics.dice(np.isin(labels.array, values), np.isin(truth.array, values))
        dice.append(d)
    row.update({f"Dice {c}": float(np.mean([d[c] for d in dice])) for c in dice[0]})
    rows.append(row)
results = pd.DataFrame(rows).set_index("variant")
results["speed-up"] = results.loc["teacher (float32)", "inference (s)"] / results["inference (s)"]
display(results.round(3))
print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores while measuring; "
      f"Dice on {len(TEST_SEEDS)} held-out phantom(s); student trained {STEPS} steps ({train_seconds:.0f} s)")
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for (name, row), marker in zip(results.iterrows(), "os^vDPX*"):
    axes[0].scatter(row["inference (s)"], row["Dice whole tumour"], s=50, marker=marker, label=name)
    axes[1].scatter(row["file (MB)"], row["Dice whole tumour"], s=50, marker=marker)
axes[0].set_xlabel("inference, one volume (s, best of runs)"); axes[1].set_xlabel("file (MB)")
for ax in axes:
    ax.set_ylabel("Dice, whole tumour")
fig.legend(loc="center right", fontsize=8)
plt.tight_layout(rect=(0, 0, 0.72, 1)); plt.show()

z = int(np.argmax(np.isin(test.labels[0].array, values).sum(axis=(1, 2))))   # the slice with most tumour
show_names = ["teacher (float32)", "student (float32)", *[n for n in results.index if "static" in n or "bfloat16" in n]]
fig, axes = plt.subplots(1, len(show_names) + 1, figsize=(3 * (len(show_names) + 1), 3))
t1 = test.images[0][0].array[z]
for ax, (title, lab) in zip(axes, [("truth", test.labels[0].array), *[(n, segmentations[n].array) for n in show_names]]):
    ax.imshow(t1, cmap="gray")
    ax.imshow(np.ma.masked_where(~np.isin(lab[z], values), lab[z]), cmap="autumn", alpha=0.5, vmin=7, vmax=9)
    ax.set_title(title, fontsize=8); ax.axis("off")
plt.show()
"""),
    md("""
### Reading the table

* **The student** has about a quarter of the teacher's parameters and file, and runs faster, but not
  4x faster: sliding windows, normalisation and memory traffic do not shrink with the weights.
  Its Dice is what the steps it had could buy: with `MEDLAB_FAST=1`, a few hundred steps, it is
  clearly below the teacher (oedema, the largest and faintest class, suffers first); the
  "pruned, not trained" row shows that the halved teacher alone is not a model, and what training
  gave back. More steps and phantoms narrow the gap: when we ran the full settings (1500 steps on 8
  phantoms, 225 s of training; 4 held-out phantoms) the student reached a whole-tumour Dice of 0.964
  against the teacher's 0.966 (enhancing 0.944 vs 0.956, necrotic core 0.943 vs 0.968, oedema 0.956
  vs 0.956), on phantoms.
* **Dynamic int8** is the float32 student, byte for byte the same computation: same Dice. Any
  difference in seconds between these two rows is measurement noise on a shared machine, which tells
  you how large a difference in speed must be before it means anything.
* **Weight-only int8** cuts the file about 3x (4x for the convolution weights; biases, PReLU slopes and
  the scales stay float32) and barely moves the Dice; it runs at float32 speed.
* **bfloat16** halves the file; whether it is faster depends on the CPU's bfloat16 support (AVX-512
  BF16 or AMX: then it can be the fastest row; without it, conversions make it slower).
* **Static int8** quantises the activations too. With torch's default mapping, check the agreement
  printed in section 4 and the Dice: when we wrote this (torch 2.13) the quantised PReLU broke the
  network silently (no error, a fraction of the voxels right); leaving the PReLUs in float32 gave back
  the float student's Dice. On this CPU and torch the int8 3D convolutions can also be *slower* than
  float32 (int8 kernels are tuned for 2D image networks, and every float/int8 boundary converts the
  tensor). Read the measured row, not the promise.

**Exercise 3.** A vendor says their quantised network is "4x faster". Which row of your table would
you use to check a claim like that on your own hardware, and which number in it?
Answer with the name of the column.
"""),
    code("""
def check_column(answer):
    if not isinstance(answer, str):
        return print("✗ give a column name, e.g. 'parameters'")
    a = answer.strip().lower()
    if a in ("speed-up", "inference (s)"):
        print(f"✓ '{answer}': speed is only ever a measurement, on your machine, of the same task; here the "
              f"fastest student variant ran {results['speed-up'].drop('teacher (float32)').max():.1f}x the teacher's speed")
    elif a in ("file (mb)", "parameters"):
        print(f"✗ '{answer}' says how much is stored, not how long it takes: int8 weights are 4x smaller "
              "but a 4x smaller file does not run 4x faster")
    else:
        print(f"✗ '{answer}' is not a measure of speed; use the column of measured seconds or its ratio")

my_column = "speed-up"
check_column(my_column)
""", tags=["exercise"], wrong_answers=["'file (MB)'", "'parameters'", "'Dice whole tumour'"]),
    md("""
## 6. The student as a medlab model, and the report

Wrapped in a `Checkpoint` with the teacher's preprocessing and labels, the student is a medlab model
like the shipped ones: `deep_segment` (and the segmentation widget's model picker) runs it on any
grid and returns labels on the scan's own grid.
"""),
    code("""
student_model = Checkpoint(student.state_dict(), student_config, labels=teacher_model.labels,
                           preprocessing=prep, metrics={f"test {k}": round(float(v), 4) for k, v in
                                                        results.loc["student (float32)"].items() if k.startswith("Dice")})
student_path = student_model.save(OUT / "student.pt", overwrite=True)
student_labels, _ = deep_segment(test.images[0][0], student_model, test.images[0][1])
assert student_labels.same_grid(test.images[0][0])
print(student_model.describe(), "->", student_path)
"""),
    md("""
Both networks in the segmentation stage's widget, on the held-out phantom. The *model* menu offers the
**teacher** and the **student**; *image* is the T1 and *image2* the FLAIR. Set *image3* to
**(none)**: both networks read two contrasts (a third channel is refused with a message that says so).
In this version the menus go back to their first choice after every run (*model* to the student,
*image3* to the FLAIR), so check both before each *Apply*; the line below the widget names the model
each run really used. *Apply* runs `deep_segment` with the chosen model and draws its labels over the T1; the line below
the widget scores each run against the phantom's truth. Try both models, and compare the borders of the
oedema.
"""),
    code("""
bench = Workbench({"t1": test.images[0][0], "flair": test.images[0][1], "teacher": teacher_model,
                   "student": student_model}, stages=["deep_segment"], height=260)
bench.set(overlap=0.0)                  # as timed above: windows side by side
bench_scores = W.HTML("Apply: each run is scored here against the truth.")

def score_run(panel):                   # after each Apply, in the widget's worker thread
    step = panel.steps[-1]
    model = step.values.get("model")
    which = "teacher" if model is teacher_model else "student" if model is student_model else "another model"
    labels = step.result["labels"]
    whole = metrics.dice(np.isin(labels.array, values), np.isin(test.labels[0].array, values))
    bench_scores.value += f"<br>{which}: whole-tumour Dice {whole:.3f}"

bench.panel.on_apply(score_run)
W.VBox([bench, bench_scores])
"""),
    code("""
LIMITATIONS = (
    f"Phantoms, not patients: the teacher and the student learned phantoms and were scored on "
    f"{len(TEST_SEEDS)} held-out phantom(s); real tumours are harder, and a smaller network usually loses "
    f"more there. The student trained {STEPS} steps on {N_TRAIN} phantoms. Times are one machine "
    f"({os.cpu_count()} cores, 1 thread, load average {os.getloadavg()[0]:.1f} shared with other jobs), "
    f"the best of {REPEATS} runs, network pass only: another CPU, thread count or load changes them, "
    f"and int8/bfloat16 speed depends on the CPU's instructions.")
report = Report("Fast models: distilling and quantising the brain tumour U-Net",
                subtitle=f"medlab {medlab.__version__}, torch {torch.__version__}, held-out phantoms {TEST_SEEDS}")
report.add_section("Size, speed and Dice")
report.add_table(results.reset_index().round(4).to_dict("records"),
                 caption="every number measured in this run (inference: one volume, one thread, best of runs)")
report.add_number("student training", train_seconds, unit="s", note=f"{STEPS} steps, {N_TRAIN} phantoms")
report.add_number("layers changed by dynamic int8", quantised_layers, note="it only touches Linear layers")
for name, problem in static_problems.items():
    report.add_skipped(name, problem)
report.add_curve(curve, caption="distillation losses")
report.add_section("The student on a held-out phantom")
report.add_image(test.images[0][0], labels=student_labels, caption="post-contrast T1, the student's labels")
report.add_section("Limitations")
report.add_text(LIMITATIONS)
path = report.save("fast_models_report.html", overwrite=True)
print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {len(report.numbers.rows)} numbers)")
"""),
    md("""
## 7. Limitations, honestly

* **Phantoms, not patients.** Both networks learned smooth phantoms; the Dice here says how much a
  smaller network loses *on this task*. On real scans the teacher is already weaker, and small
  networks usually lose more on the hard cases (small enhancing rims, unusual anatomy).
* **A small test.** One held-out phantom with `MEDLAB_FAST=1`, four otherwise: differences of a few
  hundredths of Dice are within what another phantom would change.
* **One machine, under load.** The times are one 2-core machine shared with other jobs, one thread,
  the best of a few runs: ratios between rows are more trustworthy than the seconds, and another CPU
  (AVX-512 VNNI or AMX for int8, native bfloat16) can reverse the ranking of the quantised variants.
* **Network pass only.** Reading, preprocessing and resampling take time too, the same for every
  variant: the speed-up a user feels is smaller than the one in the table.
* **A rushed student.** With `MEDLAB_FAST=1` the student trains a few hundred steps; its Dice is a
  lower bound on what distillation can do, not its limit.

## Run it on your own data

Distil and quantise your own model in the same way: any medlab `Checkpoint` (from
`medlab.deep.train_segmenter(...).model` or `medlab.deep.pretrained(...)`) gives the teacher, its
preprocessing and the network config; your labelled scans give the cases.

```python
import medlab
from medlab.deep import deep_segment
from medlab.outputs import Checkpoint

teacher_model = Checkpoint.load("my_model.pt")                 # your trained model
t1, flair = medlab.load("my_scans/t1.nii.gz"), medlab.load("my_scans/flair.nii.gz")
labels, _ = deep_segment(t1, teacher_model, flair)             # the teacher, for reference
# sections 2-3 with your scans and labels in place of `train`, then:
student_model = Checkpoint.load("fast_models/student.pt")
labels_small, _ = deep_segment(t1, student_model, flair)
```

Measure speed on the machine that will run the model, with its thread count, and Dice on your own
labelled cases that neither network saw; a table from someone else's machine answers neither question.
"""),
    code("""
print(f"notebook ran in {time.perf_counter() - started:.0f} s (FAST={FAST})")
"""),
]
# ---------------------------------------------------------------- end of the case studies


# ---------------------------------------------------------------- 06 explainability (medlab.explain)
EXPLAINABILITY = [
    md("""
# Explaining a classifier: Grad-CAM on the scan, and whether to believe it

A saliency map colours the voxels a network "looked at". It is easy to compute and easy to
believe, and both are the problem: a map can look convincing and say nothing about the model.
This notebook computes maps of a small 3D tumour classifier that ships with medlab, checks them
the way the literature asks (Adebayo et al., *Sanity checks for saliency maps*, NeurIPS 2018),
measures whether they are faithful and whether they land on the tumour, and ends with a review
by clinicians and the statistics of their agreement.

**You will learn to**

1. say what **Grad-CAM** computes (a layer, the gradient of one score, an upsampling) and
   reproduce medlab's map with captum directly;
2. run a **model-randomisation sanity check**, live, and recognise a map that ignores the model;
3. measure **faithfulness** (deletion and insertion curves) and **localisation** (energy in the
   tumour, pointing game);
4. get a 3D map **on the original scan's grid**, oblique and anisotropic, and save it as NIfTI;
5. run a **clinician review** of the maps and read its agreement statistics (Cohen's and Fleiss' kappa).

Everything runs offline on a CPU in about a minute; the classifier is in the package.
"""),
    code("""
import os

FAST = os.environ.get("MEDLAB_FAST") == "1"   # CI and slow machines: fewer steps, same cells
SANITY_STEPS = 2 if FAST else 4               # cascade steps of the randomisation test
IG_STEPS = 8 if FAST else 32                  # integration points of Integrated Gradients
CURVE_STEPS = 10 if FAST else 25              # points of the deletion / insertion curves
REVIEW_CASES = 3                              # held-out phantoms in the review study
""", tags=["parameters"]),
    code("""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import medlab
from medlab.data import classification_set
from medlab.explain import (deletion_insertion, grad_cam, integrated_gradients, model_randomisation,
                            model_randomisation_test, table_value, tumour_classifier)
from medlab.report import slice_figure

torch.manual_seed(0)
torch.set_num_threads(1)          # a shared laptop or CI runner: one thread, the same numbers

model = tumour_classifier()
print(model.describe())
print("classes:", model.labels, "| trained by:", model.metrics["command"])

# held-out phantoms: another seed than the training set, so other heads and other tumours
held_out = classification_set(n=2 * REVIEW_CASES + 2, seed=model.metrics["held_out_seed"])
cases = [held_out[i] for i in range(len(held_out)) if held_out[i][1] == 1]
image, _, tumour = cases[0]
print(image.describe())

def show(pictures, titles, width=4.2, heat=True):
    fig, axes = plt.subplots(1, len(pictures), figsize=(width * len(pictures), width))
    for ax, pic, title in zip(np.atleast_1d(axes), pictures, titles):
        ax.imshow(pic); ax.set_title(title, fontsize=9); ax.axis("off")
    if heat:   # slice_figure colours each map from 0 to its own maximum, and leaves its weakest 20 % out
        key = plt.cm.ScalarMappable(plt.Normalize(0, 1), cmap="inferno")
        fig.colorbar(key, ax=np.atleast_1d(axes).tolist(), fraction=0.02, pad=0.01, ticks=[0, 0.2, 1],
                     label="map / its own maximum (under 0.2: not drawn)")
    plt.show()
"""),
    md("""
## 1. What Grad-CAM computes

The classifier has **one output**, a logit: the evidence for "tumour" (positive: it calls a tumour).
Its last layer, `head.evidence`, is a 1×1×1 convolution that turns the features into a tumour-evidence
map on the network's own 3 × 3 × 4 mm grid (this classifier never pools); the logit is a smooth maximum
of that map.

Which layer does Grad-CAM use? `layer="auto"` takes the **last convolutional block of features**,
`features.block3.0` here, as pytorch-grad-cam and MONAI users pick the last block of the feature extractor
(`layer4[-1]` of a ResNet, `class_layers.relu` of a DenseNet). `head.evidence` is not a feature block: it is
the classifier applied at each place (one channel, the class), so medlab skips it; you can still ask for it
by name (`layer="head.evidence"`), and `medlab.explain.candidate_layers(model)` lists every choice.

Grad-CAM (Selvaraju et al., ICCV 2017) takes a convolutional layer's activations *A* (channels × space),
the gradient of the chosen score with respect to them, averages the gradient over space into one weight
per channel, and sums the channels with those weights: `ReLU(Σ_k w_k A_k)`. The result lives on the
**layer's grid**, so it is upsampled (trilinear) to the network input, then mapped back to the scan.
Many networks pool, so their last block's grid is coarse (a ResNet's is 32 times coarser than its input);
this one keeps full resolution, and the upsampling does nothing here.
`target_class=-1` (the default) explains the predicted class; for a one-logit model it is that logit,
the evidence for tumour, whatever the model predicts.
"""),
    code("""
saliency, numbers = grad_cam(image, model, tumour)      # the tumour mask only adds localisation numbers
display(numbers.to_pandas())
show([slice_figure(image, heat=saliency, labels=tumour, planes=("axial", "coronal"), size=260),
      slice_figure(image, labels=tumour, planes=("axial", "coronal"), size=260)],
     ["Grad-CAM for 'tumour' (true tumour outlined)", "the scan and the true tumour"])
"""),
    md("""
medlab's map is **captum's** `LayerGradCam`, computed on the same network input, layer and target: below
we call captum directly and compare. (The phantom is already on the network's grid, 3 × 3 × 4 mm, so no
resampling happens and the two must agree to rounding.)
"""),
    code("""
from captum.attr import LayerAttribution, LayerGradCam

from medlab.explain import find_target_layer, resolve_model
from medlab.explain.geometry import network_input

net = resolve_model(model)                                  # the torch module the checkpoint rebuilds
x = network_input(image, net.input_record).tensor           # the scan as the network sees it
layer_name = find_target_layer(net, x)                      # what layer="auto" picks
layer = dict(net.module.named_modules())[layer_name]
layer_map = LayerGradCam(net.module, layer).attribute(x, target=0)            # on the layer's grid
by_hand = LayerAttribution.interpolate(layer_map, tuple(x.shape[2:]), "trilinear")[0, 0].detach().numpy()
medlab_map, _ = grad_cam(image, model, sign="signed", normalise="none")
print("layer:", layer_name, "| its grid:", tuple(layer_map.shape[2:]), "-> network input:", tuple(x.shape[2:]))
print(f"largest difference medlab vs captum: {np.abs(medlab_map.array - by_hand).max():.2e} "
      f"(map values up to {np.abs(by_hand).max():.3g})")
"""),
    md("""
**Exercise 1.** A voxel of the layer's map responds only to the part of the scan it sees, its
*receptive field*: the map cannot separate a tumour from its surroundings more finely than that. The layer
`features.block3.0` comes after three 3×3×3 convolutions and no pooling; each convolution widens the field
by one voxel on every side. How wide is the field, in millimetres, along (x, y, z)? The scan's spacing is
printed above. Put it in `my_field_mm`; the check measures the field with a gradient.
"""),
    code("""
# the receptive field, measured: which input voxels change one voxel (the centre) of the layer's output
probe = x.clone().requires_grad_(True)
kept = {}
hook = layer.register_forward_hook(lambda module, inputs, output: kept.setdefault("out", output))
net.module(probe)
hook.remove()
kept["out"][(0, slice(None)) + tuple(n // 2 for n in kept["out"].shape[2:])].sum().backward()
reach = np.argwhere(probe.grad[0, 0].numpy() != 0)                  # (z, y, x) indices the voxel depends on
field_voxels = (reach.max(0) - reach.min(0) + 1)[::-1]                # x, y, z
field_mm = tuple(float(v) for v in field_voxels * np.array(image.spacing))

def check_field_mm(answer):
    try:
        answer = tuple(float(a) for a in answer)
    except (TypeError, ValueError):
        return print("✗ give three numbers (x, y, z) in mm")
    if len(answer) != 3:
        print("✗ give three numbers, one per axis (x, y, z)")
    elif np.allclose(answer, field_mm):
        print(f"✓ right: {field_mm} mm, {tuple(int(v) for v in field_voxels)} voxels. The tumours here are 30-65 mm across, so a voxel lit "
              "for 'tumour' has the tumour in view. A pooled version of this classifier saw 63 mm a side and "
              "lit the rim around the tumour too: Grad-CAM can only be as sharp as what a voxel sees")
    elif np.allclose(answer, image.spacing):
        print("✗ that is one voxel: each 3×3×3 convolution adds one voxel on every side, three times")
    else:
        print(f"✗ not quite: count the voxels (1 + 2 per convolution) and multiply by the spacing {image.spacing}")

my_field_mm = (21.0, 21.0, 28.0)
check_field_mm(my_field_mm)
""", tags=["exercise"], wrong_answers=["(3.0, 3.0, 4.0)", "(63.0, 63.0, 84.0)", "'big'"]),
    md("""
## 2. A map can look right and mean nothing: the sanity check, live

Adebayo et al. re-initialised a trained network's layers, from the output back, and recomputed the maps.
A map that **barely changes** when the weights are random cannot be explaining what the model learned:
it shows the image. medlab measures the similarity of each randomised map with the original (Spearman
rank correlation, SSIM, HOG) and flags a map whose rank correlation stays above 0.5.

Below, two "explanations" face the test: Grad-CAM, and an edge detector (Sobel) that never looks at the
model. The edge map outlines the tumour beautifully.
"""),
    code("""
original, randomised, similarity, table = model_randomisation_test(image, model, tumour, steps=SANITY_STEPS)
display(table.to_pandas())
print("Grad-CAM:", table.title)

from skimage.filters import sobel

def edges(scan, network):              # an 'explanation' that ignores the network entirely
    return scan.with_array(sobel(np.asarray(scan.array, np.float32)))

edge_check = model_randomisation(image, model, edges, steps=SANITY_STEPS)
print("edge map:", edge_check.verdict())
results = {"grad_cam": not table.rows[-1]["barely changes"], "edges": not edge_check.flagged}
show([slice_figure(image, heat=original, labels=tumour, planes=("axial",), size=260),
      slice_figure(image, heat=randomised, labels=tumour, planes=("axial",), size=260),
      slice_figure(image, heat=edge_check.original, labels=tumour, planes=("axial",), size=260)],
     ["Grad-CAM, trained model", "Grad-CAM, every layer re-initialised", "edge map (same for any weights)"])
"""),
    md("""
**Exercise 2.** Which of the two maps fails the sanity check, `"grad_cam"` or `"edges"`? Put its name in
`my_failing_map`.
"""),
    code("""
def check_failing(name):
    if name not in results:
        return print(f"✗ choose one of {sorted(results)}")
    if not results[name]:
        print(f"✓ right: the {name} map is the same whatever the weights (Spearman "
              f"{edge_check.scores[-1]['spearman']:.2f} after randomising): it looks convincing and says nothing "
              "about the model")
    else:
        print(f"✗ the {name} map changes when the weights are randomised (it passed): it depends on what the "
              "model learned. Look at the other one")

my_failing_map = "edges"
check_failing(my_failing_map)
""", tags=["exercise"], wrong_answers=["'grad_cam'", "'occlusion'"]),
    md("""
## 3. Faithfulness and localisation

**Faithful** means the map ranks voxels by how much the model needs them. The **deletion curve** removes
voxels in the map's order (most salient first) and follows the tumour **logit**: a faithful map makes
it fall fast (a small area under the curve). The **insertion curve** starts from a blank image and adds
voxels back: it should rise fast. Both are compared with removing voxels in random order. Why the logit
and not the probability (`score="probability"` if you want it): this classifier's tumour logits are 12 to 19,
and a sigmoid of 16.65 or more is exactly 1.0 in float32, so a probability curve would sit at 1 and rank
nothing. The table of `deletion_insertion` says which score it followed.

What "removed" means matters. The default baseline is a blurred copy of the scan, good for textures; but a
blurred tumour is still a bright blob on FLAIR, so this classifier still sees it and every curve stays
high. Here voxels are replaced by the **mean** intensity (`baseline="mean"`), which does erase a bright lesion.

**Localisation** asks whether the map lands on the finding, here possible because the phantom's tumour
is known: the share of the map's energy inside the tumour (energy-based pointing game) and whether the
map's peak is in it (pointing game).
"""),
    code("""
ig, ig_numbers = integrated_gradients(image, model, tumour, steps=IG_STEPS)
rows = []
for name, m, n in (("Grad-CAM", saliency, numbers), ("Integrated Gradients", ig, ig_numbers)):
    curves, faith = deletion_insertion(image, model, m, steps=CURVE_STEPS, baseline="mean")
    rows.append({"method": name, "energy in tumour": table_value(n, "energy in mask"),
                 "peak in tumour": table_value(n, "pointing game hit"),
                 "deletion AUC": table_value(faith, "deletion AUC (lower is better)"),
                 "deletion AUC, random order": table_value(faith, "deletion AUC, random order"),
                 "insertion AUC": table_value(faith, "insertion AUC (higher is better)")})
import pandas as pd
display(pd.DataFrame(rows).round(3))
show([slice_figure(image, heat=saliency, labels=tumour, planes=("axial",), size=260),
      slice_figure(image, heat=ig, labels=tumour, planes=("axial",), size=260)],
     ["Grad-CAM (the last block's map)", "Integrated Gradients (per voxel, noisier)"])
"""),
    md("""
## 4. A 3D map on the original scan, whatever its grid

Real scans are oblique and anisotropic. The checkpoint records how its training images were prepared
(intensity, axes, 3 × 3 × 4 mm voxels), so medlab resamples the scan onto that grid for the network and
resamples the map back, through physical space, onto **the scan's own grid**. Below, the same head
acquired obliquely (tilted 20°, 2 × 2 × 5 mm voxels): the map comes back on that grid and saves as NIfTI
with its geometry.
"""),
    code("""
angle = np.deg2rad(20.0)
tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
centre = image.index_to_physical((np.array(image.size) - 1) / 2)
shape = (26, 96, 96)                                         # z, y, x voxels of 2 x 2 x 5 mm
origin = centre - tilt @ ((np.array(shape[::-1]) - 1) / 2 * np.array([2.0, 2.0, 5.0]))
grid = medlab.Image(np.zeros(shape, np.float32), spacing=(2.0, 2.0, 5.0), origin=tuple(origin), direction=tilt)
oblique = medlab.render.resample_like(image, grid)
oblique_tumour = medlab.render.resample_like(tumour, grid)
oblique_map, oblique_numbers = grad_cam(oblique, model, oblique_tumour)
print("map on the scan's grid:", oblique_map.same_grid(oblique), "|", oblique_map.describe())
print("energy in the tumour on the oblique scan:", round(table_value(oblique_numbers, "energy in mask"), 3))
path = medlab.save(oblique_map, "grad_cam_oblique.nii.gz", overwrite=True)
back = medlab.load(path)
print("saved and read back with its geometry:", back.same_grid(oblique))
show([slice_figure(oblique, heat=oblique_map, labels=oblique_tumour, size=240)],
     ["Grad-CAM on the oblique 2 x 2 x 5 mm scan (three planes through the cursor)"], width=9)
"""),
    md("""
## 5. A review with clinicians, and how to read their agreement

A map is for people. The review study (`medlab.review`) shows each clinician the scan and a map, with the
prediction hidden and methods under neutral names ("Map A", "Map B") in a random order per reviewer and
case, and stores every verdict (relevant finding, partly, irrelevant region, artefact-driven), a
confidence and an optional click in an SQLite file that survives a kernel restart. Clinicians use the
browser app (`medlab review study.json --reviewer "Dr Grey"`, on this machine only); here two reviewers'
verdicts are **simulated** in code so that the statistics have something to summarise.
"""),
    code("""
from medlab.review import ReviewStudy, summarize

study_folder = Path("explain_review")
if (study_folder / "study.json").exists():
    study = ReviewStudy.load(study_folder / "study.json")   # a study from an earlier run is kept
else:
    specs = []
    for k, (scan, _, truth) in enumerate(cases[:REVIEW_CASES]):
        maps = {"grad_cam": grad_cam(scan, model)[0], "edges": edges(scan, None)}
        specs.append({"id": f"case-{k + 1}", "scan": scan, "maps": maps, "truth": "tumour"})
    study = ReviewStudy.create(study_folder, specs, name="tumour classifier: Grad-CAM vs an edge map", seed=0)
store = study.open_store()
# simulated verdicts: Dr Grey rates Grad-CAM 'relevant' and edges 'artefact'; Dr Brown agrees except on case-2
plan = {("Dr Grey", "grad_cam"): "relevant", ("Dr Grey", "edges"): "artefact",
        ("Dr Brown", "grad_cam"): "relevant", ("Dr Brown", "edges"): "artefact"}
for reviewer in ("Dr Grey", "Dr Brown"):
    for item in study.items(reviewer):
        verdict = plan[reviewer, item.method]
        if reviewer == "Dr Brown" and item.case_id == "case-2":
            verdict = "partly" if item.method == "grad_cam" else "irrelevant"
        if store.latest(reviewer, item.case_id, item.method) is None:
            store.record(reviewer, item.case_id, item.method, verdict=verdict, confidence=4, shown_as=item.shown_as)
summary = summarize(store)
print(summary)
"""),
    md("""
**Reading the numbers.** The *distribution* says how often each method's map was judged to highlight the
finding. **Cohen's kappa** compares two reviewers, **Fleiss' kappa** all of them, correcting the raw
agreement for what chance alone would give: 1 is perfect agreement, 0 is chance, below 0 is worse than
chance; as a rough guide (Landis and Koch) 0.41–0.60 is moderate and above 0.8 almost perfect. With few
cases kappa swings a lot: report the number of cases beside it. `summary.to_csv(folder)` writes the tables.

**Exercise 3.** The two reviewers above agree on 4 of the 6 maps. Is their Cohen's kappa higher or lower
than that raw agreement of 0.67? Set `my_kappa_vs_raw` to `"higher"` or `"lower"`.
"""),
    code("""
both = summary.cohen[summary.cohen["scope"] == "all"].iloc[0]      # every map, both reviewers
kappa, raw_agreement = float(both["kappa"]), float(both["observed_agreement"])

def check_kappa(answer):
    if answer not in ("higher", "lower"):
        return print("✗ answer 'higher' or 'lower'")
    truth = "lower" if kappa < raw_agreement else "higher"
    if answer == truth:
        print(f"✓ right: kappa is {kappa:.2f}, {truth} than the raw {raw_agreement:.2f}: part of the raw agreement is what "
              "two reviewers picking at random with the same habits would reach")
    else:
        print(f"✗ kappa removes the agreement expected by chance, so it is {truth} here ({kappa:.2f} against "
              f"a raw {raw_agreement:.2f})")

my_kappa_vs_raw = "lower"
check_kappa(my_kappa_vs_raw)
""", tags=["exercise"], wrong_answers=["'higher'", "'same'"]),
    md("""
## Run it on your own data

Any PyTorch or MONAI classifier or segmentation network works; a medlab `Checkpoint` also carries its
preprocessing, so the map comes back on your scan's grid:

```python
import medlab
from medlab.explain import grad_cam, model_randomisation_test
from medlab.outputs import Checkpoint

scan = medlab.load("my_scans/patient_flair.nii.gz")         # or a DICOM folder
model = Checkpoint.load("my_model.pt")                       # or any torch.nn.Module
saliency, numbers = grad_cam(scan, model)                    # target_class=-1: the predicted class
original, randomised, similarity, verdict = model_randomisation_test(scan, model)
medlab.save(saliency, "my_scans/patient_flair_gradcam.nii.gz")
```

In a notebook, `medlab.widgets.ExplainWidget(scan, model)` shows the same with pickers for method, layer
and target, two maps side by side, the sanity check and the hand-off to a review study.

Next: the case studies (`case_studies/01_brain_tumour_mri.ipynb` runs this classifier inside a whole
pipeline, with the review app).
"""),
]


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    for k, cell in enumerate(nb.cells):   # fixed ids: a rebuild changes only the cells that changed
        cell.id = f"cell-{k:03d}"
    (HERE / name).parent.mkdir(parents=True, exist_ok=True)   # case_studies/ is a subfolder
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("00_start_here.ipynb", START_HERE)
    write("02_preprocessing.ipynb", PREPROCESSING)
    write("03_segmentation_classic.ipynb", SEGMENTATION_CLASSIC)
    write("04_segmentation_unet.ipynb", SEGMENTATION_UNET)
    write("05_registration.ipynb", REGISTRATION)
    write("06_explainability.ipynb", EXPLAINABILITY)
    write("case_studies/01_brain_tumour_mri.ipynb", CASE_BRAIN_TUMOUR)
    write("case_studies/02_chest_ct_nodules.ipynb", CASE_CHEST_CT)
    write("case_studies/03_real_scans.ipynb", CASE_REAL_SCANS)
    write("case_studies/04_multimodal_fusion.ipynb", CASE_FUSION)
    write("case_studies/05_mammography.ipynb", CASE_MAMMOGRAPHY)
    write("case_studies/06_fast_models.ipynb", CASE_FAST_MODELS)
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.ipynb"))))
