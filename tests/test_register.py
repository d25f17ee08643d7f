"""Registration stages: geometry of every image output, recovery of known transforms, live
curve and Cancel keeping the best, deterministic recipes, landmarks (FRE/TRE, FLE → TRE), ICP,
and bad input refused with medlab errors. Small phantoms and few iterations: fast."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk

import medlab
from medlab import Cancelled, GeometryError, ImageError, MedlabError, ParameterError
from medlab.data import brain_mri, registration_pair
from medlab.outputs import Curve, Table, Transform
from medlab.recipe import Recipe
from medlab.register import (
    bspline_register,
    demons_register,
    fit_landmark_transform,
    fle_to_tre,
    folded_voxels,
    icp,
    jacobian_determinant,
    landmark_register,
    linear_register,
    mutual_information,
    predicted_tre,
    resample_image,
    resample_labels,
    sample_points,
    surface_points,
    surface_register,
    target_registration_error,
)
from medlab.stage import progress_to, stages

FAST = {"shrink_factors": (2, 1), "iterations": 40, "samples": 4000}


def _oblique(image: medlab.Image, angle_deg: float = 20.0, spacing=None, origin=(-30.0, 12.0, 7.5)) -> medlab.Image:
    """The same voxels on an anisotropic, oblique grid (rotation about z then x)."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return medlab.Image(image.array, spacing or image.spacing, origin, rz @ rx, kind=image.kind, labels=image.labels)


@pytest.fixture(scope="module")
def pair():
    return registration_pair(size=(48, 48, 24), spacing=(4.0, 4.0, 5.0), seed=2, max_rotation_deg=6,
                             max_translation_mm=6)


@pytest.fixture(scope="module")
def rigid(pair):
    return linear_register(pair.fixed, pair.moving, **FAST)


def _brain_points(pair, n=300):
    brain = pair.fixed_labels.with_array((pair.fixed_labels.array >= 4).astype(np.uint8), kind="label")
    return sample_points(brain, n, seed=0)


# ------------------------------------------------------------------ declarations
def test_stages_are_declared_in_the_register_group():
    names = {s.name for s in stages("register")}
    assert {"linear_register", "bspline_register", "demons_register", "landmark_register", "surface_register",
            "resample_labels", "resample_image"} <= names
    spec = linear_register.stage
    assert spec.preview is None and spec.keeps_best and spec.group == "register"
    assert list(spec.inputs) == ["fixed", "moving", "initial"] and spec.inputs["initial"].optional
    assert {n: o.type_name for n, o in spec.outputs.items()} == {
        "transform": "transform", "registered": "image", "history": "curve", "report": "table"}
    assert spec.outputs["registered"].grid == "fixed"
    roles = {n: (p.role, p.image) for n, p in landmark_register.stage.point_params().items()}
    assert roles["fixed_landmarks"] == ("fixed_landmarks", "fixed")
    assert roles["moving_landmarks"] == ("moving_landmarks", "moving")


# ------------------------------------------------------------------ intensity: recovery and outputs
def test_rigid_mi_recovers_a_known_multimodal_transform(pair, rigid):
    pts = _brain_points(pair)
    before = target_registration_error(sitk.Euler3DTransform(), pts, truth=pair.transform).mean()
    after = target_registration_error(rigid.transform, pts, truth=pair.transform).mean()
    assert before > 3.0 and after < 1.0  # 4 mm voxels, T1 -> T2
    assert isinstance(rigid.transform, Transform) and rigid.transform.summary()["kind"] == "Euler3DTransform"
    assert rigid.registered.same_grid(pair.fixed) and rigid.registered.dtype == np.float32
    assert isinstance(rigid.history, Curve) and rigid.history.series_names == ["level 1", "level 2"]
    rows = rigid.report.rows
    assert [r["level"] for r in rows] == [1, 2, "all"] and rows[-1]["stop reason"]
    assert rows[-1]["iterations"] == len(rigid.history)


def test_mean_squares_fails_on_the_multimodal_pair(pair, rigid):
    pts = _brain_points(pair)
    ms = linear_register(pair.fixed, pair.moving, metric="mean_squares", **FAST)
    err_ms = target_registration_error(ms.transform, pts, truth=pair.transform).mean()
    err_mi = target_registration_error(rigid.transform, pts, truth=pair.transform).mean()
    assert err_ms > 3 * err_mi


@pytest.mark.parametrize("kind", ["translation", "versor_rigid", "similarity", "affine"])
def test_each_linear_transform_recovers_a_translation(pair, kind):
    shift = sitk.TranslationTransform(3, (5.0, -4.0, 3.0))
    moved = medlab.Image.from_sitk(sitk.Resample(sitk.Cast(pair.fixed.to_sitk(), sitk.sitkFloat32),
                                                 shift.GetInverse()))
    r = linear_register(pair.fixed, moved, transform=kind, metric="correlation", **FAST)
    err = target_registration_error(r.transform, _brain_points(pair), truth=shift).mean()
    assert err < 0.8, (kind, err)


def test_joint_histogram_mi_converges_where_it_diverged():
    # this pair sent joint-histogram MI 116 mm away when the first level was 6×6×4 voxels and
    # the joint histogram barely smoothed (ITK's variance 1.5)
    pair = registration_pair(size=(48, 48, 24), spacing=(4.0, 4.0, 5.0), seed=3, max_rotation_deg=10,
                             max_translation_mm=10)
    r = linear_register(pair.fixed, pair.moving, metric="joint_histogram_mi", samples=4000, iterations=40)
    assert target_registration_error(r.transform, _brain_points(pair), truth=pair.transform).mean() < 1.5
    first = r.report.rows[0]["voxel size"]
    assert all(float(v) <= 4.0 * 3 for v in first.split(" × "))  # no axis shrunk below 16 voxels


def test_schedule_shrink_factors_and_smoothing(pair):
    r = linear_register(pair.fixed, pair.moving, shrink_factors=(3, 1), smoothing_mm=(4.0, 0.0), iterations=5)
    rows = r.report.rows
    assert [row["level"] for row in rows] == [1, 2, "all"] and r.history.series_names == ["level 1", "level 2"]
    assert rows[0]["voxel size"] == "12 × 12 × 5" and rows[1]["voxel size"] == "4 × 4 × 5"  # z: 24 slices stay
    assert [row["smoothing"] for row in rows[:2]] == [4.0, 0.0]
    one = linear_register(pair.fixed, pair.moving, shrink_factors=(2, 1), smoothing_mm=(1.5,), iterations=5)
    assert [row["smoothing"] for row in one.report.rows[:2]] == [3.0, 1.5]  # one value: scaled per level
    merged = linear_register(pair.fixed, pair.moving, shrink_factors=(8, 4, 2, 1), iterations=3).report.rows
    assert [row["shrink"] for row in merged[:-1]] == ["8, 4", "2", "1"]  # 48 voxels: 8 and 4 give one grid
    with pytest.raises(ParameterError, match="smoothing_mm.*3 values for 2 levels"):
        linear_register(pair.fixed, pair.moving, shrink_factors=(2, 1), smoothing_mm=(1.0, 2.0, 3.0))
    with pytest.raises(ParameterError, match="shrink_factors"):
        linear_register(pair.fixed, pair.moving, shrink_factors=(2.5, 1))


def test_every_setting_runs(pair):
    for kw in ({"metric": "joint_histogram_mi", "sampling": "random"}, {"optimiser": "gradient_descent"},
               {"optimiser": "lbfgsb", "sampling": "all", "shrink_factors": (1,)}, {"smoothing_mm": (2.0,), "sampling_percentage": 5.0}, {"smoothing_mm": (4.0, 0.0)},
               {"initialisation": "moments"}, {"initialisation": "none"}):
        r = linear_register(pair.fixed, pair.moving, iterations=5, **{"shrink_factors": (2, 1), **kw})
        assert r.registered.same_grid(pair.fixed) and len(r.history) > 0, kw


def test_geometry_kept_on_anisotropic_oblique_images(pair):
    fixed = _oblique(pair.fixed, 20.0, spacing=(3.5, 4.5, 6.0))
    moving = _oblique(pair.moving, 15.0, spacing=(4.0, 3.0, 5.0), origin=(-28.0, 10.0, 9.0))
    r = linear_register(fixed, moving, shrink_factors=(1,), iterations=5)
    assert r.registered.same_grid(fixed) and np.allclose(r.registered.direction, fixed.direction)
    b = bspline_register(fixed, moving, shrink_factors=(1,), iterations=3, grid_spacing_mm=60.0)
    d = demons_register(fixed, moving, shrink_factors=(1,), iterations=3)
    for img in (b.registered, b.jacobian, d.registered, d.jacobian):
        assert img.same_grid(fixed) and img.spacing == fixed.spacing and img.origin == fixed.origin
    labels = resample_labels(_oblique(pair.moving_labels, 15.0, spacing=(4.0, 3.0, 5.0), origin=(-28.0, 10.0, 9.0)),
                             r.transform, fixed)
    assert labels.same_grid(fixed) and labels.is_label and labels.labels == pair.moving_labels.labels
    assert resample_image(moving, r.transform, fixed, interpolation="bspline").same_grid(fixed)


def test_initial_transform_is_refined_or_composed(pair, rigid):
    # a rigid start for a rigid registration is refined in place: the result is one Euler transform
    again = linear_register(pair.fixed, pair.moving, rigid.transform, shrink_factors=(1,), iterations=20)
    assert again.transform.summary()["kind"] == "Euler3DTransform"
    pts = _brain_points(pair)
    assert target_registration_error(again.transform, pts, truth=pair.transform).mean() < 1.0
    # an affine start cannot be a translation: the result composes initial and optimised
    aff = sitk.AffineTransform(3)
    aff.SetMatrix((1.02, 0, 0, 0, 1, 0, 0, 0, 1))
    t = linear_register(pair.fixed, pair.moving, aff, transform="translation", shrink_factors=(1,), iterations=3).transform
    assert t.summary()["kind"] == "composite" or "Composite" in t.sitk.GetName()


# ------------------------------------------------------------------ deformable
def _deformed_phantom():
    """A phantom and a known smooth deformation: two Gaussian bumps of 6 mm. The fixed image
    is the phantom pulled through it, so the deformation *is* the fixed → moving transform."""
    p = brain_mri(size=(40, 40, 20), spacing=(4.0, 4.0, 5.0), noise=0.0, seed=3)
    z, y, x = np.indices(p.t1.array.shape).astype(float)
    phys = np.stack([x, y, z], -1) * np.asarray(p.t1.spacing) + np.asarray(p.t1.origin)
    u = np.zeros(phys.shape)
    for c, v in (((-20.0, 10.0, 0.0), (6.0, 0.0, 0.0)), ((25.0, -15.0, 5.0), (0.0, -5.0, 3.0))):
        u += np.exp(-np.sum((phys - c) ** 2, -1) / (2 * 25.0 ** 2))[..., None] * np.asarray(v)
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(p.t1.to_sitk())
    truth = sitk.DisplacementFieldTransform(field)
    base = sitk.Cast(p.t1.to_sitk(), sitk.sitkFloat32)
    fixed = medlab.Image.from_sitk(sitk.Resample(base, base, truth, sitk.sitkLinear, 0.0))
    brain = p.labels.with_array((p.labels.array >= 4).astype(np.uint8), kind="label")
    return fixed, p.t1, truth, sample_points(brain, 300, seed=0)


def test_jacobian_of_an_affine_map_on_an_oblique_grid():
    grid = _oblique(medlab.Image(np.zeros((6, 7, 8), np.float32), spacing=(1.0, 2.0, 3.0)), 30.0)
    a = sitk.AffineTransform(3)
    m = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]])
    a.SetMatrix(tuple(m.ravel()))
    jac = jacobian_determinant(a, grid)
    assert jac.same_grid(grid) and np.allclose(jac.array, np.linalg.det(m), atol=1e-4)
    assert folded_voxels(jac) == 0
    flip = sitk.AffineTransform(3)
    flip.SetMatrix((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert folded_voxels(jacobian_determinant(flip, grid)) == grid.array.size


def test_bspline_reduces_a_known_deformation_without_folding():
    fixed, moving, truth, pts = _deformed_phantom()
    before = target_registration_error(sitk.Euler3DTransform(), pts, truth=truth).mean()
    r = bspline_register(fixed, moving, grid_spacing_mm=40.0, shrink_factors=(2, 1), iterations=20, samples=5000)
    after = target_registration_error(r.transform, pts, truth=truth).mean()
    assert before > 2.0 and after < 0.5 * before
    assert r.report.rows[-1]["folded voxels"] == folded_voxels(r.jacobian) == 0
    assert r.jacobian.same_grid(fixed) and "B-spline" in r.transform.name


def test_foreground_mask_holds_the_head_and_not_the_air():
    from medlab.register._common import foreground_mask, to_float

    p = brain_mri(size=(40, 40, 20), spacing=(4.0, 4.0, 5.0), noise=0.01, seed=3)
    mask, fraction = foreground_mask(p.t1, to_float(p.t1))
    inside = sitk.GetArrayFromImage(mask).astype(bool)
    assert mask.GetSpacing() == p.t1.spacing and 0.2 < fraction < 0.8
    assert inside[p.labels.array > 0].all()  # skull and CSF too: holes are filled
    assert not inside[0, 0, 0] and fraction == pytest.approx(inside.mean())
    flat = p.t1.with_array(np.ones_like(p.t1.array))
    assert foreground_mask(flat, to_float(flat)) == (None, 1.0)  # nothing to choose: no mask


def test_bspline_samples_the_foreground_by_default():
    fixed, moving, _, _ = _deformed_phantom()
    kw = {"grid_spacing_mm": 40.0, "shrink_factors": (1,), "iterations": 3, "samples": 2000}
    head = bspline_register(fixed, moving, **kw)
    everywhere = bspline_register(fixed, moving, sampling_region="everywhere", **kw)
    # the requested number of points lands inside the head, instead of a share of it
    assert head.report.rows[0]["samples"] == pytest.approx(2000, rel=0.05)
    assert head.history.series("level 1")[1][0] != everywhere.history.series("level 1")[1][0]


def test_a_finer_bspline_grid_starts_from_the_coarser_deformation(pair):
    from medlab.register._common import to_float
    from medlab.register.intensity import bspline_mesh, refine_bspline

    f = to_float(pair.fixed)
    coarse = sitk.BSplineTransformInitializer(f, bspline_mesh(pair.fixed, 80.0), 3)
    rng = np.random.default_rng(0)
    coarse.SetParameters(tuple(rng.normal(0.0, 3.0, len(coarse.GetParameters()))))
    fine = refine_bspline(coarse, f, bspline_mesh(pair.fixed, 20.0))
    assert len(fine.GetParameters()) > 4 * len(coarse.GetParameters())
    pts = _brain_points(pair, 200)
    moved = np.array([coarse.TransformPoint(tuple(q)) for q in pts])
    assert np.abs(moved - pts).max() > 2.0  # a real deformation
    error = target_registration_error(fine, pts, moving_points=moved)
    assert error.mean() < 0.05 and error.max() < 0.05 * np.abs(moved - pts).max()


def test_lbfgsb_bspline_with_mean_squares_keeps_iterating():
    # intensities in [0, 1]: mean squares starts near 1e-3 and a fixed gradient tolerance of
    # 1e-5 stopped L-BFGS-B after one iteration per level
    fixed, moving, truth, pts = _deformed_phantom()
    before = target_registration_error(sitk.Euler3DTransform(), pts, truth=truth).mean()
    r = bspline_register(fixed, moving, metric="mean_squares", grid_spacing_mm=40.0, shrink_factors=(2, 1),
                         iterations=20, samples=5000)
    assert all(row["iterations"] > 5 for row in r.report.rows[:-1]), r.report.rows
    after = target_registration_error(r.transform, pts, truth=truth).mean()
    assert after < 0.5 * before and r.report.rows[-1]["folded voxels"] == 0


def test_lbfgsb_stop_at_the_iteration_limit_is_said_in_words(pair):
    # ITK's L-BFGS-B reports "User requested" when it reaches its iteration limit
    r = bspline_register(pair.fixed, pair.moving, shrink_factors=(1,), iterations=2, samples=2000)
    assert r.report.rows[0]["stop reason"].startswith("largest number of iterations reached")


def test_demons_reduces_a_known_deformation_without_folding():
    fixed, moving, truth, pts = _deformed_phantom()
    before = target_registration_error(sitk.Euler3DTransform(), pts, truth=truth).mean()
    r = demons_register(fixed, moving, iterations=30, shrink_factors=(2, 1))
    after = target_registration_error(r.transform, pts, truth=truth).mean()
    assert before > 2.0 and after < 0.5 * before
    assert r.report.rows[-1]["folded voxels"] == 0 and r.history.series_names == ["level 1", "level 2"]


def test_deformable_transform_saves_and_loads(tmp_path, rigid, pair):
    r = bspline_register(pair.fixed, pair.moving, rigid.transform, shrink_factors=(1,), iterations=3, grid_spacing_mm=60.0)
    path = r.transform.save(tmp_path / "t.h5")
    back = Transform.load(path)
    pts = _brain_points(pair, 20)
    assert np.allclose(back.transform_points(pts), r.transform.transform_points(pts), atol=1e-9)


# ------------------------------------------------------------------ live results and Cancel
def test_curve_and_best_transform_are_published_every_iteration(pair):
    seen = []
    with progress_to(None, publish=lambda stage, values: seen.append(
            (len(values["history"]) if "history" in values else None, values.get("transform")))):
        r = linear_register(pair.fixed, pair.moving, shrink_factors=(1,), iterations=10)
    growing = [n for n, _ in seen if n is not None]
    assert growing[:3] == [1, 2, 3] and growing[-1] == len(r.history)  # the curve grew while it ran
    assert any(isinstance(t, Transform) for _, t in seen[:3])


def test_cancel_keeps_the_best_transform(pair):
    cancel = threading.Event()
    count = [0]

    def on_publish(stage, values):
        count[0] += 1
        if count[0] == 15:
            cancel.set()

    with progress_to(None, cancel, publish=on_publish), pytest.raises(Cancelled) as info:
        linear_register(pair.fixed, pair.moving, shrink_factors=(2, 1), iterations=200)
    kept = info.value.result
    assert kept.cancelled and isinstance(kept.transform, Transform) and kept.registered is None
    history = kept.history
    assert 10 <= len(history) <= 16
    # the kept transform is the best one evaluated, not the last one: its metric is the curve's best
    fixed, moving = sitk.Cast(pair.fixed.to_sitk(), sitk.sitkFloat32), sitk.Cast(pair.moving.to_sitk(), sitk.sitkFloat32)
    assert kept.transform.summary()["kind"] == "Euler3DTransform"
    assert history.best() is not None and fixed.GetSize() == moving.GetSize()


def test_cancel_keeps_the_best_field_of_demons(pair):
    cancel = threading.Event()
    count = [0]

    def on_publish(stage, values):
        count[0] += 1
        if count[0] == 25:
            cancel.set()

    with progress_to(None, cancel, publish=on_publish), pytest.raises(Cancelled) as info:
        demons_register(pair.fixed, pair.moving, shrink_factors=(2, 1), iterations=100)
    kept = info.value.result
    assert kept.cancelled and isinstance(kept.transform, Transform) and kept.jacobian is None


@pytest.mark.parametrize("run", [
    lambda p: linear_register(p.fixed, p.moving, **FAST),
    lambda p: bspline_register(p.fixed, p.moving, shrink_factors=(1,), iterations=5, samples=2000),
    lambda p: demons_register(p.fixed, p.moving, shrink_factors=(1,), iterations=5),
], ids=["linear", "bspline", "demons"])
def test_ctrl_c_stays_a_keyboard_interrupt(pair, run):
    # SimpleITK turns what an iteration command raises into a RuntimeError: not "registration failed"
    def interrupt(fraction, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), progress_to(interrupt):
        run(pair)


# ------------------------------------------------------------------ recipes
def _record(pair):
    with Recipe.record(fixed=pair.fixed, moving=pair.moving) as recipe:
        transform, registered, _, _ = linear_register(pair.fixed, pair.moving, **FAST)
        labels = resample_labels(pair.moving_labels, transform, pair.fixed)
    return recipe, transform, registered, labels


def test_two_step_recipe_replays_bit_identically(pair):
    recipe, transform, registered, labels = _record(pair)
    assert [s.inputs for s in recipe.steps] == [
        {"fixed": "fixed", "moving": "moving"},
        {"labels": "labels", "transform": "step1.transform", "reference": "fixed"}]
    again = Recipe.from_json(recipe.to_json()).run(fixed=pair.fixed, moving=pair.moving, labels=pair.moving_labels)
    assert again["step1.transform"].fingerprint() == transform.fingerprint()
    assert np.array_equal(again["step1.registered"].array, registered.array)
    assert np.array_equal(again["step2.labels"].array, labels.array) and again["step2.labels"].same_grid(pair.fixed)


def test_recipe_exports_python_that_runs(pair, tmp_path):
    recipe, transform, _, labels = _record(pair)
    for name, img in (("fixed", pair.fixed), ("moving", pair.moving), ("labels", pair.moving_labels)):
        medlab.save(img, tmp_path / f"{name}.nii.gz")
    code = recipe.to_python(inputs={n: f"{n}.nii.gz" for n in ("fixed", "moving", "labels")})
    assert "from medlab.register import linear_register, resample_labels" in code
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=dict(os.environ))
    out = tmp_path / "outputs"
    assert Transform.load(out / "transform.h5").fingerprint() == transform.fingerprint()
    assert np.array_equal(medlab.load(out / "labels.nii.gz").array, labels.array)


def test_landmarks_initialise_an_intensity_refinement_in_one_recipe(pair):
    fl, ml = pair.landmarks[:6], pair.moving_landmarks[:6]
    noisy = (ml + np.random.default_rng(0).normal(0, 1.5, ml.shape)).tolist()  # clicked with ~2.6 mm error
    fl = fl.tolist()
    with Recipe.record(fixed=pair.fixed, moving=pair.moving) as recipe:
        start = landmark_register(pair.fixed, pair.moving, fixed_landmarks=fl, moving_landmarks=noisy).transform
        refined = linear_register(pair.fixed, pair.moving, start, shrink_factors=(1,), iterations=30).transform
    assert recipe.steps[1].inputs["initial"] == "step1.transform"
    pts = _brain_points(pair)
    assert (target_registration_error(refined, pts, truth=pair.transform).mean()
            < target_registration_error(start, pts, truth=pair.transform).mean())
    again = Recipe.from_json(recipe.to_json()).run(fixed=pair.fixed, moving=pair.moving)
    assert again["step2.transform"].fingerprint() == refined.fingerprint()


# ------------------------------------------------------------------ landmarks
def _rigid_truth():
    return sitk.Euler3DTransform((0, 0, 0), 0.2, -0.1, 0.3, (5.0, -3.0, 2.0))


@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine"])
def test_landmark_fit_recovers_known_transforms(kind):
    rng = np.random.default_rng(1)
    fixed = rng.uniform(-50, 50, (8, 3))
    if kind == "affine":
        truth = sitk.AffineTransform(3)
        truth.SetMatrix((1.1, 0.1, 0, 0, 0.9, 0.05, 0, 0, 1.05))
        truth.SetTranslation((2, 3, -4))
    elif kind == "similarity":
        truth = sitk.Similarity3DTransform()
        truth.SetScale(1.2)
        truth.SetTranslation((1, 2, 3))
    else:
        truth = _rigid_truth()
    moving = np.array([truth.TransformPoint(tuple(p)) for p in fixed])
    t = fit_landmark_transform(fixed, moving, kind)
    probe = rng.uniform(-80, 80, (20, 3))
    assert target_registration_error(t, probe, truth=truth).max() < 1e-6


def test_2d_similarity_landmarks_recover_the_scale():
    truth = sitk.Similarity2DTransform(1.3, 0.4, (3.0, -2.0), (5.0, 5.0))
    fixed = np.random.default_rng(2).uniform(-40, 40, (6, 2))
    moving = np.array([truth.TransformPoint(tuple(p)) for p in fixed])
    t = fit_landmark_transform(fixed, moving, "similarity")
    assert abs(t.GetScale() - 1.3) < 1e-9
    probe = np.random.default_rng(3).uniform(-80, 80, (20, 2))
    assert target_registration_error(t, probe, truth=truth).max() < 1e-9


def test_landmark_register_reports_fre_and_tre(pair):
    fl, ml = pair.landmarks.tolist(), pair.moving_landmarks.tolist()  # lists: Points refuses arrays
    r = landmark_register(pair.fixed, pair.moving, fixed_landmarks=fl[:5], moving_landmarks=ml[:5],
                          fixed_targets=fl[5:9], moving_targets=ml[5:9])
    assert isinstance(r.errors, Table) and r.errors.units["error"] == "mm"
    uses = r.errors.column("use")
    assert uses.count("fiducial") == 6 and uses.count("target") == 5  # 5 + RMS, 4 + RMS
    assert max(r.errors.column("error")) < 1e-3 and r.registered.same_grid(pair.fixed)


def test_bad_landmarks_are_refused(pair):
    f = pair.landmarks[:4].tolist()
    with pytest.raises(ParameterError, match="at least 2 points"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=f[:1], moving_landmarks=f[:1])
    with pytest.raises(ParameterError, match="needs at least 3 point pairs"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=f[:2], moving_landmarks=f[:2])
    with pytest.raises(ParameterError, match="pair up"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=f, moving_landmarks=f[:3])
    line = np.array([[0, 0, 0], [10, 10, 5], [20, 20, 10], [-10, -10, -5]], float)
    with pytest.raises(ParameterError, match="collinear"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=line.tolist(), moving_landmarks=(line + 1).tolist())
    plane = np.array([[0, 0, 0], [30, 0, 0], [0, 30, 0], [20, 20, 0], [-10, 5, 0]], float)
    with pytest.raises(ParameterError, match="coplanar"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=plane.tolist(), moving_landmarks=plane.tolist(),
                          transform="affine")
    with pytest.raises(ParameterError, match="outside"):
        landmark_register(pair.fixed, pair.moving, fixed_landmarks=(np.asarray(f) + 1000).tolist(), moving_landmarks=f)


def test_fle_becomes_tre_as_fitzpatrick_and_west_predict():
    fid = np.array([[40, 0, 0], [-40, 10, 0], [0, 40, 5], [5, -40, 0], [0, 0, 40], [10, 5, -35]], float)
    targets = np.array([[0, 0, 0], [60, 60, 0], [0, 0, 120]], float)
    t = fle_to_tre(fid, targets, fle_rms=2.0, trials=400)
    sim, pred = np.array(t.column("simulated TRE")[:3]), np.array(t.column("predicted TRE")[:3])
    assert np.all(np.abs(sim - pred) / pred < 0.15)
    assert sim[0] < sim[1] < sim[2]  # farther from the fiducials' centroid, larger TRE
    fre = t.rows[-1]
    assert abs(fre["simulated FRE"] - fre["predicted FRE"]) / fre["predicted FRE"] < 0.1
    assert np.allclose(predicted_tre(fid, targets, 0.0), 0.0)


# ------------------------------------------------------------------ ICP
def test_icp_recovers_a_known_rigid_transform_with_outliers():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(1500, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    fixed = u * (40 + 5 * np.sin(3 * u[:, :1])) * (1.0, 0.8, 0.6)
    truth = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.08, 0.12, (5.0, -4.0, 3.0))
    moving = np.array([truth.TransformPoint(tuple(p)) for p in fixed])
    moving = np.vstack([moving[rng.permutation(len(moving))], rng.uniform(-60, 60, (75, 3))])
    t, history = icp(fixed, moving)
    assert target_registration_error(t, fixed, truth=truth).mean() < 0.05
    xs, ys = history.series("inliers")
    assert ys[-1] < 0.05 < ys[0] and xs == sorted(xs)


def test_surface_register_aligns_label_maps(pair):
    r = surface_register(pair.fixed_labels, pair.moving_labels, max_points=2000)
    pts = _brain_points(pair)
    assert target_registration_error(r.transform, pts, truth=pair.transform).mean() < 1.5
    assert r.registered.same_grid(pair.fixed_labels) and r.registered.is_label
    assert r.history.series("inliers")[1][-1] < r.history.series("inliers")[1][0]
    assert surface_points(pair.fixed_labels, 5, max_points=50).shape == (50, 3)


# ------------------------------------------------------------------ measures
def test_tre_and_mi_helpers(pair, rigid):
    e = target_registration_error(sitk.TranslationTransform(3, (3.0, 4.0, 0.0)), [(0, 0, 0)], truth=sitk.Euler3DTransform())
    assert e.tolist() == [5.0]
    with pytest.raises(ParameterError, match="either truth"):
        target_registration_error(rigid.transform, [(0, 0, 0)])
    with pytest.raises(ParameterError, match="one true position per target"):
        target_registration_error(rigid.transform, [(0, 0, 0)], moving_points=[(0, 0, 0), (1, 1, 1)])
    before = resample_image(pair.moving, sitk.Euler3DTransform(), pair.fixed)
    assert mutual_information(pair.fixed, rigid.registered) > mutual_information(pair.fixed, before)


# ------------------------------------------------------------------ bad input
def test_bad_images_give_medlab_errors(pair):
    far = medlab.Image(pair.moving.array, pair.moving.spacing, (5000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="do not overlap"):
        linear_register(pair.fixed, far)
    with pytest.raises(ImageError, match="3D image and 'moving' a 2D"):
        linear_register(pair.fixed, medlab.Image(pair.moving.array[10]))
    nan = pair.moving.array.astype(np.float32).copy()
    nan[5, 5, 5] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        linear_register(pair.fixed, pair.moving.with_array(nan))
    with pytest.raises(ImageError, match="constant"):
        demons_register(pair.fixed, pair.moving.with_array(np.zeros_like(pair.moving.array)))
    with pytest.raises(ImageError, match="label"):
        linear_register(pair.fixed, pair.moving_labels)
    with pytest.raises(ImageError, match="no voxel"):
        surface_register(pair.fixed_labels, pair.moving_labels, moving_label=99)


@pytest.mark.parametrize("kw", [{"shrink_factors": (100,)}, {"smoothing_mm": (1.0, 2.0, 3.0)}, {"learning_rate": -1.0}, {"iterations": 0},
                                {"metric": "ncc"}, {"samples": 10}, {"sampling_percentage": 150.0},
                                {"transform": "perspective"}, {"bins": float("nan")}])
def test_absurd_parameters_are_refused_before_work(pair, kw):
    with pytest.raises(ParameterError, match=next(iter(kw))):
        linear_register(pair.fixed, pair.moving, **kw)


def test_every_error_is_a_medlab_error(pair):
    for call in (lambda: bspline_register(pair.fixed, pair.moving, grid_spacing_mm=0.1),
                 lambda: demons_register(pair.fixed, pair.moving, field_sigma=100.0),
                 lambda: resample_labels(pair.moving, sitk.Euler3DTransform(), pair.fixed),
                 lambda: icp(np.zeros((3, 3)), np.zeros((3, 3))),
                 lambda: fit_landmark_transform([[0, 0, 0]] * 4, [[0, 0, 0]] * 4)):
        with pytest.raises(MedlabError):
            call()


def test_demons_refuses_an_initial_transform_of_another_dimension(pair):
    from medlab.outputs import Transform
    from medlab.register import demons_register

    two_d = Transform(sitk.TranslationTransform(2, (1.0, 0.0)))
    with pytest.raises(ImageError, match="initial is a 2D transform"):   # was SimpleITK's bare RuntimeError
        demons_register(pair.fixed, pair.moving, two_d, iterations=2, shrink_factors=(1,))


@pytest.mark.parametrize("background", [-1000.0, "zero-mean"])
def test_moments_initialisation_finds_the_object_with_negative_intensities(background):
    # CT in HU or z-scored MR: ITK's intensity-weighted centroid went 0.5 mm the wrong way on the
    # first and 6.7e7 mm away on the second; the object over its background moved 5 mm along x
    from medlab.register.intensity import _start

    a = np.full((40, 60, 60), -1000.0, np.float32)
    a[10:30, 20:45, 15:40] = 40.0
    if background == "zero-mean":
        a -= a.mean()
    fixed = medlab.Image(a)
    moving = medlab.Image(np.roll(a, 5, axis=2))
    t, _ = _start("translation", fixed.to_sitk(), moving.to_sitk(), "moments", None)
    assert np.allclose(t.GetOffset(), (5.0, 0.0, 0.0), atol=1e-6)
