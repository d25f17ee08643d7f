"""The segment widget (headless) and the editing stages it drives.

Widget: seeds armed and routed by role, a live overlay preview that follows the tolerance, the
histogram's threshold markers, edits kept as recipe steps that replay bit for bit, scores
against a ground truth after Apply and Undo, export (NIfTI, mesh, DICOM SEG), the 3D view, and
the training panel (slow: a tiny U-Net, cancelled after one epoch, then used on the image).

Editing stages (medlab.segment.edit): geometry kept on an anisotropic oblique grid, the brush is
a ball in mm, refusals name the point, recipe round trip.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from medlab.widgets import SegmentWidget
from medlab.widgets.segment import HistogramPlot, score_rows

import medlab
from medlab import Image, segment
from medlab.errors import ImageError, MedlabError, ParameterError, WriteError
from medlab.recipe import Recipe

sys.path.insert(0, str(Path(__file__).parent))
import dicom_factory as df

SIZE = (48, 48, 24)


@pytest.fixture(scope="module")
def brain():
    return medlab.data.brain_mri(size=SIZE, seed=0)


@pytest.fixture(scope="module")
def tumour(brain):
    """Whole tumour (oedema, enhancing rim, necrotic core) as one label."""
    return brain.labels.with_array(brain.mask("oedema", "enhancing tumour", "necrotic core"), kind="label",
                                   labels={1: "tumour"})


@pytest.fixture(scope="module")
def seed_mm(brain):
    """A seed deep inside the oedema (bright on FLAIR), in mm."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(brain.labels.array == 7, sampling=brain.flair.spacing[::-1])
    return brain.flair.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1]).tolist()


def _widget(brain, **kwargs):
    return SegmentWidget(brain.flair, debounce=0.0, **kwargs)


def _preview_voxels(w) -> int:
    w.panel.wait_preview()
    return int(np.count_nonzero(w.panel.preview.array)) if w.panel.preview is not None else -1


def _click(viewer, name, point):
    """What a click in the browser does: the active point set gets the point (mm)."""
    viewer.set_point_set(name, [*viewer.point_set(name), list(point)])


def _grown(w, brain, seed_mm, tolerance=0.2):
    w.before.position = seed_mm
    _click(w.before, "seeds", seed_mm)
    w.set(tolerance=tolerance)
    return w.apply(wait=True)


# ---------------------------------------------------------------------------- seeds and preview
def test_seeds_are_armed_and_each_role_reaches_its_parameter(brain, seed_mm):
    w = _widget(brain)
    assert w.panel.spec.name == "connected_threshold"
    # nothing to preview yet is said as a next step, not as an error
    assert w.panel.message == "" and "at least 1 seed" in w.panel.preview_note.value
    assert (w.before.point_mode, w.before.active_set) == ("edit", "seeds")   # the first click is a seed
    colours = {d["name"]: tuple(d["color"]) for d in w.before.point_sets}
    assert colours["seeds"] != colours["background"]
    w.before.position = seed_mm
    _click(w.before, "seeds", seed_mm)
    corner = w.before.display_affine @ [2, 2, w.before._cursor[2], 1]
    w.before.active_set = "background"
    _click(w.before, "background", corner[:3])
    params = w.panel.params
    assert params["seeds"] == (tuple(seed_mm),)
    assert params["background"] == (tuple(corner[:3]),)
    w.close()


def test_preview_overlays_the_region_and_follows_the_tolerance(brain, seed_mm):
    w = _widget(brain)
    # the tolerance starts on the image's scale (a tenth of its 1-99 % range), not at 100
    p1, p99 = np.percentile(brain.flair.array, [1, 99])
    assert w.panel.controls["tolerance"].value == pytest.approx(0.1 * (p99 - p1), rel=0.05)
    w.before.position = seed_mm
    _click(w.before, "seeds", seed_mm)
    w.set(tolerance=0.05)
    small = _preview_voxels(w)
    # the preview pane shows the scan's slice with the region over it
    assert w.after.image.same_grid(w.panel.preview) and not w.after.image.is_label
    legend = w.after._labels_info["legend"]
    assert [d["value"] for d in legend] == [1]
    composed = w.after.snapshot_planes()["axial"]
    inside = w.panel.preview.array.astype(bool)
    grey = composed[..., 0] == composed[..., 1]
    assert not grey[inside].any() and grey[~inside].mean() > 0.99   # coloured exactly where the region is
    # the histogram marks the interval the preview used
    lo, hi = w.panel.preview_outputs["labels"].metadata["thresholds"]
    assert [m["x"] for m in w.histogram.markers] == pytest.approx([lo, hi])
    assert "preview" in w.histogram.title
    w.set(tolerance=0.25)
    assert _preview_voxels(w) > small > 0
    # removing the seed removes the stale region, and says what to click
    w.before.set_point_set("seeds", [])
    assert w.panel.preview is None and w.after._labels_info == {}
    assert "at least 1 seed" in w.panel.preview_note.value and w.panel.message == ""
    w.close()


def test_switching_seeded_methods_keeps_the_seeds_clicked(brain, seed_mm):
    """A seed clicked for region growing, then another seeded method chosen (first visit): the
    switch works, the new method's seeds are armed on the viewer and it previews."""
    w = _widget(brain)
    w.before.position = seed_mm
    _click(w.before, "seeds", seed_mm)
    assert _preview_voxels(w) > 0 and w.after._labels_info != {}
    for name in ("confidence_connected", "neighbourhood_connected"):
        w.select(name)
        assert w.panel.spec.name == name and w.panel.error is None, w.panel.message
        assert "seeds" in [d["name"] for d in w.before.point_sets]
        assert (w.before.point_mode, w.before.active_set) == ("edit", "seeds")
        assert w.after._labels_info == {}          # no region of the previous method under this one's name
        _click(w.before, "seeds", seed_mm)
        assert w.panel.params["seeds"] == (tuple(seed_mm),)
        if name == "confidence_connected":       # (the neighbourhood needs a larger tolerance here)
            assert _preview_voxels(w) > 0, (w.panel.preview_note.value, w.panel.message)
    w.select("connected_threshold")                   # back: its seed is still there
    assert w.panel.params["seeds"] == (tuple(seed_mm),) and w.before.point_set("seeds") == [list(seed_mm)]
    w.close()


def _caption_of_preview(w) -> str:
    w.panel.wait_preview()
    assert w.panel.preview is not None, w.panel.message
    return w.after._geometry["caption"]


@pytest.mark.parametrize("stage", ["otsu_threshold", "connected_threshold", "fill_holes"])
def test_preview_caption_names_a_slice_only_when_there_are_several(brain, seed_mm, stage):
    """A picture with one slice (a radiograph, one DICOM slice: a volume one slice thick) gets no
    "axial 1" over its preview; a volume keeps the plane and the slice number."""
    index = int(np.rint(brain.flair.physical_to_index(seed_mm))[2])
    corner = tuple(brain.flair.index_to_physical((0, 0, index)))     # the slice through the seed
    one = Image(brain.flair.array[index:index + 1], brain.flair.spacing, corner, brain.flair.direction,
                metadata=dict(brain.flair.metadata))
    for image, caption in ((one, ""), (brain.flair, f"axial {index + 1}")):
        w = SegmentWidget(image, debounce=0.0, stage="connected_threshold")
        w.before.position = seed_mm
        _click(w.before, "seeds", seed_mm)
        if stage == "fill_holes":          # a label stage: previews over the scan's slice
            w.set(tolerance=0.2)
            w.apply(wait=True)
        w.select(stage)
        assert w.before.slice_index == (0 if image is one else index)
        assert _caption_of_preview(w) == caption, (image.shape, stage)
        assert w.panel.preview.metadata.get("plane") == "axial"         # the edge letters stay
        w.close()


def test_preview_caption_of_a_one_slice_dicom(shared):
    ct = medlab.load(shared("tiny/CT_small.dcm"))
    assert ct.shape[0] == 1
    w = SegmentWidget(ct, debounce=0.0, stage="otsu_threshold")
    assert _caption_of_preview(w) == "" and w.panel.preview.same_grid(w.after.image)
    w.close()


def test_manual_threshold_slider_is_on_the_image_scale(brain):
    w = _widget(brain, stage="threshold")
    lower = w.panel.controls["lower"]
    lo, hi = float(brain.flair.array.min()), float(brain.flair.array.max())
    assert lower.widget.min <= lo and lower.widget.max >= hi and lower.widget.max - lower.widget.min < 2 * (hi - lo)
    assert lo < lower.value < hi
    w.panel.wait_preview()
    assert w.histogram_box.layout.display == "" and len(w.histogram.markers) == 1
    assert w.histogram.markers[0]["x"] == pytest.approx(lower.value)
    w.select("fill_holes")                       # a label stage: no histogram
    assert w.histogram_box.layout.display == "none"
    w.close()


def test_histogram_plot_marks_levels():
    h = HistogramPlot()
    h.show_image(Image(np.linspace(-1000.0, 1000.0, 4000).reshape(40, 100), metadata={"units": "HU"}))
    assert len(h.series["voxels"]["x"]) == 128 and h.x_label == "intensity (HU)"
    h.set_thresholds([-400.0, float("nan")], "Apply")
    assert [m["x"] for m in h.markers] == [-400.0] and "-400" in h.title


# ---------------------------------------------------------------------------- editing and recipes
def test_edits_are_recipe_steps_that_replay_bit_identically(brain, seed_mm, tmp_path):
    w = _widget(brain)
    grown = _grown(w, brain, seed_mm)
    # the editing tools work on the newest label map, drawn over the scan (not as a grey picture)
    panel = w.edit("paint")
    assert panel.spec.name == "paint_labels" and panel.image is grown
    assert w.before.image is brain.flair and w.before._labels_info["legend"][0]["value"] == 1
    assert (w.before.point_mode, w.before.active_set) == ("edit", "strokes")
    far = brain.flair.index_to_physical([5, 5, SIZE[2] // 2]).tolist()
    w.before.position = far
    _click(w.before, "strokes", far)
    w.set(radius=4.0)
    preview = w.panel.wait_preview()
    assert preview is not None and preview.array.sum() > 0            # the stroke shows before Apply
    assert not w.after.image.is_label                                  # over the scan's slice
    painted = w.apply(wait=True)
    assert painted.array.sum() > grown.array.sum()
    assert w.panel.params["strokes"] == ()                             # strokes are in the result now
    w.edit("remove")
    assert (w.before.active_set, w.before.point_sets[-1]["color"]) == ("pieces", [230, 50, 50])   # red crosses
    _click(w.before, "pieces", far)
    cleaned = w.apply(wait=True)
    assert np.array_equal(cleaned.array, grown.array)                  # the painted blob was a piece of its own
    assert [s.stage for s in w.recipe.steps] == ["connected_threshold", "paint_labels", "remove_components"]
    path = w.export(tmp_path / "edits.json")
    replayed = Recipe.load(path).run(image=brain.flair)
    assert np.array_equal(replayed["step2.labels"].array, painted.array)
    assert np.array_equal(replayed["step3.labels"].array, cleaned.array)
    # undo takes the last edit back; the next edit works on what is left
    w.undo()
    assert w.labels is painted and [s.stage for s in w.recipe.steps][-1] == "paint_labels"
    w.close()


def test_scores_follow_apply_and_undo(brain, tumour, seed_mm):
    w = _widget(brain, truth=tumour)
    assert w.scores == [] and "after the first Apply" in w.scores_html.value
    grown = _grown(w, brain, seed_mm)
    expected = medlab.metrics.segmentation_scores(grown, tumour, labels=[1])[0]
    (row,) = w.scores
    assert row["dice"] == pytest.approx(expected["dice"]) and row["hausdorff95_mm"] == pytest.approx(
        expected["hausdorff95_mm"])
    assert f"{row['dice']:.3g}" in w.scores_html.value and "HD95 (mm)" in w.scores_html.value
    assert "drawn over the input" in w.after_caption.value   # the label map is on the left, not in the right pane
    w.select("fill_holes")
    w.set(mode="slices")
    filled = w.apply(wait=True)
    assert w.scores[0]["dice"] == pytest.approx(medlab.metrics.dice(filled, tumour))
    w.undo()
    assert w.scores[0]["dice"] == pytest.approx(row["dice"])
    w.close()


def test_score_rows_per_label_and_whole(brain):
    truth = brain.labels
    values = [7, 8, 9]
    same = truth.with_array(np.where(np.isin(truth.array, values), truth.array, 0))
    rows = score_rows(same, truth, values)
    assert [r["name"] for r in rows] == ["oedema", "enhancing tumour", "necrotic core",
                                         "whole (oedema + enhancing tumour + necrotic core)"]
    assert all(r["dice"] == 1.0 and r["hausdorff95_mm"] == 0.0 for r in rows)
    # a one-label result is scored as foreground against the three together
    (row,) = score_rows(same.with_array((same.array > 0).astype(np.uint8)), truth, values)
    assert row["dice"] == 1.0


def test_bad_truth_is_refused(brain):
    with pytest.raises(ParameterError, match="do not occur"):
        SegmentWidget(brain.flair, truth=brain.labels, truth_labels=[42])
    with pytest.raises(ImageError, match="empty"):
        SegmentWidget(brain.flair, truth=brain.labels.with_array(np.zeros(brain.labels.shape, np.uint8)))
    with pytest.raises(ImageError, match="intensity image"):
        SegmentWidget(brain.labels)


# ---------------------------------------------------------------------------- export and 3D
def test_export_label_map_and_mesh(brain, seed_mm, tmp_path):
    w = _widget(brain)
    with pytest.raises(MedlabError, match="no label map yet"):
        w.save_labels(tmp_path / "x.nii.gz")
    assert w.save_seg_button.disabled and w.dicom_source is None   # a phantom has no DICOM series
    with pytest.raises(MedlabError, match="not loaded from DICOM"):
        w.save_dicom_seg(tmp_path / "x.dcm")
    grown = _grown(w, brain, seed_mm)
    w.save_path.value = str(tmp_path / "tumour.nii.gz")
    w._save_clicked("labels")                                    # what the button does
    back = medlab.load(tmp_path / "tumour.nii.gz")
    assert np.array_equal(back.array, grown.array) and back.same_grid(brain.flair)
    with pytest.raises(WriteError):
        w.save_labels(tmp_path / "tumour.nii.gz")                # no silent overwrite
    (stl,) = w.save_mesh(tmp_path / "tumour.stl")
    assert stl.stat().st_size > 1000
    with pytest.raises(ParameterError, match="must end in"):
        w.save_mesh(tmp_path / "tumour.vtk")
    w.close()


def test_dicom_seg_export_refers_to_the_source_series(tmp_path):
    volume = df.phantom_volume((6, 24, 32), low=0, high=1000, dtype=np.uint16)
    volume[2:5, 8:16, 10:20] = 3000                               # a bright block to segment
    folder = tmp_path / "series"
    df.write_series(folder, volume, spacing=(0.8, 0.8, 2.5), origin=(5.0, -3.0, 20.0), modality="CT")
    ct = medlab.load(folder)
    w = SegmentWidget(ct, stage="threshold", debounce=0.0)
    assert w.dicom_source is not None and not w.save_seg_button.disabled
    w.set(mode="above", lower=2000.0)
    labels = w.apply(wait=True)
    path = w.save_dicom_seg(tmp_path / "seg.dcm")
    back = medlab.load(path)
    on_ct = medlab.preprocess.resample_to(back, reference=ct, interpolator="nearest")
    assert np.array_equal(on_ct.array > 0, labels.array > 0) and labels.array.sum() == 3 * 8 * 10
    w.close()


def test_3d_view_shows_the_newest_label_map_linked_to_the_viewer(brain, seed_mm):
    w = _widget(brain)
    view = w.open_3d(height=200)
    assert view.meshes == [] and "scan alone" in w.panel.message   # before any label map
    _grown(w, brain, seed_mm)
    view = w.open_3d(height=200)
    assert [m.label for m in view.meshes] == [1] and w.view3d_box.children[1] is view
    assert "step1.labels" in w.view3d_box.children[0].value
    w.before.position = seed_mm
    assert view.position == pytest.approx(list(w.before.position))
    w.close_3d()
    assert w.view3d_box.children == ()
    w.close()


# ---------------------------------------------------------------------------- training
def test_training_panel_describes_its_data():
    small = medlab.data.brain_mri(size=(32, 32, 16), seed=0)
    pairs = [(small.t1, small.labels)]
    w = SegmentWidget(small.t2, training_pairs=pairs, debounce=0.0)
    t = w.training
    assert t.contrast.value == "t2" and t.size.value == (32, 32, 16)       # the image's contrast and size
    assert (t.target.value, t.learning_rate.value) == ("whole", pytest.approx(1e-2))
    t.count.value = 3
    _, labels, classes, settings = t.cases()
    assert classes == {1: "tumour"} and {int(v) for lab in labels for v in np.unique(lab.array)} == {0, 1}
    assert settings["patch_size"] == [32, 32, 16]                          # no larger than the phantom
    t.target.value = "classes"
    assert t.learning_rate.value == pytest.approx(3e-3)
    assert t.cases()[2] == {8: "enhancing tumour", 9: "necrotic core", 7: "oedema"}
    t.data.value = "pairs"
    images, labels, classes, settings = t.cases()
    assert images[0] is small.t1 and labels[0] is small.labels and classes is None and settings == {}
    with pytest.raises(ParameterError, match="Checkpoint"):
        t.add_model("not a model")
    assert t.segment_button.disabled
    w.close()


@pytest.mark.slow
def test_training_panel_cancel_keeps_the_best_weights_then_segments_the_image():
    small = medlab.data.brain_mri(size=(32, 32, 16), seed=0)
    w = SegmentWidget(small.flair, debounce=0.0)
    t = w.training
    assert t.contrast.value == "flair" and t.size.value == (32, 32, 16)   # the image's contrast and size
    t.count.value, t.epochs.value = 3, 50
    t.train()
    end = time.monotonic() + 240
    while "model" not in t.live.values and t.running:
        assert time.monotonic() < end, "no epoch ended"
        time.sleep(0.05)
    t.cancel()
    t._thread.join()
    assert t.error is None and t.result.cancelled and t.model is t.result.model
    assert t.model.metrics["epoch"] >= 1 and "kept as &#x27;model&#x27;" in t.status.value
    assert w.session["model"] is t.model and not t.segment_button.disabled
    assert {"history", "dice"} <= set(t.live.values)                    # the live curves were shown
    out = t.segment_image(wait=True)
    assert out.labels.same_grid(small.flair) and w.labels is out.labels
    assert w.recipe.steps[-1].stage == "deep_segment" and w.recipe.steps[-1].inputs["model"] == "model"
    w.close()


# ---------------------------------------------------------------------------- the editing stages
def _oblique_labels() -> Image:
    c, s = np.cos(0.4), np.sin(0.4)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0.0]])
    arr = np.zeros((12, 20, 24), np.uint8)
    arr[3:9, 4:12, 4:12] = 2
    arr[5:7, 15:18, 18:21] = 2                                            # a small separate piece
    return Image(arr, spacing=(0.7, 0.9, 2.5), origin=(10.0, -5.0, 3.0), direction=direction, kind="label",
                 labels={2: "organ"}, metadata={"method": "otsu", "thresholds": (0.5,)})


def test_paint_is_a_ball_in_mm_and_keeps_geometry():
    lab = _oblique_labels()
    centre = lab.index_to_physical([16.0, 10.0, 6.0])
    out = segment.paint_labels(lab, strokes=[centre], radius=3.0, value=5)
    assert out.same_grid(lab) and out.labels[5].name == "label 5" and out.labels[2].name == "organ"
    assert out.metadata["edited"] and "thresholds" not in out.metadata and out.metadata["method"] == "otsu"
    painted = np.argwhere(out.array == 5)[:, ::-1]
    dist = np.linalg.norm(lab.index_to_physical(painted) - centre, axis=1)
    assert dist.max() <= 3.0 + 1e-9
    zyx = np.argwhere(np.ones(lab.shape, bool))[:, ::-1]
    inside = np.linalg.norm(lab.index_to_physical(zyx) - centre, axis=1) <= 3.0
    assert inside.sum() == len(painted)                                  # every voxel centre within 3 mm
    assert out.array.dtype == np.uint8 and lab.array.max() == 2          # input untouched
    erased = segment.paint_labels(out, strokes=[centre], radius=3.0, erase=True)
    assert not (erased.array == 5).any()
    between = lab.index_to_physical([16.4, 10.4, 6.4])                    # no voxel centre within 0.5 mm
    wide = segment.paint_labels(lab, strokes=[between], radius=0.5, value=300)
    assert wide.array.dtype == np.uint16 and int((wide.array == 300).sum()) == 1   # the clicked voxel, always


def test_remove_components_and_refusals():
    lab = _oblique_labels()
    piece = lab.index_to_physical([19.0, 16.0, 6.0])
    out = segment.remove_components(lab, pieces=[piece])
    assert out.same_grid(lab) and int((out.array == 2).sum()) == 6 * 8 * 8
    with pytest.raises(ParameterError, match="point 1 .* lies on background"):
        segment.remove_components(lab, pieces=[lab.index_to_physical([0.0, 0.0, 0.0])])
    with pytest.raises(ParameterError, match="outside"):
        segment.paint_labels(lab, strokes=[(500.0, 500.0, 500.0)])
    with pytest.raises(ParameterError, match="radius"):
        segment.paint_labels(lab, strokes=[piece], radius=0.0)
    with pytest.raises(ImageError, match="label"):
        segment.remove_components(lab.with_array(lab.array.astype(np.float32), kind="intensity"), pieces=[piece])


def test_edit_stages_replay_from_json():
    lab = _oblique_labels()
    a, b = lab.index_to_physical([16.0, 10.0, 6.0]), lab.index_to_physical([19.0, 16.0, 6.0])
    with Recipe.record(labels=lab) as recipe:
        painted = segment.paint_labels(lab, strokes=[a, b], radius=2.0, value=2)
        out = segment.remove_components(painted, pieces=[a], connectivity="full")
    again = Recipe.from_json(recipe.to_json()).run(labels=lab)
    assert np.array_equal(again["step2.labels"].array, out.array)
    assert recipe.steps[1].inputs == {"labels": "step1.labels"}
