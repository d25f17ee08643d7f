"""The explain widget (headless): pickers built for the model, heat maps over the scan with a
legend, two maps side by side in linked viewers, opacity and threshold without resending voxels,
the sanity check (a model-blind map is flagged), faithfulness and localisation numbers, export
(NIfTI on the scan's grid, CSV), a review study made from the shown maps, undo, recipe replay and
bad input. Tiny hand-set models only: the file runs in well under a minute."""

from __future__ import annotations

import csv
from collections import OrderedDict

import numpy as np
import pytest
import torch
from medlab.widgets import ExplainWidget
from medlab.widgets.explain import legend_html, model_info, numbers_rows, threshold_value
from torch import nn

import medlab
from medlab import render
from medlab.errors import ImageError, MedlabError, ParameterError, WriteError
from medlab.explain.network import build_classifier, classifier_config
from medlab.outputs import Checkpoint, Table

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # the cores are shared; results do not depend on it
    yield
    torch.set_num_threads(before)


def _oblique_blob():
    """An oblique, anisotropic scan with one bright blob (as in test_explain.py), its blob mask."""
    angle = np.deg2rad(25)
    r = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    img = medlab.Image(np.zeros((10, 14, 18), np.float32), spacing=(1.2, 1.6, 2.5), origin=(10, -20, 5),
                       direction=r @ rx)
    centre = img.index_to_physical((9, 6, 4))
    pos = img.index_to_physical(np.stack(np.meshgrid(*[np.arange(n) for n in img.size], indexing="ij"), -1)
                                .reshape(-1, 3)).reshape(*img.size, 3).transpose(2, 1, 0, 3)
    blob = np.exp(-np.sum((pos - centre) ** 2, -1) / (2 * 3.0 ** 2)).astype(np.float32)
    scan = img.with_array(blob + 0.05 * np.random.default_rng(0).random(blob.shape).astype(np.float32))
    mask = scan.with_array((blob > 0.5).astype(np.uint8), kind="label", labels={1: "blob"})
    return scan, mask


def _blob_classifier() -> Checkpoint:
    """Class 1 = 'something bright' (a hand-set CNN on a 1.5 mm grid, not the scan's)."""
    cfg = classifier_config("cnn_classifier", channels=[1], convs_per_block=1, norm=None)
    net = build_classifier(cfg)
    with torch.no_grad():
        conv = net.features.block1[0].conv
        conv.weight.fill_(1 / 27)
        conv.bias.fill_(-0.3)
        net.head.fc.weight.copy_(torch.tensor([[-3000.0], [3000.0]]))
        net.head.fc.bias.copy_(torch.tensor([3.0, -3.0]))
    record = {"intensity": None, "direction": np.eye(3).tolist(), "spacing": [1.5, 1.5, 1.5], "size_multiple": 1}
    return Checkpoint(net.state_dict(), cfg, labels={0: "nothing", 1: "blob"}, preprocessing=record)


def _linear_model():
    """No non-linearity: the input gradient is the same everywhere, so an Integrated-Gradients map
    is |image| times a constant whatever the weights (a map that cannot pass a sanity check)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2)).eval()


@pytest.fixture(scope="module")
def scan_and_mask():
    return _oblique_blob()


@pytest.fixture(scope="module")
def model():
    return _blob_classifier()


@pytest.fixture
def widget(scan_and_mask, model):
    scan, mask = scan_and_mask
    w = ExplainWidget(scan, model, mask, debounce=0.0)
    yield w
    w.close()


def _two_maps(w):
    w.apply(wait=True)                          # Grad-CAM
    w.select("occlusion")
    w.set(mask_size=6.0, refine=0.0)
    w.apply(wait=True)
    return "step2.saliency", "step1.saliency"


# ---------------------------------------------------------------------------- pickers
def test_pickers_are_built_for_the_model(widget, model):
    w = widget
    methods = [v for _, v in w.picker.options]
    assert methods[:3] == ["grad_cam", "grad_cam_pp", "guided_grad_cam"] and "attention_rollout" not in methods
    assert w.picker.description == "method" and w.panel.spec.name == "grad_cam"
    layer = w.panel.controls["layer"].widget
    assert [v for _, v in layer.options] == ["auto", *medlab.explain.candidate_layers(model)]
    assert "features.block1" in layer.options[0][0]          # says what 'auto' resolves to
    target = w.panel._target_box
    assert [v for _, v in target.options] == [-1, 0, 1]
    assert target.options[0][0].startswith("predicted class: blob (p = ") and target.options[2][0] == "1: blob"
    target.value = 0                                          # the dropdown drives the declared parameter
    assert w.panel.params["target_class"] == 0
    w.set(target_class=1)
    assert target.value == 1
    # a classifier has no region: its rows are hidden and the viewer has no 'region' point set
    box, i = w.panel._row("region")
    assert box.children[i].layout.display == "none"
    assert [s["name"] for s in w.before.point_sets] == ["points"]
    assert "predicts <b>blob" in w.hint.value


def test_methods_follow_the_model():
    from monai.networks.nets import ViT

    img = medlab.Image(np.random.default_rng(6).random((16, 16, 8)).astype(np.float32))
    torch.manual_seed(5)
    vit = ViT(1, (16, 16, 8), (4, 4, 4), hidden_size=16, mlp_dim=32, num_layers=2, num_heads=2,
              classification=True, num_classes=2, post_activation=None).eval()
    w = ExplainWidget(img, vit, stage="attention_rollout", debounce=0.0)
    assert "attention_rollout" in [v for _, v in w.picker.options] and w.panel.spec.name == "attention_rollout"
    w.close()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 8, 2)).eval()
    w = ExplainWidget(img, mlp, debounce=0.0)
    assert [v for _, v in w.picker.options] == ["integrated_gradients", "smoothgrad", "occlusion"]
    w.close()
    # a segmentation network keeps its region controls and gets a point set for them
    seg = nn.Sequential(OrderedDict(enc=nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU()),
                                    out=nn.Conv3d(4, 2, 1))).eval()
    info = model_info(seg, img)
    assert info.dense and info.n_classes == 2 and info.auto_layer == "enc"
    w = ExplainWidget(img, seg, debounce=0.0)
    box, i = w.panel._row("region")
    assert box.children[i].layout.display == "" and "region" in [s["name"] for s in w.before.point_sets]
    assert "predicts most in the region" in w.panel._target_box.options[0][0]
    w.close()


# ---------------------------------------------------------------------------- heat maps
def test_apply_shows_the_map_over_the_scan_with_a_legend(widget, scan_and_mask):
    scan, _ = scan_and_mask
    w = widget
    window_level = w.before.window, w.before.level
    w.apply(wait=True)
    # the map's own 0-1 window never reaches the scan's pane (it blew the scan out to white)
    assert (w.before.window, w.before.level) == window_level
    key = "step1.saliency"
    saliency = w.maps[key]
    assert w.left_picker.value == key and w.right_picker.value == "" and w.after.layout.display == "none"
    assert saliency.same_grid(scan)        # on the oblique anisotropic scan's own grid
    assert w.before.image is scan
    np.testing.assert_array_equal(w.before._layers["heat"], render.display_array(saliency)[0])
    assert w.before._labels_info["outline"] and w.before._labels_info["legend"][0]["name"] == "blob"
    info = w.before._heat_info
    assert info["opacity"] == 0.5 and info["threshold"] == pytest.approx(0.2 * saliency.array.max())
    # the map is coloured where it is high, the scan alone where it is not drawn
    rgb = w.before.snapshot_planes()["axial"]
    heat = render.plane_array(w.before._layers["heat"], "axial", w.before._cursor[2])
    grey = rgb[..., 0] == rgb[..., 1]
    assert heat.max() > info["threshold"]
    assert not grey[heat > info["threshold"]].all() and grey[(heat <= info["threshold"])
                                                             & (render.plane_array(w.before._layers["labels"], "axial",
                                                                                   w.before._cursor[2]) == 0)].all()
    legend = w.legend_left.value
    assert f"data-max='{saliency.array.max():.6g}'" in legend and "data-sign='positive'" in legend
    assert "Grad-CAM" in legend and "max(map, 0)" in legend and "divided by" in legend
    assert "A: step1.saliency" in legend and "20 % of the largest" in legend
    assert "<b>A</b>" in w.before_caption.value and "Grad-CAM" in w.before_caption.value
    assert "energy in mask" in w.numbers_html.value


def test_two_methods_side_by_side_in_linked_viewers(widget, scan_and_mask):
    scan, _ = scan_and_mask
    w = widget
    new, old = _two_maps(w)
    assert (w.left_picker.value, w.right_picker.value) == (new, old)
    assert w.after.layout.display == "" and w.after.image is scan
    np.testing.assert_array_equal(w.after._layers["heat"], render.display_array(w.maps[old])[0])
    assert "Occlusion" in w.legend_left.value and "Grad-CAM" in w.legend_right.value
    w.before.position = list(scan.index_to_physical((3, 4, 2)))
    assert w.after.position == w.before.position                       # linked in mm
    w.before.window = 0.3
    assert w.after.window == 0.3
    w.show_maps(left=old, right=new)
    np.testing.assert_array_equal(w.before._layers["heat"], render.display_array(w.maps[old])[0])
    table = w.numbers_table()
    assert table.columns == ["quantity", f"A: {old}", f"B: {new}"]
    assert {"Grad-CAM", "Occlusion sensitivity"} == {table.rows[0][c] for c in table.columns[1:]}
    with pytest.raises(ParameterError, match="no map 'step9.saliency'"):
        w.show_maps(left="step9.saliency")
    w.show_maps(right="")
    assert w.after.layout.display == "none"


def test_opacity_and_threshold_restyle_without_sending_voxels_again(widget):
    w = widget
    _two_maps(w)
    sent = []
    for v in (w.before, w.after):
        v.observe(lambda ch: sent.append(ch["name"]), names=["_volumes", "_axial"])
    w.set_display(opacity=0.8, threshold=0.5)
    for v, key in ((w.before, w.left_picker.value), (w.after, w.right_picker.value)):
        assert v._heat_info["opacity"] == 0.8
        assert v._heat_info["threshold"] == pytest.approx(threshold_value(w.maps[key], 0.5))
    assert sent == []
    assert "50 % of the largest" in w.legend_left.value
    for bad in ({"opacity": 1.5}, {"threshold": -0.1}, {"opacity": "half"}):
        with pytest.raises(ParameterError):
            w.set_display(**bad)


# ---------------------------------------------------------------------------- trust
def test_sanity_check_flags_a_map_that_ignores_the_model(scan_and_mask):
    scan, mask = scan_and_mask
    w = ExplainWidget(scan, _linear_model(), mask, stage="integrated_gradients", debounce=0.0)
    w.set(steps=8)
    w.apply(wait=True)
    result = w.run_sanity_check(wait=True, steps=2)
    assert result.flagged and w.sanity["step1.saliency"] is result
    # the check recomputed the shown map with its own parameters
    np.testing.assert_allclose(result.original.array, w.left.array, atol=1e-6)
    assert "data-flagged='true'" in w.sanity_verdict.value and "FLAGGED" in w.sanity_verdict.value
    assert w.sanity_box.children[0] is w.sanity_verdict
    original, randomised = w._sanity_viewers
    np.testing.assert_array_equal(original._layers["heat"], render.display_array(result.original)[0])
    np.testing.assert_array_equal(randomised._layers["heat"], render.display_array(result.randomised[-1])[0])
    assert w.sanity_strip.value.count("<img") == 3          # the original and two cascade steps
    # each sanity viewer has its colour bar with its own map's range (the randomised map's differs)
    legends = w._sanity_legends
    assert [lg.value.count("linear-gradient") for lg in legends] == [1, 1]
    for legend, m in zip(legends, (result.original, result.randomised[-1])):
        assert f"data-max='{float(np.nanmax(m.array)):.6g}'" in legend.value
    assert "randomised (step 2)" in legends[1].value
    before = legends[0].value
    w.threshold.value = 0.6                                  # the threshold marker follows the slider
    assert legends[0].value != before and "60 % of the largest" in legends[0].value
    assert "last" not in w.sanity_box.children[-1].children[1].title
    assert w.sanity_table.value.count("<tr>") == 1 + 2 and "spearman" in w.sanity_table.value
    numbers = w.numbers_table()
    assert next(r for r in numbers.rows if r["quantity"] == "model randomisation: verdict")["A: step1.saliency"] == \
        "FLAGGED"
    quantities = [r["quantity"] for r in numbers.rows]
    assert "model randomisation: Spearman of |maps| after the last step" in quantities
    assert not any("spearman_abs" in q for q in quantities)
    w.close()


def test_sanity_check_of_grad_cam_keeps_the_layer_and_says_its_verdict(widget):
    w = widget
    w.set(layer="features.block1.0.conv")
    w.apply(wait=True)
    result = w.run_sanity_check(wait=True, steps=2, seed=3)
    np.testing.assert_allclose(result.original.array, w.left.array, atol=1e-6)
    assert ("data-flagged='true'" in w.sanity_verdict.value) == result.flagged
    assert result.verdict() in html_unescape(w.sanity_verdict.value)
    assert "done in" in w.trust_status.value and not w.sanity_button.disabled


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_faithfulness_and_localisation_numbers(widget):
    w = widget
    new, old = _two_maps(w)
    out = w.run_faithfulness(wait=True, steps=4)
    assert set(out) == {new, old} == set(w.faithfulness)
    curves, _ = out[new]
    assert set(curves.data()) == {"deletion", "insertion", "deletion (random order)"}
    assert len(curves.series("deletion")[0]) == 5
    rows = {r["quantity"]: r for r in w.numbers_table().rows}
    for q in ("deletion AUC (lower is better)", "insertion AUC (higher is better)", "energy in mask",
              "pointing game hit"):
        assert isinstance(rows[q][f"A: {new}"], (float, bool)) and isinstance(rows[q][f"B: {old}"], (float, bool))
    plots = [c for part in w.faith_box.children[1].children for c in part.children if hasattr(c, "series")]
    assert len(plots) == 2 and all(len(p.series) == 3 for p in plots)
    assert "deletion AUC" in w.faith_box.children[1].children[0].children[0].value


def test_faithfulness_baseline_is_not_mixed_with_a_methods_baseline(widget):
    w = widget
    w.apply(wait=True)                          # Grad-CAM: no baseline of its own
    w.select("integrated_gradients")
    w.set(steps=4)
    w.apply(wait=True)                          # Integrated Gradients: its own baseline ("zero")
    w.run_faithfulness(wait=True, steps=4)
    rows = {r["quantity"]: r for r in w.numbers_table().rows}
    a, b = "A: step2.saliency", "B: step1.saliency"
    assert rows["baseline"][a] == "zero" and rows["baseline"][b] == ""
    assert str(rows["faithfulness: baseline"][a]).startswith("blur") and rows["faithfulness: baseline"][a] == \
        rows["faithfulness: baseline"][b]
    plots = [c for part in w.faith_box.children[1].children for c in part.children if hasattr(c, "series")]
    assert [p.title.split(":")[0] for p in plots] == ["A", "B"] and not any("last" in p.title for p in plots)


def test_without_a_mask_there_are_no_localisation_numbers(scan_and_mask, model):
    w = ExplainWidget(scan_and_mask[0], model, debounce=0.0)
    w.apply(wait=True)
    quantities = [r["quantity"] for r in w.numbers_table().rows]
    assert "energy in mask" not in quantities and "target probability" in quantities
    assert w.before._labels_info == {}
    w.close()


def test_faithfulness_before_any_map_says_what_to_do(widget):
    with pytest.raises(MedlabError, match="no map yet"):
        widget.run_faithfulness(wait=True)
    widget.faith_button.click()
    assert "no map yet" in widget.trust_status.value and "medlab-status-error" in widget.trust_status._dom_classes


# ---------------------------------------------------------------------------- hand-off
def test_export_writes_maps_on_the_scan_grid_and_one_csv(widget, scan_and_mask, tmp_path):
    scan, _ = scan_and_mask
    w = widget
    new, old = _two_maps(w)
    written = w.export(tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == ["numbers.csv", "step1.saliency_grad_cam.nii.gz", "step2.saliency_occlusion.nii.gz"]
    for p in written[:-1]:
        back = medlab.load(p)
        assert back.same_grid(scan)                       # spacing, origin and direction kept
        key = "step1.saliency" if "step1" in p.name else "step2.saliency"
        np.testing.assert_allclose(back.array, w.maps[key].array, atol=1e-6)
    with open(tmp_path / "out" / "numbers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["map"] for r in rows} == {new, old}
    assert any(r["quantity"] == "energy in mask" and float(r["value"]) > 0 for r in rows)
    before = {p: p.stat().st_mtime_ns for p in written}
    with pytest.raises(WriteError, match="nothing was written"):
        w.export(tmp_path / "out")
    assert {p: p.stat().st_mtime_ns for p in written} == before
    assert len(w.export(tmp_path / "out", overwrite=True)) == 3
    w.export_folder.value = ""
    w.export_button.click()                              # a button's error lands in its status line
    assert "type a folder name" in w.handoff_status.value


def test_review_study_from_the_shown_maps(widget, scan_and_mask, tmp_path):
    from medlab.review import ReviewStudy

    scan, _ = scan_and_mask
    w = widget
    _two_maps(w)
    study = w.add_to_review(tmp_path / "study", truth="blob")
    assert study.path == (tmp_path / "study" / "study.json").resolve()
    assert "medlab review" in w.handoff_status.value and "--reviewer" in w.handoff_status.value
    again = ReviewStudy.load(tmp_path / "study" / "study.json")
    case = again.cases[0]
    assert case.case_id == "case-001" and set(case.maps) == {"grad_cam", "occlusion"}
    assert case.prediction.startswith("blob (p = ") and case.truth == "blob" and again.blind_methods
    loaded = again.load_case("case-001")
    assert not loaded.errors and loaded.scan.same_grid(scan)
    np.testing.assert_allclose(loaded.maps["grad_cam"].array, w.maps["step1.saliency"].array, atol=1e-6)
    w.show_maps(right="")
    w.add_to_review(tmp_path / "study")                    # appended as the next case, A only
    again = ReviewStudy.load(tmp_path / "study" / "study.json")
    assert [c.case_id for c in again.cases] == ["case-001", "case-002"] and list(again.cases[1].maps) == ["occlusion"]
    assert again.study_id == study.study_id and not again.check()
    with pytest.raises(ParameterError, match="already has a case 'case-001'"):
        w.add_to_review(tmp_path / "study", case_id="case-001")


# ---------------------------------------------------------------------------- history
def test_undo_and_recipe_replay(widget, scan_and_mask, model):
    scan, mask = scan_and_mask
    w = widget
    new, old = _two_maps(w)
    replayed = w.recipe.run(image=scan, model=model, mask=mask)
    for key in (new, old):
        np.testing.assert_array_equal(replayed[key].array, w.maps[key].array)
    w.undo()
    assert list(w.maps) == [old] and w.left_picker.value == old and w.right_picker.value == ""
    np.testing.assert_array_equal(w.before._layers["heat"], render.display_array(w.maps[old])[0])
    w.undo()
    assert w.maps == {} and "heat" not in w.before._layers and w.legend_left.value == ""


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_before_anything_is_built(scan_and_mask, model):
    scan, mask = scan_and_mask
    with pytest.raises(ImageError, match="intensity scan"):
        ExplainWidget(mask, model)
    with pytest.raises(ImageError, match="mask must be a label map"):
        ExplainWidget(scan, model, scan)
    far = mask.with_array(mask.array)
    far = medlab.Image(mask.array, mask.spacing, (900.0, 900.0, 900.0), mask.direction, kind="label")
    with pytest.raises(ImageError, match="does not overlap"):
        ExplainWidget(scan, model, far)
    with pytest.raises(ParameterError, match="Checkpoint or a torch.nn.Module"):
        ExplainWidget(scan, "resnet50")
    with pytest.raises(ParameterError, match="opacity"):
        ExplainWidget(scan, model, opacity=2)
    with pytest.raises(ParameterError, match="colour map"):
        ExplainWidget(scan, model, cmap="no-such-map")


def test_a_model_that_cannot_take_the_scan_is_said_in_the_widget(scan_and_mask):
    two_d = build_classifier(classifier_config(spatial_dims=2, channels=[2])).eval()
    w = ExplainWidget(scan_and_mask[0], two_d, debounce=0.0)
    assert w.info.error and "2D" in w.hint.value
    w.panel.apply()
    w.panel._apply_thread.join()
    assert "2D network" in w.panel.message and w.maps == {}
    w.close()


def test_helpers():
    m = medlab.Image(np.array([[-0.5, 0.0], [0.25, 1.0]], np.float32),
                     metadata={"saliency": {"method": "Occlusion sensitivity", "sign": "signed",
                                            "sign_rule": "as computed", "normalisation": "none",
                                            "rule": "the method's own units"}})
    text = legend_html(m, threshold=0.5)
    assert "data-min='-0.5'" in text and "data-threshold='0.5'" in text and "not drawn" in text
    flat = m.with_array(np.zeros((2, 2), np.float32))
    assert "nothing is drawn" in legend_html(flat) and threshold_value(flat, 0.5) == 0.0
    rows = numbers_rows({"A": Table([{"quantity": "note", "value": "x"}, {"quantity": "note", "value": "y"}]),
                         "B": None})
    assert rows == [{"quantity": "note", "A": "x", "B": ""}, {"quantity": "note (2)", "A": "y", "B": ""}]
