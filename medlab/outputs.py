"""Typed stage outputs besides images: transforms, tables, curves, point sets and model checkpoints.

Each value type knows how to **save itself atomically**, **describe itself in one line**, and
give a stable ``fingerprint()`` that recipes record instead of the value. How each one is
*shown* lives in the widget layer (``medlab.widgets.outputs``), so this module imports nothing
from Jupyter.

=============  ===========================================  ==========================
type           what it holds                                saved as
=============  ===========================================  ==========================
``Transform``  a SimpleITK transform mapping fixed-image    ``.tfm`` / ``.txt`` (text),
               points (mm, LPS) to moving-image points,     ``.h5`` (binary, exact)
               plus the fixed and moving frames
``Table``      rows of numbers (and names) with units       ``.csv``
``Curve``      named series of (x, y), e.g. metric per      ``.csv``, ``.json``
               iteration per level, loss per epoch
``PointSet``   physical points in mm (LPS) with a role      ``.csv``, ``.json``
``Checkpoint`` model weights + config + label names +       ``.pt`` (``torch.save``;
               preprocessing + validation metrics           loaded ``weights_only=True``)
=============  ===========================================  ==========================

Examples
--------
>>> from medlab.outputs import Curve, Table
>>> c = Curve("metric", x_label="iteration", y_label="Mattes MI")
>>> for i, v in enumerate([-0.2, -0.4, -0.5]):
...     c.append("level 1", i, v)
>>> c.describe()
'curve Mattes MI over iteration: 1 series, 3 points, last -0.5 (level 1)'
>>> Table([{"label": "tumour", "volume": 12.5}], units={"volume": "mL"}).describe()
'table: 1 row × 2 columns (label, volume [mL])'
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import shutil
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ParameterError, ReadError, WriteError

__all__ = ["Checkpoint", "Curve", "PointSet", "Table", "Transform", "describe_value", "fingerprint", "save_output"]


def _suffix(path: Path, allowed: Sequence[str], what: str) -> str:
    name = path.name.lower()
    for s in sorted(allowed, key=len, reverse=True):
        if name.endswith(s):
            return s
    raise WriteError(f"cannot save a {what} as {path.name}: use one of {', '.join(allowed)}")


def _path(path, what: str) -> Path:
    from .io.paths import as_file_path

    return as_file_path(path, f"the {what} file")


def _write_text(path, text: str, overwrite: bool) -> Path:
    from .io.atomic import atomic_write_text

    return atomic_write_text(path, text, overwrite=overwrite)


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


# ---------------------------------------------------------------------------- transform
_ROTATIONS = {"Euler3DTransform", "VersorRigid3DTransform", "Euler2DTransform", "Similarity3DTransform",
              "Similarity2DTransform", "ScaleVersor3DTransform", "ScaleSkewVersor3DTransform"}


class Transform:
    """A spatial transform with its frames: maps points of the fixed image to the moving image.

    This is SimpleITK's (and elastix's, and ANTs') convention: to resample the moving image
    onto the fixed grid, each fixed voxel centre ``p`` (mm, LPS) takes the moving image's value at
    ``transform.transform_point(p)``. To move *points* from the moving to the fixed image, use
    :meth:`inverse` (rigid, similarity and affine transforms have one).

    Parameters
    ----------
    sitk_transform : SimpleITK.Transform
        The transform (any SimpleITK type, composite included). It is copied.
    fixed, moving : dict, optional
        The grids (``size``, ``spacing``, ``origin``, ``direction``) of the fixed and moving
        images the transform was estimated on, as :func:`grid_of` gives; kept for the record.
    name : str
        What the transform is ("rigid", "affine", "B-spline", ...).

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> t = Transform(sitk.TranslationTransform(3, (2.0, 0.0, -1.0)), name="translation")
    >>> t.transform_point((0, 0, 0))
    (2.0, 0.0, -1.0)
    >>> t.describe()
    'translation: translation (2, 0, -1) mm; maps fixed → moving points'
    """

    def __init__(self, sitk_transform, *, fixed: Mapping | None = None, moving: Mapping | None = None,
                 name: str = ""):
        import SimpleITK as sitk

        if not isinstance(sitk_transform, sitk.Transform):
            raise ParameterError(f"Transform needs a SimpleITK transform; got {type(sitk_transform).__name__}")
        self._t = copy.deepcopy(sitk_transform.Downcast())  # a copy: nobody can change it under us
        # a NaN parameter (a diverged optimiser) moves every point to NaN, and ITK writes a
        # file it cannot read back; dense displacement fields are not copied out to check
        if self._t.GetNumberOfParameters() <= 1_000_000:
            values = np.asarray(self._t.GetParameters() + self._t.GetFixedParameters(), float)
            if not np.all(np.isfinite(values)):
                raise ParameterError(f"the {self._t.GetName()} has NaN or infinite parameters (did the optimiser "
                                     "diverge?); it maps points nowhere, so it is not kept")
        self.fixed = dict(fixed or {})
        self.moving = dict(moving or {})
        self.name = name or self._t.GetName().replace("Transform", "")

    @property
    def sitk(self):
        """The SimpleITK transform (a copy: changing it does not change this one)."""
        return copy.deepcopy(self._t)

    @property
    def dimension(self) -> int:
        return int(self._t.GetDimension())

    def transform_point(self, point) -> tuple[float, ...]:
        """Where fixed-image point ``point`` (mm, LPS) lands in the moving image."""
        return tuple(float(v) for v in self.transform_points([point])[0])

    def transform_points(self, points) -> np.ndarray:
        """:meth:`transform_point` for an ``(n, d)`` array."""
        d = self.dimension
        try:
            pts = np.atleast_2d(np.asarray(points, float))
        except (TypeError, ValueError):
            pts = np.full((1, 0), np.nan)
        if pts.ndim != 2 or pts.shape[1] != d:
            raise ParameterError(f"the {self.name} transform maps {d}D points (x, y{', z' if d == 3 else ''}) in mm; "
                                 f"got {str(points)[:80]}")
        return np.array([self._t.TransformPoint(tuple(p)) for p in pts.tolist()], float).reshape(pts.shape)

    def inverse(self) -> Transform:
        """The inverse (moving → fixed); raises :class:`ParameterError` when none exists (B-spline)."""
        try:
            inv = self._t.GetInverse()
        except RuntimeError:
            raise ParameterError(f"the {self.name} transform has no closed-form inverse; "
                                 "register the images the other way round instead") from None
        return Transform(inv, fixed=self.moving, moving=self.fixed, name=f"inverse {self.name}")

    def summary(self) -> dict[str, Any]:
        """Parameters in the field's units: rotation in degrees, translation in mm, scale, matrix.

        For composite and deformable transforms: the kind and the number of parameters.
        """
        import SimpleITK as sitk

        typed = self._t
        if isinstance(typed, sitk.CompositeTransform):
            if typed.GetNumberOfTransforms() != 1:
                return {"kind": "composite", "transforms": typed.GetNumberOfTransforms(),
                        "parameters": len(typed.GetParameters())}
            typed = typed.GetNthTransform(0).Downcast()
        inner = typed
        kind = typed.GetName()
        out: dict[str, Any] = {"kind": kind}
        if hasattr(typed, "GetMatrix") and hasattr(typed, "GetTranslation"):
            d = inner.GetDimension()
            m = np.array(typed.GetMatrix()).reshape(d, d)
            out["translation_mm"] = tuple(round(float(v), 4) for v in typed.GetTranslation())
            if kind in _ROTATIONS or kind.startswith("Versor"):
                scale = float(np.cbrt(abs(np.linalg.det(m)))) if d == 3 else float(np.sqrt(abs(np.linalg.det(m))))
                out["rotation_deg"] = _euler_degrees(m / scale)
                if abs(scale - 1) > 1e-9:
                    out["scale"] = round(scale, 6)
            else:
                out["matrix"] = np.round(m, 6).tolist()
            if hasattr(typed, "GetCenter"):
                out["centre_mm"] = tuple(round(float(v), 3) for v in typed.GetCenter())
        elif hasattr(typed, "GetOffset"):
            out["translation_mm"] = tuple(round(float(v), 4) for v in typed.GetOffset())
        elif kind == "BSplineTransform":
            params = np.asarray(inner.GetParameters()).reshape(inner.GetDimension(), -1)
            out["control_points"] = int(params.shape[1])
            out["max_coefficient_mm"] = round(float(np.abs(params).max(initial=0.0)), 4)
        else:
            out["parameters"] = len(inner.GetParameters())
        return out

    def describe(self) -> str:
        s = self.summary()
        parts = []
        if "rotation_deg" in s:
            parts.append("rotation (" + ", ".join(f"{v:.3g}" for v in s["rotation_deg"]) + ")°")
        if "scale" in s:
            parts.append(f"scale {s['scale']:.4g}")
        if "matrix" in s:
            parts.append("matrix " + str(s["matrix"]))
        if "translation_mm" in s:
            parts.append("translation (" + ", ".join(f"{v:.3g}" for v in s["translation_mm"]) + ") mm")
        if "control_points" in s:
            parts.append(f"{s['control_points']} control points, largest coefficient {s['max_coefficient_mm']:.3g} mm")
        if not parts:
            parts.append(f"{s.get('parameters', 0)} parameters")
        return f"{self.name}: {', '.join(parts)}; maps fixed → moving points"

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write as ``.tfm``/``.txt`` (ITK text) or ``.h5`` (HDF5, bit-exact), atomically."""
        import SimpleITK as sitk

        from .io.atomic import atomic_path

        path = _path(path, "transform")
        suffix = _suffix(path, (".tfm", ".txt", ".h5", ".hdf5"), "transform")
        # ITK's HDF5 writer locks the file it creates, which clashes with the lock medlab holds on
        # its temporary file: write in a private folder, then copy into the temporary file.
        with tempfile.TemporaryDirectory(prefix="medlab-transform-") as private, \
                atomic_path(path, overwrite=overwrite, suffix=suffix) as tmp:
            own = Path(private) / f"transform{suffix}"
            try:
                sitk.WriteTransform(self._t, str(own))
            except RuntimeError as exc:
                raise WriteError(f"cannot write transform {path}: {str(exc).strip().splitlines()[-1]}") from None
            shutil.copyfile(own, tmp)
        return path

    @classmethod
    def load(cls, path, *, name: str = "") -> Transform:
        """Read a transform written by :meth:`save`, SimpleITK, elastix (as ITK) or 3D Slicer."""
        import SimpleITK as sitk

        from .io.paths import check_readable_file

        path = _path(path, "transform")
        check_readable_file(path, "transform file")
        try:
            t = sitk.ReadTransform(str(path))
        except RuntimeError as exc:
            raise ReadError(f"{path} is not a transform file SimpleITK can read "
                            f"({str(exc).strip().splitlines()[-1]})") from None
        try:
            return cls(t, name=name)
        except ParameterError as exc:
            raise ReadError(f"{path}: {exc}") from None

    def fingerprint(self) -> str:
        params = np.asarray(self._t.GetParameters(), float).tobytes()
        fixed = np.asarray(self._t.GetFixedParameters(), float).tobytes()
        return _sha(self._t.GetName().encode(), params, fixed)

    def __repr__(self) -> str:
        return f"<medlab.Transform {self.describe()}>"


def _euler_degrees(r: np.ndarray) -> tuple[float, ...]:
    """Rotation angles about x, y, z in degrees, as SimpleITK's ``Euler3DTransform`` holds them
    (its default order ``R = Rz Rx Ry``; ITK's ``ComputeMatrixParameters``)."""
    if r.shape == (2, 2):
        return (round(math.degrees(math.atan2(r[1, 0], r[0, 0])), 4),)
    ax = math.asin(max(-1.0, min(1.0, r[2, 1])))
    c = math.cos(ax)
    if abs(c) > 5e-5:
        ay = math.atan2(-r[2, 0] / c, r[2, 2] / c)
        az = math.atan2(-r[0, 1] / c, r[1, 1] / c)
    else:  # gimbal lock: ITK's choice
        ay, az = 0.0, math.atan2(r[1, 0], r[0, 0])
    return tuple(round(math.degrees(a), 4) + 0.0 for a in (ax, ay, az))


def grid_of(image) -> dict:
    """The voxel grid of an image as plain JSON-able values (no voxels)."""
    return {"size": list(image.size), "spacing": list(image.spacing), "origin": list(image.origin),
            "direction": np.asarray(image.direction).ravel().tolist()}


# ---------------------------------------------------------------------------- table
class Table:
    """Rows of numbers (and names) with units per column, e.g. one row per label.

    Parameters
    ----------
    rows : iterable of mapping
        One mapping per row; the columns are the union of their keys, in first-seen order.
    units : mapping, optional
        ``{column: unit}``, e.g. ``{"volume": "mL", "hd95": "mm"}``.
    title : str
        What the table is.

    Examples
    --------
    >>> t = Table([{"label": "liver", "dice": 0.91}, {"label": "spleen", "dice": 0.88}], title="overlap")
    >>> t.columns, len(t)
    (['label', 'dice'], 2)
    >>> t.column("dice")
    [0.91, 0.88]
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = (), *, units: Mapping[str, str] | None = None,
                 title: str = ""):
        if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
            raise ParameterError(f"a Table needs rows: a list of mappings {{column: value}}; got {type(rows).__name__}")
        rows = list(rows)
        bad = next((r for r in rows if not isinstance(r, Mapping)), None)
        if bad is not None:
            raise ParameterError(f"each row of a Table must be a mapping {{column: value}}; got {type(bad).__name__} {bad!r:.60}")
        if units is not None and not isinstance(units, Mapping):
            raise ParameterError(f"units must map a column to its unit, e.g. {{'volume': 'mL'}}; got {units!r:.60}")
        self.rows = [dict(r) for r in rows]
        cols: dict[str, None] = {}
        for r in self.rows:
            cols.update(dict.fromkeys(r))
        self.columns = list(cols)
        self.units = {k: v for k, v in (units or {}).items() if v}
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise ParameterError(f"table has no column {name!r}; columns: {self.columns}")
        return [r.get(name) for r in self.rows]

    def header(self, column: str) -> str:
        unit = self.units.get(column)
        return f"{column} [{unit}]" if unit else column

    def describe(self) -> str:
        n, m = len(self.rows), len(self.columns)
        head = ", ".join(self.header(c) for c in self.columns[:6]) + (", …" if m > 6 else "")
        title = f"{self.title}: " if self.title else "table: "
        return f"{title}{n} row{'s' if n != 1 else ''} × {m} column{'s' if m != 1 else ''} ({head})"

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([self.header(c) for c in self.columns])
        for r in self.rows:
            writer.writerow([_csv_cell(r.get(c)) for c in self.columns])
        return buf.getvalue()

    def to_pandas(self):
        """A ``pandas.DataFrame`` (units stay in ``df.attrs["units"]``)."""
        import pandas as pd

        df = pd.DataFrame(self.rows, columns=self.columns)
        df.attrs["units"] = dict(self.units)
        return df

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write as CSV (column headers carry units: ``volume [mL]``), atomically."""
        path = _path(path, "table")
        _suffix(path, (".csv",), "table")
        return _write_text(path, self.to_csv(), overwrite)

    def fingerprint(self) -> str:
        return _sha(self.to_csv().encode())

    def __repr__(self) -> str:
        return f"<medlab.Table {self.describe()}>"


def _csv_cell(v):
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, (tuple, list, np.ndarray)):
        return " ".join(str(_csv_cell(x)) for x in v)
    return "" if v is None else v


# ---------------------------------------------------------------------------- curve
class Curve:
    """Named series of ``(x, y)`` points that grow while a stage runs (thread-safe).

    A registration publishes its metric per iteration with one series per resolution level; a
    training run publishes loss and Dice per epoch as two series.

    Parameters
    ----------
    name : str
        What is plotted (used as a key when published).
    x_label, y_label : str
        Axis names, e.g. ``"iteration"`` and ``"Mattes MI"``.
    x_unit, y_unit : str
        Units, if any.
    lower_is_better : bool or None
        For a metric or loss: whether smaller values are better (used to mark the best point).

    Examples
    --------
    >>> c = Curve("loss", x_label="epoch", y_label="Dice + CE", lower_is_better=True)
    >>> c.append("train", 1, 0.9); c.append("train", 2, 0.5); c.append("validation", 2, 0.6)
    >>> c.series_names, c.last("train"), c.best("train")
    (['train', 'validation'], (2.0, 0.5), (2.0, 0.5))
    """

    def __init__(self, name: str = "curve", *, x_label: str = "step", y_label: str = "value", x_unit: str = "",
                 y_unit: str = "", lower_is_better: bool | None = None):
        self.name, self.x_label, self.y_label = name, x_label, y_label
        self.x_unit, self.y_unit, self.lower_is_better = x_unit, y_unit, lower_is_better
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumps at every append: a cheap "has it changed?" for live plots

    def append(self, series: str, x: float, y: float) -> None:
        """Add one point to ``series`` (created on first use)."""
        if not all(isinstance(v, (int, float, np.integer, np.floating)) for v in (x, y)):
            raise ParameterError(f"curve {self.name!r}, series {series!r}: a point is two numbers (x, y); "
                                 f"got x={x!r:.40}, y={y!r:.40}")
        with self._lock:
            xs, ys = self._series.setdefault(str(series), ([], []))
            xs.append(float(x))
            ys.append(float(y))
            self.version += 1

    @property
    def series_names(self) -> list[str]:
        with self._lock:
            return list(self._series)

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """Copies of the x and y values of one series."""
        with self._lock:
            if name not in self._series:
                raise ParameterError(f"curve {self.name!r} has no series {name!r}; it has {list(self._series)}")
            xs, ys = self._series[name]
            return list(xs), list(ys)

    def data(self) -> dict[str, tuple[list[float], list[float]]]:
        """A consistent copy of every series."""
        with self._lock:
            return {k: (list(x), list(y)) for k, (x, y) in self._series.items()}

    def __len__(self) -> int:
        with self._lock:
            return sum(len(x) for x, _ in self._series.values())

    def _pick(self, data: dict, series: str | None):
        if series is None:
            return list(data.values())[-1]
        if series not in data:
            raise ParameterError(f"curve {self.name!r} has no series {series!r}; it has {list(data)}")
        return data[series]

    def last(self, series: str | None = None) -> tuple[float, float] | None:
        data = self.data()
        if not data and series is None:
            return None
        xs, ys = self._pick(data, series)
        return (xs[-1], ys[-1]) if xs else None

    def best(self, series: str | None = None) -> tuple[float, float] | None:
        """The best point (by ``lower_is_better``); None when the curve says nothing about it."""
        data = self.data()
        if series is not None:
            self._pick(data, series)  # an unknown series is an error, whatever the direction
        if self.lower_is_better is None or not data:
            return None
        xs, ys = self._pick(data, series)
        finite = [(y, x) for x, y in zip(xs, ys) if math.isfinite(y)]
        if not finite:
            return None
        y, x = min(finite) if self.lower_is_better else max(finite)
        return (x, y)

    def copy(self) -> Curve:
        out = Curve(self.name, x_label=self.x_label, y_label=self.y_label, x_unit=self.x_unit,
                    y_unit=self.y_unit, lower_is_better=self.lower_is_better)
        out._series = {k: (list(x), list(y)) for k, (x, y) in self.data().items()}
        out.version = self.version
        return out

    def describe(self) -> str:
        data = self.data()
        n = sum(len(x) for x, _ in data.values())
        last = ""
        if data:
            name = list(data)[-1]
            ys = data[name][1]
            if ys:
                last = f", last {ys[-1]:.4g} ({name})"
        return (f"curve {self.y_label} over {self.x_label}: {len(data)} series, {n} point"
                f"{'s' if n != 1 else ''}{last}")

    def to_dict(self) -> dict:
        """Plain JSON values; a NaN or infinite point (a diverged loss) is ``None`` (JSON has no NaN)."""
        def finite(values):
            return [v if math.isfinite(v) else None for v in values]

        return {"name": self.name, "x_label": self.x_label, "y_label": self.y_label, "x_unit": self.x_unit,
                "y_unit": self.y_unit, "lower_is_better": self.lower_is_better,
                "series": {k: {"x": finite(x), "y": finite(y)} for k, (x, y) in self.data().items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Curve:
        """The curve :meth:`to_dict` describes (``None`` values come back as NaN)."""
        try:
            c = cls(str(d.get("name", "curve")), x_label=str(d.get("x_label", "step")),
                    y_label=str(d.get("y_label", "value")), x_unit=str(d.get("x_unit", "")),
                    y_unit=str(d.get("y_unit", "")), lower_is_better=d.get("lower_is_better"))
            for name, s in d.get("series", {}).items():
                if len(s["x"]) != len(s["y"]):
                    raise ValueError(f"series {name!r} has {len(s['x'])} x and {len(s['y'])} y values")
                for x, y in zip(s["x"], s["y"]):
                    c.append(name, math.nan if x is None else x, math.nan if y is None else y)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ParameterError(f"not a curve description {{'name', 'series': {{name: {{'x': [...], 'y': [...]}}}}}} "
                                 f"({type(exc).__name__}: {exc})") from None
        return c

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        xu = f" [{self.x_unit}]" if self.x_unit else ""
        yu = f" [{self.y_unit}]" if self.y_unit else ""
        w.writerow(["series", self.x_label + xu, self.y_label + yu])
        for name, (xs, ys) in self.data().items():
            for x, y in zip(xs, ys):
                w.writerow([name, repr(x), repr(y)])
        return buf.getvalue()

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write as CSV (series, x, y) or JSON (with labels and units), atomically."""
        path = _path(path, "curve")
        suffix = _suffix(path, (".csv", ".json"), "curve")
        text = self.to_csv() if suffix == ".csv" else json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        return _write_text(path, text, overwrite)

    def fingerprint(self) -> str:
        return _sha(json.dumps(self.to_dict(), sort_keys=True).encode())

    def __repr__(self) -> str:
        return f"<medlab.Curve {self.describe()}>"


# ---------------------------------------------------------------------------- points
class PointSet:
    """Physical points in mm (LPS), with a role (``seeds``, ``fixed_landmarks`` ...) and optional names.

    Examples
    --------
    >>> p = PointSet([(1, 2, 3), (4, 5, 6)], role="fixed_landmarks")
    >>> len(p), p.describe()
    (2, 'fixed_landmarks: 2 points (mm, LPS)')
    """

    def __init__(self, points, *, role: str = "points", names: Sequence[str] | None = None):
        try:
            if isinstance(points, (str, bytes)):
                raise TypeError("text")
            points = list(points)
            arr = np.asarray(points if len(points) else np.zeros((0, 3)), float)
        except (TypeError, ValueError):
            raise ParameterError(f"points must be an (n, 2 or 3) array of finite mm values; got {points!r:.80}") from None
        if arr.ndim != 2 or arr.shape[1] not in (2, 3) or not np.all(np.isfinite(arr)):
            raise ParameterError(f"points must be an (n, 2 or 3) array of finite mm values; got shape {arr.shape}")
        role = str(role)
        self.points = arr
        self.points.flags.writeable = False
        self.role = role
        self.names = list(names) if names is not None else [f"{role} {i + 1}" for i in range(len(arr))]
        if len(self.names) != len(arr):
            raise ParameterError(f"{len(self.names)} names for {len(arr)} points")

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self):
        return iter(tuple(p) for p in self.points.tolist())

    def describe(self) -> str:
        return f"{self.role}: {len(self)} point{'s' if len(self) != 1 else ''} (mm, LPS)"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        axes = "xyz"[: self.points.shape[1]]
        w.writerow(["name", *[f"{a} [mm]" for a in axes]])
        for name, p in zip(self.names, self.points.tolist()):
            w.writerow([name, *map(repr, p)])
        return buf.getvalue()

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write as CSV (name, x, y, z in mm, LPS) or JSON, atomically."""
        path = _path(path, "point set")
        suffix = _suffix(path, (".csv", ".json"), "point set")
        text = self.to_csv() if suffix == ".csv" else json.dumps(
            {"role": self.role, "frame": "LPS", "unit": "mm", "names": self.names,
             "points": self.points.tolist()}, indent=1) + "\n"
        return _write_text(path, text, overwrite)

    def fingerprint(self) -> str:
        return _sha(self.role.encode(), np.ascontiguousarray(self.points).tobytes())

    def __repr__(self) -> str:
        return f"<medlab.PointSet {self.describe()}>"


# ---------------------------------------------------------------------------- checkpoint
class Checkpoint:
    """A trained model in one file: weights, network config, label names, preprocessing, metrics.

    Parameters
    ----------
    state_dict : mapping of str to tensor
        The network's weights (``model.state_dict()``).
    config : mapping
        How to rebuild the network (plain JSON-able values: architecture name, channels ...).
    labels : mapping, optional
        ``{value: name}`` of the output classes.
    preprocessing : mapping, optional
        The recipe (or parameters) applied to images before the network, re-applied at inference.
    metrics : mapping, optional
        Validation numbers measured when the model was trained.

    Examples
    --------
    >>> import torch
    >>> ck = Checkpoint({"w": torch.zeros(2)}, {"network": "toy"}, metrics={"dice": 0.9})
    >>> ck.describe()
    'model toy: 2 weights in 1 tensors, metrics dice=0.9'
    """

    def __init__(self, state_dict: Mapping[str, Any], config: Mapping[str, Any], *,
                 labels: Mapping[int, str] | None = None, preprocessing: Mapping[str, Any] | None = None,
                 metrics: Mapping[str, float] | None = None):
        for what, value in (("state_dict", state_dict), ("config", config), ("labels", labels or {}),
                            ("preprocessing", preprocessing or {}), ("metrics", metrics or {})):
            if not isinstance(value, Mapping):
                raise ParameterError(f"checkpoint {what} must be a mapping; got {type(value).__name__}")
        odd = next(((k, v) for k, v in state_dict.items()
                    if not isinstance(k, str) or not (hasattr(v, "shape") and hasattr(v, "detach"))), None)
        if odd is not None:
            raise ParameterError(f"checkpoint weights must map names (str) to tensors; got {odd[0]!r}: "
                                 f"{type(odd[1]).__name__}")
        self.state_dict = dict(state_dict)
        self.config = dict(config)
        try:
            self.labels = {int(k): str(v) for k, v in (labels or {}).items()}
        except (TypeError, ValueError):
            raise ParameterError(f"checkpoint labels must map integer values to names; got {labels!r:.80}") from None
        self.preprocessing = dict(preprocessing or {})
        self.metrics = dict(metrics or {})
        try:
            json.dumps([self.config, self.preprocessing, self.metrics])
        except (TypeError, ValueError, RecursionError) as exc:
            raise ParameterError(f"checkpoint config, preprocessing and metrics must be plain JSON values ({exc})") from None

    def n_weights(self) -> int:
        return int(sum(int(np.prod(tuple(t.shape))) for t in self.state_dict.values()))

    def describe(self) -> str:
        net = self.config.get("network", "network")
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in self.metrics.items() if isinstance(v, (int, float)))
        return (f"model {net}: {self.n_weights()} weights in {len(self.state_dict)} tensors"
                + (f", metrics {metrics}" if metrics else ""))

    def save(self, path, *, overwrite: bool = False) -> Path:
        """``torch.save`` of plain containers (loadable with ``weights_only=True``), atomically."""
        import torch

        from .io.atomic import atomic_path

        path = _path(path, "checkpoint")
        _suffix(path, (".pt", ".pth"), "model checkpoint")
        payload = {"format": "medlab.checkpoint", "version": 1, "state_dict": self.state_dict,
                   "config": json.dumps(self.config), "labels": json.dumps(self.labels),
                   "preprocessing": json.dumps(self.preprocessing), "metrics": json.dumps(self.metrics),
                   "sha256": self.fingerprint()}
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path) -> Checkpoint:
        """Read a checkpoint with ``torch.load(..., weights_only=True)`` (no code runs from the file)."""
        import torch

        from .io.paths import check_readable_file

        path = _path(path, "checkpoint")
        check_readable_file(path, "checkpoint")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
            raise ReadError(f"{path} is not a readable model checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(data, dict) or data.get("format") != "medlab.checkpoint":
            raise ReadError(f"{path} is not a medlab checkpoint (no 'format': 'medlab.checkpoint')")
        try:
            model = cls(data["state_dict"], json.loads(data["config"]), labels=json.loads(data["labels"]),
                        preprocessing=json.loads(data["preprocessing"]), metrics=json.loads(data["metrics"]))
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ReadError(f"{path}: checkpoint is incomplete or damaged ({type(exc).__name__}: {exc})") from None
        # torch does not check the zip's CRCs, so a flipped weight would load silently; files saved
        # before the checksum was written (version 1 without "sha256") load unchecked.
        if "sha256" in data and data["sha256"] != model.fingerprint():
            raise ReadError(f"{path}: checkpoint is damaged (its weights or config do not match the checksum "
                            "written when it was saved); use an intact copy")
        return model

    def fingerprint(self) -> str:
        parts = [json.dumps(self.config, sort_keys=True).encode()]
        for k in sorted(self.state_dict):
            parts += [k.encode(), self.state_dict[k].detach().cpu().numpy().tobytes()]
        return _sha(*parts)

    def __repr__(self) -> str:
        return f"<medlab.Checkpoint {self.describe()}>"


# ---------------------------------------------------------------------------- any output
def describe_value(value) -> str:
    """One line about any stage output (an Image, a Transform, a Table, ...)."""
    if value is None:
        return "nothing"
    if hasattr(value, "describe"):
        return value.describe()
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)[:120]


def fingerprint(value) -> str:
    """A SHA-256 of a value's content (an Image's voxels and geometry, a Transform's parameters ...)."""
    from .image import Image

    if isinstance(value, Image):
        arr = np.ascontiguousarray(value.array)
        geo = json.dumps({**grid_of(value), "kind": value.kind, "dtype": str(arr.dtype)}, sort_keys=True)
        return _sha(geo.encode(), arr.tobytes())
    if hasattr(value, "fingerprint"):
        return value.fingerprint()
    return _sha(json.dumps(value, sort_keys=True, default=str).encode())


def save_output(value, path, *, overwrite: bool = False) -> Path:
    """Save any stage output by its type: images through :func:`medlab.save`, the rest by their ``save``."""
    from .image import Image

    if isinstance(value, Image):
        from .io import save

        return save(value, path, overwrite=overwrite)
    if hasattr(value, "save"):
        return value.save(path, overwrite=overwrite)
    raise WriteError(f"a {type(value).__name__} cannot be saved to a file")


def default_suffix(value) -> str:
    """The file extension a value is saved with by default."""
    from .image import Image

    if isinstance(value, Image):
        return ".png" if value.rgb else ".nii.gz"
    return {Transform: ".h5", Table: ".csv", Curve: ".csv", PointSet: ".csv", Checkpoint: ".pt"}.get(type(value), "")
