"""The stage declaration: validation before work, registry, progress and cancellation."""

import threading

import numpy as np
import pytest

import medlab
from medlab import Cancelled, Image, ImageError, ParameterError
from medlab.stage import (
    Bool,
    Choice,
    Float,
    Grid,
    Int,
    Points,
    Vector,
    progress,
    progress_to,
    record,
    stage,
)


@stage("Test scale", group="measure", factor=Float(0.0, 10.0, 1.0, unit="x", help="multiplier"),
       mode=Choice(["a", "b"]), odd=Int(1, 9, 3, step=2), flag=Bool(False))
def _test_scale(image, *, factor=1.0, mode="a", odd=3, flag=False):
    """Multiply by ``factor``."""
    return image.with_array(image.array * factor)


@stage("Test slow loop", group="measure", steps=Int(1, 1000, 5))
def _test_slow(image, *, steps=5):
    total = 0
    for _ in progress(range(steps), desc="slow"):
        total += 1
    return image.with_array(image.array + total)


@stage("Test bad geometry", group="measure")
def _test_bad_geometry(image):
    return Image(image.array, spacing=[s * 2 for s in image.spacing])


@pytest.fixture
def img():
    return Image(np.ones((4, 5, 6), np.float32), spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3))


@pytest.mark.parametrize("kwargs, match", [
    ({"factor": 20}, r"'factor' must be a number in \[0, 10\] x; got 20"),
    ({"factor": float("nan")}, "'factor'"),
    ({"factor": "2"}, "'factor'"),
    ({"mode": "c"}, r"'mode' must be one of \['a', 'b'\]"),
    ({"odd": 4}, r"'odd' must be an integer in \[1, 9\] in steps of 2"),
    ({"odd": 2.5}, "'odd'"),
    ({"flag": 1}, "'flag' must be True or False"),
    ({"nope": 1}, r"unknown parameter\(s\) \['nope'\]"),
])
def test_parameters_validated_before_work(img, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        _test_scale(img, **kwargs)


def test_valid_call_is_a_plain_function(img):
    out = _test_scale(img, factor=2.0, odd=5)
    assert out.array.max() == 2.0
    assert out.same_grid(img)
    assert _test_scale.__doc__.startswith("Multiply")


def test_registry_and_description():
    spec = medlab.get_stage("_test_scale")
    assert spec in medlab.stages("measure")
    d = spec.describe()
    p = {q["name"]: q for q in d["params"]}
    assert p["factor"]["min"] == 0 and p["factor"]["max"] == 10 and p["factor"]["unit"] == "x"
    assert p["mode"]["options"] == ["a", "b"] and p["odd"]["step"] == 2
    with pytest.raises(ParameterError, match="unknown stage 'nope'"):
        medlab.get_stage("nope")


def test_declaration_must_match_signature():
    with pytest.raises(TypeError, match="declared"):
        @stage("Broken", group="measure", a=Float(0, 1, 0.5))
        def broken(image, *, b=0.5):
            return image
    with pytest.raises(TypeError, match="default"):
        @stage("Broken", group="measure", a=Float(0, 1, 0.5))
        def broken2(image, *, a=0.2):
            return image


def test_nan_input_refused(img):
    bad = img.with_array(np.where(img.array > 0, np.nan, 0))
    with pytest.raises(ImageError, match="NaN"):
        _test_scale(bad)


def test_geometry_change_is_caught(img):
    with pytest.raises(AssertionError, match="geometry"):
        _test_bad_geometry(img)


def test_progress_reaches_callback(img):
    seen = []
    with progress_to(lambda f, msg: seen.append((f, msg))):
        _test_slow(img, steps=4)
    assert [f for f, _ in seen] == [0.25, 0.5, 0.75, 1.0] and seen[0][1] == "slow"


def test_cancellation(img):
    cancel = threading.Event()

    def cb(fraction, msg):
        if fraction >= 0.5:
            cancel.set()

    with progress_to(cb, cancel), pytest.raises(Cancelled):
        _test_slow(img, steps=10)


def test_sitk_filter_cancellation(img):
    import SimpleITK as sitk

    from medlab.stage import execute_sitk

    cancel = threading.Event()
    cancel.set()
    f = sitk.CurvatureAnisotropicDiffusionImageFilter()
    f.SetNumberOfIterations(50)
    with progress_to(None, cancel), pytest.raises(Cancelled):
        execute_sitk(f, sitk.Cast(img.to_sitk(), sitk.sitkFloat32))


def test_record_only_top_level_calls(img):
    @stage("Test nested", group="measure")
    def _test_nested(image):
        return _test_scale(image, factor=3.0)

    with record() as steps:
        _test_nested(img)
        _test_scale(img, factor=2.0)
    assert [s[0] for s in steps] == ["_test_nested", "_test_scale"]


def test_vector_points_grid_specs(img):
    v = Vector(0.1, 10, (1.0, 1.0, 1.0), length=3, unit="mm")
    v.name = "spacing"
    assert v.validate(2, "s") == (2.0, 2.0, 2.0)
    with pytest.raises(ParameterError, match="3 numbers"):
        v.validate((1, 2), "s")
    p = Points(min_count=1)
    p.name = "seeds"
    assert p.validate([[1, 2, 3]], "s") == ((1.0, 2.0, 3.0),)
    with pytest.raises(ParameterError, match="at least 1"):
        p.validate([], "s")
    g = Grid()
    g.name = "reference"
    ref = g.from_json(g.to_json(img))
    assert ref.same_grid(img)


def test_batch_progress_logs(img, caplog):
    import logging

    from medlab.stage import log_progress

    with caplog.at_level(logging.INFO, logger="cohort"), progress_to(log_progress(logging.getLogger("cohort"), every=0.5)):
        _test_slow(img, steps=4)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["slow  50%", "slow 100%"]


def test_nested_records_both_see_the_steps(img):
    with record() as outer:
        with record() as inner:
            _test_scale(img, factor=2.0)
        _test_scale(img, factor=3.0)
    assert [p["factor"] for _, p in inner] == [2.0]
    assert [p["factor"] for _, p in outer] == [2.0, 3.0]


@pytest.mark.parametrize("kwargs", [{"odd": float("nan")}, {"odd": float("inf")}, {"factor": 10**400},
                                    {"mode": np.array(["a", "b"])}])
def test_odd_values_are_parameter_errors(img, kwargs):
    with pytest.raises(ParameterError):
        _test_scale(img, **kwargs)


def test_strings_are_not_vectors_or_points():
    v = Vector(0, 100, (1.0, 1.0, 1.0), length=2)
    v.name = "corner"
    with pytest.raises(ParameterError):
        v.validate("12", "s")
    p = Points()
    p.name = "seeds"
    with pytest.raises(ParameterError):
        p.validate(["12", "34"], "s")


def test_progress_without_a_length_reports_no_fraction_above_one(img):
    seen = []
    with progress_to(lambda f, m: seen.append(f)):
        list(progress(iter(range(4))))
    assert all(f <= 1.0 for f in seen)
