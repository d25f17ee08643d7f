"""The cohort widget as a user meets it (defects found in the session-7 browser walk-through):
an empty inputs box, a stale case list beside a refusal, the status table's blanks and cut
errors, and the case picker after a run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import medlab
from medlab.recipe import Recipe

distributed = pytest.importorskip("distributed")


def _recipe(image) -> Recipe:
    from medlab.preprocess import gaussian_smooth
    from medlab.segment import otsu_threshold

    with Recipe.record(image) as recipe:
        otsu_threshold(gaussian_smooth(image, sigma=1.0))
    return recipe


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    for i in range(2):
        medlab.save(medlab.data.brain_mri(size=(16, 16, 8), seed=i, contrasts=("t1",)).t1, folder / f"sub{i}.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def recipe(scans):
    return _recipe(medlab.load(scans / "sub0.nii.gz"))


def test_empty_inputs_say_what_to_type_and_a_refusal_clears_the_old_list(scans, recipe, tmp_path, monkeypatch):
    from medlab.widgets import Cohort

    monkeypatch.chdir(scans)           # "" would have listed this folder's three files
    w = Cohort(session={"r": recipe})
    assert w.preview() is None and w.cases is None
    assert "inputs" in w.message.value and w.case_preview.value == ""
    w.inputs.value = str(scans)
    assert len(w.preview()) == 3 and "3 case(s)" in w.case_preview.value
    (tmp_path / "empty").mkdir()
    w.inputs.value = str(tmp_path / "empty")
    assert w.preview() is None and "empty" in w.message.value
    assert w.case_preview.value == "", "the list of the previous inputs stayed beside the refusal"


def test_without_a_session_recipe_the_picker_says_the_file_is_used(scans, recipe, tmp_path):
    from medlab.widgets import Cohort

    w = Cohort(session={})
    assert w.recipe_picker.index == 0 and w.recipe_picker.label == "(from the file below)"   # not a blank box
    assert w.recipe_picker.value is not None
    w.inputs.value = str(scans)
    w.recipe_path.value = str(tmp_path / "typo.json")
    assert w.preview() is None and "typo.json" in w.message.value
    recipe.save(tmp_path / "r.json")
    w.recipe_path.value = str(tmp_path / "r.json")
    assert len(w.preview()) == 3
    assert Cohort(session={"r": recipe}).recipe_picker.value is recipe


def test_status_table_shows_no_nan_and_says_where_a_cut_error_is_whole():
    from medlab.widgets.cohort import ERROR_CHARS, _status_html

    long = "ReadError: " + "x" * (2 * ERROR_CHARS)
    table = pd.DataFrame([
        {"case": "a", "status": "done", "step": math.nan, "steps": math.nan, "stage": None, "fraction": math.nan,
         "seconds": 1.25, "peak_mb": 200.0, "error": math.nan},
        {"case": "b", "status": "failed", "step": math.nan, "steps": math.nan, "stage": None, "fraction": math.nan,
         "seconds": 0.5, "peak_mb": 170.0, "error": long},
    ])
    out = _status_html(table)
    assert "nan" not in out.lower()
    assert "… (in full below)" in out and long not in out
    assert "time (s)" in out and "peak memory (MB)" in out


def test_bar_style_says_whether_anything_was_done():
    from types import SimpleNamespace

    from medlab.widgets.cohort import _bar_style

    def result(ok, computed, skipped, failed):
        return SimpleNamespace(ok=ok, counts={"computed": computed, "skipped": skipped, "failed": failed})

    assert _bar_style(result(True, 3, 1, 0)) == "success"
    assert _bar_style(result(False, 3, 0, 1)) == _bar_style(result(False, 0, 2, 1)) == "warning"
    assert _bar_style(result(False, 0, 0, 4)) == "danger"


def test_after_a_run_the_case_picker_shows_a_case_open_case_opens(scans, recipe, tmp_path):
    from medlab.widgets import Cohort

    client = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    try:
        w = Cohort(recipe, scans, tmp_path / "out", client=client)
        w.start()
        assert w.wait(120) and w.result is not None and not w.result.ok
        assert w.progress.bar_style == "warning", "one failure beside done cases is not a whole red bar"
        assert list(w.case_picker.options) == ["sub0", "sub1"]
        # the first case to finish stays chosen as others finish (the order is Dask's)
        assert w.case_picker.value in ("sub0", "sub1"), "the picker was blank: Open case opened nothing"
        viewer = w.open_case(w.case_picker.value)
        assert viewer is not None
        np.testing.assert_allclose(viewer.image.spacing, medlab.load(scans / f"{w.case_picker.value}.nii.gz").spacing)
    finally:
        client.close()
