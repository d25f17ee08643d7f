"""Registration numbers (issue 9 §4), peers side by side in one run.

1. Phantom T1 ↔ T2 with a known rigid transform: TRE over the brain with MI (and mean
   squares / correlation failing on the multimodal pair).
2. Real same-subject T1 and PD (``../shared/data/noncommercial``, oblique PD, different
   spacing): a known rigid transform applied to the T1 and recovered (TRE); T1 ↔ PD
   registration, mutual information before and after.
3. Deformable: a phantom with a known smooth deformation; B-spline and demons, mean landmark
   error before/after and folded voxels.
4. Speed: rigid MI registration of the 197×233×189 MNI T1 against a copy moved by a known
   rigid transform (same contrast, then inverted contrast with noise): medlab's default
   ``linear_register`` vs the same SimpleITK calls without medlab, elastix's default rigid
   map (``itk-elastix``) and ANTsPy ``Rigid`` / ``QuickRigid`` (``antspyx``). Peers that are not
   installed are skipped, and the table says so.
   ``overhead`` runs only medlab against the plain SimpleITK calls, more times, for the
   overhead figure.
5. ICP: this module's KD-tree ICP vs pycpd (coherent point drift) and open3d, when installed.

Run: ``python benchmarks/bench_register.py [section ...]`` (sections: phantom real deformable
speed overhead icp; default all but overhead, which ``speed`` contains). The real-pair section
writes ``benchmarks/register_t1_pd_checkerboard.png``. Times are wall-clock on a shared machine: compare the ratios within
one run. ``--threads N`` sets ITK's threads (default 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import medlab
from medlab.data import brain_mri, registration_pair
from medlab.register import (
    bspline_register,
    demons_register,
    icp,
    linear_register,
    mutual_information,
    sample_points,
    target_registration_error,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MNI = SHARED / "registration" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
T1 = SHARED / "noncommercial" / "chris_t1.nii.gz"
PD = SHARED / "noncommercial" / "chris_PD.nii.gz"


def table(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    sys.stdout.flush()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def timed(fn, *args, **kw):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def rigid_truth(centre, angles_deg=(5.0, -4.0, 3.0), shift=(4.0, -6.0, 3.0)):
    return sitk.Euler3DTransform(tuple(centre), *np.deg2rad(angles_deg), tuple(shift))


def moved_copy(image: medlab.Image, truth) -> medlab.Image:
    """``image`` resampled so that ``truth`` maps its points to the copy's (fixed → moving)."""
    img = sitk.Cast(image.to_sitk(), sitk.sitkFloat32)
    out = sitk.Resample(img, img, truth.GetInverse(), sitk.sitkLinear, 0.0)
    return medlab.Image.from_sitk(out)


def tre_mm(estimate, truth, points) -> tuple[float, float]:
    e = target_registration_error(estimate, points, truth=truth)
    return float(e.mean()), float(e.max())


# ---------------------------------------------------------------------------- 1. phantom
def bench_phantom() -> None:
    pair = registration_pair(seed=3)  # 96×96×48 at 2×2×2.5 mm, T1 fixed, T2 moving, rotations ≤ 10°, shifts ≤ 10 mm
    brain = pair.fixed_labels.with_array((pair.fixed_labels.array >= 4).astype(np.uint8), kind="label")
    pts = sample_points(brain, 1000, seed=0)
    before = tre_mm(sitk.Euler3DTransform(), pair.transform, pts)
    rows = [{"metric": "(no registration)", "time s": 0.0, "TRE mean mm": before[0], "TRE max mm": before[1]}]
    for metric in ("mattes_mi", "joint_histogram_mi", "correlation", "mean_squares"):
        r, dt, _ = timed(linear_register, pair.fixed, pair.moving, metric=metric)
        mean, worst = tre_mm(r.transform, pair.transform, pts)
        rows.append({"metric": metric, "time s": dt, "TRE mean mm": mean, "TRE max mm": worst,
                     "pass (< 0.5 mm)": "yes" if mean < 0.5 else "no"})
    table("Phantom T1 ↔ T2, known rigid transform (1,000 brain points)", rows)


# ---------------------------------------------------------------------------- 2. real pair
def bench_real() -> None:
    if not (T1.exists() and PD.exists()):
        print(f"\n(real pair skipped: {T1.parent} not found)")
        return
    t1, pd = medlab.load(T1), medlab.load(PD)
    head = t1.with_array((t1.array > 40).astype(np.uint8), kind="label")
    pts = sample_points(head, 1000, seed=0)
    c = np.mean(t1.bounds(), axis=0)
    rows = []
    for name, moving in (("T1 moved (same contrast)", None), ("PD moved (oblique, 2.4 mm slices)", pd)):
        truth = rigid_truth(c, (6.0, -5.0, 4.0), (5.0, -7.0, 4.0))
        if moving is None:
            fixed, mov = t1, moved_copy(t1, truth)
            pts_here = pts
        else:  # move the PD by a known transform: T1->PD (unknown, near identity) is not the truth here
            fixed = pd
            mov = moved_copy(pd, truth)
            pts_here = sample_points(pd.with_array((pd.array > 40).astype(np.uint8), kind="label"), 1000, seed=0)
        r, dt, _ = timed(linear_register, fixed, mov)
        mean, worst = tre_mm(r.transform, truth, pts_here)
        start = tre_mm(sitk.Euler3DTransform(), truth, pts_here)
        rows.append({"pair": name, "TRE before mm": start[0], "time s": dt, "TRE mean mm": mean, "TRE max mm": worst})
    table("Real T1 / PD: known rigid transform applied and recovered", rows)

    # T1 <-> PD: the scanner already aligns them roughly; registration must raise the MI
    identity = sitk.Euler3DTransform()
    before_img = medlab.register.resample_image(pd, identity, t1)
    r, dt, _ = timed(linear_register, t1, pd)
    mask = t1.with_array(((t1.array > 40) & (before_img.array > 0)).astype(np.uint8), kind="label")
    mi0 = mutual_information(t1, before_img, mask=mask)
    mi1 = mutual_information(t1, r.registered, mask=mask)
    s = r.transform.summary()
    table("Real T1 ↔ PD (multimodal, oblique PD): mutual information in the head",
          [{"MI before (scanner alignment)": mi0, "MI after": mi1, "gain %": 100 * (mi1 - mi0) / mi0,
            "time s": dt, "rotation deg": s.get("rotation_deg"), "translation mm": s.get("translation_mm")}])
    _checkerboard(t1, before_img, r.registered, SNAPSHOT)


SNAPSHOT = Path(__file__).with_name("register_t1_pd_checkerboard.png")


def _checkerboard(fixed: medlab.Image, before: medlab.Image, after: medlab.Image, path: Path) -> None:
    """Axial and coronal checkerboards of the T1 and the PD resampled on its grid, before
    (scanner coordinates) and after registration, as the viewer composes them (grey PNG)."""
    from PIL import Image as PILImage

    from medlab.render import montage
    from medlab.report import slice_figure

    pics = [slice_figure(fixed, second=img, planes=("axial", "coronal"), size=200) for img in (before, after)]
    grey = montage(pics, gap=12).mean(axis=2).astype(np.uint8)
    PILImage.fromarray(grey).save(path, optimize=True)
    print(f"\ncheckerboard snapshot (left pair: before, right pair: after): {path} ({path.stat().st_size // 1024} kB)")


# ---------------------------------------------------------------------------- 3. deformable
def smooth_deformation(image: medlab.Image, amplitude_mm: float = 4.0, seed: int = 0):
    """A known smooth displacement field (a few Gaussian bumps, ≤ ``amplitude_mm``) on the
    image grid, as a fixed → moving SimpleITK transform."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(image.array.shape).astype(float)
    idx = np.stack([x, y, z], -1)
    phys = idx * np.asarray(image.spacing) @ image.direction.T + np.asarray(image.origin)
    lo, hi = image.bounds()
    u = np.zeros(phys.shape)
    for _ in range(6):
        c = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
        width = rng.uniform(15, 25)
        vec = rng.normal(size=3)
        vec *= amplitude_mm / np.linalg.norm(vec)
        u += np.exp(-np.sum((phys - c) ** 2, -1) / (2 * width ** 2))[..., None] * vec
    field = sitk.GetImageFromArray(u.astype(np.float64), isVector=True)
    field.SetSpacing(image.spacing)
    field.SetOrigin(image.origin)
    field.SetDirection(tuple(image.direction.ravel()))
    return sitk.DisplacementFieldTransform(field)


def bench_deformable() -> None:
    p = brain_mri(size=(96, 96, 48), spacing=(2.0, 2.0, 2.5), noise=0.01, seed=1)
    fixed = p.t1
    truth = smooth_deformation(fixed, 4.0, seed=2)
    moving = medlab.Image.from_sitk(sitk.Resample(sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32), fixed.to_sitk(),
                                                  _inverse_field(truth, fixed), sitk.sitkLinear, 0.0))
    brain = p.labels.with_array((p.labels.array >= 4).astype(np.uint8), kind="label")
    pts = sample_points(brain, 1000, seed=0)
    before = target_registration_error(sitk.Euler3DTransform(), pts, truth=truth).mean()
    rows = [{"method": "(no registration)", "mean error mm": before}]
    runs = (("diffeomorphic demons (medlab defaults)", lambda: demons_register(fixed, moving)),
            ("B-spline, Mattes MI, grids 80 → 40 → 20 mm, samples in the head (medlab defaults)",
             lambda: bspline_register(fixed, moving)),
            ("B-spline, mean squares, otherwise the defaults", lambda: bspline_register(fixed, moving,
                                                                                     metric="mean_squares")),
            ("B-spline, defaults but samples over the whole grid", lambda: bspline_register(
                fixed, moving, sampling_region="everywhere")))
    for name, run in runs:
        r, dt, _ = timed(run)
        err = target_registration_error(r.transform, pts, truth=truth).mean()
        summary = r.report.rows[-1]
        rows.append({"method": name, "time s": dt, "mean error mm": err, "reduction %": 100 * (1 - err / before),
                     "folded voxels": summary["folded voxels"], "Jacobian min": summary["jacobian min"],
                     "pass (≥ 70 %, no folds)": "yes" if err <= 0.3 * before and summary["folded voxels"] == 0 else "no"})
        print(f"  done: {name}: {dt:.1f} s, error {before:.3f} -> {err:.3f} mm, {summary['folded voxels']} folded "
              f"voxels (load {os.getloadavg()[0]:.1f})", flush=True)
    table("Deformable: brain phantom with a known smooth deformation (≤ 4 mm bumps, 1,000 brain points)", rows)


def _inverse_field(t, image: medlab.Image):
    """The moving image is made by pulling through the inverse field (so ``t`` is fixed → moving)."""
    field = sitk.TransformToDisplacementField(t, sitk.sitkVectorFloat64, image.size, image.origin, image.spacing,
                                              tuple(image.direction.ravel()))
    inv = sitk.InvertDisplacementField(field, maximumNumberOfIterations=50, maxErrorToleranceThreshold=0.01,
                                       meanErrorToleranceThreshold=0.001)
    return sitk.DisplacementFieldTransform(inv)


# ---------------------------------------------------------------------------- 4. speed
def plain_sitk_rigid(fixed: sitk.Image, moving: sitk.Image):
    """What ``linear_register``'s defaults do, as plain SimpleITK calls (no medlab, no callbacks)."""
    from medlab.register._common import MIN_LEVEL_VOXELS, SEED

    f, m = sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32)
    t = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                          sitk.CenteredTransformInitializerFilter.GEOMETRY).Downcast()
    ref = min(f.GetSpacing())
    for s in (8, 4, 2, 1):
        levels = []
        for img in (f, m):
            factors = [int(max(1, min(max(1, round(s * ref / sp)), size // MIN_LEVEL_VOXELS)))
                       for size, sp in zip(img.GetSize(), img.GetSpacing())]
            levels.append(sitk.BinShrink(img, factors) if max(factors) > 1 else img)
        R = sitk.ImageRegistrationMethod()
        R.SetMetricAsMattesMutualInformation(32)
        n = int(np.prod(levels[0].GetSize()))
        R.SetMetricSamplingStrategy(R.REGULAR)
        R.SetMetricSamplingPercentage(min(1.0, max(20000 / n, 64 / n)), SEED)
        R.SetMetricUseFixedImageGradientFilter(False)
        R.SetMetricUseMovingImageGradientFilter(False)
        R.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 100, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
        R.SetOptimizerScalesFromPhysicalShift()
        R.SetInterpolator(sitk.sitkLinear)
        R.SetNumberOfThreads(1)
        R.SetInitialTransform(t, inPlace=True)
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic, as medlab does
        try:
            R.Execute(*levels)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    registered = sitk.Resample(m, f, t, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return t, registered


def elastix_rigid(fixed_path: Path, moving_path: Path, threads: int):
    import itk

    f = itk.imread(str(fixed_path), itk.F)
    m = itk.imread(str(moving_path), itk.F)
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap("rigid"))
    _, tp = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False,
                                            number_of_threads=threads)
    t = sitk.Euler3DTransform()
    t.SetCenter([float(v) for v in tp.GetParameter(0, "CenterOfRotationPoint")])
    t.SetParameters([float(v) for v in tp.GetParameter(0, "TransformParameters")])
    return t


def ants_rigid(fixed_path: Path, moving_path: Path, kind: str):
    import ants

    f, m = ants.image_read(str(fixed_path)), ants.image_read(str(moving_path))
    out = ants.registration(f, m, type_of_transform=kind, random_seed=1)
    return sitk.ReadTransform(out["fwdtransforms"][0])


def bench_speed(threads: int, repeats: int, with_ants: bool) -> None:
    if not MNI.exists():
        print(f"\n(speed skipped: {MNI} not found)")
        return
    t1 = medlab.load(MNI)
    c = np.mean(t1.bounds(), axis=0)
    truth = rigid_truth(c)
    mask = t1.with_array((t1.array > 80).astype(np.uint8), kind="label")
    pts = sample_points(mask, 1000, seed=0)
    moving_same = moved_copy(t1, truth)
    rng = np.random.default_rng(1)
    arr = moving_same.array
    other = np.where(arr > 10, 280.0 - arr, arr) + rng.normal(0.0, 8.0, arr.shape)  # inverted contrast + noise
    moving_other = moving_same.with_array(other.astype(np.float32))
    peers = {"itk-elastix": _has("itk"), "antspyx": _has("ants")}
    for case, moving in (("same contrast", moving_same), ("inverted contrast + noise σ 8", moving_other)):
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            fp, mp = Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"
            sitk.WriteImage(sitk.Cast(t1.to_sitk(), sitk.sitkFloat32), str(fp))
            sitk.WriteImage(moving.to_sitk(), str(mp))
            f_s, m_s = t1.to_sitk(), moving.to_sitk()
            med, plain = [], []
            for _ in range(repeats):  # alternate, so both see the same load
                r, dt, cpu = timed(linear_register, t1, moving)
                med.append((dt, cpu, r.transform))
                (tp, _), dt, cpu = timed(plain_sitk_rigid, f_s, m_s)
                plain.append((dt, cpu, tp))
            for name, runs in (("medlab linear_register (defaults)", med), ("SimpleITK, same calls without medlab", plain)):
                wall = statistics.median(d for d, _, _ in runs)
                cpu = statistics.median(c for _, c, _ in runs)
                rows.append({"method": name, "wall s (median)": wall, "CPU s (median)": cpu,
                             "TRE mean mm": tre_mm(runs[0][2], truth, pts)[0], "TRE max mm": tre_mm(runs[0][2], truth, pts)[1]})
            overhead = rows[0]["wall s (median)"] / rows[1]["wall s (median)"] - 1
            overhead_cpu = rows[0]["CPU s (median)"] / rows[1]["CPU s (median)"] - 1
            if peers["itk-elastix"]:
                t, dt, cpu = timed(elastix_rigid, fp, mp, threads)
                rows.append({"method": "elastix default rigid map", "wall s (median)": dt, "CPU s (median)": cpu,
                             "TRE mean mm": tre_mm(t, truth, pts)[0], "TRE max mm": tre_mm(t, truth, pts)[1]})
            else:
                rows.append({"method": "elastix: skipped (itk-elastix not installed)"})
            if peers["antspyx"] and with_ants:
                for kind in ("QuickRigid", "Rigid"):
                    t, dt, cpu = timed(ants_rigid, fp, mp, kind)
                    rows.append({"method": f"ANTsPy {kind}", "wall s (median)": dt, "CPU s (median)": cpu,
                                 "TRE mean mm": tre_mm(t, truth, pts)[0], "TRE max mm": tre_mm(t, truth, pts)[1]})
            elif not peers["antspyx"]:
                rows.append({"method": "ANTsPy: skipped (antspyx not installed)"})
        table(f"Speed, rigid MI, MNI T1 {t1.size[0]}×{t1.size[1]}×{t1.size[2]} → moved copy, {case} "
              f"({threads} ITK threads; peers run once, medlab/SimpleITK median of {repeats})", rows)
        print(f"\nmedlab overhead vs the same SimpleITK calls: {100 * overhead:+.1f} % wall, {100 * overhead_cpu:+.1f} % CPU")
        if with_ants and peers["antspyx"]:
            with_ants = False  # ANTs takes long: once (same contrast) is enough


def bench_overhead(threads: int, repeats: int) -> None:
    """medlab's ``linear_register`` (defaults) against the same SimpleITK calls without medlab,
    both with the same thread count, alternating so that both see the same load."""
    if not MNI.exists():
        print(f"\n(overhead skipped: {MNI} not found)")
        return
    t1 = medlab.load(MNI)
    truth = rigid_truth(np.mean(t1.bounds(), axis=0))
    moving = moved_copy(t1, truth)
    f_s, m_s = t1.to_sitk(), moving.to_sitk()

    def plain_numpy(fixed: medlab.Image, mov: medlab.Image):
        """The same calls for a numpy user: arrays into SimpleITK, the registered image back out."""
        def to_sitk(img):
            out = sitk.GetImageFromArray(img.array)
            out.SetSpacing(img.spacing), out.SetOrigin(img.origin), out.SetDirection(tuple(img.direction.ravel()))
            return out
        t, registered = plain_sitk_rigid(to_sitk(fixed), to_sitk(mov))
        return t, sitk.GetArrayFromImage(registered)

    med, plain, plain_np = [], [], []
    for _ in range(repeats):
        r, dt, cpu = timed(linear_register, t1, moving)
        med.append((dt, cpu))
        (tp, _), dt, cpu = timed(plain_sitk_rigid, f_s, m_s)
        plain.append((dt, cpu))
        _, dt, cpu = timed(plain_numpy, t1, moving)
        plain_np.append((dt, cpu))
    same = np.allclose(r.transform.sitk.GetParameters(), tp.GetParameters(), atol=1e-9)
    rows = []
    for name, runs in (("medlab linear_register (defaults)", med),
                       ("SimpleITK, same calls, SimpleITK images in and out", plain),
                       ("SimpleITK, same calls, numpy arrays in and out", plain_np)):
        rows.append({"method": name, "wall s (median)": statistics.median(d for d, _ in runs),
                     "wall s (min)": min(d for d, _ in runs), "CPU s (median)": statistics.median(c for _, c in runs),
                     "CPU s (min)": min(c for _, c in runs)})
    table(f"Overhead, rigid Mattes MI, MNI T1 {t1.size[0]}×{t1.size[1]}×{t1.size[2]} ({threads} ITK threads for "
          f"both; metric on 1 thread in both; {repeats} alternating runs each; same result: {same})", rows)
    for key in ("wall s (median)", "wall s (min)", "CPU s (median)", "CPU s (min)"):
        print(f"overhead ({key}): {100 * (rows[0][key] / rows[1][key] - 1):+.1f} % against SimpleITK images, "
              f"{100 * (rows[0][key] / rows[2][key] - 1):+.1f} % against numpy arrays")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------- 5. ICP
def bench_icp() -> None:
    rng = np.random.default_rng(0)
    # a bumpy closed surface (sphere with bumps), 3,000 points, and a copy moved by a known rigid transform
    u = rng.normal(size=(3000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = 40 + 6 * np.sin(3 * u[:, 0]) * np.cos(2 * u[:, 1]) + 4 * u[:, 2] ** 2
    fixed = u * r[:, None] * (1.0, 0.8, 0.6)
    truth = sitk.Euler3DTransform((0, 0, 0), *np.deg2rad((8.0, -5.0, 6.0)), (6.0, -4.0, 3.0))
    moving = np.array([truth.TransformPoint(tuple(p)) for p in fixed])
    moving = moving[rng.permutation(len(moving))] + rng.normal(0, 0.2, moving.shape)
    outliers = rng.uniform(-60, 60, (150, 3))  # 5 % clutter
    moving = np.vstack([moving, outliers])
    rows = []
    (t, h), dt, _ = timed(icp, fixed, moving)
    rows.append({"method": "medlab icp (scipy cKDTree, outlier rejection)", "time s": dt,
                 "TRE mean mm": tre_mm(t, truth, fixed)[0], "iterations": len(h.series("inliers")[0])})
    try:
        from pycpd import RigidRegistration

        def cpd():
            # pycpd moves Y onto X: fixed points onto the moving cloud gives fixed -> moving
            reg = RigidRegistration(X=moving, Y=fixed, w=0.05)
            reg.register()
            s, rot, tr = reg.get_registration_parameters()
            a = sitk.AffineTransform(3)
            a.SetMatrix(tuple((s * rot.T).ravel()))
            a.SetTranslation(tuple(tr))
            return a
        t, dt, _ = timed(cpd)
        rows.append({"method": "pycpd RigidRegistration (w = 0.05)", "time s": dt, "TRE mean mm": tre_mm(t, truth, fixed)[0]})
    except ImportError:
        rows.append({"method": "pycpd: skipped (not installed)"})
    try:
        import open3d as o3d

        def o3d_icp():
            a, b = o3d.geometry.PointCloud(), o3d.geometry.PointCloud()
            a.points, b.points = o3d.utility.Vector3dVector(fixed), o3d.utility.Vector3dVector(moving)
            init = np.eye(4)
            init[:3, 3] = moving[:3000].mean(0) - fixed.mean(0)
            res = o3d.pipelines.registration.registration_icp(
                a, b, 10.0, init, o3d.pipelines.registration.TransformationEstimationPointToPoint(),
                o3d.pipelines.registration.ICPConvergenceCriteria(max_iteration=50))
            m = res.transformation
            aff = sitk.AffineTransform(3)
            aff.SetMatrix(tuple(m[:3, :3].ravel()))
            aff.SetTranslation(tuple(m[:3, 3]))
            return aff
        t, dt, _ = timed(o3d_icp)
        rows.append({"method": "open3d registration_icp (point to point, 10 mm cut-off)", "time s": dt,
                     "TRE mean mm": tre_mm(t, truth, fixed)[0]})
    except ImportError:
        rows.append({"method": "open3d: skipped (not installed)"})
    table("ICP: bumpy surface, 3,000 points moved by 8°/6 mm, 0.2 mm noise, 5 % outliers", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sections", nargs="*", default=["phantom", "real", "deformable", "speed", "icp"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ants", action="store_true", help="skip ANTsPy (it takes minutes)")
    args = ap.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    print(f"medlab {medlab.__version__}, SimpleITK {sitk.Version.VersionString()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    for s in args.sections:
        {"phantom": bench_phantom, "real": bench_real, "deformable": bench_deformable,
         "overhead": lambda: bench_overhead(args.threads, args.repeats),
         "speed": lambda: bench_speed(args.threads, args.repeats, not args.no_ants), "icp": bench_icp}[s]()


if __name__ == "__main__":
    main()
