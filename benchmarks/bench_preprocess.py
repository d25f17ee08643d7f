"""Preprocess stages against the direct library calls: time, quality, peak memory.

Issue 3, section 5. One run prints one table:

* slice preview latency (p50 / p95 over repeated runs) of NLM, anisotropic diffusion and CLAHE
  at default parameters, on a 512 x 512 slice and on one slice of the volume;
* every full-volume stage on a 256 x 256 x 128 brain phantom (Rician noise, sigma 5 % of the
  maximum; ``medlab.data.brain_mri``), with PSNR / SSIM against the noise-free phantom, and
  the peers (``nlm_denoise`` filters volumes in 3D by default since issue 7; its slice filter,
  ``method='slices'``, has rows of its own): scikit-image ``denoise_nl_means`` (fast mode, the
  slice filter's patch and search sizes, its
  ``h`` tuned for best PSNR on this phantom; run on a central crop of 1/8 of the volume
  because it is slow, its time scaled by the voxel ratio, and both it and medlab scored on
  that crop), dipy's blockwise NLM on the same crop, OpenCV
  called directly, SimpleITK's own diffusion and N4 calls with the same settings, and
  scikit-image's ``equalize_adapthist``;
* peak memory of each full-volume run, as a multiple of the input's size (float32): every
  full-volume row runs in a fresh subprocess, and the figure is the growth of the resident
  set (``ru_maxrss`` minus the resident size just before the call).

Usage::

    python benchmarks/bench_preprocess.py            # full run (a few minutes on 2 cores)
    python benchmarks/bench_preprocess.py --quick    # 128 x 128 x 64 volume, fewer repeats

Timings depend on what else runs on the machine: on a shared machine they are noisy, and the
ratios matter more than the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NOISE = 0.05
PATCH, SEARCH = 3, 11  # the patch and in-slice search of medlab's slice filter (nlm_denoise method="slices")
SK_H = 0.4  # skimage's h / sigma: best PSNR on this phantom (0.3: lower, 0.5-0.8 as its docs suggest: lower)


# ----------------------------------------------------------------------------- data
def make_data(folder: Path, size: tuple[int, int, int]) -> dict:
    from medlab.data import brain_mri

    p = brain_mri(size=size, noise=NOISE, seed=0, contrasts=("t1",))
    b = brain_mri(size=size, noise=0.01, bias=0.3, seed=1, contrasts=("t1",))
    np.save(folder / "noisy.npy", p.t1.array.astype(np.float32))
    np.save(folder / "clean.npy", p.clean["t1"].array.astype(np.float32))
    np.save(folder / "biased.npy", b.t1.array.astype(np.float32))
    np.save(folder / "field.npy", b.bias_field.array.astype(np.float32))
    np.save(folder / "wm.npy", b.labels.array == b.label_value("white matter"))
    meta = {"spacing": p.t1.spacing, "origin": p.t1.origin, "sigma": float(p.t1.metadata["noise_sigma"])}
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def load_data(folder: Path):
    from medlab import Image

    meta = json.loads((folder / "meta.json").read_text())
    geo = {"spacing": meta["spacing"], "origin": meta["origin"], "metadata": {"modality": "MR"}}
    arrays = {k: np.load(folder / f"{k}.npy") for k in ("noisy", "clean", "biased", "field", "wm")}
    return {"noisy": Image(arrays["noisy"], **geo), "clean": Image(arrays["clean"], **geo),
            "biased": Image(arrays["biased"], **geo), "field": arrays["field"], "wm": arrays["wm"], **meta}


def crop_slices(shape) -> tuple[slice, ...]:
    """The central crop with half the extent along each axis (1/8 of the voxels)."""
    return tuple(slice(n // 4, n // 4 + n // 2) for n in shape)


# ----------------------------------------------------------------------------- the runs
def _u8(a: np.ndarray):
    lo, hi = float(a.min()), float(a.max())
    return np.clip(np.rint((a - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8), lo, hi


def run_medlab_nlm(d, **kw):
    from medlab import preprocess as pp

    return pp.nlm_denoise(d["noisy"], **kw).array


def run_opencv_nlm(d):
    import cv2

    from medlab.metrics import estimate_noise_sigma

    a = d["noisy"].array
    u8, lo, hi = _u8(a)
    h = 1.5 * estimate_noise_sigma(d["noisy"]) * 255 / (hi - lo)
    out = np.stack([cv2.fastNlMeansDenoising(s, None, h=h, templateWindowSize=PATCH, searchWindowSize=SEARCH)
                    for s in u8])
    return out.astype(np.float32) / 255 * (hi - lo) + lo


def run_skimage_nlm(d):
    from skimage.restoration import denoise_nl_means, estimate_sigma

    a = d["noisy"].array[crop_slices(d["noisy"].shape)]
    sigma = float(estimate_sigma(a))
    return denoise_nl_means(a, patch_size=PATCH, patch_distance=SEARCH // 2, h=SK_H * sigma, sigma=sigma,
                            fast_mode=True, preserve_range=True)


def run_dipy_nlm(d):
    from dipy.denoise.nlmeans import nlmeans

    from medlab.metrics import estimate_noise_sigma

    a = d["noisy"].array[crop_slices(d["noisy"].shape)]
    sigma = estimate_noise_sigma(d["noisy"], rician=True)
    return nlmeans(a, sigma, patch_radius=1, block_radius=2, rician=True, num_threads=2)


def run_medlab(name, **kw):
    def run(d):
        from medlab import preprocess as pp

        out = getattr(pp, name)(d["noisy"], **kw)
        return (out[0] if isinstance(out, tuple) else out).array
    return run


def run_sitk_diffusion(d):
    import SimpleITK as sitk

    img = sitk.Cast(d["noisy"].to_sitk(), sitk.sitkFloat32)
    ts = min(min(d["noisy"].spacing), 1.0) / 16
    return sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(img, ts, 1.0, 1, 5))


def run_skimage_clahe(d):
    from skimage.exposure import equalize_adapthist

    a = d["noisy"].array
    return equalize_adapthist((a - a.min()) / (a.max() - a.min()), clip_limit=0.01)


def run_medlab_n4(d):
    from medlab import preprocess as pp

    corrected, field = pp.n4_bias_correction(d["biased"])
    return corrected.array, field.array


def run_sitk_n4(d):
    """SimpleITK's documented N4 recipe with the same settings (shrink 4, 4 x 50, Otsu mask)."""
    import SimpleITK as sitk

    img = sitk.Cast(d["biased"].to_sitk(), sitk.sitkFloat32)
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    small, small_mask = sitk.Shrink(img, [4] * 3), sitk.Shrink(mask, [4] * 3)
    c = sitk.N4BiasFieldCorrectionImageFilter()
    c.SetMaximumNumberOfIterations([50] * 4)
    c.Execute(small, small_mask)
    log_field = c.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_field)
    return sitk.GetArrayFromImage(corrected), np.exp(sitk.GetArrayFromImage(log_field))


# name -> (function, quality kind, peer group, target note)
RUNS = {
    "medlab nlm_denoise (defaults: 3D, Rician-aware)": (lambda d: run_medlab_nlm(d), "nlm", "nlm"),
    "medlab nlm_denoise 3D, noise_model=gaussian": (lambda d: run_medlab_nlm(d, noise_model="gaussian"), "nlm", "nlm"),
    "medlab nlm_denoise method=slices": (lambda d: run_medlab_nlm(d, method="slices"), "nlm", "nlm"),
    "medlab nlm_denoise slices, across_slices": (
        lambda d: run_medlab_nlm(d, method="slices", across_slices=True), "nlm", "nlm"),
    "OpenCV fastNlMeans per slice (direct)": (run_opencv_nlm, "nlm", "nlm"),
    "skimage denoise_nl_means fast 3/5, h=0.4σ [crop 1/8]": (run_skimage_nlm, "crop", "nlm"),
    "dipy nlmeans blockwise r1/b2 [crop 1/8]": (run_dipy_nlm, "crop", "nlm"),
    "medlab anisotropic_diffusion (curvature, 5 it)": (run_medlab("anisotropic_diffusion"), "denoise", "diff"),
    "SimpleITK CurvatureAnisotropicDiffusion": (run_sitk_diffusion, "denoise", "diff"),
    "medlab gaussian_smooth 1 mm": (run_medlab("gaussian_smooth"), "denoise", None),
    "medlab median_filter r1": (run_medlab("median_filter"), "denoise", None),
    "medlab bilateral_filter": (run_medlab("bilateral_filter"), "denoise", None),
    "medlab clahe 3D": (run_medlab("clahe"), "none", "clahe"),
    "skimage equalize_adapthist 3D": (run_skimage_clahe, "none", "clahe"),
    "medlab histogram_equalization": (run_medlab("histogram_equalization"), "none", None),
    "medlab normalize_intensity": (run_medlab("normalize_intensity"), "none", None),
    "medlab window_level auto": (run_medlab("window_level", preset="auto"), "none", None),
    "medlab resample 1 mm bspline": (run_medlab("resample", spacing=(1.0, 1.0, 1.0), interpolator="bspline"),
                                     "none", None),
    "medlab crop_to_foreground": (run_medlab("crop_to_foreground"), "none", None),
    "medlab pad 8": (run_medlab("pad"), "none", None),
    "medlab reorient RAS": (run_medlab("reorient"), "none", None),
    "medlab n4_bias_correction": (run_medlab_n4, "n4", "n4"),
    "SimpleITK N4 recipe (same settings)": (run_sitk_n4, "n4", "n4"),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """Peak resident set size of this process (VmHWM; ``ru_maxrss`` would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> None:
    try:  # Linux >= 4.0: reset VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _warm_up(fn, d) -> None:
    """Run once on a small central crop, so lazy imports and thread pools do not count."""
    from medlab import Image

    sl = tuple(slice(n // 2 - 8, n // 2 + 8) for n in d["noisy"].shape)
    small = {k: (Image(v.array[sl].copy(), v.spacing, v.origin, metadata=v.metadata) if isinstance(v, Image)
                 else v[sl] if isinstance(v, np.ndarray) else v) for k, v in d.items()}
    try:
        fn(small)
    except Exception:  # noqa: BLE001, S110 (a warm-up only)
        pass


def worker(name: str, folder: Path, repeat: bool = True) -> dict:
    """Run one row in this (fresh) process; returns time, quality and memory growth."""
    from medlab import metrics

    d = load_data(folder)
    fn, kind, _ = RUNS[name]
    _warm_up(fn, d)

    _reset_peak()
    before = _rss()
    t0 = time.perf_counter()
    out = fn(d)
    elapsed = time.perf_counter() - t0
    peak = _peak_rss()
    if elapsed < 5.0 and repeat:  # quick rows: best of 3, less sensitive to other load
        for _ in range(2):
            t0 = time.perf_counter()
            fn(d)
            elapsed = min(elapsed, time.perf_counter() - t0)
    res = {"name": name, "time": elapsed, "mem": max(peak - before, 0) / d["noisy"].array.nbytes,
           "mem_before": before / d["noisy"].array.nbytes}
    clean = d["clean"].array
    crop = crop_slices(clean.shape)
    if kind == "crop":
        res["voxel_ratio"] = clean.size / clean[crop].size
        res["psnr_crop"] = metrics.psnr(out, clean[crop], data_range=1.0)
        res["ssim_crop"] = metrics.ssim(out, clean[crop], data_range=1.0)
        if name.startswith("skimage"):  # like-for-like with medlab's default: add the same Rician correction
            from medlab.preprocess.denoise import rician_unbias

            fixed = rician_unbias(out, metrics.estimate_noise_sigma(d["noisy"], rician=True))
            res["psnr_crop_fixed"] = metrics.psnr(fixed, clean[crop], data_range=1.0)
            res["note"] = (f"+ medlab's Rician correction: crop {metrics.psnr(fixed, clean[crop], data_range=1.0):.2f}"
                           f" / {metrics.ssim(fixed, clean[crop], data_range=1.0):.3f}")
    elif kind in ("nlm", "denoise"):
        res["psnr"] = metrics.psnr(out, clean, data_range=1.0)
        res["ssim"] = metrics.ssim(out, clean, data_range=1.0)
        res["psnr_crop"] = metrics.psnr(out[crop], clean[crop], data_range=1.0)
        res["ssim_crop"] = metrics.ssim(out[crop], clean[crop], data_range=1.0)
    elif kind == "n4":
        corrected, field = out
        wm = d["wm"]
        res["note"] = (f"WM CV {corrected[wm].std() / corrected[wm].mean():.3f} "
                       f"(input {d['biased'].array[wm].std() / d['biased'].array[wm].mean():.3f}), "
                       f"field r={np.corrcoef(field[wm], d['field'][wm])[0, 1]:.3f}")
    return res


# ----------------------------------------------------------------------------- preview latency
def preview_rows(d, repeats: int) -> list[dict]:
    import cv2
    import SimpleITK as sitk
    from skimage.exposure import equalize_adapthist

    from medlab import Image
    from medlab import preprocess as pp
    from medlab.data import brain_mri

    big = brain_mri(size=(512, 512, 8), spacing=(0.5, 0.5, 24.0), noise=NOISE, seed=0, contrasts=("t1",)).t1
    s512 = Image(big.array[4], big.spacing[:2], metadata={"modality": "MR"})
    k = d["noisy"].shape[0] // 2
    svol = Image(d["noisy"].array[k], d["noisy"].spacing[:2], metadata={"modality": "MR"})

    def opencv(img):
        u8, _, _ = _u8(img.array)
        return cv2.fastNlMeansDenoising(u8, None, h=18.0, templateWindowSize=PATCH, searchWindowSize=SEARCH)

    def sitk_diff(img):
        return sitk.CurvatureAnisotropicDiffusion(sitk.Cast(img.to_sitk(), sitk.sitkFloat32), 1 / 16, 1.0, 1, 5)

    def sk_clahe(img):
        a = img.array
        return equalize_adapthist((a - a.min()) / (a.max() - a.min()))

    cases = [("nlm_denoise", pp.nlm_denoise, "OpenCV fastNlMeans (uint8)", opencv),
             ("anisotropic_diffusion", pp.anisotropic_diffusion, "SimpleITK curvature", sitk_diff),
             ("clahe", pp.clahe, "skimage equalize_adapthist", sk_clahe)]
    rows = []
    for label, img in (("512x512", s512), (f"{svol.size[0]}x{svol.size[1]} vol. slice", svol)):
        for name, fn, peer, pfn in cases:
            times = {}
            for who, f in (("medlab", fn), ("peer", pfn)):
                f(img)  # warm-up
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    f(img)
                    ts.append(time.perf_counter() - t0)
                times[who] = np.percentile(ts, [50, 95]) * 1000
            p95 = times["medlab"][1]
            rows.append({"row": f"preview {name} {label}", "medlab": f"{times['medlab'][0]:.0f} / {p95:.0f} ms",
                         "peer": f"{peer}: {times['peer'][0]:.0f} / {times['peer'][1]:.0f} ms",
                         "target": "p95 < 150 ms", "met": "yes" if p95 < 150 else "NO"})
    return rows


# ----------------------------------------------------------------------------- table
def full_volume_rows(results: dict[str, dict]) -> list[dict]:
    def get(prefix):
        return next(r for n, r in results.items() if n.startswith(prefix))

    rows = []
    sk = get("skimage denoise_nl_means")
    sk_full = sk["time"] * sk["voxel_ratio"]
    for name, r in results.items():
        t = r["time"] * r.get("voxel_ratio", 1.0)
        tstr = f"{r['time']:.2f} s" + (f" (x{r['voxel_ratio']:.0f} = {t:.1f} s full)" if "voxel_ratio" in r else "")
        q = ""
        if "psnr" in r:
            q = f"{r['psnr']:.2f} dB / {r['ssim']:.3f}; crop {r['psnr_crop']:.2f} / {r['ssim_crop']:.3f}"
        elif "psnr_crop" in r:
            q = f"crop {r['psnr_crop']:.2f} dB / {r['ssim_crop']:.3f}"
        q = "; ".join(x for x in (q, r.get("note", "")) if x)
        target, met = "", ""
        group = RUNS[name][2]
        if group == "nlm" and name.startswith("medlab"):
            speed = sk_full / t
            dq = r["psnr_crop"] - sk["psnr_crop"]
            target = "≥10x skimage fast, PSNR ≥ skimage - 0.3 dB"
            met = f"{'yes' if speed >= 10 and dq >= -0.3 else 'NO'} ({speed:.0f}x, {dq:+.2f} dB"
            if "gaussian" not in name and "psnr_crop_fixed" in sk:
                met += f"; {r['psnr_crop'] - sk['psnr_crop_fixed']:+.2f} dB vs skimage + Rician corr."
            met += ")"
        elif group in ("diff", "clahe", "n4") and name.startswith("medlab"):
            peer = next(r2 for n2, r2 in results.items() if RUNS[n2][2] == group and not n2.startswith("medlab"))
            ratio = r["time"] / peer["time"]
            target = "no slower than the direct call (±10 % noise)"
            met = f"{'yes' if ratio <= 1.1 else 'NO'} ({ratio:.2f}x its time)"
        rows.append({"row": name, "time": tstr, "quality": q, "mem": f"{r['mem']:.1f}x", "target": target, "met": met})
    return rows


def print_table(rows: list[dict], cols: list[tuple[str, str]]) -> None:
    widths = [max(len(h), *(len(str(r.get(k, ""))) for r in rows)) for k, h in cols]
    line = " | ".join(h.ljust(w) for (_, h), w in zip(cols, widths))
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r.get(k, "")).ljust(w) for (k, _), w in zip(cols, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="128 x 128 x 64 volume and 5 preview repeats")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--only", help="run only the full-volume rows whose name contains this text")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data))))
        return

    size = (128, 128, 64) if args.quick else (256, 256, 128)
    repeats = 5 if args.quick else 20
    print(f"medlab preprocess benchmark: volume {size[0]}x{size[1]}x{size[2]} brain phantom, Rician noise "
          f"{NOISE:.0%} of max; {os.cpu_count()} CPU(s). Shared machine: timings are noisy, ratios matter.\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        meta = make_data(folder, size)
        d = load_data(folder)
        from medlab import metrics

        print(f"noisy input: PSNR {metrics.psnr(d['noisy'], d['clean'], data_range=1.0):.2f} dB, "
              f"SSIM {metrics.ssim(d['noisy'], d['clean'], data_range=1.0):.3f} (true sigma {meta['sigma']:.4f})\n")
        print("Slice preview latency (p50 / p95 over", repeats, "runs, default parameters)")
        print_table(preview_rows(d, repeats), [("row", "case"), ("medlab", "medlab p50 / p95"),
                                               ("peer", "direct call p50 / p95"), ("target", "target"),
                                               ("met", "met?")])
        results = {}
        for name in RUNS:
            if args.only and args.only not in name and not name.startswith("skimage denoise"):
                continue
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--data", str(folder)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                print(f"{name}: FAILED\n{proc.stderr[-2000:]}")
                continue
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  done: {name} ({results[name]['time']:.2f} s)", file=sys.stderr, flush=True)
        print("\nFull volume (fresh process per row; time = one run, or best of 3 when under 5 s; quality = PSNR dB / SSIM vs noise-free; "
              "'crop' = the central 1/8 where skimage and dipy ran; mem = peak RSS growth / input size)")
        print_table(full_volume_rows(results), [("row", "stage / call"), ("time", "time"), ("quality", "quality"),
                                                ("mem", "peak mem"), ("target", "target"), ("met", "met?")])


if __name__ == "__main__":
    main()
