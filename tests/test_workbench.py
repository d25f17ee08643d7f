"""The workbench: a widget built from declarations alone, for stages with several inputs,
typed outputs, live curves, point roles and cancel; its recipe replays bit-identically."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from medlab.widgets import Workbench
from medlab.widgets.outputs import CurvePlot

import medlab
from medlab.outputs import Transform
from medlab.recipe import Recipe

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from toy_stages import toy_seed_threshold


def _blob(shift=(0.0, 0.0, 0.0)):
    z, y, x = np.mgrid[:16, :24, :24].astype(float)
    sp = np.array((2.0, 2.0, 3.0))
    r2 = ((x * sp[0] - 24 + shift[0]) ** 2 + (y * sp[1] - 24 - shift[1]) ** 2 + (z * sp[2] - 24 + shift[2]) ** 2)
    direction = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # a coronal acquisition
    return medlab.Image((100 * np.exp(-r2 / 128)).astype(np.float32), tuple(sp), (-10.0, 5.0, 2.0), direction)


@pytest.fixture(scope="module")
def session():
    fixed, moving = _blob(), _blob((3.0, -2.0, 1.5))
    labels = moving.with_array((moving.array > 50).astype(np.uint8), kind="label", labels={1: "blob"})
    return {"fixed": fixed, "moving": moving, "labels": labels}


def _wait(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _box(wb, name):
    return next(b for b in wb._inputs_box.children if f"medlab-input-{name}" in b._dom_classes)


def test_widget_is_built_from_the_declaration_alone(session):
    wb = Workbench(session, group="toy", debounce=0.0)
    wb.select("toy_register")
    assert [v for _, v in wb.picker.options] == [s.name for s in medlab.stages("toy")]
    fixed, moving = _box(wb, "fixed"), _box(wb, "moving")
    # each input offers what its declaration accepts: intensity images, not the label map
    assert {k for _, k in fixed.options} == {"fixed", "moving"} and fixed.value == "fixed"
    assert moving.value == "moving"
    assert set(wb.panel.controls) == {"iterations", "learning_rate"}
    assert "no slice preview" in wb.panel.preview_note.value  # preview=None is said, not silent
    wb.close()


def test_two_input_stage_runs_with_a_live_curve_then_feeds_the_next_stage(session, tmp_path):
    wb = Workbench(session, group="toy", debounce=0.0)
    wb.select("toy_register")
    wb.set(iterations=30)
    result = wb.apply(wait=True)
    assert isinstance(result.transform, Transform) and result.difference.same_grid(session["fixed"])
    # every output stays in the session, under the names the recipe uses
    assert {"step1.transform", "step1.difference", "step1.history"} <= set(wb.session)
    assert len(wb.panel.live_values["history"]) == 30  # what was published while it ran
    rows = wb.panel.outputs_view.rows
    plot = next(c for c in rows["history"].children if isinstance(c, CurvePlot))
    assert len(plot.series["level 1"]["y"]) == 30 and plot.best  # the final curve, with its best point
    assert set(rows) == {"transform", "difference", "history"}
    assert "translation" in rows["transform"].children[1].value  # shown in mm
    # the next stage takes the transform from the session
    wb.select("toy_warp_labels")
    assert {k for _, k in _box(wb, "transform").options} == {"step1.transform"}
    assert _box(wb, "labels").value == "labels"
    _box(wb, "reference").value = "fixed"
    moved = wb.apply(wait=True)
    assert moved.is_label and moved.same_grid(session["fixed"])
    assert _box(wb, "reference").value == "fixed"  # an Apply keeps the inputs the user chose
    assert [s.inputs for s in wb.recipe.steps][1] == {"labels": "labels", "transform": "step1.transform",
                                                      "reference": "fixed"}
    # export: JSON replay and the Python script give the same label map, bit for bit
    path = wb.export(tmp_path / "r.json")
    again = Recipe.load(path).run(**{n: session[n] for n in ("fixed", "moving", "labels")})
    assert np.array_equal(again["step2.labels"].array, moved.array)
    for n in ("fixed", "moving", "labels"):
        medlab.save(session[n], tmp_path / f"{n}.nii.gz")
    code = wb.recipe.to_python(inputs={n: f"{n}.nii.gz" for n in ("fixed", "moving", "labels")})
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    assert np.array_equal(medlab.load(tmp_path / "outputs" / "labels.nii.gz").array, moved.array)
    assert "toy_warp_labels(labels, transform, fixed)" in wb.code.value
    # undo removes the step and its outputs from the session
    wb.undo()
    assert len(wb.recipe) == 1 and not any(k.startswith("step2.") for k in wb.session)
    wb.close()


def test_cancel_keeps_the_best_result_in_the_widget(session):
    wb = Workbench(session, group="toy", debounce=0.0)
    wb.select("toy_register")
    wb.set(iterations=500)
    seen = threading.Event()

    def stop_after_a_while():
        _wait(lambda: len(wb.panel.live_values.get("history", ())) >= 10)
        wb.panel.cancel()
        seen.set()

    threading.Thread(target=stop_after_a_while, daemon=True).start()
    with pytest.raises(medlab.Cancelled):
        wb.apply(wait=True)
    assert seen.is_set()
    kept = wb.panel.outputs
    assert kept.cancelled and isinstance(kept.transform, Transform) and 10 <= len(kept.history) < 500
    assert "best result so far" in wb.panel.message
    assert "transform" in wb.panel.outputs_view.rows
    assert len(wb.recipe) == 0 and "step1.transform" not in wb.session  # not replayable: not recorded
    wb.close()


def test_point_roles_route_to_their_own_parameters(session):
    image = session["fixed"]
    wb = Workbench({"image": image}, stages=[toy_seed_threshold], debounce=0.0)
    v = wb.before
    sets = {d["name"]: d for d in v.point_sets}
    assert {"seeds", "background"} <= set(sets)
    assert sets["seeds"]["color"] != sets["background"]["color"] and sets["seeds"]["marker"] != sets["background"]["marker"]
    # a seed on the shown slice (as a click adds it: the voxel centre in mm), a background point elsewhere
    geom = v._geometry["planes"][v.plane]
    index = v.slice_index
    to_mm = np.asarray(geom["to_mm"])
    seed = list((to_mm @ [12, 8, index, 1])[:3])
    background = list((to_mm @ [2, 2, index, 1])[:3])
    wb.panel.controls["seeds"].pick.value = True
    assert v.active_set == "seeds" and v.point_mode == "edit"
    v.points = [seed]                               # a click adds to the active set only
    wb.panel.controls["background"].pick.value = True
    assert v.active_set == "background" and not wb.panel.controls["seeds"].pick.value
    v.points = [background]
    assert wb.panel.params["seeds"] == (tuple(seed),) and wb.panel.params["background"] == (tuple(background),)
    # the preview runs on a slab that keeps the physical geometry: the seed lands on its voxel
    prev = wb.panel.wait_preview()
    assert prev is not None and prev.is_label
    full = toy_seed_threshold(image, seeds=[seed], background=[background])
    from medlab import render

    assert np.array_equal(prev.array, render.extract_slice(full.mask, v.plane, index).array)
    out = wb.apply(wait=True)
    assert out.mask.same_grid(image) and out.stats.column("value")[0] == pytest.approx(
        float(image.array[tuple(np.rint(image.physical_to_index(seed)).astype(int)[::-1])]))
    wb.close()


def test_seed_on_another_slice_pauses_the_preview_with_a_reason(session):
    image = session["fixed"]
    wb = Workbench({"image": image}, stages=[toy_seed_threshold], debounce=0.0)
    v = wb.before
    v.set_point_set("seeds", [list(image.index_to_physical((12, 12, 1)))])
    v.slice_index = 6 if v.slice_index != 6 else 5
    wb.panel.request_preview()
    wb.panel.wait_preview()
    assert "seeds point(s) on this slice" in wb.panel.preview_note.value
    wb.close()


def test_volume_preview_runs_on_a_downsampled_volume():
    img = medlab.data.brain_mri(size=(96, 96, 24), bias=0.3, noise=0.02, seed=2).t1
    wb = Workbench(img, group="preprocess", stage="n4_bias_correction", debounce=0.0)
    wb.set(iterations=4, levels=1)
    prev = wb.panel.wait_preview(60)
    assert prev.ndim == 3 and max(prev.size) <= 64 and prev.overlaps(img)
    assert wb.after.image is prev
    wb.close()


def test_workbench_offers_every_group_with_a_group_picker(session):
    wb = Workbench(session["fixed"], debounce=0.0)
    groups = list(wb.group_picker.options)
    assert "preprocess" in groups and wb.group_picker.layout.display != "none"
    wb.group_picker.value = "toy"
    assert wb.panel.spec.group == "toy"
    wb.close()


def test_outputs_can_be_shown_overlaid_used_and_saved(session, tmp_path):
    image = session["fixed"]
    wb = Workbench({"image": image}, stages=[toy_seed_threshold], debounce=0.0)
    seed = list(image.index_to_physical((12, 12, 8)))
    wb.set(seeds=[seed])
    wb.apply(wait=True)
    row = wb.panel.outputs_view.rows["mask"]
    buttons = {c for w in row.children[0].children for c in getattr(w, "_dom_classes", ())}
    assert {"medlab-output-show", "medlab-output-overlay", "medlab-output-save"} <= buttons
    overlay = next(w for w in row.children[0].children if "medlab-output-overlay" in getattr(w, "_dom_classes", ()))
    overlay.click()
    assert wb.before._labels_info["legend"][0]["name"] == "bright"
    path_box = next(w for w in row.children[0].children if "medlab-output-path" in getattr(w, "_dom_classes", ()))
    save = next(w for w in row.children[0].children if "medlab-output-save" in getattr(w, "_dom_classes", ()))
    save.click()
    assert "type a file name" in wb.panel.message
    path_box.value = str(tmp_path / "mask.nii.gz")
    save.click()
    assert medlab.load(tmp_path / "mask.nii.gz").is_label
    wb.close()


def test_export_needs_a_file_name(session):
    wb = Workbench(session["fixed"], group="preprocess", debounce=0.0)
    assert wb.export_path.value == ""  # nothing is written until the user names a file
    wb.export_button.click()
    assert "type a file name" in wb.panel.message
    wb.close()


def test_too_few_points_is_a_note_not_an_error(session):
    image = session["fixed"]
    wb = Workbench({"image": image}, stages=[toy_seed_threshold], debounce=0.0)
    wb.set(seeds=[])                      # still clicking: not an error
    wb.panel.request_preview()
    assert wb.panel.error is None and "click 1 seeds point(s)" in wb.panel.preview_note.value
    with pytest.raises(medlab.ParameterError, match="at least 1"):
        wb.apply(wait=True)               # Apply needs them
    with pytest.raises(medlab.ParameterError, match="points of 2 or 3"):
        wb.set(seeds=[(1.0,)])            # but a malformed point is refused at once
    wb.close()


def test_a_second_image_is_not_the_first_one_by_default(session):
    wb = Workbench({"fixed": session["fixed"]}, group="toy", debounce=0.0)
    wb.select("toy_register")
    assert _box(wb, "moving").value == "" and wb.panel.inputs["moving"] is None
    assert "no preview until input(s) moving" in wb.panel.preview_note.value or wb.panel.spec.preview is None
    with pytest.raises(medlab.ParameterError, match="needs input 'moving'"):
        wb.apply(wait=True)
    wb.close()


def test_closing_twice_is_harmless(session):
    """ipywidgets closes a widget again when it is garbage-collected: a second close must not raise
    (it printed 'Exception ignored ... ValueError: list.remove(x)' for every closed workbench)."""
    wb = Workbench(session, group="toy", debounce=0.0)
    wb.select("toy_register")
    wb.close()
    wb.close()
