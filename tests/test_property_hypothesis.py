"""Property-based tests (hypothesis) of medlab.load/medlab.save round trips and the geometry
stages, over image shapes, dtypes, spacings, directions and stage parameters.

The property: every call either gives a correct result (values round-trip, geometry kept,
no NaN) or raises a :class:`medlab.MedlabError` subclass; never a bare exception, a NaN
result or a partial file. Bounded with ``max_examples`` so the file runs in well under 40 s.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import medlab
from medlab import Image, MedlabError
from medlab.preprocess import crop_box, crop_to_foreground, pad, reorient, resample, resample_to

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
          np.float32, np.float64]
SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".mha", ".png"]


# ---------------------------------------------------------------------------- strategies
@st.composite
def directions(draw, ndim: int) -> np.ndarray:
    """An orthonormal direction: a random rotation, possibly with a flipped axis."""
    if ndim == 2:
        a = draw(st.floats(-np.pi, np.pi))
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    else:
        q = np.array(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
        if np.linalg.norm(q) < 1e-3:
            q = np.array([1.0, 0, 0, 0])
        w, x, y, z = q / np.linalg.norm(q)
        m = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    if draw(st.booleans()):
        m[:, 0] = -m[:, 0]
    return m


@st.composite
def images(draw, *, max_side: int = 6, finite: bool = False, kinds=("intensity", "label"), ndims=(2, 3),
           dtypes=tuple(DTYPES), rgb: bool = False) -> Image:
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    kind = draw(st.sampled_from(kinds))
    if kind == "label" and dtype.kind == "f":
        dtype = np.dtype(np.int16)
    rgb = rgb and ndim == 2 and kind == "intensity" and dtype == np.uint8 and draw(st.booleans())
    elements = None
    if dtype.kind == "f":
        elements = st.floats(allow_nan=not finite, allow_infinity=not finite, width=dtype.itemsize * 8)
    array = draw(hnp.arrays(dtype, shape + ((3,) if rgb else ()), elements=elements))
    spacing = draw(st.lists(st.floats(1e-3, 1e3), min_size=ndim, max_size=ndim))
    origin = draw(st.lists(st.floats(-1e4, 1e4), min_size=ndim, max_size=ndim))
    names = None
    if kind == "label" and draw(st.booleans()):
        names = {int(v): f"structure {v}" for v in np.unique(array)[:3] if v != 0}
    return Image(array, spacing, origin, draw(directions(ndim)), kind=kind, labels=names, rgb=rgb)


def for_format(suffix: str):
    """Images a format can hold often enough to test the round trip (and some it cannot)."""
    if suffix == ".png":
        return st.one_of(images(ndims=(2,), dtypes=(np.uint8, np.uint16), rgb=True), images())
    return images()


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("suffix", SUFFIXES)
@SETTINGS
@given(data=st.data())
def test_save_load_round_trip_or_medlab_error(suffix, data):
    img = data.draw(for_format(suffix))
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", medlab.errors.MedlabWarning)   # PNG: origin/direction dropped
        path = Path(folder) / f"x{suffix}"
        try:
            medlab.save(img, path)
        except MedlabError as exc:
            event(f"save refused: {type(exc).__name__}")
            assert list(Path(folder).iterdir()) == []       # no partial file
            return
        assert [p.name for p in Path(folder).iterdir()] == [path.name]
        try:
            back = medlab.load(path, allow_nonfinite=True)
        except MedlabError as exc:
            event(f"load refused: {type(exc).__name__} {str(exc).split(path.name)[-1][:30]}")
            return
    event(f"round trip {suffix}")
    expected = img.array.astype(np.uint8) if img.dtype == bool else img.array
    assert back.dtype == expected.dtype, (img.dtype, back.dtype)
    np.testing.assert_array_equal(back.array, expected)
    assert back.kind == img.kind and back.ndim == img.ndim and back.rgb == img.rgb
    if suffix in (".nrrd", ".mha", ".png"):   # NIfTI has no place for label names
        assert back.labels == img.labels
    np.testing.assert_allclose(back.spacing, img.spacing, rtol=1e-6)
    if suffix == ".png":     # PNG keeps no origin or direction (save warned about it)
        return
    np.testing.assert_allclose(back.origin, img.origin, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)


@SETTINGS
@given(volume=st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.booleans(), st.text(max_size=3)),
       kind=st.one_of(st.none(), st.text(max_size=6)))
def test_load_parameters_are_checked(tmp_path_factory, volume, kind):
    path = tmp_path_factory.getbasetemp() / "params.nii.gz"
    if not path.exists():
        medlab.save(Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5)), path)
    try:
        img = medlab.load(path, volume=volume, kind=kind)
    except MedlabError:
        return
    assert volume in (0, None) or volume is False
    assert img.size == (5, 4, 3)


# ---------------------------------------------------------------------------- geometry stages
def _value_at(img: Image, point) -> float:
    idx = np.rint(img.physical_to_index(point)).astype(int)
    return img.array[tuple(idx[::-1])]


def _check_stage_result(out, img: Image) -> None:
    assert isinstance(out, Image)
    if out.dtype.kind == "f":
        assert np.all(np.isfinite(out.array)), "a stage returned NaN or infinite voxels from finite input"
    assert out.kind == img.kind


@st.composite
def stage_calls(draw, name: str):
    img = draw(images(max_side=8, finite=True, ndims=(3,) if name == "reorient" else (2, 3)))
    d = img.ndim
    if name == "resample":
        params = {"spacing": tuple(draw(st.lists(st.floats(0.01, 100), min_size=d, max_size=d))),
                  "interpolator": draw(st.sampled_from(["linear", "bspline", "nearest", "label_gaussian"]))}
    elif name == "resample_to":   # a grid around the image, in another orientation and spacing
        ref = draw(images(max_side=8, finite=True, kinds=("intensity",), ndims=(d,)))
        lo, hi = img.bounds()
        centre = np.array([draw(st.floats(a, b)) for a, b in zip(lo, hi)])
        ref = Image(ref.array, ref.spacing, centre - ref.direction @ (np.asarray(ref.size) * ref.spacing / 2),
                    ref.direction)
        params = {"reference": ref, "interpolator": draw(st.sampled_from(["linear", "nearest"]))}
    elif name == "crop_box_index":   # mostly boxes with end past start, sometimes any two corners
        start = draw(st.tuples(*[st.floats(-3, n + 3) for n in img.size]))
        if draw(st.booleans()):
            end = draw(st.tuples(*[st.floats(-3, n + 3) for n in img.size]))
        else:
            end = tuple(a + draw(st.floats(0.5, n + 3)) for a, n in zip(start, img.size))
        params = {"start": start, "end": end, "units": "index"}
        name = "crop_box"
    elif name == "crop_box_mm":
        lo, hi = img.bounds()
        corner = st.tuples(*[st.floats(a - 5, b + 5) for a, b in zip(lo, hi)])
        params = {"start": draw(corner), "end": draw(corner), "units": "mm"}
        name = "crop_box"
    elif name == "pad":
        params = {"width": draw(st.integers(0, 6)), "mode": draw(st.sampled_from(["constant", "edge", "reflect"]))}
    elif name == "reorient":
        params = {"orientation": draw(st.sampled_from(["RAS", "LPS", "LAS", "RPI", "AIL", "SPR"]))}
    else:
        params = {"margin": draw(st.floats(0, 20))}
    return img, name, params


STAGES = {"resample": resample, "resample_to": resample_to, "crop_box": crop_box, "pad": pad,
          "reorient": reorient, "crop_to_foreground": crop_to_foreground}


@pytest.mark.parametrize("which", ["resample", "resample_to", "crop_box_index", "crop_box_mm", "pad", "reorient",
                                   "crop_to_foreground"])
@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_geometry_stages_keep_physical_space_or_raise_medlab_errors(which, data):
    img, name, params = data.draw(stage_calls(which))
    try:   # 64 MB "available": large grids are refused quickly instead of computed slowly
        with mock.patch("medlab.io.memory.available_memory", return_value=64_000_000):
            out = STAGES[name](img, **params)
    except MedlabError as exc:
        event(f"{name} refused: {type(exc).__name__}")
        return
    event(f"{name} ran")
    _check_stage_result(out, img)
    if name == "resample":
        np.testing.assert_allclose(out.origin, img.origin, atol=1e-6 * max(1.0, np.abs(img.origin).max()))
        np.testing.assert_allclose(out.direction, img.direction, atol=1e-6)
        np.testing.assert_allclose(out.spacing, params["spacing"], rtol=1e-6)
    elif name == "resample_to":
        assert out.same_grid(params["reference"])
    elif name == "pad":
        w = params["width"]
        np.testing.assert_allclose(out.index_to_physical([w] * img.ndim), img.origin, atol=1e-6 * _scale(img))
        inner = tuple(slice(w, w + n) for n in img.shape[: img.ndim])
        np.testing.assert_array_equal(out.array[inner], img.array)
    else:   # voxels are moved, never interpolated: every output voxel holds the input value at its point
        for index in _corners(out):
            point = out.index_to_physical(index)
            assert img.contains(point), (name, params)
            assert out.array[tuple(index[::-1])] == _value_at(img, point), (name, params)


def _scale(img: Image) -> float:
    return max(1.0, float(np.abs(img.origin).max()), float(np.max(img.size) * np.max(img.spacing)))


def _corners(img: Image):
    return [np.array(c) for c in itertools.product(*[(0, s - 1) for s in img.size])]
