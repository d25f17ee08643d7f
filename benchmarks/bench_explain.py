"""Explainability numbers (issue 10, section 5): localisation and model randomisation per method,
Grad-CAM speed on a 96^3 volume against captum and MONAI, occlusion against MONAI.

Tables, all from one run:

1. **Held-out phantoms** (``classification_set(n=32, seed=1)``, never seen in training) with a
   tumour that the shipped classifier (``medlab.explain.tumour_classifier()``) calls a tumour:
   for every method, the share of the positive map inside the tumour mask (energy-based
   pointing game; target >= 0.6 for Grad-CAM), pointing-game hits, and the Spearman rank
   correlation between the map and the map of the same model with *every* layer re-initialised
   (target < 0.3), of the signed maps and of their absolute values (as Adebayo et al.), plus the
   same against the twin trained on shuffled labels (``tumour_classifier(random_labels=True)``).
   Each method runs with its declared defaults, for the predicted class; Integrated Gradients,
   SmoothGrad and occlusion on the first ``--slow-cases`` cases only (they cost tens of forward
   passes per map).
2. **Faithfulness** on the first few of those cases: deletion and insertion AUCs (and the
   random-order deletion AUC a map must beat).
3. **Grad-CAM speed**: the shipped classifier on a 96^3 phantom (resampling there and back
   included), and a MONAI DenseNet121 (random weights) on a 96^3 input: medlab's
   ``grad_cam`` against captum's ``LayerGradCam`` and MONAI's ``GradCAM`` called directly on the
   same layer (``class_layers.relu``), with the largest difference of the maps.
4. **Occlusion** against MONAI's ``OcclusionSensitivity`` at equal box and overlap (so equal
   stride), ``mean_img`` fill, following the target logit (MONAI with an identity activation):
   a tiny CNN and ``--occlusion-cases`` held-out tumour phantoms; MONAI, medlab computing every box
   (``refine=0``, the same map), and medlab's opt-in coarse-to-fine approximation (``refine=0.5``), with time,
   boxes computed, the exact share and the difference to the exhaustive map (where exact and elsewhere).

Usage::

    python benchmarks/bench_explain.py             # everything (about 15-30 min on 2 busy cores)
    python benchmarks/bench_explain.py speed       # tables 3 and 4 only
    python benchmarks/bench_explain.py gradcam     # table 3 (occlusion: table 4)
    python benchmarks/bench_explain.py --cases 4   # fewer phantoms in table 1
    python benchmarks/bench_explain.py layers --cases 6   # tables 1a and 1b: Grad-CAM per candidate layer

Timings depend on what else runs on the machine: compare ratios within one run. torch runs
on one thread here (on 2 shared cores, two threads were slower than one).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings
from functools import partial

import numpy as np

METHODS = ("grad_cam", "grad_cam_pp", "guided_grad_cam", "integrated_gradients", "smoothgrad", "occlusion")


def _timed(fn, repeats: int = 3):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def _fmt(v, digits=3) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}g}"


def _table(header, rows) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(_fmt(v) for v in r) + " |")
    print()


# ---------------------------------------------------------------------------- 1 and 2
def held_out_cases(model, n_cases: int | None):
    import torch

    from medlab.data import classification_set
    from medlab.explain.geometry import network_input
    from medlab.explain.network import resolve_model

    net = resolve_model(model)
    ds = classification_set(n=model.metrics["n_held_out"], seed=model.metrics["held_out_seed"])
    cases, wrong = [], 0
    for image, label, mask in (ds[i] for i in range(len(ds))):
        if label != 1:
            continue
        with torch.no_grad():
            out = net.module.eval()(network_input(image, net.input_record).tensor)
        if not _says_tumour(out):
            wrong += 1
            continue
        cases.append((image, mask))
    return cases[:n_cases] if n_cases else cases, wrong, len(ds)


def _says_tumour(out) -> bool:
    """One logit: tumour when positive; two: class 1 wins."""
    return bool(out[0, 0] > 0) if out.shape[1] == 1 else int(out.argmax()) == 1


SLOW = ("integrated_gradients", "smoothgrad", "occlusion")


ABSOLUTE = ("guided_grad_cam", "integrated_gradients", "smoothgrad")
"""Methods whose default sign is ``absolute``: computed signed here, so that Spearman is reported both
signed and of absolute values (Adebayo et al.); their energy is that of the absolute map (the default)."""


def localisation_and_randomisation(model, cases, twin, *, faith_cases: int, slow_cases: int) -> None:
    from medlab.explain import deletion_insertion, table_value
    from medlab.explain._common import localisation_rows
    from medlab.explain.sanity import explainer, model_randomisation, similarity

    rows, faith = [], []
    for method in METHODS:
        energies, hits, rhos, rhos_abs, ssims, twin_rhos, twin_abs, flags, seconds = [], [], [], [], [], [], [], 0, []
        for k, (image, mask) in enumerate(cases[:slow_cases] if method in SLOW else cases):
            explain = explainer(method, mask, **({"sign": "signed"} if method in ABSOLUTE else {}))
            t = time.perf_counter()
            result = model_randomisation(image, model, explain, steps=1, seed=k)
            original = result.original
            seconds.append(time.perf_counter() - t)
            as_default = original.with_array(np.abs(original.array)) if method in ABSOLUTE else original
            numbers = {r["quantity"]: r["value"] for r in localisation_rows(as_default, mask)}
            energies.append(numbers.get("energy in mask", 0.0))
            hits.append(bool(numbers.get("pointing game hit", False)))
            rhos.append(result.scores[-1]["spearman"])
            rhos_abs.append(result.scores[-1]["spearman_abs"])
            ssims.append(result.scores[-1]["ssim"])
            # the flag of the stage: the default map's rank correlation (absolute for ABSOLUTE methods)
            flags += (rhos_abs if method in ABSOLUTE else rhos)[-1] >= result.threshold
            if twin is not None:
                sim = similarity(original, explain(image, _resolve(twin)))
                twin_rhos.append(sim["spearman"])
                twin_abs.append(sim["spearman_abs"])
            if k < faith_cases:
                _, table = deletion_insertion(image, model, as_default, steps=10)
                faith.append((method, table_value(table, "deletion AUC (lower is better)"),
                              table_value(table, "insertion AUC (higher is better)"),
                              table_value(table, "deletion AUC, random order"),
                              table_value(table, "target logit, image")))
        rows.append((method, len(energies), float(np.mean(energies)), float(np.min(energies)),
                     f"{sum(hits)}/{len(hits)}", *_mean_max(rhos), *_mean_max(rhos_abs),
                     f"{sum(not math.isfinite(r) for r in rhos)}",
                     float(np.nanmean(ssims)) if ssims else math.nan,
                     *(_mean_max(twin_rhos)[:1]), *(_mean_max(twin_abs)[:1]), f"{flags}/{len(energies)}",
                     float(np.median(seconds))))
        print(f"  {method}: done", flush=True)
    print("\nTable 1. Held-out tumour phantoms the classifier calls tumour: localisation (energy in the "
          "tumour mask, pointing game) and similarity to the map of the fully randomised model "
          "(Spearman of the signed maps and of their absolute values, as Adebayo et al.; a constant randomised "
          "map has none and is counted apart); Spearman with the map of the label-randomised twin; "
          "flagged = the default map's Spearman >= 0.5 after full randomisation; s = seconds for the original and "
          "the randomised map.\n")
    _table(("method", "cases", "energy mean", "energy min", "pointing hits", "Spearman mean", "Spearman max",
            "|map| Spearman mean", "|map| Spearman max", "constant", "SSIM mean", "twin Spearman",
            "twin |map| Spearman", "flagged", "s"), rows)
    if faith:
        print(f"Table 2. Faithfulness on the first {faith_cases} cases (blurred baseline, 10 steps), following the "
              "target logit (the default): mean AUCs in logit x fraction, and the image's logit.\n")
        agg = {}
        for m, d, i, r, f0 in faith:
            agg.setdefault(m, []).append((d, i, r, f0))
        _table(("method", "deletion AUC", "insertion AUC", "deletion AUC random order", "logit of the image"),
               [(m, *np.mean(v, axis=0)) for m, v in agg.items()])


def layer_choice(model, cases) -> None:
    """Grad-CAM energy in the mask and randomised-model Spearman at each candidate layer, and how
    the energy of the automatic layer's map grows when the mask is dilated (the map's resolution)."""
    import torch
    from scipy import ndimage

    from medlab.explain import find_target_layer, grad_cam, resolve_model
    from medlab.explain._common import localisation_rows
    from medlab.explain.geometry import network_input
    from medlab.explain.sanity import explainer, model_randomisation

    net = resolve_model(model)
    x = network_input(cases[0][0], net.input_record).tensor
    auto = find_target_layer(net, x)
    kept = {}
    hook = dict(net.module.named_modules())[auto].register_forward_hook(lambda m, i, o: kept.setdefault("out", o))
    with torch.no_grad():
        net.module(x)
    hook.remove()
    layer_voxel = " x ".join(f"{s * n / m:g}" for s, n, m in zip(cases[0][0].spacing, x.shape[2:][::-1],
                                                                   kept["out"].shape[2:][::-1]))
    rows = []
    for layer in ("features.block1", "features.block2", "features.block3", "head.evidence"):
        energies, rhos = [], []
        for k, (image, mask) in enumerate(cases):
            result = model_randomisation(image, model, explainer("grad_cam", mask, layer=layer), steps=1, seed=k)
            numbers = {r["quantity"]: r["value"] for r in localisation_rows(result.original, mask)}
            energies.append(numbers.get("energy in mask", 0.0))
            rhos.append(result.scores[-1]["spearman"])
        finite = [r for r in rhos if math.isfinite(r)]
        rows.append((layer + (f" (auto: {auto})" if auto.startswith(layer + ".") or auto == layer else ""),
                     len(cases), float(np.mean(energies)), float(np.min(energies)),
                     float(np.mean(finite)) if finite else math.nan, f"{len(rhos) - len(finite)}"))
    print("Table 1a. Grad-CAM at each candidate layer of the shipped classifier (same held-out cases): energy in "
          "the tumour mask, Spearman with the fully randomised model's map (constant maps counted apart).\n")
    _table(("layer", "cases", "energy mean", "energy min", "Spearman mean", "constant"), rows)
    grow = []
    for image, mask in cases:
        saliency, _ = grad_cam(image, model, mask)
        a, m = np.clip(saliency.array, 0, None), np.asarray(mask.array) != 0
        grow.append([float(a[ndimage.binary_dilation(m, iterations=i) if i else m].sum() / a.sum())
                     for i in (0, 1, 2, 3)])
    print(f"Table 1b. Energy of the automatic layer's map ({auto}) inside the tumour mask dilated by 0-3 scan "
          f"voxels (3 x 3 x 4 mm; the layer's voxel is {layer_voxel} mm): mean over the cases.\n")
    _table(("dilation (voxels)", "0", "1", "2", "3"), [("energy", *np.mean(grow, axis=0))])


def _mean_max(values):
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)), float(np.max(finite))) if finite else (math.nan, math.nan)


def _resolve(model):
    from medlab.explain.network import resolve_model

    return resolve_model(model)


# ---------------------------------------------------------------------------- 3
def _gradcam_phases(model, scan, keep: bool, times: dict) -> None:
    """One Grad-CAM of ``scan`` phase by phase. ``keep=False`` is the path before one forward pass
    was kept (a no-grad forward pass for the class and the layer, then captum's own forward and
    backward, and a volume of ones resampled to count the scan voxels outside the network's view);
    ``keep=True`` is what ``grad_cam`` does now."""
    from medlab.explain._common import Context, normalise_map, numbers
    from medlab.explain.cam import _grad_cam
    from medlab.explain.geometry import network_input, resample_array
    from medlab.explain.network import resolve_model
    from medlab.explain.target import make_target

    def tick(name, t0):
        t1 = time.perf_counter()
        times.setdefault(name, []).append(t1 - t0)
        return t1

    t = time.perf_counter()
    net = resolve_model(model)
    net_in = network_input(scan, net.input_record)
    t = tick("1 scan -> network grid (intensity, resampling)", t)
    target = make_target(net, net_in, keep_layer="auto" if keep else None)
    ctx = Context(net, net_in, target, "positive", "grad_cam")
    t = tick("2 forward pass (class, automatic layer)", t)
    raw = _grad_cam(ctx, "auto").detach().numpy()
    t = tick("3 Grad-CAM (before: captum forward + backward; now: backward only)", t)
    on_scan, outside = net_in.to_scan(raw) if keep else (net_in.to_scan(raw)[0], None)
    if not keep:
        ones = np.ones(net_in.grid.shape, np.float32)
        outside = 1.0 - resample_array(ones, net_in.grid, scan, nearest=True, fill=0.0).mean()
    t = tick("4 network grid -> scan (map, outside share)", t)
    arr, norm = normalise_map(on_scan, "max")
    numbers(ctx, {"method": "Grad-CAM", "target": "", "sign": "positive", "sign_rule": "", "layer": ctx.layer,
                  "network_grid": "", "outside_network_view": outside, **norm}, arr, None)
    tick("5 normalisation, numbers", t)


def gradcam_speed(model) -> None:
    import torch
    from captum.attr import LayerAttribution, LayerGradCam
    from monai.networks.nets import DenseNet121
    from monai.visualize import GradCAM

    from medlab import Image
    from medlab.data import brain_mri
    from medlab.explain import find_target_layer, grad_cam
    from medlab.explain.geometry import network_input
    from medlab.explain.network import resolve_model

    rows = []
    scan = brain_mri(size=(96, 96, 96), spacing=(2.0, 2.0, 2.0), contrasts=("flair",), seed=3).flair
    shipped = resolve_model(model)
    xs = network_input(scan, shipped.input_record).tensor
    shipped_layer = dict(shipped.module.named_modules())[find_target_layer(shipped, xs)]

    def captum_shipped():   # the same map on the network grid only: no preprocessing, no way back to the scan
        a = LayerGradCam(shipped.module, shipped_layer).attribute(xs, target=0, relu_attributions=True)
        return LayerAttribution.interpolate(a, tuple(xs.shape[2:]), "trilinear")[0, 0].detach().numpy()

    what = f"shipped classifier, 96^3 scan of 2 mm (network grid {'x'.join(map(str, xs.shape[2:][::-1]))})"
    # interleaved repeats: the three are measured under the same load
    before, after, t_cap, t_med = {}, {}, [], []
    grad_cam(scan, model)
    for _ in range(7):
        t = time.perf_counter()
        captum_shipped()
        t_cap.append(time.perf_counter() - t)
        t = time.perf_counter()
        grad_cam(scan, model)
        t_med.append(time.perf_counter() - t)
        _gradcam_phases(model, scan, False, before)
        _gradcam_phases(model, scan, True, after)
    t_captum, t = float(np.median(t_cap)), float(np.median(t_med))
    print("Table 3a. Where the time of one Grad-CAM of a 96^3 scan goes (shipped classifier; median of 7, "
          "interleaved): before (a no-grad forward pass, then captum's forward and backward) and now (one "
          "forward pass kept for the backward pass; outside share from the scan's corners).\n")
    phase_rows = [(k, float(np.median(before[k])), float(np.median(after[k]))) for k in before]
    phase_rows.append(("total (sum of phase medians)", sum(r[1] for r in phase_rows), sum(r[2] for r in phase_rows)))
    phase_rows.append(("plain captum on the network grid, same run", t_captum, t_captum))
    _table(("phase", "before s", "now s"), phase_rows)
    rows.append((what, "captum LayerGradCam + interpolate (network grid only)", t_captum, "–", 1.0))
    rows.append((what, "medlab grad_cam (scan -> network grid -> scan)", t, "–", t / t_captum))

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    arr = np.random.default_rng(0).random((96, 96, 96)).astype(np.float32)
    img = Image(arr)
    x = torch.from_numpy(arr)[None, None]
    layer = "class_layers.relu"
    with torch.no_grad():
        c = int(net(x).argmax())

    def captum_map():
        a = LayerGradCam(net, net.class_layers.relu).attribute(x, target=c, relu_attributions=True)
        return LayerAttribution.interpolate(a, (96, 96, 96), "trilinear")[0, 0].detach().numpy()

    # on a copy: MONAI's GradCAM leaves its hooks on the module, which would slow the others down
    cam = GradCAM(copy.deepcopy(net), target_layers=layer, postprocessing=lambda m: m)

    def monai_map():
        return cam(x, class_idx=c)[0, 0].detach().numpy()

    def medlab_map():
        return grad_cam(img, net, target_class=c, layer=layer, normalise="none")[0].array

    ref = captum_map()
    impls = (("captum LayerGradCam + interpolate", captum_map), ("MONAI GradCAM (identity normaliser)", monai_map),
             ("medlab grad_cam", medlab_map))
    times, outs = {}, {}
    for _ in range(3):   # interleaved: each round runs the three under the same load
        for name, fn in impls:
            t = time.perf_counter()
            outs[name] = fn()
            times.setdefault(name, []).append(time.perf_counter() - t)
    t_captum = float(np.median(times[impls[0][0]]))
    for name, _ in impls:
        t = float(np.median(times[name]))
        rows.append(("DenseNet121 (random weights), 96^3 input", name, t,
                     float(np.abs(outs[name] - ref).max() / max(np.abs(ref).max(), 1e-12)), t / t_captum))
    print("Table 3. Grad-CAM on a 96^3 volume (median of 3, interleaved; max difference relative to captum's map max; "
          "time / plain captum's in the same run).\n")
    _table(("model and input", "implementation", "s", "max rel. difference", "x captum"), rows)


# ---------------------------------------------------------------------------- 4
def _monai_occlusion(occ, x, c):
    return occ(x)[0][0, c].numpy()


def occlusion_speed(model, n_cases: int = 3, refine: float = 0.5, large_box: bool = True,
                    densenet: bool = True) -> None:
    """Table 4: medlab's exact occlusion (incremental inference, :mod:`medlab.explain.incremental`),
    the same with every occluded copy through the whole network, and the coarse-to-fine pass,
    against MONAI's OcclusionSensitivity at equal box and overlap, in the same run."""
    from unittest import mock

    import torch
    from monai.visualize import OcclusionSensitivity
    from torch import nn

    from medlab import Image
    from medlab.explain import occlusion, perturbation, table_value
    from medlab.explain.geometry import network_input
    from medlab.explain.network import resolve_model

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 2)).eval()
    blob = np.zeros((32, 32, 32), np.float32)
    zz, yy, xx = np.mgrid[:32, :32, :32]
    blob += np.exp(-((zz - 12) ** 2 + (yy - 20) ** 2 + (xx - 15) ** 2) / 18.0) + 0.1
    net = resolve_model(model)
    # held-out tumour phantoms the classifier calls tumour (logits 12-19): the target is the logit, which
    # they do not saturate (their probability is 1.0 or within 1e-5 of it, where occlusion ranks nothing)
    cases, _, _ = held_out_cases(model, n_cases)
    setups = [("tiny CNN, 32^3", tiny, Image(blob), (16, 16, 16), 0.6, 16.0)]
    setups += [(f"shipped classifier, held-out tumour case {k}", net.module, image, (12, 16, 16), 0.5, 48.0)
               for k, (image, _) in enumerate(cases)]
    if large_box and cases:   # a box a quarter of the input along y and x: incremental helps less
        setups.append(("shipped classifier, case 0, large box", net.module, cases[0][0], (24, 32, 32), 0.5, 96.0))
    if densenet:   # not a chain: incremental through its traced graph (dense concatenations)
        from monai.networks.nets import DenseNet121

        dense = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
        noise = np.random.default_rng(0).random((48, 48, 48)).astype(np.float32)
        setups.append(("MONAI DenseNet121 (random weights), 48^3 noise", dense, Image(noise), (12, 12, 12), 0.5, 12.0))
    full_forward = mock.patch.object(perturbation, "_engine", lambda ctx: None)
    rows = []
    for name, module, img, box, overlap, mm in setups:
        if module is not net.module:
            x = torch.from_numpy(img.array.copy())[None, None]
            model_in = module
        else:
            x = network_input(img, net.input_record).tensor
            model_in = model
        with torch.no_grad():
            logits = module(x)
            c = int(logits.argmax())
            f0 = float(logits[0, c])
        # activate=identity: MONAI's map is the occluded logit itself
        occ = OcclusionSensitivity(module, mask_size=box, n_batch=32, mode="mean_img", overlap=overlap, verbose=False,
                                   activate=lambda out: out)
        t_monai, out = _timed(partial(_monai_occlusion, occ, x, c), repeats=1)
        full = f0 - out
        peak = float(np.abs(full).max())
        rows.append((name, f"logit {f0:.2f}", "MONAI OcclusionSensitivity (n_batch 32)", t_monai, 1.0, "–", "–", "–",
                     "–", "–", "–"))
        runs = [("exact, incremental (default)", 0.0, None), ("exact, full forward per box", 0.0, full_forward),
                (f"coarse-to-fine refine={refine:g}, incremental", refine, None)]
        for label, r, patch in runs:
            call = partial(occlusion, img, model_in, target_class=c, mask_size=mm, overlap=overlap, refine=r,
                           fill="mean", normalise="none", batch=32)
            if patch is not None:
                with patch:
                    t, (s, table) = _timed(call, repeats=1)
            else:
                t, (s, table) = _timed(call, repeats=1)
            assert table_value(table, "box (network voxels, tensor axes)") == " x ".join(map(str, box))
            assert table_value(table, "score followed") == "target logit"
            diff = np.abs(s.array - full)
            share = table_value(table, "share of voxels computed exactly")
            exact = diff <= 1e-5 * max(peak, 1e-12)
            elsewhere = ~exact
            how = table_value(table, "incremental inference")
            rows.append((name, "", f"medlab {label}", t, t_monai / t,
                         f"{table_value(table, 'boxes computed')}/{table_value(table, 'boxes in the full computation')}",
                         share, float(diff[exact].max() / peak) if exact.any() else math.nan,
                         float(diff[elsewhere].max() / peak) if elsewhere.any() else 0.0,
                         float(np.mean(exact[np.abs(full) >= 0.5 * peak])), how.split(" recomputed")[0]))
    print("Table 4. Occlusion at equal box (voxels, tensor axes) and overlap, mean-image fill, following the target "
          "logit (MONAI with an identity activation); map = logit(image) - MONAI's map. Columns: boxes computed of "
          "the full computation; share of voxels medlab reports exact; the largest difference to MONAI's map "
          "where it is within 1e-5 of the peak and elsewhere (relative to the map's peak); the share of the exhaustive "
          "map's voxels at >= half its peak that are exact; how far the incremental part reached.\n")
    _table(("model and input", "target", "implementation", "s", "speed-up vs MONAI", "boxes", "exact share",
            "max diff exact / peak", "max diff elsewhere / peak", "exact share of >= half-peak voxels",
            "incremental layers"), rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="*", default=["all"], help="all, quality, layers, speed (= gradcam and occlusion)")
    p.add_argument("--cases", type=int, default=None, help="at most this many held-out tumour cases in table 1")
    p.add_argument("--faith-cases", type=int, default=3)
    p.add_argument("--slow-cases", type=int, default=8, help="cases for integrated gradients, SmoothGrad, occlusion")
    p.add_argument("--occlusion-cases", type=int, default=3, help="held-out tumour cases in table 4")
    p.add_argument("--refine", type=float, default=0.5, help="coarse-to-fine threshold in table 4")
    args = p.parse_args(argv)
    import torch

    from medlab.explain import tumour_classifier

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model = tumour_classifier()
    try:
        twin = tumour_classifier(random_labels=True)
    except Exception:  # noqa: BLE001 - the twin is optional
        twin = None
    print(f"classifier: {model.describe()}\n")
    what = set(args.what)
    if what & {"all", "quality"}:
        cases, wrong, n = held_out_cases(model, args.cases)
        print(f"held-out set: {n} phantoms; tumour cases called tumour: {len(cases)} used, {wrong} missed\n", flush=True)
        localisation_and_randomisation(model, cases, twin, faith_cases=args.faith_cases, slow_cases=args.slow_cases)
    if what & {"all", "layers"}:
        cases, _, _ = held_out_cases(model, args.cases)
        layer_choice(model, cases)
    if what & {"all", "speed", "gradcam"}:
        gradcam_speed(model)
    if what & {"all", "speed", "occlusion"}:
        occlusion_speed(model, args.occlusion_cases, args.refine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
