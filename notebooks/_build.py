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


def code(text):
    return new_code_cell(text.strip())


START_HERE = [
    md("""
# Start here: images that know where they are

medlab keeps every image together with its **geometry**: voxel spacing (mm), origin (mm) and
direction (which way each array axis points in the patient). This notebook

1. loads a built-in phantom and two real scans that ship with installed packages,
2. shows them in the medlab viewer (scroll, window/level, labels, click-to-point),
3. makes the two classic geometry mistakes on purpose, and fixes them.

Everything runs offline on a laptop CPU.
"""),
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
brain = medlab.data.brain_mri(seed=0)
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
"""),
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
brain = medlab.data.brain_mri(seed=1, noise=0.05)
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
my_h = 1.2
scores = {h: metrics.psnr(nlm_denoise(noisy, h=h), clean) for h in candidates}
print({h: round(v, 2) for h, v in scores.items()})
best = max(scores, key=scores.get)
print("✓ correct" if my_h == best else f"✗ not the best: h={my_h} gives {scores[my_h]:.2f} dB")
"""),
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
my_preset = "lung"
w, l = medlab.render.CT_PRESETS[my_preset]
grey = (-600 - (l - w / 2)) / w
print("✓ correct" if 0.15 < grey < 0.85 else f"✗ -600 HU maps to {grey:.2f} of the grey range in that window")
"""),
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
biased = medlab.data.brain_mri(seed=2, noise=0.02, bias=0.4)
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
replayed = recipe.run(noisy)
ok = np.array_equal(replayed.array, w.image.array)
print("✓ bit-identical" if ok else "✗ differs")
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
    md("""
## 1. The phantom and its ground truth

`medlab.data.brain_mri` draws a head with a glioma-like tumour: **oedema** (bright on FLAIR), an
**enhancing rim** (bright on post-contrast T1) and a **necrotic core** (dark on FLAIR). The whole
tumour is our target. The histogram shows the problem: the tumour's voxels are a small bump at the
bright end, and other tissues overlap it.
"""),
    code("""
brain = medlab.data.brain_mri(size=(96, 96, 48), seed=0)
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
"""),
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
"""),
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
"""),
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
"""),
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

series = write_dicom_series(medlab.data.chest_ct(seed=0, size=(96, 96, 32)).ct, out / "chest_ct_dicom")
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
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.ipynb"))))
