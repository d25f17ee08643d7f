"""The stage declaration: declare a processing step once, get a function, a widget, a recipe
entry and a cohort task from it.

>>> from medlab.stage import stage, Float
>>> @stage("Scale", group="preprocess", factor=Float(0.0, 10.0, 1.0, help="multiplier"))
... def scale(image, *, factor=1.0):
...     return image.with_array(image.array * factor)

Calling ``scale(img, factor=20)`` raises a :class:`~medlab.errors.ParameterError` that names
``factor``, its range and the value, before any work starts. The widget layer reads
``scale.stage.params`` to build its controls; recipes store ``("scale", {"factor": 2.0})``.

Progress and cancellation go through one mechanism: a stage iterates with :func:`progress`
(or calls :func:`report` / :func:`check_cancelled`, or runs a SimpleITK filter with
:func:`execute_sitk`); whoever runs the stage decides where progress goes with
:func:`progress_to` (a widget bar, tqdm in a script, a log line in a batch run).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import Cancelled, ImageError, ParameterError
from .image import Image, as_image, check_finite

GROUPS = ("preprocess", "segment", "register", "explain", "measure")
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


class Points(Param):
    """A list of physical points in mm (LPS), e.g. seeds or landmarks clicked in the viewer."""

    kind = "points"

    def __init__(self, *, min_count: int = 0, max_count: int | None = None, help: str = "", label: str = ""):
        super().__init__(default=(), help=help, unit="mm", label=label)
        self.min_count, self.max_count = min_count, max_count

    def validate(self, value, stage_name):
        if isinstance(value, (str, bytes)) or any(isinstance(p, (str, bytes)) for p in (value or ())):
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

    def to_json(self, value):
        return [list(p) for p in value]

    def from_json(self, value):
        return tuple(tuple(p) for p in value)

    def spec(self):
        return {**super().spec(), "min_count": self.min_count, "max_count": self.max_count}


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
        size = value["size"]
        return Image(np.zeros(size[::-1], np.uint8), value["spacing"], value["origin"], value["direction"])


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
    outputs: tuple[str, ...] = ("image",)
    doc: str = ""
    function: Callable | None = None  # the public, validating wrapper

    @property
    def summary(self) -> str:
        """First paragraph of the docstring."""
        return self.doc.strip().split("\n\n")[0].replace("\n", " ") if self.doc else self.title

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """All parameters, defaults filled in, each checked; raises :class:`ParameterError`."""
        unknown = set(params) - set(self.params)
        if unknown:
            raise ParameterError(
                f"{self.name}: unknown parameter(s) {sorted(unknown)}; it takes {sorted(self.params)}"
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

    def params_to_json(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.params[k].to_json(v) for k, v in params.items()}

    def params_from_json(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.params[k].from_json(v) if k in self.params else v for k, v in params.items()}

    def describe(self) -> dict:
        """A JSON-able description of the stage and its parameters."""
        return {"name": self.name, "title": self.title, "group": self.group, "preview": self.preview,
                "dims": list(self.dims), "summary": self.summary,
                "params": [p.spec() for p in self.params.values()]}


_REGISTRY: dict[str, StageSpec] = {}
_recorder: ContextVar[list | None] = ContextVar("medlab_recorder", default=None)
_depth: ContextVar[int] = ContextVar("medlab_stage_depth", default=0)


def stage(title: str, *, group: str, preview: str | None = "slice", dims: Sequence[int] = (2, 3),
          accepts: Sequence[str] = ("intensity",), resamples: bool = False,
          outputs: Sequence[str] = ("image",), **params: Param):
    """Declare a processing stage.

    Parameters
    ----------
    title : str
        Human name shown in widgets ("Non-local means").
    group : {'preprocess', 'segment', 'register', 'explain', 'measure'}
    preview : {'slice', 'volume', None}
        Whether a live preview on the shown slice is meaningful (``'slice'``), needs the
        (downsampled) volume (``'volume'``), or makes no sense (``None``).
    dims : sequence of int
        Spatial dimensions the stage works in.
    accepts : sequence of str
        Image kinds accepted as first argument ('intensity', 'label', 'rgb').
    resamples : bool
        True when the output is on another grid than the input (resampling, cropping);
        otherwise the wrapper checks the output keeps the input's geometry.
    outputs : sequence of str
        Names of what the function returns: ``("image",)`` for one Image, or e.g.
        ``("image", "field")`` for a tuple whose first item is the image passed on.
    **params : Param
        One specification per keyword parameter of the function.
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}")
    if preview not in PREVIEWS:
        raise ValueError(f"preview must be one of {PREVIEWS}")

    def decorate(func):
        sig = inspect.signature(func)
        kw = {n: p for n, p in sig.parameters.items() if p.kind == p.KEYWORD_ONLY}
        if set(kw) != set(params):
            raise TypeError(f"{func.__name__}: declared {sorted(params)} but keyword-only parameters are {sorted(kw)}")
        for n, p in params.items():
            p.name = n
            if kw[n].default is not inspect.Parameter.empty and p.to_json(kw[n].default) != p.to_json(p.default):
                raise TypeError(f"{func.__name__}: default of {n} differs between signature and declaration")
        spec = StageSpec(func.__name__, title, group, dict(params), func, preview, tuple(dims),
                         tuple(accepts), resamples, tuple(outputs), inspect.getdoc(func) or "")

        @functools.wraps(func)
        def wrapper(image, **kwargs):
            image = as_image(image)
            _check_input(spec, image)
            values = spec.validate(kwargs)
            token = _depth.set(_depth.get() + 1)
            try:
                result = func(image, **values)
            finally:
                _depth.reset(token)
            out = result[0] if isinstance(result, tuple) else result
            if isinstance(out, Image) and not spec.resamples and not out.same_grid(image):
                raise AssertionError(f"stage {spec.name} changed the image geometry; declare resamples=True")
            rec = _recorder.get()
            if rec is not None and _depth.get() == 0:
                rec.append((spec.name, spec.params_to_json(values)))
            return result

        wrapper.stage = spec
        spec.function = wrapper
        _REGISTRY[spec.name] = spec
        return wrapper

    return decorate


def _check_input(spec: StageSpec, image: Image) -> None:
    if image.ndim not in spec.dims:
        raise ImageError(f"{spec.name} works on {' or '.join(f'{d}D' for d in spec.dims)} images; got a {image.ndim}D image")
    kind = "rgb" if image.rgb else image.kind
    if kind not in spec.accepts:
        hint = " (convert a colour picture with medlab.to_grey first)" if kind == "rgb" else ""
        raise ImageError(f"{spec.name} accepts {', '.join(spec.accepts)} images; got a {kind} image{hint}")
    check_finite(image)


def stages(group: str | None = None) -> list[StageSpec]:
    """Registered stages (all, or those of one group), in declaration order.

    Examples
    --------
    >>> import medlab
    >>> [s.name for s in medlab.stages("preprocess")][:2]  # doctest: +SKIP
    ['gaussian_smooth', 'median_filter']
    """
    _load_builtin_stages()
    return [s for s in _REGISTRY.values() if group is None or s.group == group]


def get_stage(name: str) -> StageSpec:
    """The declaration of stage ``name``; raises :class:`ParameterError` listing known ones."""
    _load_builtin_stages()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ParameterError(f"unknown stage {name!r}; known stages: {sorted(_REGISTRY)}") from None


def _load_builtin_stages() -> None:
    import importlib

    for mod in ("medlab.preprocess",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a stage module not written yet
            if exc.name != mod:
                raise


@contextlib.contextmanager
def record() -> Iterator[list]:
    """Record the top-level stage calls made inside the block as ``(name, params)`` pairs.

    Blocks nest: an enclosing ``record()`` receives the steps of an inner one too.
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


@contextlib.contextmanager
def progress_to(callback: Callable[[float, str], None] | None, cancel: threading.Event | None = None):
    """Send progress of stages run inside the block to ``callback(fraction, message)``.

    When ``cancel`` is set (from another thread), the running stage raises
    :class:`~medlab.errors.Cancelled` at its next progress step.
    """
    t1, t2 = _progress_cb.set(callback), _cancel.set(cancel)
    try:
        yield
    finally:
        _progress_cb.reset(t1)
        _cancel.reset(t2)


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
