"""Surface extraction, smoothing and decimation choices of medlab.mesh, with their peers in one run.

    python benchmarks/bench_mesh.py

Optional peers (pyfqmr, vtk) are measured when importable; MEDLAB_BENCH_EXTRA_PATH (a
path list) is added to sys.path first, so they can live outside the project's venv.
Prints Markdown tables: median of 5 runs (ms), and the quality figures that decided the choice.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

import numpy as np
import trimesh
from skimage.measure import marching_cubes

import medlab
from medlab.mesh import label_surface

for extra in filter(None, os.environ.get("MEDLAB_BENCH_EXTRA_PATH", "").split(os.pathsep)):
    sys.path.append(extra)


def timed(fn, repeats: int = 5):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), out


def non_manifold_edges(tm: trimesh.Trimesh) -> int:
    _, counts = np.unique(tm.edges_sorted, axis=0, return_counts=True)
    return int(np.count_nonzero(counts != 2))


def marching_cubes_table(labels: medlab.Image) -> None:
    print("\n## Marching cubes on every label of the brain phantom (128x128x64)\n")
    print("| method | ms (all labels) | labels watertight | non-manifold edges |")
    print("|---|---|---|---|")
    values = [int(v) for v in np.unique(labels.array) if v > 0]
    for method in ("lewiner", "lorensen"):
        def run(method=method):
            out = []
            for v in values:
                mask = np.pad(labels.array == v, 1).astype(np.float32)
                verts, faces, _, _ = marching_cubes(mask, 0.5, method=method)
                out.append(trimesh.Trimesh(verts, faces, process=False))
            return out
        ms, meshes = timed(run, 3)
        print(f"| skimage {method} | {ms:.0f} | {sum(m.is_watertight for m in meshes)}/{len(meshes)} "
              f"| {sum(non_manifold_edges(m) for m in meshes)} |")
    ms, meshes = timed(lambda: [label_surface(labels, v, smoothing=0) for v in values], 3)
    print(f"| medlab label_surface (lorensen, cropped per label, mm LPS) | {ms:.0f} "
          f"| {sum(m.is_watertight for m in meshes)}/{len(meshes)} | – |")


def sphere_labels(r: float = 12.0, spacing=(0.9, 1.1, 1.6)) -> medlab.Image:
    sp = np.asarray(spacing)
    n = (np.ceil(2 * r / sp) + 6).astype(int)
    x, y, z = [(np.arange(k) - (k - 1) / 2) * s for k, s in zip(n, sp)]
    ball = (x[None, None, :] ** 2 + y[None, :, None] ** 2 + z[:, None, None] ** 2) <= r * r
    return medlab.Image(ball.astype(np.uint8), spacing, kind="label")


def smoothing_table() -> None:
    r = 12.0
    raw = label_surface(sphere_labels(r), smoothing=0).to_trimesh()
    analytic = 4 / 3 * math.pi * r ** 3
    print(f"\n## Smoothing a {r:.0f} mm sphere at 0.9x1.1x1.6 mm voxels ({len(raw.faces)} faces)\n")
    print("| filter | steps | ms | volume vs analytic | radius SD (mm) |")
    print("|---|---|---|---|---|")

    def row(name, steps, fn):
        def run():
            tm = raw.copy()
            fn(tm)
            return tm
        ms, tm = timed(run)
        radius = np.linalg.norm(tm.vertices - tm.vertices.mean(axis=0), axis=1)
        print(f"| {name} | {steps} | {ms:.1f} | {abs(tm.volume) / analytic - 1:+.2%} | {radius.std():.3f} |")

    row("none (marching cubes)", 0, lambda tm: None)
    for steps in (20, 60):
        row("Taubin λ 0.5, μ 0.52 (medlab)", steps,
            lambda tm, s=steps: trimesh.smoothing.filter_taubin(tm, lamb=0.5, nu=0.52, iterations=s))
        row("Laplacian λ 0.5", steps, lambda tm, s=steps: trimesh.smoothing.filter_laplacian(
            tm, lamb=0.5, iterations=s, volume_constraint=False))
        row("Laplacian λ 0.5 + global volume rescale", steps,
            lambda tm, s=steps: trimesh.smoothing.filter_laplacian(tm, lamb=0.5, iterations=s))
        row("Humphrey α 0.1 β 0.5", steps,
            lambda tm, s=steps: trimesh.smoothing.filter_humphrey(tm, alpha=0.1, beta=0.5, iterations=s))


def decimators():
    def fast_simplification(tm, reduction):
        return tm.simplify_quadric_decimation(percent=reduction)
    yield "fast-simplification (via trimesh; medlab)", fast_simplification
    try:
        import pyfqmr
    except ImportError:
        print("(pyfqmr not importable: skipped)")
    else:
        def fqmr(tm, reduction):
            s = pyfqmr.Simplify()
            s.setMesh(tm.vertices, tm.faces)
            s.simplify_mesh(target_count=int(len(tm.faces) * (1 - reduction)), aggressiveness=7,
                            preserve_border=True, verbose=False)
            v, f, _ = s.getMesh()
            return trimesh.Trimesh(v, f)
        yield "pyfqmr", fqmr
    try:
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy
    except ImportError:
        print("(vtk not importable: skipped)")
    else:
        def vtk_quadric(tm, reduction):
            points = vtk.vtkPoints()
            points.SetData(numpy_to_vtk(np.ascontiguousarray(tm.vertices)))
            cells = np.hstack([np.full((len(tm.faces), 1), 3), tm.faces]).astype(np.int64).ravel()
            polys = vtk.vtkCellArray()
            polys.SetCells(len(tm.faces), numpy_to_vtkIdTypeArray(cells, deep=1))
            data = vtk.vtkPolyData()
            data.SetPoints(points)
            data.SetPolys(polys)
            dec = vtk.vtkQuadricDecimation()
            dec.SetInputData(data)
            dec.SetTargetReduction(reduction)
            dec.VolumePreservationOn()
            dec.Update()
            out = dec.GetOutput()
            faces = vtk_to_numpy(out.GetPolys().GetConnectivityArray()).reshape(-1, 3)
            return trimesh.Trimesh(vtk_to_numpy(out.GetPoints().GetData()), faces)
        yield f"VTK {vtk.vtkVersion.GetVTKVersion()} vtkQuadricDecimation", vtk_quadric


def decimation_table(labels: medlab.Image) -> None:
    print("\n## Quadric decimation of brain phantom surfaces (128x128x64, Taubin 10)\n")
    print("| decimator | surface | reduction | ms | faces | watertight | volume change |")
    print("|---|---|---|---|---|---|---|")
    surfaces = {name: label_surface(labels, v).to_trimesh() for name, v in
                (("grey matter", 4), ("scalp", 1), ("enhancing tumour", 8))}
    for name, fn in decimators():
        for surface, tm in surfaces.items():
            for reduction in (0.5, 0.9):
                ms, out = timed(lambda fn=fn, tm=tm, r=reduction: fn(tm, r), 3)
                print(f"| {name} | {surface} ({len(tm.faces)}) | {reduction} | {ms:.0f} | {len(out.faces)} "
                      f"| {out.is_watertight} | {abs(out.volume) / abs(tm.volume) - 1:+.2%} |")


def main() -> None:
    labels = medlab.data.brain_mri(size=(128, 128, 64)).labels
    marching_cubes_table(labels)
    smoothing_table()
    decimation_table(labels)


if __name__ == "__main__":
    main()
