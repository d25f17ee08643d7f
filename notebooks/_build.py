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


def write(name, cells):
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("00_start_here.ipynb", START_HERE)
    write("02_preprocessing.ipynb", PREPROCESSING)
    print("wrote", ", ".join(p.name for p in sorted(HERE.glob("*.ipynb"))))
