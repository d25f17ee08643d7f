"""The register widget, headless: linked viewers with their own grey scales, the overlay (tiles in
mm, blend, difference, green-magenta), live overlay and curve during a run, Cancel keeping the best
transform, the summary with TRE, landmark pairs with FRE/TRE, inputs wired by name, export, and
bad input refused. Small phantoms: fast."""

from __future__ import annotations

import io
import itertools
import time

import numpy as np
import pytest
import SimpleITK as sitk
from medlab.widgets import RegisterWidget
from medlab.widgets.register import checker_pixels, green_magenta

import medlab
from medlab import GeometryError, ImageError, MedlabError, ParameterError
from medlab.data import registration_pair
from medlab.outputs import Transform
from medlab.recipe import Recipe
from medlab.register import resample_image, target_registration_error


@pytest.fixture(scope="module")
def pair():
    return registration_pair(size=(48, 48, 24), spacing=(4.0, 4.0, 5.0), seed=2, max_rotation_deg=8,
                             max_translation_mm=8)


@pytest.fixture
def widget(pair):
    w = RegisterWidget(pair.fixed, pair.moving, truth=pair.transform, targets=pair.landmarks, live_interval=0.05,
                       debounce=0.0)
    w._throttle.wait_idle()
    yield w
    w.close()


def _run(w, **params):
    w.set(**params)
    w.start()
    w.wait()


# ------------------------------------------------------------------ viewers and overlay
def test_viewers_are_linked_in_mm_and_keep_their_own_window(widget, pair):
    fixed_view, moving_view = widget.before, widget.after
    assert fixed_view.image is widget.session["fixed"] and moving_view.image is widget.session["moving"]
    target = list(pair.landmarks[3])
    fixed_view.position = target
    assert np.allclose(moving_view.position, fixed_view.position)
    moving_view.window = 0.123
    assert fixed_view.window != 0.123  # a T1 and a T2: their own grey scales
    moving_view.position = list(pair.landmarks[5])
    assert np.allclose(fixed_view.position, moving_view.position)


def test_overlay_starts_in_physical_space_with_tiles_in_mm(widget, pair):
    info = widget.before._second_info
    assert info["mode"] == "checkerboard" and widget.overlay_updates == 1
    expected = resample_image(pair.moving, sitk.Euler3DTransform(), pair.fixed)
    assert np.array_equal(widget.registered.array, expected.array)  # the moving image by position, before any run
    widget.tile.value = 20.0
    assert widget.before._second_info["checker"] == round(20.0 / 4.0) == checker_pixels(20.0, pair.fixed, "axial")
    assert "= 5 px" in widget.tile_px.value
    widget.before.plane = "coronal"           # in-plane 4 × 5 mm: tiles of at least 20 mm both ways
    assert widget.before._second_info["checker"] == 5
    # the picture the browser draws: the viewer's composition with tiles of that many pixels
    rgb = widget.before.snapshot_planes()["coronal"]
    grey_only = medlab.render.window_level(widget.before.current_slice().array, widget.before.window,
                                           widget.before.level)
    assert rgb.shape[:2] == grey_only.shape and not np.array_equal(rgb[..., 0], grey_only)


def test_blend_difference_and_green_magenta(widget):
    widget.overlay_mode.value = "blend"
    widget.alpha.value = 0.25
    assert widget.before._second_info["mode"] == "blend" and widget.before._second_info["alpha"] == 0.25
    assert widget.alpha.layout.display == "" and widget.tile.layout.display == "none"
    widget.overlay_mode.value = "difference"
    assert widget.before._second_info["mode"] == "difference"
    widget.overlay_mode.value = "green_magenta"
    assert widget.before._second_info == {} and widget.gm_picture.layout.display == ""
    from PIL import Image as PILImage

    picture = np.asarray(PILImage.open(io.BytesIO(widget.gm_picture.value)).convert("RGB"))
    assert picture.shape[2] == 3 and np.array_equal(picture[..., 0], picture[..., 2])  # magenta: red = blue
    assert not np.array_equal(picture[..., 0], picture[..., 1])  # misaligned: green and magenta differ
    widget.overlay_mode.value = "off"
    assert widget.before._second_info == {}


def test_green_magenta_composite():
    f = np.array([[0, 255], [128, 0]], np.uint8)
    m = np.array([[255, 255], [0, 0]], np.uint8)
    rgb = green_magenta(f, m)
    assert rgb[0, 0].tolist() == [255, 0, 255] and rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 0].tolist() == [0, 128, 0]
    with pytest.raises(ParameterError):
        green_magenta(f, m[:1])


# ------------------------------------------------------------------ runs
def test_run_updates_curve_and_overlay_live_then_summarises(widget, pair):
    calls = []
    original = widget.before.set_second_image

    def spy(image, **kw):
        calls.append((widget.panel.running, widget.panel.live_values.get("history")))
        return original(image, **kw)

    widget.before.set_second_image = spy
    slow = widget.panel._on_live

    def slow_live(values):  # a fast machine can end the run inside one throttle interval: pace it
        time.sleep(0.01)
        slow(values)

    widget.panel._on_live = slow_live
    _run(widget, shrink_factors=(2, 1), iterations=60, samples=4000, learning_rate=0.5)
    during = [h for running, h in calls if running]
    assert len(during) >= 2, calls                 # the overlay changed while the optimiser ran
    assert during[0] is not None and len(during[0]) > 0
    result = widget.panel.outputs
    assert not result.cancelled and widget.transform is result.transform
    assert np.array_equal(widget.registered.array, result.registered.array)
    rows = dict(widget.summary_rows)
    assert {"final metric", "iterations", "stop reason", "time", "TRE after"} <= set(rows)
    # no initial transform: the run starts from the images' centres aligned (the default initialisation)
    assert "TRE before (from the geometry-centre initialisation)" in rows
    after = target_registration_error(result.transform, pair.landmarks, truth=pair.transform)
    assert f"mean {after.mean():.3f} mm" in rows["TRE after"] and after.mean() < 1.0
    assert "°" in widget.summary.value and "mm (x, y, z; LPS)" in widget.summary.value  # degrees and mm
    assert "done" in widget.summary.value and "step1.transform" in widget.session
    assert set(widget.curve.series) == {"level 1", "level 2"} and widget.curve.layout.display == ""
    assert widget.panel.live_view.layout.display == "none"   # the curve is beside the summary instead


def test_cancel_keeps_the_best_transform_so_far(widget, pair):
    widget.set(shrink_factors=(2, 1), iterations=2000, samples=4000, learning_rate=0.05)
    at_end = {}

    def ended(change):  # right after the run: the transform is the kept one, its overlay comes next
        if not change["new"]:
            at_end.update(current=widget.overlay_current, transform=widget.transform, registered=widget.registered)

    widget.panel.observe(ended, "running")
    live = widget.panel._on_live

    def paced_live(values):  # the whole run lasts ~1 s on a fast machine: pace it, so Cancel finds it running
        time.sleep(0.01)
        live(values)

    widget.panel._on_live = paced_live
    widget.start()
    end = time.monotonic() + 30
    while "transform" not in widget.panel.live_values and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.3)
    widget.cancel()
    widget.wait()
    assert at_end["transform"] is widget.panel.outputs.transform
    if at_end["current"]:  # the picture then is the kept transform's (else it follows: waited for below)
        assert np.array_equal(at_end["registered"].array,
                              resample_image(pair.moving, at_end["transform"], pair.fixed).array)
    kept = widget.panel.outputs
    assert kept.cancelled and isinstance(kept.transform, Transform) and kept.registered is None
    assert widget.transform is kept.transform and widget.overlay_current
    assert np.array_equal(widget.registered.array, resample_image(pair.moving, kept.transform, pair.fixed).array)
    assert "cancelled" in widget.summary.value and "best transform so far" in widget.overlay_note.value
    before = target_registration_error(sitk.Euler3DTransform(), pair.landmarks, truth=pair.transform).mean()
    now = target_registration_error(kept.transform, pair.landmarks, truth=pair.transform).mean()
    assert now < before and "TRE after" in dict(widget.summary_rows)
    assert "step1.transform" not in widget.session  # a cancelled run is not in the recipe


# ------------------------------------------------------------------ landmarks
def test_landmark_mode_alternates_viewers_and_reports_fre_and_tre(widget, pair):
    widget.select("landmark_register")
    assert widget.landmarks.layout.display == ""
    assert widget.before.point_mode == "edit" and widget.before.active_set == "fixed_landmarks"
    rng = np.random.default_rng(0)
    clicked = pair.moving_landmarks[:5] + rng.normal(0, 1.0, (5, 3))  # clicked with ~1.7 mm error
    for f, m in zip(pair.landmarks[:5].tolist(), clicked.tolist()):
        widget.before.points = widget.before.points + [f]
        assert widget.after.point_mode == "edit" and widget.after.active_set == "moving_landmarks"
        assert widget.before.point_mode == "off" and "moving" in widget.hint.value
        widget.after.points = widget.after.points + [m]
        assert widget.before.point_mode == "edit" and widget.after.point_mode == "off"
    c = widget.panel.controls
    c["fixed_targets"].pick.value = True
    for f, m in zip(pair.landmarks[5:8].tolist(), pair.moving_landmarks[5:8].tolist()):
        widget.before.points = widget.before.points + [f]
        widget.after.points = widget.after.points + [m]
    rows = widget.landmark_rows
    assert [r["use"] for r in rows] == ["fiducial (fit)"] * 5 + ["target (held out)"] * 3
    assert all(r["error"] is not None for r in rows) and max(r["error"] for r in rows[:5]) > 0.1
    assert "FRE (RMS over 5 landmarks)" in widget.landmarks.value and "TRE (RMS over 3 targets)" in widget.landmarks.value
    widget._throttle.wait_idle()
    assert "landmark fit (5 pairs)" in widget.overlay_note.value
    # Start runs the stage on the same points: its table gives the same errors
    widget.start()
    widget.wait()
    errors = widget.panel.outputs.errors
    assert np.allclose([r["error"] for r in errors.rows if r["point"] != "RMS"], [r["error"] for r in rows], atol=1e-3)
    assert "RMS FRE" in dict(widget.summary_rows) and "RMS TRE" in dict(widget.summary_rows)


def _landmark_start(w, pair, noise_mm=1.5):
    """Landmark registration on five pairs clicked with an error (seeded): step1.transform."""
    clicked = pair.moving_landmarks[:5] + np.random.default_rng(1).normal(0, noise_mm, (5, 3))
    w.select("landmark_register")
    w.set(fixed_landmarks=[tuple(p) for p in pair.landmarks[:5]], moving_landmarks=[tuple(p) for p in clicked])
    w.start()
    w.wait()
    assert "step1.transform" in w.session
    return w.session["step1.transform"]


def _initial(w) -> str:
    return w._input_box("initial").value


def test_initial_menu_offers_the_last_result_and_keeps_the_choice(widget, pair):
    # landmarks clicked but not run: the next stage says how to start from them
    widget.select("landmark_register")
    widget.set(fixed_landmarks=[tuple(p) for p in pair.landmarks[:4]],
               moving_landmarks=[tuple(p) for p in pair.moving_landmarks[:4]])
    widget.select("linear_register")
    assert _initial(widget) == "" and "landmark fit drawn over the fixed image is not a step yet" in widget.hint.value
    landmarks = _landmark_start(widget, pair)
    # landmark pre-alignment, then a deformable run: it starts from the landmark fit
    widget.select("bspline_register")
    assert _initial(widget) == "step1.transform" and widget.panel.inputs["initial"] is landmarks
    assert "starts from <code>step1.transform</code>, the landmark initialisation of step1" in widget.hint.value
    # a rigid refinement from it; after Start the menu offers its result for the next (deformable) run
    widget.select("linear_register")
    assert _initial(widget) == "step1.transform"
    _run(widget, shrink_factors=(2, 1), iterations=30, samples=4000)
    assert widget.recipe.steps[-1].inputs["initial"] == "step1.transform"     # one recipe: landmarks → rigid
    assert _initial(widget) == "step2.transform" and widget.panel.inputs["initial"] is widget.transform
    widget.select("bspline_register")
    assert _initial(widget) == "step2.transform"
    # a choice made in the menu is kept when switching stages
    widget._input_box("initial").value = "step1.transform"
    widget.select("linear_register")
    assert _initial(widget) == "step1.transform"
    widget._input_box("initial").value = ""
    widget.select("demons_register")
    assert _initial(widget) == "" and widget.panel.inputs["initial"] is None


def test_tre_before_is_that_of_the_landmark_initialisation(widget, pair):
    landmarks = _landmark_start(widget, pair)
    widget.select("linear_register")
    tre = {name: target_registration_error(t, pair.landmarks, truth=pair.transform).mean()
           for name, t in (("identity", sitk.Euler3DTransform()), ("landmarks", landmarks))}
    assert tre["landmarks"] < 0.7 * tre["identity"]    # the pre-alignment already did most of the work
    before = "TRE before (from the landmark initialisation of step1)"
    _run(widget, shrink_factors=(2, 1), iterations=30, samples=4000)
    rows = dict(widget.summary_rows)
    assert rows[before].startswith(f"mean {tre['landmarks']:.3f} mm")
    after = target_registration_error(widget.transform, pair.landmarks, truth=pair.transform).mean()
    assert rows["TRE after"].startswith(f"mean {after:.3f} mm") and after < tre["landmarks"]
    assert not any(k.startswith("TRE before") and k != before for k in rows)
    # choosing no initial transform: "before" is the start of that run (the images' centres aligned)
    widget._input_box("initial").value = ""
    widget.set(initialisation="none")
    _run(widget, shrink_factors=(2, 1), iterations=30, samples=4000)
    rows = dict(widget.summary_rows)
    assert rows["TRE before (no initial transform: the images as they lie in mm)"].startswith(
        f"mean {tre['identity']:.3f} mm")


def test_inputs_are_wired_by_name(pair):
    w = RegisterWidget(pair.fixed, pair.moving, fixed_labels=pair.fixed_labels, moving_labels=pair.moving_labels,
                       stage="surface_register", debounce=0.0)
    try:
        values = {b.description: b.value for b in w._inputs_box.children}
        assert values["fixed"] == "fixed_labels" and values["moving"] == "moving_labels"
        w.select("resample_labels")
        values = {b.description: b.value for b in w._inputs_box.children}
        assert values["labels"] == "moving_labels" and values["reference"] == "fixed"
        w.select("linear_register")
        values = {b.description: b.value for b in w._inputs_box.children}
        assert values["fixed"] == "fixed" and values["moving"] == "moving" and values["initial"] == ""
    finally:
        w.close()


# ------------------------------------------------------------------ export
def test_export_transform_registered_image_and_recipe(widget, pair, tmp_path):
    with pytest.raises(MedlabError, match="no transform yet"):
        widget.save_transform(tmp_path / "t.h5")
    _run(widget, shrink_factors=(2, 1), iterations=30, samples=4000)
    t = widget.save_transform(tmp_path / "t.h5")
    assert Transform.load(t).fingerprint() == widget.transform.fingerprint()
    img = medlab.load(widget.save_registered(tmp_path / "registered.nii.gz"))
    assert img.same_grid(pair.fixed) and np.allclose(img.array, widget.panel.outputs.registered.array, atol=1e-5)
    with pytest.raises(MedlabError, match="exists"):
        widget.save_transform(tmp_path / "t.h5")
    recipe = Recipe.load(widget.export(tmp_path / "recipe.json"))
    again = recipe.run(fixed=pair.fixed, moving=pair.moving)
    assert again["step1.transform"].fingerprint() == widget.transform.fingerprint()


def test_save_buttons_report_in_the_status_line(widget, tmp_path):
    widget.save_path.value = ""
    widget._safely(lambda: widget._save_clicked("transform"))
    assert "type a file name" in widget.panel.message
    widget.set_transform(Transform(sitk.Euler3DTransform(), name="identity"), now=True)
    widget.save_path.value = str(tmp_path / "identity.tfm")
    widget._safely(lambda: widget._save_clicked("transform"))
    assert "transform written to" in widget.panel.message and (tmp_path / "identity.tfm").exists()


# ------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused(pair):
    with pytest.raises(ImageError, match="intensity image"):
        RegisterWidget(pair.fixed_labels, pair.moving)
    far = medlab.Image(pair.moving.array, pair.moving.spacing, (5000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="do not overlap"):
        RegisterWidget(pair.fixed, far)
    with pytest.raises(ImageError, match="3D and 'moving' 2D"):
        RegisterWidget(pair.fixed, medlab.Image(pair.moving.array[10]))
    with pytest.raises(ParameterError, match="truth must be"):
        RegisterWidget(pair.fixed, pair.moving, truth="identity")
    with pytest.raises(ParameterError, match="targets must be"):
        RegisterWidget(pair.fixed, pair.moving, truth=pair.transform, targets=[[1.0, 2.0]])
    # targets with nothing to measure them against: the widget's own parameters named, not the library's
    with pytest.raises(ParameterError, match="targets need truth .* or target_moving"):
        RegisterWidget(pair.fixed, pair.moving, targets=pair.landmarks)


def test_a_run_that_ends_while_another_stage_is_shown_is_summarised(widget, pair):
    """Start a rigid run, switch to the deformable stage while it runs: its result becomes a step
    and the summary says 'done' with its TRE, instead of 'running' staying on screen."""
    linear = widget.select("linear_register")
    widget.set(shrink_factors=(2, 1), iterations=30, samples=4000)
    widget.start()
    widget.select("bspline_register")
    linear._apply_thread.join(60)
    deadline = time.monotonic() + 10
    while linear.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "step1.transform" in widget.session
    assert widget._summary_title == "Linear registration: done", widget._summary_title
    assert "TRE after" in dict(widget.summary_rows)
    assert widget._input_box("initial").value == "step1.transform"


def test_bad_parameters_are_shown_in_the_status_line(widget):
    widget.panel.controls["shrink_factors"].widget.value = "2, x"
    widget.start()
    widget.wait()
    assert widget.panel.error is not None and "shrink_factors" in widget.panel.message
    assert not widget.panel.running and widget.overlay_updates == 1  # nothing ran


def test_throttle_runs_the_newest_job_at_most_at_its_rate():
    from medlab.widgets.register import _Throttle

    ran, stamps = [], []
    t = _Throttle(0.1)
    t0 = time.monotonic()
    for i in range(20):
        t.submit(lambda i=i: (ran.append(i), stamps.append(time.monotonic())))
        time.sleep(0.01)
    span = time.monotonic() - t0  # ~0.2 s; longer on a loaded machine, where more runs are due
    assert t.wait_idle(60)
    t.close()
    assert ran[-1] == 19 and len(ran) <= 2 + (span + 0.1) / 0.09  # runs 0.09 s apart over the span (and one after)
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(stamps))


def test_a_transform_of_another_dimension_is_no_initial_transform(widget):
    """A 2D transform offered as 'initial' to a 3D pair is refused when chosen, naming the input,
    instead of failing inside SimpleITK (or the TRE) at Start."""
    widget.select("linear_register")
    with pytest.raises(ParameterError, match="input 'initial': the transform is 2D but the images are 3D"):
        widget.set_input("initial", Transform(sitk.Euler2DTransform(), name="2d"))
    widget.session["flat"] = Transform(sitk.Euler2DTransform(), name="2d")
    widget.select("bspline_register")
    assert "flat" not in [k for _, k in widget._input_box("initial").options]


def test_surface_registration_is_offered_linear_initial_transforms_only(pair):
    """ICP starts from a rigid/similarity/affine transform: a B-spline result is not in its menu
    (chosen there, Start failed with 'icp: the initial transform must be linear')."""
    w = RegisterWidget(pair.fixed, pair.moving, fixed_labels=pair.fixed_labels, moving_labels=pair.moving_labels,
                       debounce=0.0)
    try:
        w.select("bspline_register")
        _run(w, iterations=2, shrink_factors=(2,))
        w.select("linear_register")
        assert _initial(w) == "step1.transform"            # a deformable result can start a linear run
        w.select("surface_register")
        assert "step1.transform" not in [k for _, k in w._input_box("initial").options]
        with pytest.raises(MedlabError, match="cannot take session value 'step1.transform'"):
            w.set_input("initial", "step1.transform")
    finally:
        w.close()


def test_undo_forgets_the_undone_start(widget, pair):
    """After undoing a run, neither the overlay nor the hint offer its transform any more."""
    _run(widget, shrink_factors=(2,), iterations=10, samples=2000)
    assert _initial(widget) == "step1.transform" and widget.transform is widget.session["step1.transform"]
    widget.undo()
    assert "step1.transform" not in widget.session and _initial(widget) == ""
    assert widget.transform is None and "step1" not in widget.hint.value


def test_tre_before_follows_the_initialisation_chosen_before_a_run(widget):
    """'TRE before' is that of the run's start: choosing 'moments' (or 'none') before Start is
    shown at once; it stayed 'geometry-centre' until the run began."""
    widget.select("linear_register")
    assert any(k.startswith("TRE before (from the geometry-centre") for k, _ in widget.summary_rows)
    widget.set(initialisation="moments")
    assert any(k.startswith("TRE before (from the centre-of-mass (moments)") for k, _ in widget.summary_rows)
    widget.set(initialisation="none")
    assert any(k.startswith("TRE before (no initial transform") for k, _ in widget.summary_rows)
