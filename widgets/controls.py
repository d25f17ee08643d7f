"""Controls built from a parameter declaration: one function, :func:`param_control`, maps
each kind of :class:`medlab.stage.Param` to an ipywidget, with no code for a particular stage.

Float -> slider (log scale when declared), Int -> slider with the declared step, Choice ->
dropdown, Bool -> checkbox, Vector -> a row of number boxes (plus "auto" when optional), Numbers ->
a text box of comma-separated values, Points
-> bound to a viewer's ``points``, Grid -> a note (set from Python).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import numpy as np

from medlab.errors import ParameterError
from medlab.image import Image
from medlab.stage import Param

__all__ = ["ParamControl", "param_control"]

_DESC_STYLE = {"description_width": "initial"}


class ParamControl:
    """The widget of one parameter, read and written in the stage's own value types.

    Parameters
    ----------
    param : Param
        The declaration the control was built from.
    widget : ipywidgets.Widget
        What is displayed.
    get, set : callable
        Read the current value / show a value.
    watched : list of ipywidgets.Widget
        Widgets whose ``value`` changes mean the parameter changed.
    """

    def __init__(self, param: Param, widget: widgets.Widget, get: Callable[[], Any],
                 set: Callable[[Any], None], watched: list[widgets.Widget]):
        self.param, self.widget, self._get, self._set, self.watched = param, widget, get, set, watched
        widget.add_class("medlab-param")
        widget.add_class(f"medlab-param-{param.name}")
        # the help is shown, not only a tooltip: "0 = one eighth of the image" must be readable
        self.hint = widgets.HTML(f"<span title='{html.escape(param.help, quote=True)}'>"
                                 f"{html.escape(_short(param.help))}</span>" if param.help else "")
        self.hint.add_class("medlab-param-help")

    @property
    def row(self) -> widgets.Widget:
        """The control with its help text beside it."""
        if not self.param.help:
            return self.widget
        return widgets.HBox([self.widget, self.hint], layout=widgets.Layout(align_items="center"))

    @property
    def value(self) -> Any:
        return self._get()

    @value.setter
    def value(self, value: Any) -> None:
        self._set(value)

    def observe(self, callback: Callable[[dict], None]) -> None:
        """Call ``callback(change)`` whenever the user changes the value."""
        for w in self.watched:
            w.observe(callback, "value")


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1].rsplit(" ", 1)[0] + "…"


def _description(p: Param) -> str:
    label = p.label or p.name.replace("_", " ")
    return f"{label} ({p.unit})" if p.unit else label


def _float_control(p, image):
    desc, tip = _description(p), p.help
    log = p.log and p.min > 0
    if log:
        lo, hi = math.log10(p.min), math.log10(p.max)
        w = widgets.FloatLogSlider(value=p.default, base=10, min=lo, max=hi, step=_log_step(lo, hi, p.default),
                                   description=desc, tooltip=tip, readout_format=".3g", style=_DESC_STYLE)
    else:
        w = widgets.FloatSlider(value=p.default, min=p.min, max=p.max, step=_on_grid_step(p.min, p.default, p.step),
                                description=desc, tooltip=tip, readout_format=".3g", style=_DESC_STYLE)

    last = {"value": float(p.default)}   # the value last set from Python (a default, a recipe)

    def get():
        v = float(w.value)
        # the browser's snapping leaves float noise (30.000000000000004): the value set from Python
        # comes back exactly (a replayed recipe keeps its hash); a value the user dragged to loses
        # the noise. A slider may also step a hair outside the declared range.
        if math.isclose(v, last["value"], rel_tol=1e-9, abs_tol=1e-12 * (p.max - p.min)):
            return last["value"]
        return min(max(float(f"{v:.12g}"), p.min), p.max)

    def set_(value):
        value = float(value)
        last["value"] = value
        with w.hold_sync():   # the step that puts this value on the grid arrives with it
            if log and value > 0:
                w.step = _log_step(w.min, w.max, value)
            elif not log:
                w.step = _on_grid_step(p.min, value, p.step)
            w.value = value

    return ParamControl(p, w, get, set_, [w])


def _on_grid_step(lo: float, value: float, step: float) -> float:
    """The step nearest ``step`` that puts ``value`` on the slider's grid ``lo + k * step``.

    The browser's slider snaps its value onto that grid and, with ``continuous_update``, sends the
    snapped value back to the kernel: with a value off the grid a stage would silently run with
    another one (an occlusion box of 30.9 mm instead of its default 30).
    """
    d = value - lo
    if d <= 0 or step <= 0:
        return step
    return d / max(1, round(d / step))


def _log_step(lo: float, hi: float, value: float, n: int = 100) -> float:
    """A step in log10 units, about (hi - lo) / n, that puts ``value`` exactly on the slider's
    grid (else a default of 0.01 shows as 0.00977)."""
    return _on_grid_step(lo, math.log10(value), (hi - lo) / n)


def _int_control(p, image):
    w = widgets.IntSlider(value=p.default, min=p.min, max=p.max, step=p.step, description=_description(p),
                          tooltip=p.help, style=_DESC_STYLE)
    return ParamControl(p, w, lambda: int(w.value), lambda v: setattr(w, "value", int(v)), [w])


def _choice_control(p, image):
    w = widgets.Dropdown(options=list(p.options), value=p.default, description=_description(p),
                         tooltip=p.help, style=_DESC_STYLE)
    return ParamControl(p, w, lambda: w.value, lambda v: setattr(w, "value", v), [w])


def _bool_control(p, image):
    w = widgets.Checkbox(value=p.default, description=_description(p), tooltip=p.help, indent=False)
    return ParamControl(p, w, lambda: bool(w.value), lambda v: setattr(w, "value", bool(v)), [w])


def _vector_control(p, image):
    """A row of number boxes (x, y, z order); optional vectors get an 'auto' box meaning None."""
    n = p.length or (image.ndim if image is not None else 3)
    start = p.default if p.default is not None else (min(max(1.0, p.min), p.max),) * n
    boxes = [widgets.FloatText(value=float(v), description=axis, tooltip=p.help, style=_DESC_STYLE,
                               layout=widgets.Layout(width="7.5em")) for v, axis in zip(start, "xyz")]
    auto = widgets.Checkbox(value=p.default is None, description="auto", indent=False,
                            tooltip="leave unset: the stage decides", layout=widgets.Layout(width="5em"))
    for b in boxes:
        b.disabled = auto.value
    auto.observe(lambda ch: [setattr(b, "disabled", ch["new"]) for b in boxes], "value")
    head = widgets.Label(_description(p), tooltip=p.help)
    row = widgets.HBox([head, *boxes] + ([auto] if p.optional else []))

    def get():
        return None if p.optional and auto.value else tuple(float(b.value) for b in boxes)

    def set(value):
        if value is None:
            auto.value = True
            return
        values = p.validate(value, "")  # a scalar means the same on every axis, as the stage reads it
        auto.value = False
        for b, v in zip(boxes, values):
            b.value = float(v)

    return ParamControl(p, row, get, set, [*boxes, auto])


def _numbers_control(p, image):
    """A text box of comma-separated numbers (a schedule such as ``4, 2, 1``)."""
    def text(values):
        return ", ".join(str(v) for v in values)

    box = widgets.Text(value=text(p.default), description=_description(p), tooltip=p.help, style=_DESC_STYLE,
                       continuous_update=False, placeholder="e.g. " + text(p.default))

    def get():
        parts = [t.strip() for t in box.value.replace(";", ",").split(",") if t.strip()]
        try:
            return tuple(float(t) if not p.integer else int(float(t)) for t in parts)
        except (ValueError, OverflowError):  # "x", or "1e400" as an integer
            return box.value  # the stage's validation names the parameter and what it needs

    return ParamControl(p, box, get, lambda v: setattr(box, "value", text(p.validate(v, ""))), [box])


def _points_control(p, image):
    """Points come from a viewer's ``points`` (bound by the panel); the control shows the count."""
    state = {"value": tuple(p.default)}
    count = widgets.Label(f"{_description(p)}: 0 points", tooltip=p.help)
    pick = widgets.ToggleButton(value=False, description="pick in viewer", icon="crosshairs",
                                tooltip="click in the viewer to add points; shift-click removes one")
    pick.add_class("medlab-points-pick")
    hidden = widgets.IntText(value=0, layout=widgets.Layout(display="none"))  # change counter

    def set(value):
        state["value"] = tuple(tuple(float(c) for c in q) for q in _point_rows(value))
        count.value = f"{_description(p)}: {len(state['value'])} points"
        hidden.value += 1

    control = ParamControl(p, widgets.HBox([count, pick, hidden]), lambda: state["value"], set, [hidden])
    control.pick = pick
    return control


def _point_rows(value) -> list:
    """Rows of a points value as given from Python: a list, an ``(n, d)`` array, one point as a
    1D array, or a :class:`~medlab.outputs.PointSet` (the truth of an array is ambiguous)."""
    if value is None:
        return []
    if hasattr(value, "points") and hasattr(value, "role"):
        value = value.points
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim == 2 else ([] if value.size == 0 else [value.tolist()])
    return list(value)


def _grid_control(p, image):
    """A target grid is another image: set from Python, not previewed on a slice."""
    state = {"value": p.default}
    note = widgets.HTML(
        f"<i>{html.escape(_description(p))}: another image's grid; set it from Python with "
        f"<code>panel.set({p.name}=image)</code> (no slice preview while set)</i>"
    )
    hidden = widgets.IntText(value=0, layout=widgets.Layout(display="none"))

    def set(value):
        state["value"] = value
        note.value = note.value if value is None else f"<i>{html.escape(_description(p))}: {html.escape(value.describe())}</i>"
        hidden.value += 1

    return ParamControl(p, widgets.VBox([note, hidden]), lambda: state["value"], set, [hidden])


_BUILDERS = {"float": _float_control, "int": _int_control, "choice": _choice_control, "bool": _bool_control,
             "vector": _vector_control, "numbers": _numbers_control, "points": _points_control,
             "grid": _grid_control}


def param_control(param: Param, image: Image | None = None) -> ParamControl:
    """The control for one parameter declaration, chosen by its kind alone.

    Parameters
    ----------
    param : Param
        A parameter declaration (``Float``, ``Int``, ``Choice``, ``Bool``, ``Vector``,
        ``Points``, ``Grid``).
    image : Image, optional
        Used for the number of boxes of a vector whose length is not fixed.

    Returns
    -------
    ParamControl

    Examples
    --------
    >>> from medlab.stage import Float
    >>> p = Float(0.0, 2.0, 0.5, step=0.1, unit="mm"); p.name = "sigma"
    >>> c = param_control(p)
    >>> c.widget.max, c.widget.step, c.value
    (2.0, 0.1, 0.5)
    """
    try:
        build = _BUILDERS[param.kind]
    except KeyError:
        raise ParameterError(f"parameter {param.name!r} has kind {param.kind!r}, which has no widget") from None
    return build(param, image)


