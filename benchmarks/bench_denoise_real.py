"""Denoising real T1 MRI: medlab's 3D non-local means against dipy, scikit-image and SimpleITK.

Issue 7, section 2. One run prints, for each reference kind and each noise level (Rician,
sigma = 5 % and 3 % of the maximum), time, PSNR and SSIM (against the noise-free reference,
data range 1, on the whole head crop) of:

* ``medlab.preprocess.nlm_denoise`` with its defaults (the 3D filter; its time includes its
  own noise estimate), and with ``method='slices'`` (the slice filter, the default before);
* dipy's blockwise ``nlmeans`` (patch radius 1, block radius 2, ``rician=True``,
  ``num_threads=2``), sigma from dipy's own ``estimate_sigma`` (included in its time) -- the
  bar of issue 7 -- and, to explain earlier results, with the true sigma;
* scikit-image ``denoise_nl_means`` (fast mode, patch 3, distance 2, h = 0.8 sigma, sigma from
  its own ``estimate_sigma``; single-threaded);
* SimpleITK ``CurvatureAnisotropicDiffusion`` (5 iterations, conductance 1, time step
  min(spacing, 1 mm) / 16, the stable step medlab's ``anisotropic_diffusion`` uses).

Times are the best of ``--repeats`` runs, wall clock and process CPU (all threads). The
reference kinds (``shared/recipes/stack-facts.md``), read from ``../shared/data``:

* ``single``: a single acquisition, the central 128^3 crop of ``noncommercial/chris_t1.nii.gz``
  (0.88 mm). Its own noise (about 1.2-1.5 % of its range) is in the reference and caps every method.
* ``template``: the smooth ICBM152 2009a population template, central 128^3 crop (1 mm).
* ``sharp``: a stand-in for the "sharp, averaged single-subject T1" of stack-facts, which is not
  on this machine: chris_t1 averaged over 2 x 2 x 2 voxels (95 x 128 x 94 at 1.76 mm: the whole
  head, 2.8x its SNR, anatomy sharper per voxel).

Every crop is scaled to [0, 1]; the noise is seeded. Finally, the slice preview (the 2D filter
the live preview runs) is timed on a 512 x 512 slice (p50 / p95 of 20 runs).

    python benchmarks/bench_denoise_real.py [--data ../shared/data] [--repeats 3]

The T1 is CC BY-NC: it is read from ``shared/data`` beside the checkout, never copied.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SIGMAS = (0.05, 0.03)
KINDS = {
    "single": "chris_t1, one acquisition, centre 128^3 (0.88 mm)",
    "template": "ICBM152 template, centre 128^3 (1 mm)",
    "sharp": "stand-in: chris_t1 averaged 2x2x2, 95x128x94 (1.76 mm)",
}


def _read(path: Path) -> tuple[np.ndarray, tuple]:
    import SimpleITK as sitk  # the benchmark reads files directly: it measures filters, not loaders

    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img).astype(np.float32), img.GetSpacing()


def _unit(a: np.ndarray) -> np.ndarray:
    return ((a - a.min()) / (a.max() - a.min())).astype(np.float32)


def _centre(a: np.ndarray, n: int = 128) -> np.ndarray:
    z, y, x = (np.array(a.shape) - n) // 2
    return a[z:z + n, y:y + n, x:x + n]


def references(data: Path) -> dict[str, tuple[np.ndarray, tuple]]:
    t1, sp = _read(data / "noncommercial" / "chris_t1.nii.gz")
    mni, sp_mni = _read(data / "registration" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    z, y, x = (s // 2 * 2 for s in t1.shape)
    binned = t1[:z, :y, :x].reshape(z // 2, 2, y // 2, 2, x // 2, 2).mean(axis=(1, 3, 5))
    return {"single": (_unit(_centre(t1)), sp), "template": (_unit(_centre(mni)), sp_mni),
            "sharp": (_unit(binned), tuple(2 * s for s in sp))}


def rician(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)


def timed(fn, repeats: int):
    wall, cpu, out = np.inf, np.inf, None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def methods(noisy, arr: np.ndarray, true_sigma: float) -> dict:
    import SimpleITK as sitk
    from dipy.denoise.nlmeans import nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma as dipy_sigma
    from skimage.restoration import denoise_nl_means
    from skimage.restoration import estimate_sigma as sk_sigma

    from medlab.preprocess import nlm_denoise

    def dipy(sigma=None):
        s = float(dipy_sigma(arr)[0]) if sigma is None else sigma
        return nlmeans(arr, s, patch_radius=1, block_radius=2, rician=True, num_threads=2)

    def skimage():
        s = float(sk_sigma(arr))
        return denoise_nl_means(arr, patch_size=3, patch_distance=2, h=0.8 * s, sigma=s, fast_mode=True,
                                channel_axis=None)

    def diffusion():
        img = sitk.Cast(noisy.to_sitk(), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(img, min(min(noisy.spacing), 1.0) / 16, 1.0, 1, 5))

    return {
        "medlab nlm_denoise (defaults: 3D)": lambda: nlm_denoise(noisy).array,
        "medlab nlm_denoise method='slices'": lambda: nlm_denoise(noisy, method="slices").array,
        "dipy nlmeans r1/b2, own estimate_sigma": dipy,
        "dipy nlmeans r1/b2, true sigma": lambda: dipy(true_sigma),
        "skimage nl_means fast 3/2, h 0.8σ": skimage,
        "SimpleITK curvature diffusion, 5 it": diffusion,
    }


def preview_latency(repeats: int = 20) -> tuple[float, float]:
    from medlab import Image
    from medlab.data import brain_mri
    from medlab.preprocess import nlm_denoise

    big = brain_mri(size=(512, 512, 8), spacing=(0.5, 0.5, 24.0), noise=0.05, seed=0, contrasts=("t1",)).t1
    sl = Image(big.array[4], big.spacing[:2], metadata={"modality": "MR"})
    nlm_denoise(sl)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nlm_denoise(sl)
        ts.append(time.perf_counter() - t0)
    p50, p95 = np.percentile(ts, [50, 95]) * 1000
    return float(p50), float(p95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ", ".join(KINDS))
    args = ap.parse_args()
    import os

    from dipy.denoise.noise_estimate import estimate_sigma as dipy_sigma

    from medlab import Image, metrics, stage

    refs = references(Path(args.data))
    print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; best of {args.repeats}. "
          "PSNR / SSIM against the noise-free reference (data range 1, whole crop).\n")
    summary = []
    with stage.progress_to(lambda f, m: None):
        for kind in args.kinds.split(","):
            clean, spacing = refs[kind]
            for sigma in SIGMAS:
                arr = rician(clean, sigma)
                noisy = Image(arr, spacing, metadata={"modality": "MR"})
                est_m = metrics.estimate_noise_sigma(noisy, rician=True)
                print(f"## {kind}: {KINDS[kind]}, {clean.shape}, Rician sigma {sigma:.0%}: noisy "
                      f"{metrics.psnr(arr, clean, data_range=1):.2f} dB / {metrics.ssim(arr, clean, data_range=1):.3f}; "
                      f"sigma estimates: medlab {est_m:.4f}, dipy {float(dipy_sigma(arr)[0]):.4f}")
                print(f"{'method':42s} {'wall s':>7s} {'CPU s':>7s} {'PSNR dB':>8s} {'SSIM':>6s}")
                rows = {}
                for name, fn in methods(noisy, arr, sigma).items():
                    wall, cpu, out = timed(fn, args.repeats)
                    out = np.asarray(out, dtype=np.float32)
                    rows[name] = (wall, cpu, metrics.psnr(out, clean, data_range=1), metrics.ssim(out, clean, data_range=1))
                    print(f"{name:42s} {wall:7.2f} {cpu:7.2f} {rows[name][2]:8.2f} {rows[name][3]:6.3f}", flush=True)
                ours, dipy = rows["medlab nlm_denoise (defaults: 3D)"], rows["dipy nlmeans r1/b2, own estimate_sigma"]
                met = ours[2] >= dipy[2] and ours[0] <= 0.5 * dipy[0]
                summary.append((kind, sigma, ours, dipy, met))
                print()
    print("Goal: medlab 3D PSNR >= dipy's (own sigma) at <= half its wall time")
    print(f"{'reference':9s} {'noise':>5s} {'medlab dB':>9s} {'dipy dB':>8s} {'Δ dB':>6s} {'time ratio':>10s} "
          f"{'CPU ratio':>9s}  met?")
    for kind, sigma, ours, dipy, met in summary:
        print(f"{kind:9s} {sigma:5.0%} {ours[2]:9.2f} {dipy[2]:8.2f} {ours[2] - dipy[2]:+6.2f} {ours[0] / dipy[0]:10.2f} "
              f"{ours[1] / dipy[1]:9.2f}  {'yes' if met else 'NO'}")
    p50, p95 = preview_latency()
    print(f"\nslice preview (2D filter) on 512x512: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
          f"(goal p95 < 150 ms: {'yes' if p95 < 150 else 'NO'})")


if __name__ == "__main__":
    main()
