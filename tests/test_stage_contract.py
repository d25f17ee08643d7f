"""The stage contract: several inputs, typed outputs, live results, point roles, cancel keeping
the best, and recipes as small graphs that replay bit-identically (from JSON and as Python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import medlab
from medlab import Cancelled, GeometryError, ImageError, ParameterError, ReadError
from medlab.outputs import Curve, PointSet, Table, Transform
from medlab.recipe import Recipe
from medlab.stage import Result, get_stage, progress_to, publish, record, stages

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from toy_stages import toy_register, toy_seed_threshold, toy_warp_labels


def _blob(shift=(0.0, 0.0, 0.0), spacing=(2.0, 2.0, 3.0), origin=(-10.0, 5.0, 2.0)):
    z, y, x = np.mgrid[:16, :24, :24].astype(float)
    sp = np.array(spacing)
    # a smooth blob centred in mm, moved by `shift` (mm, x y z)
    cx, cy, cz = 24 * sp[0] / 2 + shift[0], 24 * sp[1] / 2 + shift[1], 16 * sp[2] / 2 + shift[2]
    r2 = ((x * sp[0] - cx) ** 2 + (y * sp[1] - cy) ** 2 + (z * sp[2] - cz) ** 2)
    arr = (100 * np.exp(-r2 / (2 * 8.0 ** 2))).astype(np.float32)
    return medlab.Image(arr, spacing, origin)


@pytest.fixture(scope="module")
def pair():
    fixed = _blob()
    moving = _blob(shift=(3.0, -2.0, 1.5))
    labels = moving.with_array((moving.array > 50).astype(np.uint8), kind="label", labels={1: "blob"})
    return fixed, moving, labels


# ------------------------------------------------------------------ declaration
def test_declaration_reads_inputs_params_outputs():
    spec = toy_register.stage
    assert list(spec.inputs) == ["fixed", "moving"] and spec.primary == "fixed"
    assert {n: o.type_name for n, o in spec.outputs.items()} == {"transform": "transform", "difference": "image",
                                                                 "history": "curve"}
    d = spec.describe()
    assert [i["name"] for i in d["inputs"]] == ["fixed", "moving"]
    assert d["inputs"][1]["overlaps"] == "fixed" and d["keeps_best"] is True
    seeds = toy_seed_threshold.stage.point_params()
    assert {n: (p.role, p.image) for n, p in seeds.items()} == {"seeds": ("seeds", "image"),
                                                                "background": ("background", "image")}
    assert spec in stages("toy") and "toy" in medlab.stage.groups()


def test_legacy_single_image_stage_is_unchanged():
    spec = get_stage("gaussian_smooth")
    assert list(spec.inputs) == ["image"] and list(spec.outputs) == ["image"]
    n4 = get_stage("n4_bias_correction")
    assert list(n4.outputs) == ["image", "field"] and all(o.grid == "image" for o in n4.outputs.values())
    assert get_stage("resample").outputs["image"].grid is None


def test_inputs_checked_before_work(pair):
    fixed, moving, labels = pair
    with pytest.raises(ParameterError, match="needs input 'moving'"):
        toy_register(fixed)
    with pytest.raises(ImageError, match="accepts intensity images as 'moving'; got a label image"):
        toy_register(fixed, labels)
    with pytest.raises(ImageError, match="'moving' is a 2D image"):
        toy_register(fixed, medlab.Image(np.zeros((5, 5), np.float32)))
    far = medlab.Image(moving.array, moving.spacing, (5000.0, 0.0, 0.0))
    with pytest.raises(GeometryError, match="'moving' and 'fixed' do not overlap"):
        toy_register(fixed, far)
    bad = moving.with_array(np.where(moving.array > 90, np.nan, moving.array))
    with pytest.raises(ImageError, match="moving"):
        toy_register(fixed, bad)
    with pytest.raises(ParameterError, match="given twice"):
        toy_register(fixed, moving, fixed=fixed)
    with pytest.raises(ParameterError, match="2 input"):
        toy_register(fixed, moving, 3)
    with pytest.raises(ParameterError, match="'iterations'"):
        toy_register(fixed, moving, iterations=0)
    with pytest.raises(ParameterError, match="must be a medlab Transform"):
        toy_warp_labels(labels, "identity", fixed)


def test_points_outside_their_image_are_refused(pair):
    fixed, _, _ = pair
    inside = tuple(fixed.index_to_physical((12, 12, 8)))
    with pytest.raises(ParameterError, match=r"seeds point 1 of 'seeds' at \(1000.0"):
        toy_seed_threshold(fixed, seeds=[(1000.0, 0.0, 0.0)])
    with pytest.raises(ParameterError, match="background point 1"):
        toy_seed_threshold(fixed, seeds=[inside], background=[(0.0, -900.0, 0.0)])
    mask, table = toy_seed_threshold(fixed, seeds=[inside])
    assert mask.is_label and mask.same_grid(fixed) and isinstance(table, Table) and len(table) == 1


def test_typed_outputs_and_geometry(pair):
    fixed, moving, labels = pair
    result = toy_register(fixed, moving)
    assert isinstance(result, Result) and result.names == ("transform", "difference", "history")
    transform, difference, history = result  # unpacks like a tuple
    assert isinstance(transform, Transform) and result["transform"] is transform
    assert difference.same_grid(fixed)  # geometry kept, checked by the wrapper for every image output
    assert isinstance(history, Curve) and len(history) == 40
    # the translation found is the true one (moving = fixed shifted by (3, -2, 1.5) mm)
    np.testing.assert_allclose(transform.transform_point((0, 0, 0)), (3.0, -2.0, 1.5), atol=0.3)
    moved = toy_warp_labels(labels, transform, fixed)
    assert moved.is_label and moved.same_grid(fixed) and moved.labels[1].name == "blob"
    assert "transform: translation" in result.describe()


def test_every_image_output_is_geometry_checked(pair):
    from medlab.stage import ImageOut, stage

    fixed, moving, _ = pair

    @stage("Toy bad second output", group="toy", fixed=medlab.stage.ImageInput(), moving=medlab.stage.ImageInput(),
           outputs={"a": ImageOut(grid="fixed"), "b": ImageOut(grid="moving")})
    def _bad_second(fixed, moving):
        return fixed, medlab.Image(moving.array, (9, 9, 9))

    with pytest.raises(AssertionError, match="output 'b'"):
        _bad_second(fixed, moving)


def test_live_results_reach_the_caller_while_running(pair):
    fixed, moving, _ = pair
    seen = []
    with progress_to(None, publish=lambda stage, values: seen.append((stage, len(values["history"])))):
        toy_register(fixed, moving, iterations=5)
    assert seen == [("toy_register", n) for n in range(1, 6)]  # the curve grew while the stage ran


def test_live_results_are_logged_in_a_script(pair, caplog):
    import logging

    fixed, moving, _ = pair
    with caplog.at_level(logging.INFO, logger="medlab.live"):
        toy_register(fixed, moving, iterations=3)
    assert any("toy_register" in r.getMessage() and "curve mean squares" in r.getMessage() for r in caplog.records)


def test_cancel_keeps_the_best_result(pair):
    fixed, moving, _ = pair
    cancel = threading.Event()
    metrics = []

    def on_publish(stage, values):
        metrics.append(values["metric"])
        if len(metrics) == 12:
            cancel.set()

    with progress_to(None, cancel, publish=on_publish), pytest.raises(Cancelled) as info:
        toy_register(fixed, moving, iterations=200)
    kept = info.value.result
    assert kept.cancelled and len(kept.history) == 12 and kept.difference is None
    # the transform kept is the best one seen, not the last
    best = int(np.argmin(metrics))
    assert kept.history.best()[0] == best
    assert isinstance(kept.transform, Transform)


def test_cancel_without_keeps_best_has_no_result(pair):
    fixed, _, _ = pair
    cancel = threading.Event()
    cancel.set()
    with progress_to(None, cancel), pytest.raises(Cancelled) as info:
        medlab.preprocess.anisotropic_diffusion(fixed, iterations=20)
    assert not hasattr(info.value, "result")


# ------------------------------------------------------------------ recipes as graphs
def _record_two_step(fixed, moving, labels):
    with Recipe.record(fixed=fixed, moving=moving) as recipe:
        transform, difference, _ = toy_register(fixed, moving, iterations=25)
        moved = toy_warp_labels(labels, transform, fixed)
    return recipe, transform, difference, moved


def test_recipe_records_where_inputs_come_from(pair):
    fixed, moving, labels = pair
    recipe, *_ = _record_two_step(fixed, moving, labels)
    assert [s.inputs for s in recipe.steps] == [
        {"fixed": "fixed", "moving": "moving"},
        {"labels": "labels", "transform": "step1.transform", "reference": "fixed"},
    ]
    assert list(recipe.inputs) == ["fixed", "moving", "labels"]  # labels: a new input seen while recording
    desc = recipe.inputs["moving"]
    assert desc["size"] == [24, 24, 16] and desc["spacing"] == [2.0, 2.0, 3.0] and len(desc["sha256"]) == 64
    text = recipe.to_json()
    assert "array" not in text and len(text) < 10_000  # descriptions, never voxels


def test_two_input_recipe_replays_bit_identically_from_json(pair, tmp_path):
    fixed, moving, labels = pair
    recipe, transform, difference, moved = _record_two_step(fixed, moving, labels)
    again = Recipe.load(recipe.save(tmp_path / "r.json")).run(fixed=fixed, moving=moving, labels=labels)
    assert set(again) == {"step1.transform", "step1.difference", "step1.history", "step2.labels"}
    assert np.array_equal(again["step2.labels"].array, moved.array) and again["step2.labels"].same_grid(fixed)
    assert np.array_equal(again["step1.difference"].array, difference.array)
    assert again["step1.transform"].fingerprint() == transform.fingerprint()


def test_two_input_recipe_replays_bit_identically_as_python(pair, tmp_path):
    fixed, moving, labels = pair
    recipe, transform, difference, moved = _record_two_step(fixed, moving, labels)
    for name, img in (("fixed", fixed), ("moving", moving), ("labels", labels)):
        medlab.save(img, tmp_path / f"{name}.nii.gz")
    code = recipe.to_python(inputs={n: f"{n}.nii.gz" for n in ("fixed", "moving", "labels")})
    assert "transform, difference, history = toy_register(fixed, moving, iterations=25)" in code
    assert "labels = toy_warp_labels(labels, transform, fixed)" in code
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=env)
    out = tmp_path / "outputs"
    assert np.array_equal(medlab.load(out / "labels.nii.gz").array, moved.array)
    assert np.array_equal(medlab.load(out / "difference.nii.gz").array, difference.array)
    assert Transform.load(out / "transform.h5").fingerprint() == transform.fingerprint()
    assert Curve is not None and (out / "history.csv").read_text().startswith("series,iteration,mean squares")


def test_replay_refuses_missing_or_mismatched_inputs(pair):
    fixed, moving, labels = pair
    recipe, *_ = _record_two_step(fixed, moving, labels)
    with pytest.raises(ParameterError, match=r"\['labels'\] missing"):
        recipe.run(fixed=fixed, moving=moving)
    with pytest.raises(ParameterError, match="'labels' was recorded as a label image; got a intensity"):
        recipe.run(fixed=fixed, moving=moving, labels=moving)
    with pytest.raises(ParameterError, match="'moving' was recorded as a 3D image"):
        recipe.run(fixed=fixed, moving=medlab.Image(np.zeros((8, 8), np.float32)), labels=labels)
    with pytest.raises(ParameterError, match="not inputs of this recipe"):
        recipe.run(fixed=fixed, moving=moving, labels=labels, extra=fixed)
    with pytest.raises(ParameterError, match="call run\\(fixed=..., moving=..., labels=...\\)"):
        recipe.run(fixed)
    other = moving.with_array(moving.array + 1)
    recipe.run(fixed=fixed, moving=other, labels=labels)  # other data of the same kind: a cohort
    with pytest.raises(ParameterError, match="'moving' differs from the one recorded"):
        recipe.run(fixed=fixed, moving=other, labels=labels, strict=True)


def test_one_input_chain_keeps_its_short_forms(tmp_path):
    img = medlab.Image(np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32), spacing=(1, 1, 2))
    with Recipe.record(img) as recipe:
        a = medlab.preprocess.gaussian_smooth(img, sigma=1.0)
        b = medlab.preprocess.median_filter(a)
    assert recipe.is_chain()
    out = recipe.run(img)
    assert np.array_equal(out.array, b.array)
    code = recipe.to_python("in.nii.gz", "out.nii.gz")
    assert "image = gaussian_smooth(image)" in code and "image = median_filter(image)" in code
    assert "medlab.save(image, 'out.nii.gz')" in code


def test_multi_output_step_keeps_every_output():
    img = medlab.data.brain_mri(size=(32, 32, 12), bias=0.3, noise=0.01, seed=1).t1
    recipe = Recipe().add("n4_bias_correction", {"iterations": 3, "levels": 1})
    outs = recipe.run(image=img)
    assert set(outs) == {"step1.image", "step1.field"} and outs["step1.field"].same_grid(img)
    assert recipe.run(img) is not None and np.array_equal(recipe.run(img).array, outs["step1.image"].array)


def test_schema_1_recipes_still_load():
    v1 = {"schema": "medlab.recipe", "version": 1, "medlab_version": "0.1.0",
          "input": {"description": "MR 8×7×6", "source": "x.nii.gz", "size": [8, 7, 6], "spacing": [1, 1, 2]},
          "steps": [{"stage": "gaussian_smooth", "params": {"sigma": 1.5}},
                    {"stage": "median_filter", "params": {}}]}
    recipe = Recipe.from_dict(v1)
    assert [s.inputs for s in recipe.steps] == [{"image": "image"}, {"image": "step1.image"}]
    assert recipe.inputs["image"]["source"] == "x.nii.gz"
    img = medlab.Image(np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32))
    expected = medlab.preprocess.median_filter(medlab.preprocess.gaussian_smooth(img, sigma=1.5))
    assert np.array_equal(recipe.run(img).array, expected.array)
    assert json.loads(recipe.to_json())["version"] == 2


@pytest.mark.parametrize("steps, match", [
    ([{"id": "step1", "stage": ["a"], "params": {}}], "expected"),
    ([{"id": "step1", "stage": "toy_warp_labels", "inputs": {"labels": "step9.x", "transform": "t",
                                                               "reference": "r"}}], "neither a recipe input"),
    ([{"id": "step1", "stage": "toy_warp_labels", "inputs": {"labels": "labels"}}], r"\['transform', 'reference'\] have no source"),
    ([{"id": "step2", "stage": "gaussian_smooth"}], "numbered in order"),
    ([{"id": "step1", "stage": "gaussian_smooth", "inputs": {"image": "ghost"}}], "do not declare"),
])
def test_malformed_graphs_are_read_errors(steps, match):
    data = {"schema": "medlab.recipe", "version": 2, "inputs": {"image": {"type": "image"}, "labels": {"type": "image"},
                                                                 "t": {"type": "transform"}, "r": {"type": "image"}},
            "steps": steps}
    with pytest.raises(ReadError, match=match):
        Recipe.from_dict(data)


def test_deeply_nested_json_is_a_read_error():
    with pytest.raises(ReadError, match="nested too deeply"):
        Recipe.from_json("[" * 100_000 + "]" * 100_000)


def test_record_captures_values_then_forgets_them(pair):
    fixed, moving, _ = pair
    with record() as steps:
        toy_register(fixed, moving, iterations=2)
    assert steps == [("toy_register", {"iterations": 2, "learning_rate": 1.0})]
    assert steps[0].values["fixed"] is fixed and isinstance(steps[0].result, Result)
    recipe, *_ = _record_two_step(*pair)
    assert recipe._objects == {}


def test_output_types_save_atomically_and_describe(tmp_path, pair):
    fixed, moving, _ = pair
    result = toy_register(fixed, moving, iterations=3)
    paths = result.save(tmp_path)
    assert sorted(p.name for p in paths.values()) == ["difference.nii.gz", "history.csv", "transform.h5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["difference.nii.gz", "history.csv", "transform.h5"]
    with pytest.raises(medlab.WriteError, match="exists"):
        result.save(tmp_path)
    pts = PointSet([(1, 2, 3)], role="seeds")
    pts.save(tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["points"] == [[1.0, 2.0, 3.0]]
    with pytest.raises(medlab.WriteError, match="use one of"):
        result.transform.save(tmp_path / "t.png")
    assert Curve.from_dict(result.history.to_dict()).data() == result.history.data()
    t = Transform(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.pi / 18, (1, 2, 3)), name="rigid")
    assert t.describe() == "rigid: rotation (0, 0, 10)°, translation (1, 2, 3) mm; maps fixed → moving points"


def test_stage_lists_have_short_reprs():
    text = repr(medlab.stages("preprocess"))
    assert len(text) < 3000 and "nlm_denoise" in text and "\n" in text
    assert repr(get_stage("toy_register")).startswith("<stage toy_register (toy)")


def test_group_registry_finds_modules(monkeypatch):
    from medlab import stage as st

    monkeypatch.setitem(st._GROUPS, "toy2", "toy_stages_extra_does_not_exist")
    assert stages("toy2") == []  # a registered group whose module is not installed: no stages, no crash
    with pytest.raises(ParameterError, match="unknown stage group"):
        stages("nope")
    with pytest.raises(ParameterError, match="must be a string"):
        get_stage(["gaussian_smooth"])


def test_publish_outside_a_stage_is_harmless():
    publish(metric=1.0)  # logged (or ignored), never an error


def test_images_of_different_dimension_are_a_geometry_error(pair):
    fixed, _, _ = pair
    from medlab.stage import ImageInput, stage

    @stage("Toy 2D and 3D", group="toy", a=ImageInput(dims=(2, 3)), b=ImageInput(dims=(2, 3), overlaps="a"))
    def _toy_dims(a, b):
        return a

    with pytest.raises(GeometryError, match="'b' is a 2D image and 'a' a 3D"):
        _toy_dims(fixed, medlab.Image(np.zeros((5, 5), np.float32)))


def test_points_may_be_numpy_arrays(pair):
    fixed, _, _ = pair
    seed = np.asarray(fixed.index_to_physical((12, 12, 8)))
    mask, _ = toy_seed_threshold(fixed, seeds=seed[None, :])
    assert mask.is_label
    mask2, _ = toy_seed_threshold(fixed, seeds=np.array([seed, seed]))
    assert np.array_equal(mask.array, mask2.array)


def test_numbers_parameter_and_its_control():
    from medlab.widgets.controls import param_control

    from medlab.stage import Numbers

    p = Numbers(1, 16, (4, 2, 1), integer=True, max_len=4, help="shrink factor per level")
    p.name = "shrink"
    assert p.validate([8, 4, 2, 1], "s") == (8, 4, 2, 1) and p.validate(3, "s") == (3,)
    for bad in ([], [1, 2, 3, 4, 5], [0.5], [2.5], ["2"], "4,2"):
        with pytest.raises(ParameterError, match="'shrink'"):
            p.validate(bad, "s")
    c = param_control(p)
    assert c.value == (4, 2, 1) and c.widget.value == "4, 2, 1"
    c.widget.value = "8; 4, 2"
    assert c.value == (8, 4, 2)
    c.widget.value = "a, b"
    with pytest.raises(ParameterError):
        p.validate(c.value, "s")


@pytest.mark.parametrize("data, match", [
    ({"inputs": {"a.b": {"type": "image"}}, "steps": []}, "Python identifier"),
    ({"inputs": {}, "steps": [], "medlab_version": {"a": 1}}, "medlab_version"),
    ({"inputs": {"image": {"type": "image"}}, "steps": [
        {"id": "step1", "stage": "resample_to", "inputs": {"image": "image"},
         "params": {"reference": {"size": [1e12 + 0.5, 1, 1], "spacing": [1, 1, 1], "origin": [0, 0, 0],
                                  "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}}]}, "positive integers"),
    ({"inputs": {"image": {"type": "image"}}, "steps": [
        {"id": "step1", "stage": "resample_to", "inputs": {"image": "image"}, "params": {"reference": {"size": "abc"}}}]},
     "'reference'"),
])
def test_hostile_recipe_json_is_a_read_error(data, match):
    with pytest.raises(ReadError, match=match):
        Recipe.from_dict({"schema": "medlab.recipe", "version": 2, **data})


def test_exported_python_skips_an_optional_output_that_is_none(tmp_path, pair):
    from medlab.stage import ImageOut, stage

    @stage("Toy optional output", group="toy", outputs={"image": ImageOut(), "extra": ImageOut(optional=True)})
    def toy_optional(image):
        return image.copy(), None

    fixed, _, _ = pair
    with Recipe.record(fixed) as recipe:
        toy_optional(fixed)
        medlab.preprocess.gaussian_smooth(fixed)  # a second step makes it a graph, not a chain
    code = recipe.to_python(outputs_dir="out")
    assert "if extra is not None:\n    medlab.save(extra, 'out/extra.nii.gz')" in code
