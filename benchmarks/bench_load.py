"""Load time of the shared CT DICOM series (512×512×20, JPEG-2000): medlab vs its peers.

    python benchmarks/bench_load.py [--runs N] [--folder PATH]

Prints median and p95 over N runs (after one warm-up run each; the methods take turns) for
* ``medlab.load``: headers with pydicom, pixels with SimpleITK/GDCM (one file per thread),
  checks, geometry, HU;
* SimpleITK ``ImageSeriesReader`` alone (GDCM file sorting + reading), the target: medlab
  should stay within 1.2× of it;
* a plain pydicom stack (read every file, sort by position, decode with pylibjpeg, rescale).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "ct_abdomen" / "example_ct_dicom"


def load_medlab(folder: Path):
    import medlab

    return medlab.load(folder).array


def load_simpleitk(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def load_pydicom(folder: Path):
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]
    row, col = (np.asarray(datasets[0].ImageOrientationPatient[i:i + 3], float) for i in (0, 3))
    normal = np.cross(row, col)
    datasets.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])


def time_runs(methods, folder: Path, runs: int) -> dict[str, list[float]]:
    """Seconds per run of each method; the methods take turns so that a change in the
    machine's load (other processes) hits them all alike."""
    for _, fn in methods:
        fn(folder)  # warm-up: imports, file cache
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    for _ in range(runs):
        for name, fn in methods:
            start = time.perf_counter()
            fn(folder)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--folder", type=Path, default=DEFAULT)
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} not found (the shared data lives beside the repository)")

    methods = [("medlab.load", load_medlab), ("SimpleITK ImageSeriesReader", load_simpleitk),
               ("pydicom stack (pylibjpeg)", load_pydicom)]
    results = time_runs(methods, args.folder, args.runs)
    base = statistics.median(results["SimpleITK ImageSeriesReader"])
    print(f"Loading {args.folder.name} ({len(list(args.folder.iterdir()))} files), {args.runs} runs each\n")
    print(f"{'method':<30} {'median ms':>10} {'p95 ms':>9} {'vs SimpleITK':>13}")
    for name, times in results.items():
        med = statistics.median(times)
        p95 = float(np.percentile(times, 95))
        print(f"{name:<30} {med * 1e3:>10.1f} {p95 * 1e3:>9.1f} {med / base:>12.2f}x")
    ratio = statistics.median(results["medlab.load"]) / base
    print(f"\ngoal: medlab within 1.2x of SimpleITK alone -> {'met' if ratio <= 1.2 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
