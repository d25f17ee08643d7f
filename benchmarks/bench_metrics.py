"""Segmentation metrics speed: HD95 on a 256^3 pair, medlab against MONAI and SimpleITK.

Issue 8, section 7 ("Metrics speed"). One run prints one table (method, time p50, value).

The pair: two irregular blobs (an ellipsoid with a smooth random outline, about 1.6 million
voxels each, about 55 000 surface voxels each) that overlap with Dice about 0.94, plus a few
false-positive islands in the prediction, on a 256^3 grid with anisotropic spacing
(0.7 x 0.9 x 2.5 mm) and an oblique direction. Each library gets the input it takes
natively, built outside the timing: a medlab ``Image`` (spacing and direction read from it),
a ``torch`` tensor with the spacing passed in array order (MONAI), a ``SimpleITK.Image`` with
spacing and direction (SimpleITK). Every library runs at its defaults on this 2-core machine
(medlab's and SimpleITK's searches use both cores; MONAI's k-d tree query uses one), and a
medlab row restricted to one core is printed too.

Peers, compared like with like:

* MONAI ``compute_hausdorff_distance(percentile=95)``: the same definition as medlab
  (surface = mask XOR face-connected erosion, voxel centres, the larger of the two directed
  95th percentiles): the values agree to float32 precision.
* SimpleITK has no HD95 filter. The recipe of its segmentation-evaluation notebook: the
  absolute ``SignedMaurerDistanceMap`` of each mask (distance to its face-connected
  boundary), read at the voxels of the other mask's ``LabelContour`` (face-connected), and
  the 95th percentiles taken in numpy: the same definition, the same value.
* SimpleITK ``HausdorffDistanceImageFilter`` on the masks gives only the maximum, measured
  from every voxel of one set to the other set (0 inside it): a different quantity, listed
  for its speed beside medlab's maximum.

Usage::

    python benchmarks/bench_metrics.py            # 256^3, 7 repeats
    python benchmarks/bench_metrics.py --quick    # 128^3, 3 repeats

Timings depend on what else runs on the machine: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

SPACING = (0.7, 0.9, 2.5)  # (x, y, z) mm


def _rotation() -> np.ndarray:
    a, b = np.radians(25), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _smooth_noise(rng, n: int, sigma: float) -> np.ndarray:
    from scipy import ndimage

    coarse = ndimage.gaussian_filter(rng.normal(size=(n // 8,) * 3), sigma)
    fine = ndimage.zoom(coarse, 8, order=1)
    return fine / np.abs(fine).max()


def make_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and truth masks ``[z, y, x]`` of size ``n^3``."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:n, :n, :n]
    c = n / 2
    outline = 12 * n / 256 * _smooth_noise(rng, n, 1.5)
    r_truth = np.sqrt(((z - c) / 0.8) ** 2 + (y - c) ** 2 + ((x - c) / 1.1) ** 2)
    truth = r_truth + outline < 0.3 * n
    shift = 3 * n / 256
    r_pred = np.sqrt(((z - c - shift) / 0.8) ** 2 + (y - c + shift) ** 2 + ((x - c) / 1.1) ** 2)
    pred = r_pred + outline + 6 * n / 256 * _smooth_noise(rng, n, 1.0) < 0.29 * n
    for _ in range(5):  # false-positive islands: the maximum distance and HD95 part ways
        i = rng.integers(n // 10, n - n // 10, 3)
        pred[i[0]:i[0] + 3, i[1]:i[1] + 3, i[2]:i[2] + 3] = True
    return pred, truth


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall time (s) over ``repeats`` runs after one warm-up, and the value."""
    value = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(value)


def medlab_rows(pred, truth):
    from medlab import Image, metrics

    kw = {"spacing": SPACING, "origin": (-90.0, -110.0, 40.0), "direction": _rotation(), "kind": "label"}
    p, t = Image(pred.astype(np.uint8), **kw), Image(truth.astype(np.uint8), **kw)

    def one_core():
        # the same computation with the k-d tree query on one core, as MONAI's
        nearest = metrics._nearest

        def single(points, targets):
            from scipy.spatial import KDTree

            if len(points) == 0 or len(targets) == 0:
                return nearest(points, targets)
            return KDTree(targets, leafsize=32).query(points, workers=1)[0]

        metrics._nearest = single
        try:
            return metrics.hausdorff95(p, t)
        finally:
            metrics._nearest = nearest

    return [
        ("medlab hausdorff95", lambda: metrics.hausdorff95(p, t)),
        ("medlab hausdorff95, k-d tree query on 1 core", one_core),
        ("medlab hausdorff_distance (max)", lambda: metrics.hausdorff_distance(p, t)),
        ("medlab segmentation_scores (all scores) -> hausdorff95_mm",
         lambda: metrics.segmentation_scores(p, t)[0]["hausdorff95_mm"]),
    ]


def monai_rows(pred, truth):
    import torch
    from monai.metrics import compute_hausdorff_distance

    yp, yt = torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None]
    sampling = SPACING[::-1]  # MONAI takes the spacing in array order

    def hd(percentile):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(compute_hausdorff_distance(yp, yt, percentile=percentile, spacing=sampling))

    return [("MONAI compute_hausdorff_distance(percentile=95)", lambda: hd(95)),
            ("MONAI compute_hausdorff_distance (max)", lambda: hd(None))]


def sitk_rows(pred, truth):
    import SimpleITK as sitk

    def image(a):
        img = sitk.GetImageFromArray(a.astype(np.uint8))
        img.SetSpacing(SPACING)
        img.SetDirection(tuple(_rotation().ravel()))
        return img

    p, t = image(pred), image(truth)

    def hd95():
        # SimpleITK's segmentation-evaluation notebook recipe: |signed Maurer distance| to one
        # mask's boundary (face-connected, as LabelContour), read at the other mask's contour.
        # The SimpleITK images are kept in variables: an array view does not keep them alive.
        cp, ct = sitk.LabelContour(p, fullyConnected=False), sitk.LabelContour(t, fullyConnected=False)
        dp = sitk.SignedMaurerDistanceMap(p, squaredDistance=False, useImageSpacing=True)
        dt = sitk.SignedMaurerDistanceMap(t, squaredDistance=False, useImageSpacing=True)
        on_p, on_t = sitk.GetArrayViewFromImage(cp) > 0, sitk.GetArrayViewFromImage(ct) > 0
        d_pt = np.abs(sitk.GetArrayViewFromImage(dt)[on_p])
        d_tp = np.abs(sitk.GetArrayViewFromImage(dp)[on_t])
        return max(np.percentile(d_pt, 95), np.percentile(d_tp, 95))

    def hd_filter():
        f = sitk.HausdorffDistanceImageFilter()
        f.Execute(p, t)
        return f.GetHausdorffDistance()

    return [("SimpleITK SignedMaurerDistanceMap + LabelContour HD95", hd95),
            ("SimpleITK HausdorffDistanceImageFilter (max, set to set)", hd_filter)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128^3 and 3 repeats")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n = 128 if args.quick else 256
    repeats = args.repeats or (3 if args.quick else 7)

    pred, truth = make_pair(n)
    dice = 2 * np.count_nonzero(pred & truth) / (np.count_nonzero(pred) + np.count_nonzero(truth))
    print(f"{n}^3 pair, spacing {SPACING} mm, oblique direction; {np.count_nonzero(truth)} truth voxels, "
          f"Dice {dice:.3f}; p50 of {repeats} runs after a warm-up")
    rows = medlab_rows(pred, truth) + monai_rows(pred, truth) + sitk_rows(pred, truth)
    results = []
    print(f"{'method':62s} {'time p50 s':>10s} {'value mm':>9s}")
    for name, fn in rows:
        t, v = timed(fn, repeats)
        results.append((name, t, v))
        print(f"{name:62s} {t:10.3f} {v:9.4f}", flush=True)
    times = {name: t for name, t, _ in results}
    fastest_peer = min(times["MONAI compute_hausdorff_distance(percentile=95)"],
                       times["SimpleITK SignedMaurerDistanceMap + LabelContour HD95"])
    print(f"medlab HD95 time / fastest peer's HD95 time: {times['medlab hausdorff95'] / fastest_peer:.2f} "
          f"(1 core: {times['medlab hausdorff95, k-d tree query on 1 core'] / fastest_peer:.2f})")


if __name__ == "__main__":
    main()
