"""The preprocess widget: stage picker, before/after viewers, history with undo, and a recipe
export that replays bit-identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from medlab.widgets.preprocess import PreprocessWidget
from scipy import ndimage

import medlab
from medlab.errors import MedlabError, WriteError
from medlab.recipe import Recipe
from medlab.stage import Choice, Float, Int, Vector, stage


# group "measure" keeps these out of the preprocess list other tests iterate
@stage("PP test smooth", group="measure", sigma=Float(0.0, 4.0, 1.0, step=0.05, unit="mm"),
       mode=Choice(["reflect", "nearest", "mirror"]))
def _pp_smooth(image, *, sigma=1.0, mode="reflect"):
    """Gaussian smoothing in mm (spacing-aware), keeping geometry."""
    sig = [sigma / s for s in image.spacing[::-1]]
    return image.with_array(ndimage.gaussian_filter(image.array.astype(np.float32), sig, mode=mode))


@stage("PP test gamma", group="measure", gamma=Float(0.1, 5.0, 1.0, log=True), floor=Int(0, 50, 0, step=5))
def _pp_gamma(image, *, gamma=1.0, floor=0):
    a = np.clip(image.array.astype(np.float64) - floor, 0, None)
    return image.with_array((a / max(a.max(), 1e-12)) ** gamma)


@stage("PP test shift", group="measure", offset=Vector(-5.0, 5.0, (0.0, 0.0, 0.0), length=3, unit="HU"))
def _pp_shift(image, *, offset=(0.0, 0.0, 0.0)):
    return image.with_array(image.array + np.float32(sum(offset)))


STAGES = [_pp_smooth, _pp_gamma, _pp_shift]


@pytest.fixture
def img():
    rng = np.random.default_rng(7)
    a = np.zeros((10, 30, 26), np.float32)
    a[2:8, 8:22, 6:20] = 60
    a[4:6, 12:18, 10:16] = 120
    direction = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # a coronal acquisition
    return medlab.Image(a + rng.normal(0, 6, a.shape).astype(np.float32), spacing=(0.7, 0.8, 2.5),
                        origin=(12.0, -40.0, 7.5), direction=direction, metadata={"modality": "MR"})


@pytest.fixture
def widget(img):
    w = PreprocessWidget(img, stages=STAGES, debounce=0.0)
    yield w
    w.close()


def test_recipe_export_replays_bit_identically(widget, img, tmp_path):
    original = img.array.copy()
    widget.select("_pp_smooth")
    widget.set(sigma=1.35, mode="nearest")
    first = widget.apply(wait=True)
    widget.select("_pp_gamma")
    widget.set(gamma=0.7, floor=10)
    second = widget.apply(wait=True)
    widget.select("_pp_shift")
    widget.panel.controls["offset"].widget.children[2].value = 1.25  # typed into the y box
    widget.apply(wait=True)
    assert widget.image is widget.history[-1][2] and len(widget.history) == 3
    path = widget.export(tmp_path / "r.json")
    assert json.loads(path.read_text())["steps"][2] == {"id": "step3", "stage": "_pp_shift",
                                                        "inputs": {"image": "step2.image"},
                                                        "params": {"offset": [0.0, 1.25, 0.0]}}
    replay = Recipe.load(path).run(img)
    assert np.array_equal(replay.array, widget.image.array)
    assert replay.dtype == widget.image.dtype
    # the widget's result is what the same calls in a script give
    script = _pp_shift(_pp_gamma(_pp_smooth(img, sigma=1.35, mode="nearest"), gamma=0.7, floor=10),
                       offset=(0.0, 1.25, 0.0))
    assert np.array_equal(script.array, widget.image.array)
    assert first is widget.history[0][2] and second is widget.history[1][2]
    # geometry of every result is the input's; the input was never touched
    for _, _, out in widget.history:
        assert out.same_grid(img) and out.origin == img.origin and np.array_equal(out.direction, img.direction)
    assert np.array_equal(img.array, original)
    # the Python code is shown in the widget and names the calls
    code = widget.code.value
    assert "_pp_gamma(image, gamma=0.7, floor=10)" in code and "offset=(0.0, 1.25, 0.0)" in code


def test_export_refuses_to_overwrite_unless_ticked(widget, tmp_path):
    widget.select("_pp_gamma")
    widget.set(gamma=2.0)
    widget.apply(wait=True)
    path = tmp_path / "recipe.json"
    widget.export_path.value = str(path)
    widget.export_button.click()
    assert path.exists() and "written" in widget.panel.message
    before = path.read_text()
    widget.set(gamma=3.0)
    widget.apply(wait=True)
    widget.export_button.click()  # exists, overwrite not ticked
    assert "exists" in widget.panel.message and path.read_text() == before
    assert "medlab-status-error" in widget.panel.status._dom_classes
    with pytest.raises(WriteError):
        widget.export(path)
    widget.overwrite.value = True
    widget.export_button.click()
    assert len(Recipe.load(path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]  # atomic: no temporary left


def test_undo_restores_the_previous_image(widget, img):
    assert widget.undo_button.disabled and "no step" in widget.history_list.value
    widget.select("_pp_smooth")
    widget.set(sigma=2.0)
    a = widget.apply(wait=True)
    widget.select("_pp_gamma")
    widget.set(gamma=2.0)
    b = widget.apply(wait=True)
    assert widget.before.image is b and not widget.undo_button.disabled
    assert "PP test smooth" in widget.history_list.value and "PP test gamma" in widget.history_list.value
    widget.undo_button.click()
    assert widget.image is a and widget.before.image is a and len(widget.recipe) == 1
    assert "PP test gamma" not in widget.history_list.value
    assert widget.undo() is img and widget.before.image is img and len(widget.recipe) == 0
    assert widget.undo_button.disabled
    with pytest.raises(MedlabError, match="nothing to undo"):
        widget.undo()
    # the next apply starts from the original again
    widget.set(gamma=0.5)
    c = widget.apply(wait=True)
    assert np.array_equal(c.array, _pp_gamma(img, gamma=0.5).array)


def test_preview_follows_the_current_image(widget, img):
    widget.select("_pp_gamma")
    widget.set(gamma=2.0)
    prev = widget.panel.wait_preview()
    assert np.array_equal(prev.array, _pp_gamma(widget.before.current_slice(), gamma=2.0).array)
    assert widget.after.image is prev
    result = widget.apply(wait=True)
    # after Apply both panes show the result (not the stage applied a second time) ...
    assert widget.panel.wait_preview() is None
    assert widget.before.image is result and widget.after.image is result
    assert "result" in widget.after_caption.value and "step1" in widget.before_caption.value
    # ... until a parameter changes: then the preview runs on the result (what the next Apply takes)
    widget.set(gamma=2.5)
    widget.set(gamma=2.0)
    prev = widget.panel.wait_preview()
    assert np.array_equal(widget.panel.preview_input.array, widget.before.current_slice().array)
    assert np.array_equal(prev.array, _pp_gamma(widget.before.current_slice(), gamma=2.0).array)
    rows = {name for name, _, _ in widget.panel.quality_rows}
    assert {"noise σ", "edge preservation"} <= rows
    assert "noise σ" in widget.panel.metrics.value


def test_window_level_linked_between_before_and_after(widget):
    widget.panel.wait_preview()
    widget.before.window, widget.before.level = 77.0, 33.0
    assert (widget.after.window, widget.after.level) == (77.0, 33.0)
    widget.after.window = 55.0
    assert widget.before.window == 55.0
    # a new preview keeps the shared window instead of its own automatic one
    widget.set(sigma=2.5)
    widget.panel.wait_preview()
    assert (widget.before.window, widget.after.window) == (55.0, 55.0)


def test_switching_stages_keeps_parameters_and_detaches(widget):
    widget.select("_pp_smooth")
    widget.set(sigma=2.25)
    smooth_panel = widget.panel
    widget.picker.value = "_pp_gamma"  # what the dropdown does
    assert widget.panel.spec.name == "_pp_gamma" and widget._panel_box.children == (widget.panel,)
    widget.panel.wait_preview()
    shown = smooth_panel.preview
    widget.before.slice_index = 2  # only the active panel follows the viewer
    widget.panel.wait_preview()
    smooth_panel.wait_preview()
    assert smooth_panel.preview is shown
    widget.select("_pp_smooth")
    assert widget.panel is smooth_panel and widget.panel.params["sigma"] == 2.25
    with pytest.raises(MedlabError, match="not offered"):
        widget.select("nope")


def test_difference_toggle_shows_difference_in_after_viewer(widget):
    widget.panel.wait_preview()
    widget.panel.difference.value = True
    assert widget.after._second_info["mode"] == "difference"


def test_default_stage_list_is_the_preprocess_group(img):
    specs = medlab.stages("preprocess")
    if not specs:
        with pytest.raises(MedlabError, match="no preprocessing stages"):
            PreprocessWidget(img)
        return
    w = PreprocessWidget(img, debounce=0.0)
    assert [v for _, v in w.picker.options] == [s.name for s in specs]
    assert [t for t, _ in w.picker.options] == [s.title for s in specs]
    w.close()


def test_css_classes_for_browser_tests(widget):
    def walk(x):
        yield x
        for ch in getattr(x, "children", ()):
            yield from walk(ch)

    classes = {c for x in walk(widget) for c in getattr(x, "_dom_classes", ())}
    for c in ("medlab-preprocess", "medlab-stage-picker", "medlab-before", "medlab-after", "medlab-history",
              "medlab-undo", "medlab-export", "medlab-export-path", "medlab-export-overwrite",
              "medlab-recipe-code", "medlab-panel", "medlab-apply", "medlab-progress", "medlab-status"):
        assert c in classes, c
    assert sum("medlab-status" in getattr(x, "_dom_classes", ()) for x in walk(widget)) == 1


def test_real_preprocess_stages_round_trip_through_json(tmp_path):
    img = medlab.data.brain_mri(size=(40, 40, 12), noise=0.05, seed=1).t1
    w = PreprocessWidget(img, debounce=0.0)
    w.select("gaussian_smooth")
    w.set(sigma=0.8)
    w.apply(wait=True)
    w.select("clahe")
    w.set(clip_limit=0.02)
    w.apply(wait=True)
    path = w.export(tmp_path / "r.json")
    again = Recipe.from_json(path.read_text()).run(img)
    assert np.array_equal(again.array, w.image.array)
    assert again.same_grid(img) and w.image.same_grid(img)
    assert "from medlab.preprocess import gaussian_smooth, clahe" in w.code.value
    # a stage whose preview needs the whole volume previews a downsampled volume, shown in 3D
    w.select("n4_bias_correction")
    w.set(iterations=5, levels=2)
    prev = w.panel.wait_preview(60)
    assert prev is not None and prev.ndim == 3 and max(prev.size) <= w.panel.volume_preview_size
    assert w.after.image is prev and "downsampled volume" in w.panel.preview_time.value
    assert "N4 bias field" in w.panel.preview_outputs["field"].metadata["description"]
    w.close()
