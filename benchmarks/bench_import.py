"""Import time of medlab versus the libraries it wraps (each in a fresh interpreter).

    python benchmarks/bench_import.py [--runs 5]

`import medlab` must stay light: torch, MONAI and captum load only when first used.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CASES = [
    ("python (baseline)", "pass"),
    ("import medlab", "import medlab"),
    ("import medlab.widgets", "import medlab.widgets"),
    ("import numpy", "import numpy"),
    ("import SimpleITK", "import SimpleITK"),
    ("import torch", "import torch"),
    ("import monai", "import monai"),
]


def time_import(code: str) -> float:
    prog = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, medlab; print(sorted(m for m in ('torch','monai','captum','ipywidgets') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    print(f"{'what':28s} {'median ms':>10s} {'max ms':>9s}")
    for name, code in CASES:
        times = [time_import(code) * 1000 for _ in range(args.runs)]
        print(f"{name:28s} {statistics.median(times):10.0f} {max(times):9.0f}")
    print(f"heavy modules loaded by `import medlab`: {heavy}")


if __name__ == "__main__":
    main()
