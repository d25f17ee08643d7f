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

Change them here, never in the code below. The network and data pipeline are those that trained
the models shipped with medlab (`BRAIN_SETTINGS`); with only a few minutes of CPU, fewer cases and
epochs, and a larger learning rate (1e-2 instead of 3e-3: a few dozen optimiser steps, on one easy
label). With 3e-3, ten epochs here leave the validation Dice below 0.1.
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

`train_segmenter` normalises every image (percentiles), puts it on the network's grid (patient
axes, the cases' median voxel size), draws random patches around tumour and background voxels,
and minimises Dice + cross-entropy with Adam. After each epoch it segments the validation cases
whole and keeps the weights with the best Dice. Like every medlab stage it **publishes** its curves
while it runs: a live view plots them here (in the segment widget, Cancel keeps the best so far).
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
FAST = os.environ.get("MEDLAB_FAST") == "1"
SIZE = (64, 64, 32) if FAST else (96, 96, 48)          # phantom voxels (x, y, z)
SPACING = (3.0, 3.0, 3.75) if FAST else (2.0, 2.0, 2.5)  # mm
SAMPLES = 5000 if FAST else 20000                      # metric points per resolution level
BSPLINE = dict(grid_spacing_mm=40.0, shrink_factors=(2, 1), samples=2000 if FAST else 3000, iterations=8 if FAST else 15)
DEMONS_ITERATIONS = 10 if FAST else 20
started = time.perf_counter()
print(dict(FAST=FAST, SIZE=SIZE, SPACING=SPACING, SAMPLES=SAMPLES))
"""),
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
"""),
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
"""),
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
"""),
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
"""),
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
"""),
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
"""),
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


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("00_start_here.ipynb", START_HERE)
    write("02_preprocessing.ipynb", PREPROCESSING)
    write("03_segmentation_classic.ipynb", SEGMENTATION_CLASSIC)
    write("04_segmentation_unet.ipynb", SEGMENTATION_UNET)
    write("05_registration.ipynb", REGISTRATION)
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.ipynb"))))
