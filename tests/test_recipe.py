"""Recipes: record, JSON round trip, bit-identical replay, runnable Python, clear refusals."""

import json
import subprocess
import sys

import numpy as np
import pytest

import medlab
from medlab import ReadError, WriteError
from medlab.recipe import Recipe
from medlab.stage import Float, stage


@stage("Test noise-free blur", group="measure", sigma=Float(0.0, 5.0, 1.0, unit="voxels"))
def _test_blur(image, *, sigma=1.0):
    from scipy import ndimage

    return image.with_array(ndimage.gaussian_filter(image.array.astype(np.float32), sigma))


@stage("Test offset", group="measure", offset=Float(-100, 100, 0.0))
def _test_offset(image, *, offset=0.0):
    return image.with_array(image.array + np.float32(offset))


@pytest.fixture
def img():
    rng = np.random.default_rng(1)
    return medlab.Image(rng.normal(size=(6, 7, 8)).astype(np.float32), spacing=(1, 1, 2))


def test_record_replay_bit_identical(img, tmp_path):
    with Recipe.record(img) as recipe:
        a = _test_blur(img, sigma=0.7)
        b = _test_offset(a, offset=3.5)
    assert recipe.steps == [("_test_blur", {"sigma": 0.7}), ("_test_offset", {"offset": 3.5})]
    path = recipe.save(tmp_path / "r.json")
    again = Recipe.load(path).run(img)
    assert np.array_equal(again.array, b.array)
    assert again.same_grid(img)


def test_save_is_atomic_and_does_not_overwrite(img, tmp_path):
    r = Recipe().add("_test_offset", {"offset": 1})
    path = r.save(tmp_path / "r.json")
    before = path.read_text()
    with pytest.raises(WriteError, match="exists"):
        Recipe().add("_test_offset", {"offset": 2}).save(path)
    assert path.read_text() == before
    Recipe().add("_test_offset", {"offset": 2}).save(path, overwrite=True)
    assert json.loads(path.read_text())["steps"][0]["params"]["offset"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


@pytest.mark.parametrize("data, match", [
    ({"schema": "other"}, "not a medlab recipe"),
    ({"schema": "medlab.recipe", "version": 99, "steps": []}, "version 99"),
    ({"schema": "medlab.recipe", "version": 1, "steps": [{"stage": "nope"}]}, "step 1: unknown stage 'nope'"),
    ({"schema": "medlab.recipe", "version": 1, "steps": [{"stage": "_test_offset", "params": {"offset": 1e6}}]},
     "step 1: _test_offset: parameter 'offset'"),
])
def test_refusals(data, match):
    with pytest.raises(ReadError, match=match):
        Recipe.from_dict(data)
    with pytest.raises(ReadError, match="not valid JSON"):
        Recipe.from_json("{oops")


def test_undo():
    r = Recipe().add("_test_offset", {"offset": 1}).add("_test_blur", {"sigma": 2})
    assert r.undo()[0] == "_test_blur" and len(r) == 1


def test_to_python_runs(tmp_path):
    """The exported script must run and produce the recipe's result."""
    img = medlab.Image(np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32), spacing=(1, 1, 2))
    src, dst = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    medlab.save(img, src)
    r = Recipe().add("gaussian_smooth", {"sigma": 1.5})
    code = r.to_python(str(src), str(dst))
    assert "from medlab.preprocess import gaussian_smooth" in code
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    expected = r.run(medlab.load(src))
    np.testing.assert_array_equal(medlab.load(dst).array, expected.array)


@pytest.mark.parametrize("steps", [5, ["_test_offset"], [{"params": {}}], [{"stage": "_test_offset", "params": [1]}]])
def test_malformed_steps_are_a_read_error(steps):
    with pytest.raises(ReadError, match="step|steps"):
        Recipe.from_dict({"schema": "medlab.recipe", "version": 1, "steps": steps})


def test_binary_file_is_not_a_recipe(tmp_path):
    p = tmp_path / "r.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReadError, match="UTF-8"):
        Recipe.load(p)
