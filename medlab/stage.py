"""The stage declaration: declare a processing step once, get a function, a widget, a recipe
step and a cohort task from it.

>>> from medlab.stage import stage, Float
>>> @stage("Scale", group="preprocess", factor=Float(0.0, 10.0, 1.0, help="multiplier"))
... def scale(image, *, factor=1.0):
...     return image.with_array(image.array * factor)

Calling ``scale(img, factor=20)`` raises a :class:`~medlab.errors.ParameterError` that names
``factor``, its range and the value, before any work starts. The widget layer reads
``scale.stage`` (a :class:`StageSpec`) to build its controls; recipes store the call as a
:class:`Step`.

A declaration has three parts:

* **Inputs**, the function's positional parameters: :class:`ImageInput` (kind, dimension,
  overlap with another input), :class:`TransformInput`, :class:`ModelInput`. An undeclared
  first parameter named ``image`` is an intensity image.
* **Parameters**, its keyword-only parameters: :class:`Float`, :class:`Int`, :class:`Choice`,
  :class:`Bool`, :class:`Vector`, :class:`Numbers` (a list, e.g. a resolution schedule),
  :class:`Points` (with a role such as ``"seeds"``), :class:`Grid`.
* **Outputs**, named and typed: :class:`ImageOut`, :class:`LabelOut`, :class:`TransformOut`,
  :class:`TableOut`, :class:`CurveOut`, :class:`PointsOut`, :class:`ModelOut`. A stage with one
  output returns it bare; with several, a :class:`Result` (a tuple that names its parts).

A running stage talks to whoever runs it through one context: :func:`progress` /
:func:`report` for progress, :func:`check_cancelled` for Cancel, :func:`publish` for live
intermediate results, :func:`execute_sitk` for SimpleITK filters. The caller picks where they
go with :func:`progress_to` (a widget, tqdm and a log in a script, the case record in a cohort).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import Cancelled, GeometryError, ImageError, ParameterError
from .image import Image, as_image, check_finite

PREVIEWS = ("slice", "volume", None)


# ---------------------------------------------------------------------------- parameters
@dataclass
class Param:
    """Base of a parameter specification; ``name`` is filled in by :func:`stage`."""

    default: Any = None
    help: str = ""
    unit: str = ""
    label: str = ""
    name: str = field(default="", init=False)

    kind = "any"

    def validate(self, value, stage_name: str):
        return value

    def to_json(self, value):
        return value

    def from_json(self, value):
        return value

    def spec(self) -> dict:
        """A JSON-able description for user interfaces."""
        return {"name": self.name, "kind": self.kind, "default": self.to_json(self.default),
                "help": self.help, "unit": self.unit, "label": self.label or self.name.replace("_", " ")}

    def _fail(self, stage_name: str, allowed: str, value) -> ParameterError:
        unit = f" {self.unit}" if self.unit else ""
        return ParameterError(f"{stage_name}: parameter {self.name!r} must be {allowed}{unit}; got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class Float(Param):
    """A real number in ``[min, max]``; ``log=True`` asks widgets for a log-scale slider."""

    kind = "float"

    def __init__(self, min: float, max: float, default: float, *, step: float | None = None,
                 unit: str = "", help: str = "", label: str = "", log: bool = False):
        super().__init__(default=float(default), help=help, unit=unit, label=label)
        if not min <= default <= max:
            raise ValueError(f"default {default} outside [{min}, {max}]")
        self.min, self.max, self.log = float(min), float(max), log
        self.step = float(step) if step else (self.max - self.min) / 100

    def validate(self, value, stage_name):
        try:
            number = float(value) if _is_number(value) else math.nan
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or not self.min <= number <= self.max:
            raise self._fail(stage_name, f"a number in [{self.min:g}, {self.max:g}]", value)
        return float(value)

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max, "step": self.step, "log": self.log}


class Int(Param):
    """An integer in ``[min, max]``; with ``step=2`` from an odd ``min``, only odd values."""

    kind = "int"

    def __init__(self, min: int, max: int, default: int, *, step: int = 1,
                 unit: str = "", help: str = "", label: str = ""):
        super().__init__(default=int(default), help=help, unit=unit, label=label)
        self.min, self.max, self.step = int(min), int(max), int(step)
        if not min <= default <= max or (default - min) % step:
            raise ValueError(f"default {default} is not on the grid {min}:{max}:{step}")

    def validate(self, value, stage_name):
        ok = _is_number(value) and math.isfinite(float(value)) and float(value) == int(value)
        if not ok or not self.min <= int(value) <= self.max or (int(value) - self.min) % self.step:
            grid = f" in steps of {self.step} from {self.min}" if self.step != 1 else ""
            raise self._fail(stage_name, f"an integer in [{self.min}, {self.max}]{grid}", value)
        return int(value)

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max, "step": self.step}


class Choice(Param):
    """One of a fixed list of options (strings)."""

    kind = "choice"

    def __init__(self, options: Sequence[str], default: str | None = None, *, help: str = "", label: str = ""):
        options = tuple(options)
        super().__init__(default=options[0] if default is None else default, help=help, label=label)
        if self.default not in options:
            raise ValueError(f"default {self.default!r} not in {options}")
        self.options = options

    def validate(self, value, stage_name):
        if value not in self.options:
            raise self._fail(stage_name, f"one of {list(self.options)}", value)
        return value

    def spec(self):
        return {**super().spec(), "options": list(self.options)}


class Bool(Param):
    """True or False."""

    kind = "bool"

    def __init__(self, default: bool = False, *, help: str = "", label: str = ""):
        super().__init__(default=bool(default), help=help, label=label)

    def validate(self, value, stage_name):
        if not isinstance(value, (bool, np.bool_)):
            raise self._fail(stage_name, "True or False", value)
        return bool(value)


class Vector(Param):
    """A fixed-length tuple of numbers (e.g. a spacing in mm, x then y then z).

    ``length=None`` accepts 2 or 3 values (matched to the image by the stage).
    ``default=None`` means "not set" (the stage decides, e.g. keep the image's spacing).
    """

    kind = "vector"

    def __init__(self, min: float, max: float, default: Sequence[float] | None = None, *, length: int | None = None,
                 unit: str = "", help: str = "", label: str = "", optional: bool = False):
        super().__init__(default=None if default is None else tuple(float(v) for v in default),
                         help=help, unit=unit, label=label)
        self.min, self.max, self.length, self.optional = float(min), float(max), length, optional or default is None

    def validate(self, value, stage_name):
        if value is None and self.optional:
            return None
        if _is_number(value):
            value = (value,) * (self.length or 3)
        if isinstance(value, (str, bytes)):
            raise self._fail(stage_name, "a sequence of numbers", value)
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise self._fail(stage_name, "a sequence of numbers", value) from None
        n_ok = len(vals) == self.length if self.length else len(vals) in (2, 3)
        if not n_ok or not all(math.isfinite(v) and self.min <= v <= self.max for v in vals):
            n = self.length or "2 or 3"
            raise self._fail(stage_name, f"{n} numbers in [{self.min:g}, {self.max:g}]", value)
        return vals

    def to_json(self, value):
        return None if value is None else list(value)

    def from_json(self, value):
        return None if value is None else tuple(value)

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max, "length": self.length}


class Numbers(Param):
    """A list of numbers of varying length, e.g. a multi-resolution schedule (shrink factors
    ``(4, 2, 1)``, smoothing ``(2.0, 1.0, 0.0)`` mm).

    Examples
    --------
    >>> p = Numbers(1, 16, (4, 2, 1), integer=True, max_len=6)
    >>> p.name = "shrink_factors"
    >>> p.validate([8, 4, 2, 1], "register")
    (8, 4, 2, 1)
    """

    kind = "numbers"

    def __init__(self, min: float, max: float, default: Sequence[float], *, min_len: int = 1, max_len: int = 8,
                 integer: bool = False, unit: str = "", help: str = "", label: str = ""):
        cast = int if integer else float
        super().__init__(default=tuple(cast(v) for v in default), help=help, unit=unit, label=label)
        self.min, self.max, self.min_len, self.max_len, self.integer = float(min), float(max), min_len, max_len, integer
        if not min_len <= len(self.default) <= max_len or not all(min <= v <= max for v in self.default):
            raise ValueError(f"default {default} does not fit [{min}, {max}] x {min_len}..{max_len} values")

    def validate(self, value, stage_name):
        if _is_number(value):
            value = (value,)
        if isinstance(value, (str, bytes)):
            raise self._fail(stage_name, "a list of numbers", value)
        try:
            vals = tuple(value)
        except TypeError:
            raise self._fail(stage_name, "a list of numbers", value) from None
        ok = self.min_len <= len(vals) <= self.max_len and all(
            _is_number(v) and math.isfinite(float(v)) and self.min <= float(v) <= self.max
            and (not self.integer or float(v) == int(v)) for v in vals)
        if not ok:
            what = "integers" if self.integer else "numbers"
            raise self._fail(stage_name, f"{self.min_len} to {self.max_len} {what} in [{self.min:g}, {self.max:g}]", value)
        return tuple(int(v) if self.integer else float(v) for v in vals)

    def to_json(self, value):
        return list(value)

    def from_json(self, value):
        return tuple(value)

    def spec(self):
        return {**super().spec(), "min": self.min, "max": self.max, "min_len": self.min_len,
                "max_len": self.max_len, "integer": self.integer}


class Points(Param):
    """Physical points in mm (LPS) with a **role**, e.g. seeds or landmarks clicked in a viewer.

    Parameters
    ----------
    role : str
        What the points are for, in the field's words: ``"seeds"``, ``"background"``,
        ``"fixed_landmarks"``, ``"moving_landmarks"`` ... A widget gives each role its own
        point set (colour, marker, legend entry) and routes it to this parameter only.
    image : str, optional
        Name of the image input the points belong to. The stage wrapper then refuses a point
        outside that image, naming the parameter and the point.
    min_count, max_count : int
        How many points are needed / allowed.

    Examples
    --------
    >>> p = Points(role="seeds", image="image", min_count=1)
    >>> p.name = "seeds"
    >>> p.validate([[1, 2, 3]], "region_growing")
    ((1.0, 2.0, 3.0),)
    """

    kind = "points"

    def __init__(self, *, role: str = "points", image: str | None = None, min_count: int = 0,
                 max_count: int | None = None, help: str = "", label: str = ""):
        super().__init__(default=(), help=help, unit="mm", label=label)
        self.role, self.image = str(role), image
        self.min_count, self.max_count = min_count, max_count

    def validate(self, value, stage_name):
        if hasattr(value, "points") and hasattr(value, "role"):  # a PointSet
            value = value.points
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim == 2 else ([] if value.size == 0 else [value.tolist()])
        if isinstance(value, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in (value if value is not None else ())):
            raise self._fail(stage_name, "a list of (x, y[, z]) points", value)
        try:
            pts = tuple(tuple(float(c) for c in p) for p in (value if value is not None else ()))
        except (TypeError, ValueError):
            raise self._fail(stage_name, "a list of (x, y[, z]) points", value) from None
        n = len(pts)
        if n < self.min_count or (self.max_count is not None and n > self.max_count):
            hi = "" if self.max_count is None else f" and at most {self.max_count}"
            raise self._fail(stage_name, f"at least {self.min_count}{hi} points", value)
        if any(len(p) not in (2, 3) or not all(map(math.isfinite, p)) for p in pts):
            raise self._fail(stage_name, "points of 2 or 3 finite coordinates", value)
        return pts

    def check_inside(self, points, image: Image, stage_name: str) -> None:
        """Refuse a point outside ``image`` (a 2D image takes 3D points with z = 0)."""
        for i, p in enumerate(points, 1):
            q = p[:2] if image.ndim == 2 and (len(p) == 2 or abs(p[2]) < 1e-6) else p
            if len(q) != image.ndim or not image.contains(q):
                lo, hi = image.bounds()
                extent = " to ".join("(" + ", ".join(f"{v:.1f}" for v in b) + ")" for b in (lo, hi))
                where = "(" + ", ".join(f"{v:.1f}" for v in p) + ")"
                raise ParameterError(
                    f"{stage_name}: {self.role} point {i} of {self.name!r} at {where} mm lies outside the "
                    f"{image.ndim}D image {self.image!r}, whose voxel centres span {extent} mm (LPS); "
                    "click inside the image or give points in mm")

    def to_json(self, value):
        return [list(p) for p in value]

    def from_json(self, value):
        return tuple(tuple(p) for p in value)

    def spec(self):
        return {**super().spec(), "min_count": self.min_count, "max_count": self.max_count,
                "role": self.role, "image": self.image}


class Grid(Param):
    """A target voxel grid, given as an :class:`Image` whose geometry (not voxels) is used.

    Recipes store the geometry (size, spacing, origin, direction), so a replay resamples onto
    exactly the same grid without needing the reference file.
    """

    kind = "grid"

    def __init__(self, *, optional: bool = True, help: str = "", label: str = ""):
        super().__init__(default=None, help=help, label=label)
        self.optional = optional

    def validate(self, value, stage_name):
        if value is None:
            if self.optional:
                return None
            raise self._fail(stage_name, "an Image whose grid to use", value)
        if isinstance(value, dict):
            value = self.from_json(value)
        try:
            return as_image(value, self.name)
        except ParameterError:
            raise self._fail(stage_name, "an Image whose grid to use", type(value).__name__) from None

    def to_json(self, value):
        if value is None:
            return None
        return {"size": list(value.size), "spacing": list(value.spacing), "origin": list(value.origin),
                "direction": value.direction.ravel().tolist()}

    def from_json(self, value):
        if value is None:
            return None
        try:
            size = tuple(int(v) for v in value["size"])
            if any(float(v) != int(v) or int(v) < 1 for v in value["size"]):
                raise ValueError("sizes must be positive integers")
            # only the geometry is used: a broadcast zero takes no memory, whatever the size
            return Image(np.broadcast_to(np.uint8(0), size[::-1]), value["spacing"], value["origin"],
                         value["direction"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ParameterError(f"parameter {self.name!r}: a grid needs 'size' (positive integers), 'spacing', "
                                 f"'origin' and 'direction'; got {str(value)[:120]} ({exc})") from None


# ---------------------------------------------------------------------------- inputs
class Input:
    """Base of an input declaration (an image, a transform, a model); ``name`` is filled in by
    :func:`stage`. Inputs are the function's positional parameters; parameters are keyword-only."""

    type_name = "value"

    def __init__(self, *, optional: bool = False, help: str = "", label: str = ""):
        self.optional, self.help, self.label = bool(optional), help, label
        self.name = ""

    def check(self, value, stage: StageSpec):
        return value

    def spec(self) -> dict:
        return {"name": self.name, "type": self.type_name, "optional": self.optional, "help": self.help,
                "label": self.label or self.name.replace("_", " ")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_IMAGE_KINDS = ("intensity", "label", "rgb")


class ImageInput(Input):
    """An image input, checked before any work: kind, dimension, finite values, overlap.

    Parameters
    ----------
    kind : str or sequence of str
        Accepted kinds: ``"intensity"``, ``"label"``, ``"rgb"`` (a colour picture), or ``"any"``.
    dims : sequence of int, optional
        Accepted spatial dimensions; default the stage's ``dims``.
    overlaps : str, optional
        Name of another image input this one must overlap in physical space (e.g. the moving
        image must overlap the fixed one).
    same_grid : str, optional
        Name of another image input whose voxel grid this one must share (e.g. a mask).
    optional : bool
        The input may be ``None``.

    Examples
    --------
    >>> fixed, moving = ImageInput("intensity"), ImageInput("intensity", overlaps="fixed")
    >>> mask = ImageInput("label", optional=True, same_grid="image")
    """

    type_name = "image"

    def __init__(self, kind: str | Sequence[str] = "intensity", *, dims: Sequence[int] | None = None,
                 overlaps: str | None = None, same_grid: str | None = None, optional: bool = False,
                 help: str = "", label: str = ""):
        super().__init__(optional=optional, help=help, label=label)
        kinds = _IMAGE_KINDS if kind == "any" else (kind,) if isinstance(kind, str) else tuple(kind)
        if not set(kinds) <= set(_IMAGE_KINDS):
            raise ValueError(f"image kinds are {_IMAGE_KINDS} or 'any'; got {kind!r}")
        self.kinds, self.dims, self.overlaps, self.same_grid = kinds, None if dims is None else tuple(dims), overlaps, same_grid

    def check(self, value, stage: StageSpec) -> Image:
        image = as_image(value, self.name)
        dims = self.dims or stage.dims
        if image.ndim not in dims:
            raise ImageError(f"{stage.name} works on {' or '.join(f'{d}D' for d in dims)} images; "
                             f"{self.name!r} is a {image.ndim}D image")
        kind = "rgb" if image.rgb else image.kind
        if kind not in self.kinds:
            hint = " (convert a colour picture with medlab.to_grey first)" if kind == "rgb" else ""
            hint = hint or (" (make one with image.with_array(array, kind='label'))" if self.kinds == ("label",) else "")
            raise ImageError(f"{stage.name} accepts {', '.join(self.kinds)} images as {self.name!r}; "
                             f"got a {kind} image{hint}")
        check_finite(image, self.name)
        return image

    def spec(self) -> dict:
        return {**super().spec(), "kinds": list(self.kinds), "dims": list(self.dims) if self.dims else None,
                "overlaps": self.overlaps, "same_grid": self.same_grid}


class TransformInput(Input):
    """A spatial transform input (:class:`medlab.outputs.Transform`, or a SimpleITK transform)."""

    type_name = "transform"

    def check(self, value, stage: StageSpec):
        from .outputs import Transform

        if isinstance(value, Transform):
            return value
        try:
            return Transform(value)
        except ParameterError:
            raise ParameterError(f"{stage.name}: input {self.name!r} must be a medlab Transform or a SimpleITK "
                                 f"transform; got {type(value).__name__}") from None


class ModelInput(Input):
    """A trained model: a :class:`medlab.outputs.Checkpoint` or a ``torch.nn.Module``."""

    type_name = "model"

    def check(self, value, stage: StageSpec):
        from .outputs import Checkpoint

        if isinstance(value, Checkpoint) or (hasattr(value, "state_dict") and hasattr(value, "forward")):
            return value
        raise ParameterError(f"{stage.name}: input {self.name!r} must be a medlab Checkpoint or a torch "
                             f"module; got {type(value).__name__}")


# ---------------------------------------------------------------------------- outputs
class Output:
    """Declaration of a named, typed output; ``name`` is filled in by :func:`stage`."""

    type_name = "value"

    def __init__(self, *, optional: bool = False, help: str = ""):
        self.optional, self.help = bool(optional), help
        self.name = ""

    def value_type(self) -> type:
        raise NotImplementedError

    def coerce(self, value, inputs: dict):
        """The returned value as the declared type (or a TypeError: the stage is wrong, not the user)."""
        t = self.value_type()
        if not isinstance(value, t):
            raise TypeError(f"output {self.name!r} must be a {t.__name__}; the stage returned a {type(value).__name__}")
        return value

    def spec(self) -> dict:
        return {"name": self.name, "type": self.type_name, "optional": self.optional, "help": self.help}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ImageOut(Output):
    """An image output. ``grid`` names the input whose voxel grid it must keep (checked after
    every call); ``grid=None`` declares that the stage resamples (then the physical space is
    the stage's promise, tested in its own tests)."""

    type_name = "image"
    kind = "intensity"

    def __init__(self, *, grid: str | None = "", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.grid = grid  # "" means: the stage's first image input, unless it resamples

    def value_type(self):
        return Image

    def coerce(self, value, inputs):
        value = super().coerce(value, inputs)
        if self.kind == "label" and not value.is_label:
            raise TypeError(f"output {self.name!r} is declared a label map; the stage returned a {value.kind} image")
        return value

    def spec(self):
        return {**super().spec(), "kind": self.kind, "grid": self.grid}


class LabelOut(ImageOut):
    """A label-map output (segmentation), shown as an overlay."""

    type_name = "label"
    kind = "label"


class TransformOut(Output):
    """A :class:`medlab.outputs.Transform`; a returned SimpleITK transform is wrapped, with the
    grids of the ``fixed`` and ``moving`` inputs recorded as its frames."""

    type_name = "transform"

    def __init__(self, *, fixed: str = "fixed", moving: str = "moving", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.fixed, self.moving = fixed, moving

    def value_type(self):
        from .outputs import Transform

        return Transform

    def coerce(self, value, inputs):
        from .outputs import Transform, grid_of

        if not isinstance(value, Transform):
            import SimpleITK as sitk

            if not isinstance(value, sitk.Transform):
                return super().coerce(value, inputs)
            frames = {k: grid_of(inputs[n]) for k, n in (("fixed", self.fixed), ("moving", self.moving))
                      if isinstance(inputs.get(n), Image)}
            value = Transform(value, **frames)
        return value


class TableOut(Output):
    """A :class:`medlab.outputs.Table` (a list of row dicts is wrapped)."""

    type_name = "table"

    def value_type(self):
        from .outputs import Table

        return Table

    def coerce(self, value, inputs):
        from .outputs import Table

        if isinstance(value, list) and all(isinstance(r, dict) for r in value):
            value = Table(value)
        return super().coerce(value, inputs)


class CurveOut(Output):
    """A :class:`medlab.outputs.Curve` (metric per iteration, loss per epoch ...)."""

    type_name = "curve"

    def value_type(self):
        from .outputs import Curve

        return Curve


class PointsOut(Output):
    """A :class:`medlab.outputs.PointSet` (an ``(n, 3)`` array in mm is wrapped with the role)."""

    type_name = "points"

    def __init__(self, *, role: str = "points", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.role = role

    def value_type(self):
        from .outputs import PointSet

        return PointSet

    def coerce(self, value, inputs):
        from .outputs import PointSet

        if isinstance(value, (np.ndarray, list, tuple)):
            value = PointSet(value, role=self.role)
        return super().coerce(value, inputs)


class ModelOut(Output):
    """A trained model, as a :class:`medlab.outputs.Checkpoint`."""

    type_name = "model"

    def value_type(self):
        from .outputs import Checkpoint

        return Checkpoint


# ---------------------------------------------------------------------------- results
class Result(tuple):
    """What a stage with several outputs returns: a tuple in declaration order that also knows
    each output by name.

    ``corrected, field = n4_bias_correction(img)`` unpacks it; ``result.field``,
    ``result["field"]`` and ``result.items()`` name its parts. ``result.cancelled`` is True
    for the best-so-far result kept when a run was cancelled.

    Examples
    --------
    >>> r = Result({"transform": None, "history": [1, 2]}, stage="toy")
    >>> r.history, r["history"], r.names
    ([1, 2], [1, 2], ('transform', 'history'))
    >>> t, h = r
    """

    def __new__(cls, values: Mapping[str, Any], *, stage: str = "", cancelled: bool = False):
        obj = super().__new__(cls, tuple(values.values()))
        obj._names = tuple(values)
        obj.stage, obj.cancelled = stage, cancelled
        return obj

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise KeyError(f"{self.stage or 'the stage'} has no output {key!r}; outputs: {list(self._names)}") from None
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str):
        names = self.__dict__.get("_names", ())
        if name in names:
            return tuple.__getitem__(self, names.index(name))
        raise AttributeError(f"{type(self).__name__} has no attribute or output {name!r}")

    def keys(self) -> tuple[str, ...]:
        return self._names

    def items(self):
        return list(zip(self._names, self))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def describe(self) -> str:
        from .outputs import describe_value

        head = f"{self.stage} result" + (" (cancelled: best so far)" if self.cancelled else "")
        return "\n".join([head, *(f"  {n}: {describe_value(v)}" for n, v in self.items())])

    def save(self, folder, *, prefix: str = "", overwrite: bool = False) -> dict[str, Any]:
        """Save every output into ``folder`` as ``<prefix><name><suffix>``; returns ``{name: path}``."""
        from pathlib import Path

        from .outputs import default_suffix, save_output

        folder = Path(folder)
        return {n: save_output(v, folder / f"{prefix}{n}{default_suffix(v)}", overwrite=overwrite)
                for n, v in self.items() if v is not None and default_suffix(v)}

    def __repr__(self) -> str:
        return "Result(" + ", ".join(f"{n}={v!r}" for n, v in self.items()) + ")"

    def __reduce__(self):
        return (_rebuild_result, (self.as_dict(), self.stage, self.cancelled))


def _rebuild_result(values, stage, cancelled):
    return Result(values, stage=stage, cancelled=cancelled)


# ---------------------------------------------------------------------------- the declaration
@dataclass
class StageSpec:
    """Everything known about a stage: what the widget, recipe and cohort runner read."""

    name: str
    title: str
    group: str
    params: dict[str, Param]
    func: Callable
    preview: str | None = "slice"
    dims: tuple[int, ...] = (2, 3)
    accepts: tuple[str, ...] = ("intensity",)
    resamples: bool = False
    outputs: dict[str, Output] = field(default_factory=dict)
    doc: str = ""
    function: Callable | None = None  # the public, validating wrapper
    inputs: dict[str, Input] = field(default_factory=dict)
    keeps_best: bool = False

    @property
    def summary(self) -> str:
        """First paragraph of the docstring."""
        return self.doc.strip().split("\n\n")[0].replace("\n", " ") if self.doc else self.title

    @property
    def image_inputs(self) -> list[str]:
        return [n for n, i in self.inputs.items() if isinstance(i, ImageInput)]

    @property
    def primary(self) -> str | None:
        """The first image input: the one a widget shows and previews on."""
        names = self.image_inputs
        return names[0] if names else None

    def point_params(self) -> dict[str, Points]:
        return {n: p for n, p in self.params.items() if isinstance(p, Points)}

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """All parameters, defaults filled in, each checked; raises :class:`ParameterError`."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise ParameterError(
                f"{self.name}: unknown parameter(s) {sorted(unknown, key=str)}; it takes {sorted(self.params)}"
                + (f" and inputs {list(self.inputs)}" if self.inputs else "")
            )
        out = {}
        for k, p in self.params.items():
            value = params.get(k, p.default)
            try:
                out[k] = p.validate(value, self.name)
            except ParameterError:
                raise
            except (TypeError, ValueError, OverflowError, KeyError) as exc:  # odd types: say which parameter
                raise ParameterError(f"{self.name}: parameter {k!r} cannot take {value!r} ({exc})") from None
        return out

    def check_inputs(self, values: dict[str, Any]) -> dict[str, Any]:
        """Each input checked (kind, dimension, finite values), then overlaps and shared grids."""
        out = {}
        for n, inp in self.inputs.items():
            v = values.get(n)
            if v is None:
                if not inp.optional:
                    what = f"an image ({', '.join(inp.kinds)})" if isinstance(inp, ImageInput) else f"a {inp.type_name}"
                    raise ParameterError(f"{self.name} needs input {n!r} ({what}); "
                                         f"call it as {self.name}({', '.join(self.inputs)}, ...)")
                out[n] = None
                continue
            out[n] = inp.check(v, self)
        for n, inp in self.inputs.items():
            if not isinstance(inp, ImageInput) or out[n] is None:
                continue
            for other, same in ((inp.overlaps, False), (inp.same_grid, True)):
                ref = out.get(other) if other else None
                if ref is None:
                    continue
                if out[n].ndim != ref.ndim:
                    raise GeometryError(f"{self.name}: {n!r} is a {out[n].ndim}D image and {other!r} a {ref.ndim}D "
                                        "image; both must be 2D or both 3D")
                if same and not out[n].same_grid(ref):
                    raise GeometryError(f"{self.name}: {n!r} must be on the voxel grid of {other!r} "
                                        f"({out[n].describe()} vs {ref.describe()}); resample it first "
                                        "(medlab.preprocess.resample_to)")
                if not same and not out[n].overlaps(ref):
                    raise GeometryError(f"{self.name}: {n!r} and {other!r} do not overlap in physical space "
                                        "(check their origins and directions: are they from the same patient and session?)")
        return out

    def check_points(self, values: dict[str, Any], inputs: dict[str, Any]) -> None:
        for n, p in self.point_params().items():
            image = inputs.get(p.image) if p.image else None
            if isinstance(image, Image) and values.get(n):
                p.check_inside(values[n], image, self.name)

    def params_to_json(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.params[k].to_json(v) for k, v in params.items()}

    def params_from_json(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.params[k].from_json(v) if k in self.params else v for k, v in params.items()}

    def describe(self) -> dict:
        """A JSON-able description of the stage: inputs, parameters and outputs."""
        return {"name": self.name, "title": self.title, "group": self.group, "preview": self.preview,
                "dims": list(self.dims), "summary": self.summary, "keeps_best": self.keeps_best,
                "inputs": [i.spec() for i in self.inputs.values()],
                "params": [p.spec() for p in self.params.values()],
                "outputs": [o.spec() for o in self.outputs.values()]}

    def __repr__(self) -> str:
        ins = ", ".join(self.inputs)
        outs = ", ".join(f"{n}: {o.type_name}" for n, o in self.outputs.items())
        return f"<stage {self.name} ({self.group}) '{self.title}': ({ins}) -> ({outs}); {len(self.params)} parameters>"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td><code>{html.escape(n)}</code></td><td>{html.escape(p.kind)}</td>"
                       f"<td>{html.escape(str(p.to_json(p.default)))}</td><td>{html.escape(p.help)}</td></tr>"
                       for n, p in self.params.items())
        return (f"<b>{html.escape(self.title)}</b> <code>{html.escape(self.name)}</code> "
                f"({html.escape(self.group)})<br>{html.escape(self.summary)}<br>inputs: "
                f"{html.escape(', '.join(self.inputs))} → outputs: {html.escape(', '.join(self.outputs))}"
                f"<table>{rows}</table>")


class StageList(list):
    """A list of stage declarations with a short repr (one line per stage)."""

    def __repr__(self) -> str:
        if not self:
            return "[] (no stages)"
        width = max(len(s.name) for s in self)
        return "\n".join(f"{s.name:<{width}}  {s.group:<10}  {s.title}" for s in self)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td><code>{html.escape(s.name)}</code></td><td>{html.escape(s.group)}</td>"
                       f"<td>{html.escape(s.title)}</td><td>{html.escape(s.summary[:120])}</td></tr>" for s in self)
        return f"<table><tr><th>stage</th><th>group</th><th>title</th><th>what it does</th></tr>{rows}</table>"


_REGISTRY: dict[str, StageSpec] = {}
_recorder: ContextVar[list | None] = ContextVar("medlab_recorder", default=None)
_depth: ContextVar[int] = ContextVar("medlab_stage_depth", default=0)


def _legacy_outputs(outputs, resamples: bool) -> dict[str, Output]:
    """``("image", "field")`` (names only) means image outputs on the input's grid."""
    if isinstance(outputs, Mapping):
        items = list(outputs.items())
    else:
        items = [(n, ImageOut()) for n in outputs]
    out = {}
    for n, o in items:
        if isinstance(o, type) and issubclass(o, Output):
            o = o()
        if not isinstance(o, Output):
            raise TypeError(f"output {n!r} must be declared with an Output (ImageOut(), TransformOut() ...); got {o!r}")
        o.name = n
        if isinstance(o, ImageOut) and o.grid == "" and resamples:
            o.grid = None
        out[n] = o
    return out


def stage(title: str, *, group: str, preview: str | None = "slice", dims: Sequence[int] = (2, 3),
          accepts: Sequence[str] = ("intensity",), resamples: bool = False,
          outputs: Sequence[str] | Mapping[str, Output] = ("image",), keeps_best: bool = False,
          **declarations: Param | Input):
    """Declare a processing stage: inputs, parameters and outputs, once.

    The function's positional parameters are its **inputs** (images, transforms, models), its
    keyword-only parameters are its **parameters**. The returned wrapper checks every input
    and parameter before any work, checks every image output keeps its declared grid, records
    top-level calls for recipes, and returns the bare value of a one-output stage or a
    :class:`Result` naming each output.

    Parameters
    ----------
    title : str
        Human name shown in widgets ("Non-local means").
    group : str
        A registered group: ``'preprocess'``, ``'segment'``, ``'register'``, ``'explain'``,
        ``'measure'`` (or one added with :func:`register_group`).
    preview : {'slice', 'volume', None}
        A live preview on the shown slice (``'slice'``), on a downsampled volume
        (``'volume'``), or none (``None``: only Apply runs it).
    dims : sequence of int
        Spatial dimensions the stage works in (the default for image inputs).
    accepts : sequence of str
        Kinds accepted by an undeclared first input named ``image``.
    resamples : bool
        Image outputs are on another grid than the input (resampling, cropping).
    outputs : sequence of str, or mapping of str to Output
        ``("image",)`` (names: images on the input grid), or typed, e.g.
        ``dict(transform=TransformOut(), registered=ImageOut(grid="fixed"), history=CurveOut())``.
    keeps_best : bool
        On Cancel, the outputs published so far (:func:`publish` under output names) are kept
        as ``Cancelled.result`` (an optimiser's best transform, a training run's best weights).
    **declarations : Param or Input
        One :class:`Input` per positional parameter (an undeclared ``image`` gets
        ``ImageInput(accepts)``) and one :class:`Param` per keyword-only parameter.

    Examples
    --------
    >>> @stage("Scale", group="measure", factor=Float(0, 10, 1.0))
    ... def scale(image, *, factor=1.0):
    ...     return image.with_array(image.array * factor)
    >>> @stage("Subtract", group="measure", fixed=ImageInput(), moving=ImageInput(same_grid="fixed"),
    ...        outputs=dict(difference=ImageOut(grid="fixed")))
    ... def subtract(fixed, moving):
    ...     return fixed.with_array(fixed.array - moving.array)
    """
    if group not in _GROUPS:
        raise ValueError(f"group must be one of {sorted(_GROUPS)} (or add one with register_group); got {group!r}")
    if preview not in PREVIEWS:
        raise ValueError(f"preview must be one of {PREVIEWS}")
    params = {n: d for n, d in declarations.items() if isinstance(d, Param)}
    inputs = {n: d for n, d in declarations.items() if isinstance(d, Input)}
    odd = set(declarations) - set(params) - set(inputs)
    if odd:
        raise TypeError(f"declarations {sorted(odd)} must be Param (Float, Int ...) or Input (ImageInput ...)")

    def decorate(func):
        sig = inspect.signature(func)
        kw = {n: p for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY}
        positional = [n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if set(kw) != set(params):
            raise TypeError(f"{func.__name__}: declared {sorted(params)} but keyword-only parameters are {sorted(kw)}")
        ins = dict(inputs)
        if "image" in positional and "image" not in ins:
            ins["image"] = ImageInput(tuple(accepts))
        if set(positional) != set(ins):
            raise TypeError(f"{func.__name__}: positional parameters {positional} must each be declared as an "
                            f"input (ImageInput, TransformInput, ModelInput); declared {sorted(inputs)}")
        ins = {n: ins[n] for n in positional}
        for n, i in ins.items():
            i.name = n
        for n, p in params.items():
            p.name = n
            if kw[n].default is not inspect.Parameter.empty and p.to_json(kw[n].default) != p.to_json(p.default):
                raise TypeError(f"{func.__name__}: default of {n} differs between signature and declaration")
            if isinstance(p, Points) and p.image is not None and p.image not in ins:
                raise TypeError(f"{func.__name__}: points {n!r} belong to image {p.image!r}, which is not an input")
        outs = _legacy_outputs(outputs, resamples)
        first_image = next((n for n, i in ins.items() if isinstance(i, ImageInput)), None)
        for o in outs.values():
            if isinstance(o, ImageOut) and o.grid == "":
                o.grid = first_image
            if isinstance(o, ImageOut) and o.grid is not None and o.grid not in ins:
                raise TypeError(f"{func.__name__}: output {o.name!r} keeps the grid of {o.grid!r}, which is not an input")
        spec = StageSpec(func.__name__, title, group, dict(params), func, preview, tuple(dims),
                         tuple(accepts), resamples, outs, inspect.getdoc(func) or "", inputs=ins,
                         keeps_best=keeps_best)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            given = _bind_inputs(spec, args, kwargs)
            in_values = spec.check_inputs(given)
            values = spec.validate(kwargs)
            spec.check_points(values, in_values)
            return _run(spec, in_values, values)

        wrapper.stage = spec
        spec.function = wrapper
        _REGISTRY[spec.name] = spec
        return wrapper

    return decorate


def _bind_inputs(spec: StageSpec, args: tuple, kwargs: dict) -> dict:
    names = list(spec.inputs)
    if len(args) > len(names):
        raise ParameterError(f"{spec.name} takes {len(names)} input(s) ({', '.join(names)}) before its keyword "
                             f"parameters; got {len(args)} positional arguments. Give parameters by name, "
                             f"e.g. {spec.name}(..., {next(iter(spec.params), 'param')}=...)")
    given = dict(zip(names, args))
    for n in names[len(args):]:
        if n in kwargs:
            given[n] = kwargs.pop(n)
    for n in names[: len(args)]:
        if n in kwargs:
            raise ParameterError(f"{spec.name}: input {n!r} given twice (by position and by name)")
    return given


def _run(spec: StageSpec, inputs: dict, values: dict):
    live = _Live(spec.name)
    t_depth, t_live = _depth.set(_depth.get() + 1), _live.set(live)
    try:
        raw = spec.func(*inputs.values(), **values)
    except Cancelled as exc:
        if spec.keeps_best and live.values:
            kept = {n: live.values.get(n) for n in spec.outputs}
            if any(v is not None for v in kept.values()):
                exc.result = Result({n: (spec.outputs[n].coerce(v, inputs) if v is not None else None)
                                     for n, v in kept.items()}, stage=spec.name, cancelled=True)
        raise
    finally:
        _depth.reset(t_depth)
        _live.reset(t_live)
    result = _to_result(spec, raw, inputs)
    rec = _recorder.get()
    if rec is not None and _depth.get() == 0:
        rec.append(Step(spec.name, spec.params_to_json(values), values=inputs, result=result))
    if len(spec.outputs) == 1:
        return result[0]
    return result


def _to_result(spec: StageSpec, raw, inputs: dict) -> Result:
    names = list(spec.outputs)
    if isinstance(raw, Result):
        raw = raw.as_dict()
    if isinstance(raw, Mapping) and not isinstance(raw, Image):
        unknown = set(raw) - set(names)
        if unknown:
            raise TypeError(f"stage {spec.name} returned outputs {sorted(unknown)} it does not declare ({names})")
        items = {n: raw.get(n) for n in names}
    elif len(names) == 1:
        items = {names[0]: raw}
    elif isinstance(raw, tuple) and len(raw) == len(names):
        items = dict(zip(names, raw))
    else:
        raise TypeError(f"stage {spec.name} declares outputs {names}; it returned {type(raw).__name__}")
    out = {}
    for n, value in items.items():
        o = spec.outputs[n]
        if value is None:
            if not o.optional:
                raise TypeError(f"stage {spec.name} returned no {n!r}, which is not declared optional")
            out[n] = None
            continue
        value = o.coerce(value, inputs)
        grid = getattr(o, "grid", None)
        if grid is not None and isinstance(inputs.get(grid), Image) and not value.same_grid(inputs[grid]):
            raise AssertionError(f"stage {spec.name} changed the image geometry of output {n!r} "
                                 f"(input {grid!r}: {inputs[grid].describe()}; output: {value.describe()}); "
                                 "declare the output with grid=None (or resamples=True) if it resamples")
        out[n] = value
    return Result(out, stage=spec.name)


class Step(tuple):
    """One recorded stage call: ``(stage name, JSON parameters)``, plus where its inputs come from.

    ``inputs`` maps each input name to its source in a recipe: a recipe input (``"fixed"``)
    or an earlier step's output (``"step1.transform"``); it is filled in by
    :class:`medlab.recipe.Recipe`. While recording, ``values`` and ``result`` hold the actual
    objects so that a recipe can tell where each input came from.
    """

    def __new__(cls, stage: str, params: dict, *, inputs: Mapping[str, str] | None = None, id: str = "",
                values: Mapping[str, Any] | None = None, result: Result | None = None):
        obj = super().__new__(cls, (stage, params))
        obj.inputs = dict(inputs or {})
        obj.id = id
        obj.values = dict(values or {})
        obj.result = result
        return obj

    @property
    def stage(self) -> str:
        return tuple.__getitem__(self, 0)

    @property
    def params(self) -> dict:
        return tuple.__getitem__(self, 1)

    def __reduce__(self):
        return (_rebuild_step, (self.stage, self.params, self.inputs, self.id))


def _rebuild_step(stage, params, inputs, id):
    return Step(stage, params, inputs=inputs, id=id)


# ---------------------------------------------------------------------------- groups
_GROUPS: dict[str, str | None] = {
    "preprocess": "medlab.preprocess",
    "segment": "medlab.segment",
    "register": "medlab.register",
    "explain": "medlab.explain",
    "measure": None,
}
GROUPS = tuple(_GROUPS)


def register_group(name: str, module: str | None = None) -> None:
    """Make a stage group known; ``module`` (imported on first use) declares its stages.

    Packages can also add groups through the ``medlab.stages`` entry point group
    (``name = "package.module"``), so their stages appear in the workbench without code here.

    Examples
    --------
    >>> register_group("mylab", "mylab.stages")          # doctest: +SKIP
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ParameterError(f"a group name must be a Python identifier; got {name!r}")
    _GROUPS[name] = module
    _loaded.discard(name)


def groups() -> list[str]:
    """The known stage groups (built-in, registered, and from ``medlab.stages`` entry points)."""
    _load_entry_points()
    return list(_GROUPS)


_loaded: set[str] = set()
_entry_points_loaded = [False]


def _load_entry_points() -> None:
    if _entry_points_loaded[0]:
        return
    _entry_points_loaded[0] = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="medlab.stages"):
        _GROUPS.setdefault(ep.name, ep.value)


def stages(group: str | None = None) -> StageList:
    """Registered stages (all, or those of one group), in declaration order.

    Examples
    --------
    >>> import medlab
    >>> [s.name for s in medlab.stages("preprocess")][:2]  # doctest: +SKIP
    ['gaussian_smooth', 'median_filter']
    """
    _load_builtin_stages(group)
    if group is not None and group not in _GROUPS:
        raise ParameterError(f"unknown stage group {group!r}; groups: {groups()}")
    return StageList(s for s in _REGISTRY.values() if group is None or s.group == group)


def get_stage(name: str) -> StageSpec:
    """The declaration of stage ``name``; raises :class:`ParameterError` listing known ones."""
    if not isinstance(name, str):
        raise ParameterError(f"a stage name must be a string; got {type(name).__name__} {str(name)[:60]}")
    if name not in _REGISTRY:
        _load_builtin_stages()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown stage {name!r}; known stages: {sorted(_REGISTRY)}") from None


def _load_builtin_stages(group: str | None = None) -> None:
    import importlib

    _load_entry_points()
    for name, mod in list(_GROUPS.items()):
        if mod is None or name in _loaded or (group is not None and name != group):
            continue
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a stage module not written (or installed) yet
            if exc.name != mod:
                raise
        _loaded.add(name)


@contextlib.contextmanager
def record() -> Iterator[list]:
    """Record the top-level stage calls made inside the block as :class:`Step` s.

    Each step compares equal to ``(name, params)``; while recording it also holds the input
    values and the result, which :class:`medlab.recipe.Recipe` uses to tell where each input
    came from. Blocks nest: an enclosing ``record()`` receives the steps of an inner one too.
    """
    steps: list = []
    outer = _recorder.get()
    token = _recorder.set(steps)
    try:
        yield steps
    finally:
        _recorder.reset(token)
        if outer is not None:
            outer.extend(steps)


# ---------------------------------------------------------------------------- progress
_progress_cb: ContextVar[Callable[[float, str], None] | None] = ContextVar("medlab_progress", default=None)
_cancel: ContextVar[threading.Event | None] = ContextVar("medlab_cancel", default=None)
_publish_cb: ContextVar[Callable[[str, dict], None] | None] = ContextVar("medlab_publish", default=None)


@contextlib.contextmanager
def progress_to(callback: Callable[[float, str], None] | None, cancel: threading.Event | None = None, *,
                publish: Callable[[str, dict], None] | None = None):
    """Send what stages run inside the block report to the caller.

    Parameters
    ----------
    callback : callable or None
        ``callback(fraction, message)`` for progress (a widget bar, a log line).
    cancel : threading.Event, optional
        When set (from another thread), the running stage raises
        :class:`~medlab.errors.Cancelled` at its next progress step or :func:`publish`.
    publish : callable, optional
        ``publish(stage_name, {name: value})`` for live intermediate results (a metric
        curve, the current transform, a partial label map): a widget plots them, a cohort run
        keeps them in the case record. Without it, they are logged (see :func:`publish`).
    """
    t1, t2, t3 = _progress_cb.set(callback), _cancel.set(cancel), _publish_cb.set(publish)
    try:
        yield
    finally:
        _progress_cb.reset(t1)
        _cancel.reset(t2)
        _publish_cb.reset(t3)


class _Live:
    """The latest values a running stage published (what Cancel keeps for ``keeps_best``)."""

    def __init__(self, stage: str):
        self.stage = stage
        self.values: dict[str, Any] = {}
        self.logged_at = -math.inf


_live: ContextVar[_Live | None] = ContextVar("medlab_live", default=None)
LOG_EVERY = 2.0
"""Seconds between two log lines of live results in a script (no receiver set)."""


def publish(**values) -> None:
    """Publish intermediate results of the running stage: the metric so far, the current
    transform, a training epoch's loss, a partial label map.

    Whoever runs the stage decides where they go (:func:`progress_to` ``publish=``): a widget
    plots them while the work runs, a cohort run keeps them in the case record, and a plain
    script logs them (logger ``medlab.live``, INFO, at most one line every :data:`LOG_EVERY`
    seconds per stage). Values published under the name of a declared output are what Cancel
    keeps when the stage is declared ``keeps_best=True``, so publish your *best* so far under
    those names. Cancellation is honoured here too.

    Examples
    --------
    >>> from medlab.outputs import Curve
    >>> curve = Curve("metric", x_label="iteration")
    >>> for i in range(3):                        # inside a stage's loop
    ...     curve.append("level 1", i, -0.1 * i)
    ...     publish(history=curve)
    """
    live = _live.get()
    if live is not None:
        live.values.update(values)
    cb = _publish_cb.get()
    if cb is not None:
        cb(live.stage if live is not None else "", values)
    elif live is not None:
        _log_live(live, values)
    check_cancelled()


def _log_live(live: _Live, values: dict) -> None:
    """The first publication of a run, then at most one every LOG_EVERY seconds."""
    import logging
    import time

    now = time.monotonic()
    if now - live.logged_at < LOG_EVERY:
        return
    live.logged_at = now
    from .outputs import describe_value

    text = "; ".join(f"{k}: {describe_value(v)}" for k, v in values.items())
    logging.getLogger("medlab.live").info("%s %s", live.stage, text)


@contextlib.contextmanager
def progress_span(start: float, stop: float):
    """Map the progress reported inside the block onto ``[start, stop]`` of the caller's bar
    (for a stage made of several steps)."""
    outer = _progress_cb.get()
    if outer is None:
        yield
        return
    token = _progress_cb.set(lambda fraction, message: outer(start + (stop - start) * fraction, message))
    try:
        yield
    finally:
        _progress_cb.reset(token)


def log_progress(logger=None, *, every: float = 0.25) -> Callable[[float, str], None]:
    """A progress callback for batch runs: logs at every ``every`` fraction (INFO level).

    >>> import logging
    >>> from medlab.stage import log_progress, progress_to
    >>> with progress_to(log_progress(logging.getLogger("cohort"))):   # doctest: +SKIP
    ...     recipe.run(image)
    """
    import logging

    logger = logger or logging.getLogger("medlab")
    last = {"step": 0}

    def callback(fraction: float, message: str) -> None:
        step = int(fraction / every)
        if step > last["step"]:
            last["step"] = step
            logger.info("%s %3.0f%%", message or "progress", 100 * fraction)

    return callback


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    ev = _cancel.get()
    if ev is not None and ev.is_set():
        raise Cancelled("cancelled by the user; the input is unchanged")


def report(fraction: float, message: str = "") -> None:
    """Report progress (0..1) to whoever runs the stage, and honour cancellation."""
    check_cancelled()
    cb = _progress_cb.get()
    if cb is not None:
        cb(min(max(float(fraction), 0.0), 1.0), message)


def progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    """Iterate with progress and cancellation: a widget bar, or tqdm in a script.

    >>> from medlab.stage import progress
    >>> sum(progress(range(3), desc="demo"))  # doctest: +SKIP
    3
    """
    if total is None:
        total = len(iterable) if hasattr(iterable, "__len__") else None
    cb = _progress_cb.get()
    if cb is None:
        from tqdm.auto import tqdm

        # delay: no bar for work that finishes in under half a second (a slice preview)
        iterable = tqdm(iterable, total=total, desc=desc, leave=False, delay=0.5,
                        disable=total is not None and total < 2)
    for i, item in enumerate(iterable):
        check_cancelled()
        yield item
        if cb is not None and total:  # without a length there is no fraction to report
            cb(min((i + 1) / total, 1.0), desc)


def execute_sitk(filt, *inputs, iterations: int | None = None):
    """Run a SimpleITK filter with progress reported and cancellation honoured.

    Progress comes from the filter's progress events, or, for iterative filters that report
    none (N4), from its iteration events counted against ``iterations``. Cancellation calls
    ``Abort()`` and also raises inside the callback, which stops filters that ignore Abort.
    """
    import SimpleITK as sitk

    state = {"cancelled": False, "count": 0}

    def check():
        ev = _cancel.get()
        if ev is not None and ev.is_set():
            state["cancelled"] = True
            filt.Abort()
            raise Cancelled("cancelled by the user")  # SimpleITK turns this into a RuntimeError

    def on_progress():
        check()
        cb = _progress_cb.get()
        if cb is not None and iterations is None:
            cb(filt.GetProgress(), filt.GetName())

    def on_iteration():
        check()
        state["count"] += 1
        cb = _progress_cb.get()
        if cb is not None and iterations:
            cb(min(state["count"] / iterations, 1.0), filt.GetName())

    filt.AddCommand(sitk.sitkProgressEvent, on_progress)
    filt.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        return filt.Execute(*inputs)
    except RuntimeError as exc:
        if state["cancelled"]:
            raise Cancelled("cancelled by the user; the input is unchanged") from None
        raise ImageError(f"{filt.GetName()} failed: {str(exc).strip().splitlines()[-1]}") from exc
    finally:
        filt.RemoveAllCommands()
