"""Denoising a real T1 head MRI: medlab against the best peers measured for this machine.

The setting of ``shared/recipes/stack-facts.md`` ("the best peers measured so far"): a 128^3
crop of the real T1 head (``../shared/data/noncommercial/chris_t1.nii.gz``, scaled to
[0, 1]) with Rician noise sigma = 0.05, 2 threads; PSNR and SSIM against the noise-free crop
(data range 1). The best peer there is dipy's blockwise, Rician-aware ``nlmeans``.

    python benchmarks/bench_denoise_real.py [--data ../shared/data]

The T1 is CC BY-NC: it is read from ``shared/data`` beside the checkout, never copied.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SIGMA = 0.05


def load_crop(data: Path):
    import medlab

    t1 = medlab.load(data / "noncommercial" / "chris_t1.nii.gz")
    a = t1.array.astype(np.float32)
    z, y, x = (np.array(a.shape) - 128) // 2
    crop = a[z:z + 128, y:y + 128, x:x + 128]
    clean = ((crop - crop.min()) / (crop.max() - crop.min())).astype(np.float32)
    rng = np.random.default_rng(0)
    noisy = np.hypot(clean + rng.normal(0, SIGMA, clean.shape), rng.normal(0, SIGMA, clean.shape)).astype(np.float32)
    meta = {"modality": "MR"}
    return (medlab.Image(clean, t1.spacing, metadata=meta), medlab.Image(noisy, t1.spacing, metadata=meta))


def timed(fn, repeats=3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    import SimpleITK as sitk
    from dipy.denoise.nlmeans import nlmeans
    from skimage.restoration import denoise_nl_means

    from medlab import metrics, stage
    from medlab.preprocess import anisotropic_diffusion, gaussian_smooth, nlm_denoise

    clean, noisy = load_crop(Path(args.data))
    arr = noisy.array
    cases = {
        "medlab nlm_denoise (defaults)": lambda: nlm_denoise(noisy).array,
        "medlab nlm_denoise across_slices": lambda: nlm_denoise(noisy, across_slices=True).array,
        "dipy nlmeans blockwise r1/b2, rician (best peer)":
            lambda: nlmeans(arr, SIGMA, patch_radius=1, block_radius=2, rician=True, num_threads=2),
        "skimage denoise_nl_means fast, patch 3 / dist 2, h=0.8σ":
            lambda: denoise_nl_means(arr, patch_size=3, patch_distance=2, h=0.8 * SIGMA, sigma=SIGMA,
                                     fast_mode=True, channel_axis=None),
        "medlab anisotropic_diffusion (curvature, 5 it)": lambda: anisotropic_diffusion(noisy).array,
        "SimpleITK CurvatureAnisotropicDiffusion, 5 it":
            lambda: sitk.GetArrayFromImage(sitk.CurvatureAnisotropicDiffusion(noisy.to_sitk(), min(noisy.spacing) / 16, 1.0, 1, 5)),
        "medlab gaussian_smooth 0.8 mm": lambda: gaussian_smooth(noisy, sigma=0.8).array,
    }
    print(f"real T1 128^3 crop, Rician sigma {SIGMA}: noisy PSNR {metrics.psnr(arr, clean.array, data_range=1):.2f} dB, "
          f"SSIM {metrics.ssim(arr, clean.array, data_range=1):.3f}\n")
    print(f"{'method':58s} {'time s':>7s} {'PSNR dB':>8s} {'SSIM':>6s}")
    with stage.progress_to(lambda f, m: None):
        for name, fn in cases.items():
            t, out = timed(fn)
            out = np.asarray(out, dtype=np.float32)
            print(f"{name:58s} {t:7.2f} {metrics.psnr(out, clean.array, data_range=1):8.2f} "
                  f"{metrics.ssim(out, clean.array, data_range=1):6.3f}")


if __name__ == "__main__":
    main()
