"""The review app as a clinician sees it (defects found in the session-7 browser walk-through):
the map has a colour key, an empty map is said to be empty, and the final screen counts the
reviewer's own verdicts without naming the blinded methods."""

from __future__ import annotations

import numpy as np
import pytest

import medlab
from medlab.review import VERDICT_LABELS, ReviewStudy

pytest.importorskip("ipywidgets")


@pytest.fixture
def study(tmp_path):
    scan = medlab.data.brain_mri(size=(24, 24, 12), seed=0).t1
    blob = scan.with_array(np.linspace(0, 1, scan.array.size, dtype=np.float32).reshape(scan.shape))
    empty = scan.with_array(np.zeros(scan.shape, np.float32))      # Grad-CAM with no evidence anywhere
    return ReviewStudy.create(tmp_path / "s", [{"id": "c1", "scan": scan,
                                                "maps": {"grad_cam": empty, "integrated_gradients": blob}}],
                              name="pilot", seed=1)


def _go_to(app, method):
    app.go(next(i for i, it in enumerate(app.items) if it.method == method))


def test_the_map_has_a_colour_key_and_an_empty_map_says_so(study):
    from medlab.widgets.review import ReviewApp

    app = ReviewApp(study, "Dr A")
    _go_to(app, "integrated_gradients")
    assert app.map_key in app.image_area.children
    key = app.map_key.value
    assert "linear-gradient" in key and "weaker" in key and "stronger" in key and "20 %" in key
    assert app.viewer._heat_info, "the map is drawn"
    app.show_map.value = False
    assert app.map_key.value == "" and not app.viewer._heat_info
    app.show_map.value = True
    _go_to(app, "grad_cam")
    assert "This map is empty" in app.map_key.value and "linear-gradient" not in app.map_key.value


def test_the_final_screen_counts_own_verdicts_without_naming_methods(study):
    from medlab.widgets.review import ReviewApp

    app = ReviewApp(study, "Dr A")
    for verdict in ("relevant", "artefact"):
        app.verdict.value, app.confidence.value = verdict, 3
        app._on_save()
    assert app.item is None
    summary = app.done.children[1].value
    for verdict in ("relevant", "artefact"):
        assert VERDICT_LABELS[verdict] in summary
    assert VERDICT_LABELS["partly"] not in summary
    assert "grad_cam" not in summary and "integrated" not in summary.lower()


def test_an_empty_map_stores_no_peak_for_the_click_agreement(study):
    from medlab.widgets.review import ReviewApp

    app = ReviewApp(study, "Dr A")
    for _ in app.items:
        app.viewer.points = [[0.0, 0.0, 0.0]]          # the reader marks where they would look
        app.verdict.value, app.confidence.value = "irrelevant", 2
        app._on_save()
    stored = {v.method: v for v in study.open_store().current("Dr A")}
    assert stored["grad_cam"].peak is None and stored["grad_cam"].click == (0.0, 0.0, 0.0)
    assert stored["integrated_gradients"].peak == study.load_case("c1").peaks["integrated_gradients"]
