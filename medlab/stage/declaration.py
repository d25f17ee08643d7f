"""The declaration itself: :func:`stage`, the :class:`StageSpec` it builds, the registry of
stages and groups, and recording calls as recipe :class:`Step` s."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ..errors import Cancelled, GeometryError, ParameterError
from ..image import Image
from .context import _Live, _live
from .params import Param, Points
from .ports import ImageInput, ImageOut, Input, Output, Result

PREVIEWS = ("slice", "volume", None)


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
        if not isinstance(n, str) or not n.isidentifier() or hasattr(Result, n):
            # result.count would be tuple.count, not the output: a silently wrong value
            raise TypeError(f"output name {n!r} must be a Python name that is not an attribute of a Result "
                            "(such as count, index, items, names, save); rename it")
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
    >>> from medlab.stage import Float, ImageInput, ImageOut
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
            kept = {n: _kept_value(spec.outputs[n], live.values.get(n), inputs) for n in spec.outputs}
            if any(v is not None for v in kept.values()):
                exc.result = Result(kept, stage=spec.name, cancelled=True)
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


def _kept_value(output, value, inputs: dict):
    """A published value as the output it stands for, or None when it is not one: the user
    pressed Cancel, and gets the cancellation (with what could be kept), not a TypeError."""
    if value is None:
        return None
    try:
        return output.coerce(value, inputs)
    except (TypeError, ParameterError):
        return None


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
_GROUPS: dict[str, str | tuple[str, ...] | None] = {
    "preprocess": "medlab.preprocess",
    "segment": ("medlab.segment", "medlab.deep"),
    "register": "medlab.register",
    "explain": "medlab.explain",
    "detect": "medlab.detect",
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


def register(spec: StageSpec) -> StageSpec:
    """Make a declaration known by name, e.g. on a cohort worker that received a stage defined in
    a notebook (the ``@stage`` decorator registers it where it runs, not where it is unpickled).

    Examples
    --------
    >>> register(get_stage("gaussian_smooth")).name
    'gaussian_smooth'
    """
    if not isinstance(spec, StageSpec):
        raise ParameterError(f"register takes a StageSpec (a stage function's .stage); got {type(spec).__name__}")
    known = _REGISTRY.get(spec.name)
    if known is not None and known is not spec and known.func is not spec.func:
        return known  # the first declaration under a name wins: no silent replacement
    _REGISTRY[spec.name] = spec
    return spec


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
        for module in (mod,) if isinstance(mod, str) else mod:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:  # an optional stage module that is not installed
                if exc.name != module:
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


