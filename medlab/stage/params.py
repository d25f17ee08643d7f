"""Parameter declarations: one class per kind of value a stage takes (ranges, steps, units,
help), each validating a value and converting it to and from JSON for recipes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..image import Image, as_image


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


def _unordered(value) -> bool:
    """A set or a mapping: its order is not the user's (``{3.0, 1.0, 2.0}`` iterates as it likes)."""
    from collections.abc import Mapping
    from collections.abc import Set as AbstractSet

    return isinstance(value, (AbstractSet, Mapping))


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
        if isinstance(value, (str, bytes)) or _unordered(value):
            raise self._fail(stage_name, "a sequence of numbers (x, y, z order)", value)
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
        if isinstance(value, (str, bytes)) or _unordered(value):
            raise self._fail(stage_name, "a list of numbers (in order)", value)
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
        if _unordered(value):
            raise self._fail(stage_name, "a list of (x, y[, z]) points (a set or mapping has no order)", value)
        if value is not None and not isinstance(value, (str, bytes)):
            try:
                value = list(value)  # a generator is read once: the checks below would use it up
            except TypeError:
                raise self._fail(stage_name, "a list of (x, y[, z]) points", value) from None
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


