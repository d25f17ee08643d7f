"""How each stage output shows itself in a notebook: a curve as a live plot, a table as a table,
a transform as its parameters in mm and degrees, an image as a line with Show / Overlay / Save.

:class:`CurvePlot` is a small anywidget (an SVG line plot). A plotting library with its own
front-end extension (bqplot, plotly) would add megabytes and a second extension to install
for one line chart; the SVG here is about a hundred lines and redraws in a millisecond.

:class:`LiveView` shows what a running stage publishes (:func:`medlab.stage.publish`), throttled
so that a fast optimiser does not flood the comm channel; :class:`OutputsView` shows what an
Apply returned, one row per output.

CSS classes: ``medlab-live`` (live area), ``medlab-live-value`` (one published value as text),
``medlab-curve`` (a plot; ``data-points`` and ``data-series`` count what is drawn),
``medlab-outputs`` (the outputs of the last Apply), ``medlab-output[data-name=N]`` (one output),
``medlab-output-show`` / ``-overlay`` / ``-use`` / ``-save`` (its buttons), ``medlab-output-path``.
"""

from __future__ import annotations

import html
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets as widgets
import traitlets

from medlab.image import Image
from medlab.outputs import (
    Checkpoint,
    Curve,
    PointSet,
    Table,
    Transform,
    default_suffix,
    describe_value,
)

__all__ = ["CurvePlot", "LiveView", "OutputsView", "output_widget"]

_HERE = pathlib.Path(__file__).parent


class CurvePlot(anywidget.AnyWidget):
    """A line plot of a :class:`medlab.outputs.Curve` that redraws when the curve grows.

    Examples
    --------
    >>> from medlab.outputs import Curve
    >>> c = Curve("metric", x_label="iteration", y_label="MI", lower_is_better=True)
    >>> c.append("level 1", 0, -0.2); c.append("level 1", 1, -0.4)
    >>> plot = CurvePlot(c)
    >>> plot.series["level 1"]["y"]
    [-0.2, -0.4]
    """

    _esm = _HERE / "curve.js"
    series = traitlets.Dict().tag(sync=True)
    best = traitlets.List().tag(sync=True)
    markers = traitlets.List().tag(sync=True)
    """Vertical lines at given x values: ``[{"x": 0.42, "label": "Otsu", "color": "#e69f00"}, ...]``
    (e.g. thresholds on a histogram); the x range stretches to show every marker."""
    title = traitlets.Unicode("").tag(sync=True)
    x_label = traitlets.Unicode("").tag(sync=True)
    y_label = traitlets.Unicode("").tag(sync=True)
    width = traitlets.Int(420).tag(sync=True)
    height = traitlets.Int(220).tag(sync=True)

    def __init__(self, curve: Curve | None = None, **kwargs):
        super().__init__(**kwargs)
        self.add_class("medlab-curve-widget")
        self._version = -1
        if curve is not None:
            self.show(curve)

    def show(self, curve: Curve) -> None:
        """Send the curve's current data (nothing is sent when it has not changed)."""
        if curve.version == self._version and self.title == _curve_title(curve):
            return
        self._version = curve.version
        xu = f" ({curve.x_unit})" if curve.x_unit else ""
        yu = f" ({curve.y_unit})" if curve.y_unit else ""
        best = curve.best()
        with self.hold_sync():
            self.title = _curve_title(curve)
            self.x_label, self.y_label = curve.x_label + xu, curve.y_label + yu
            self.series = {k: {"x": x, "y": y} for k, (x, y) in curve.data().items()}
            self.best = list(best) if best else []


def _curve_title(curve: Curve) -> str:
    last = curve.last()
    best = curve.best()
    text = f"{curve.y_label}: last {last[1]:.4g}" if last else curve.y_label
    return text + (f", best {best[1]:.4g} at {curve.x_label} {best[0]:g}" if best else "")


# ---------------------------------------------------------------------------- one output
def transform_html(t: Transform) -> str:
    """A transform's parameters as a small table, in degrees and mm."""
    s = t.summary()
    rows = []
    if "rotation_deg" in s:
        rows.append(("rotation", ", ".join(f"{v:.3f}°" for v in s["rotation_deg"]) + " (about x, y, z)"))
    if "translation_mm" in s:
        rows.append(("translation", ", ".join(f"{v:.3f}" for v in s["translation_mm"]) + " mm (x, y, z; LPS)"))
    if "scale" in s:
        rows.append(("scale", f"{s['scale']:.5g}"))
    if "matrix" in s:
        rows.append(("matrix", "<br>".join(" ".join(f"{v: .4f}" for v in r) for r in s["matrix"])))
    if "centre_mm" in s:
        rows.append(("centre of rotation", ", ".join(f"{v:.1f}" for v in s["centre_mm"]) + " mm"))
    if "control_points" in s:
        rows.append(("B-spline", (f"{s['control_points']} control points; largest coefficient "
                                  f"{s['max_coefficient_mm']:.3f} mm")))
    if not rows:
        rows.append(("parameters", str(s.get("parameters", ""))))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td><code>{v}</code></td></tr>" for k, v in rows)
    return (f"<div class='medlab-transform'><b>{html.escape(t.name)}</b> (maps fixed → moving points)"
            f"<table>{body}</table></div>")


def table_html(t: Table, max_rows: int = 50) -> str:
    """A :class:`medlab.outputs.Table` as HTML, numbers to 4 significant digits."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (tuple, list)):
            return ", ".join(cell(x) for x in v)
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(t.header(c))}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in t.columns) + "</tr>"
                   for r in t.rows[:max_rows])
    more = f"<tr><td colspan={len(t.columns)}><i>… {len(t) - max_rows} more rows</i></td></tr>" if len(t) > max_rows else ""
    title = f"<b>{html.escape(t.title)}</b>" if t.title else ""
    return f"<div class='medlab-table'>{title}<table><tr>{head}</tr>{body}{more}</table></div>"


def output_widget(name: str, value: Any) -> widgets.Widget:
    """The display of one output value (without buttons)."""
    if isinstance(value, Curve):
        return CurvePlot(value)
    if isinstance(value, Transform):
        return widgets.HTML(transform_html(value))
    if isinstance(value, Table):
        return widgets.HTML(table_html(value))
    if isinstance(value, PointSet):
        t = Table([{"name": n, "x": p[0], "y": p[1], **({"z": p[2]} if len(p) > 2 else {})}
                   for n, p in zip(value.names, value.points.tolist())], units={"x": "mm", "y": "mm", "z": "mm"},
                  title=value.describe())
        return widgets.HTML(table_html(t))
    return widgets.HTML(f"<span>{html.escape(describe_value(value))}</span>")


# ---------------------------------------------------------------------------- live results
class LiveView(widgets.VBox):
    """What a running stage has published so far: a plot per curve, a line per other value.

    Updates arrive from the worker thread; they are sent to the browser at most every
    ``interval`` seconds (and once more at the end with :meth:`flush`).
    """

    def __init__(self, interval: float = 0.2):
        super().__init__()
        self.add_class("medlab-live")
        self.interval = interval
        self.values: dict[str, Any] = {}
        self._plots: dict[str, CurvePlot] = {}
        self._texts: dict[str, widgets.HTML] = {}
        self._lock = threading.Lock()
        self._sent = 0.0

    def clear(self) -> None:
        with self._lock:
            self.values.clear()
            self._plots.clear()
            self._texts.clear()
            self.children = []

    def update(self, values: dict[str, Any]) -> None:
        """Take newly published values (from any thread); redraw if the last redraw is old enough."""
        with self._lock:
            self.values.update(values)
            due = time.monotonic() - self._sent >= self.interval
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            self._sent = time.monotonic()
            values = dict(self.values)
        changed = False
        for name, value in values.items():
            if isinstance(value, Curve):
                if name not in self._plots:
                    self._plots[name] = CurvePlot()
                    changed = True
                self._plots[name].show(value)
            else:
                if name not in self._texts:
                    self._texts[name] = widgets.HTML()
                    self._texts[name].add_class("medlab-live-value")
                    changed = True
                self._texts[name].value = f"<b>{html.escape(name)}</b>: {html.escape(describe_value(value))}"
        if changed:
            self.children = [*self._plots.values(), *self._texts.values()]


# ---------------------------------------------------------------------------- outputs of an Apply
class OutputsView(widgets.VBox):
    """The outputs of the last Apply: each described, with buttons for what fits its type.

    Parameters
    ----------
    on_show : callable, optional
        ``on_show(name, image)``: show an image output (in the result viewer).
    on_overlay : callable, optional
        ``on_overlay(name, image)``: overlay a label map (or heat map) on the input viewer.
    on_use : callable, optional
        ``on_use(name, value)``: use the output as the next stage's input.
    """

    def __init__(self, *, on_show: Callable | None = None, on_overlay: Callable | None = None,
                 on_use: Callable | None = None, on_error: Callable | None = None):
        super().__init__()
        self.add_class("medlab-outputs")
        self.on_show, self.on_overlay, self.on_use = on_show, on_overlay, on_use
        self.on_error = on_error or (lambda exc: None)
        self.rows: dict[str, widgets.Widget] = {}

    def show(self, outputs: dict[str, Any], *, title: str = "") -> None:
        rows = []
        if title:
            rows.append(widgets.HTML(f"<b>{html.escape(title)}</b>"))
        self.rows = {}
        for name, value in outputs.items():
            if value is None:
                continue
            row = self._row(name, value)
            self.rows[name] = row
            rows.append(row)
        self.children = rows

    def _row(self, name: str, value: Any) -> widgets.Widget:
        head = widgets.HTML(f"<b>{html.escape(name)}</b>: {html.escape(describe_value(value))}")
        buttons: list[widgets.Widget] = []
        if isinstance(value, Image):
            if self.on_show is not None:
                buttons.append(self._button("show", "eye", "medlab-output-show", lambda: self.on_show(name, value)))
            if value.is_label and self.on_overlay is not None:
                buttons.append(self._button("overlay", "clone", "medlab-output-overlay",
                                            lambda: self.on_overlay(name, value)))
        if self.on_use is not None and not isinstance(value, (Curve, Table)):
            buttons.append(self._button("use as input", "arrow-right", "medlab-output-use",
                                        lambda: self.on_use(name, value)))
        if default_suffix(value):
            path = widgets.Text(value="", placeholder=f"{name}{default_suffix(value)}",
                                layout=widgets.Layout(width="16em"))
            path.add_class("medlab-output-path")
            buttons += [path, self._button("save", "download", "medlab-output-save",
                                           lambda: self._save(name, value, path))]
        body = [] if isinstance(value, (Image, Checkpoint)) else [output_widget(name, value)]
        head.layout = widgets.Layout(flex="1 1 20em")
        for b in buttons:
            b.layout.flex = "0 0 auto"
        row = widgets.VBox([widgets.HBox([head, *buttons], layout=widgets.Layout(flex_flow="row wrap",
                                                                                 align_items="center")), *body])
        row.add_class("medlab-output")
        row.add_class(f"medlab-output-{name}")
        return row

    def _button(self, text: str, icon: str, cls: str, action: Callable) -> widgets.Button:
        b = widgets.Button(description=text, icon=icon, layout=widgets.Layout(width="auto"))
        b.add_class(cls)

        def click(_):
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a button never raises into the void
                self.on_error(exc)

        b.on_click(click)
        return b

    def _save(self, name: str, value: Any, path_box: widgets.Text) -> None:
        from medlab.errors import MedlabError
        from medlab.outputs import save_output

        target = path_box.value.strip()
        if not target:
            raise MedlabError(f"type a file name for {name!r} first (e.g. {path_box.placeholder})")
        written = save_output(value, pathlib.Path(target).expanduser())
        path_box.value = ""
        path_box.placeholder = f"saved: {written}"
