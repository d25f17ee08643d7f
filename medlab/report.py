"""Self-contained HTML reports of a session's results: figures, every measured number, the recipe.

A :class:`Report` collects, in order, sections, text, figures, tables, measured numbers and the
recipe, and :meth:`Report.save` writes them as **one HTML file** (atomically): every picture is
an embedded base64 PNG and the style sheet is inline, so the file opens offline, can be mailed
or archived, and loads nothing from anywhere.

==========================  ===================================================================
method                      what it adds
==========================  ===================================================================
:meth:`Report.add_section`  a heading (also a link in the table of contents)
:meth:`Report.add_text`     paragraphs of plain text (escaped: no HTML gets through)
:meth:`Report.add_skipped`  a visible "skipped" line: a step that did not run, and why
:meth:`Report.add_image`    an :class:`~medlab.Image` as three planes (slices in physical
                            proportions, label outlines and a heat map drawn by
                            :mod:`medlab.render`), or any PNG (a viewer snapshot, a 3D
                            picture from :func:`surface_picture`) or uint8 array
:meth:`Report.add_curve`    a :class:`~medlab.outputs.Curve` plotted with matplotlib (Agg),
                            with its last/best values and every point as CSV
:meth:`Report.add_table`    a :class:`~medlab.outputs.Table` (units in the headers, CSV link)
:meth:`Report.add_number`   one measured number; all of them form the closing table
:meth:`Report.add_recipe`   a :class:`~medlab.recipe.Recipe` as JSON and as Python
:meth:`Report.add_outputs`  every output of a stage's Result or of ``Recipe.run``, each shown
                            by its type (:meth:`Report.add_output` for one)
==========================  ===================================================================

The numbers and the recipe are also embedded as JSON (``<script type="application/json"
id="medlab-numbers">`` and ``id="medlab-recipe"``), so a program can read a report back.

Why the HTML is written here with ``html.escape`` rather than a template engine (Jinja2) or
nbconvert: the page is a flat list of a dozen kinds of fragment, each a few lines; a template
would add a dependency to core medlab and a second place to read, and nbconvert needs a
notebook, which a script or ``medlab demo`` does not have.

Examples
--------
>>> import medlab
>>> from medlab.report import Report
>>> brain = medlab.data.brain_mri(size=(32, 32, 16), spacing=(6, 6, 8))
>>> report = Report("Brain phantom")
>>> _ = report.add_section("Scan").add_image(brain.flair, labels=brain.labels, caption="FLAIR")
>>> _ = report.add_number("tumour volume", 42.137, unit="mL")
>>> html = report.to_html()
>>> "42.14" in html and "data:image/png;base64," in html and "http" not in html
True
>>> report.save("report.html")                               # doctest: +SKIP
PosixPath('report.html')
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import render
from .errors import ImageError, ParameterError
from .image import Image
from .outputs import Curve, Table

__all__ = ["Report", "format_number", "slice_figure", "surface_picture"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2430;background:#fafbfc}
main{max-width:1040px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 2px} h2{font-size:20px;margin:34px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
.sub{color:#5a6472;margin:0 0 14px} nav{font-size:13px;margin:10px 0 18px} nav a{margin-right:12px;color:#2257a5}
figure{margin:12px 0 18px} figure img{max-width:100%;background:#000;border-radius:3px}
figcaption{font-size:13px;color:#4a5360;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 4px;background:#fff}
th,td{border:1px solid #d8dde3;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.caption{font-size:13px;color:#4a5360;margin:14px 0 2px;font-weight:600}
.skipped{border-left:4px solid #c77700;background:#fff7e8;padding:6px 10px;margin:10px 0;font-size:14px}
pre{background:#f1f3f6;border:1px solid #d8dde3;padding:10px;overflow-x:auto;font-size:12px;line-height:1.35}
details{margin:6px 0} summary{cursor:pointer;font-size:13px;color:#2257a5}
a.csv{font-size:12px;color:#2257a5}
footer{margin-top:40px;font-size:12px;color:#6a7482}
"""


# ---------------------------------------------------------------------------- numbers
def format_number(value: Any) -> str:
    """How a report shows a value: 4 significant digits for reals, as is for the rest.

    Examples
    --------
    >>> format_number(0.912345), format_number(12), format_number(float("nan")), format_number(True)
    ('0.9123', '12', 'NaN', 'yes')
    >>> format_number(1234567.0), format_number((1.0, 2.5)), format_number(None)
    ('1.235e+06', '1, 2.5', '–')
    """
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.4g}"
    if isinstance(value, (tuple, list, np.ndarray)):
        return ", ".join(format_number(v) for v in np.asarray(value, dtype=object).ravel().tolist())
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _json_value(value: Any) -> Any:
    """A JSON-able copy (numpy scalars to Python, non-finite floats to strings)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_json_value(v) for v in np.asarray(value, dtype=object).ravel().tolist()]
    return None if value is None else str(value)


def _script_json(data: Any, element_id: str) -> str:
    # "</" would end the <script> element early and "<!--" would make the next "</script>" not
    # end it (HTML's script data escape states); "\u003c" is the same "<" in JSON
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _data_link(text: str, filename: str, mime: str, label: str) -> str:
    b64 = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return (f'<a class="csv" download="{html.escape(filename)}" '
            f'href="data:{mime};charset=utf-8;base64,{b64}">{html.escape(label)}</a>')


def _slug(text: str, taken: set[str]) -> str:
    base = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


# ---------------------------------------------------------------------------- pictures
def slice_figure(image: Image, *, labels: Image | None = None, heat: Image | None = None,
                 second: Image | None = None, second_mode: str = "checkerboard", at: Sequence[float] | None = None,
                 planes: Sequence[str] = render.PLANES, window: float | None = None, level: float | None = None,
                 outline: bool = True, heat_threshold: float = 0.2, size: int = 300) -> np.ndarray:
    """Three planes (or fewer) through one point, composed as the viewer draws them: RGB uint8.

    Each plane is shown in radiological display orientation with square millimetre pixels and
    edge letters (:mod:`medlab.render`); overlays are resampled onto ``image``'s grid by physical
    position first, so a label map or saliency map on another grid lands on the same anatomy.

    Parameters
    ----------
    image : Image
        The scan, 2D or 3D (a label map is drawn in its label colours).
    labels : Image, optional
        Label map drawn as outlines (``outline=True``) or filled at 40 %.
    heat : Image, optional
        Heat map (e.g. a saliency map), inferno colours from 0 to its largest value, drawn
        where it exceeds ``heat_threshold`` times that value.
    second : Image, optional
        A second scan (e.g. a registered image), as a ``checkerboard``, ``blend`` or ``difference``.
    at : 3 floats, optional
        The point (mm, LPS) the planes go through. Default: the centre of ``labels``, else the
        maximum of ``heat``, else the image centre.
    planes : sequence of str
        Which of ``"axial"``, ``"coronal"``, ``"sagittal"`` (3D images).
    window, level : float, optional
        Display window; default :func:`medlab.render.auto_window`.
    size : int
        Largest side of each plane, in pixels.

    Returns
    -------
    ndarray
        ``[rows, cols, 3]`` uint8, the planes side by side.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.random.default_rng(0).random((10, 20, 30)), spacing=(1.0, 1.0, 3.0))
    >>> pic = slice_figure(img, size=60)
    >>> pic.dtype, pic.shape[2], pic.shape[0] <= 60
    (dtype('uint8'), 3, True)
    """
    if not isinstance(image, Image):
        raise ParameterError(f"slice_figure needs a medlab Image; got {type(image).__name__}")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 4096:
        raise ParameterError(f"size must be an integer number of pixels in 16..4096; got {size!r}")
    planes = ("axial",) if image.ndim == 2 else tuple(render._check_plane(p) for p in planes)
    if not planes:
        raise ParameterError("planes must name at least one of 'axial', 'coronal', 'sagittal'")
    layers = {}
    for name, layer in (("labels", labels), ("heat", heat), ("second", second)):
        if layer is not None:
            if not isinstance(layer, Image):
                raise ParameterError(f"{name} must be a medlab Image; got {type(layer).__name__}")
            layers[name] = render.resample_like(layer, image)
    if window is None or level is None:
        auto = (255.0, 127.5) if image.rgb else render.auto_window(image)
        window = auto[0] if window is None else window
        level = auto[1] if level is None else level
    volume, spacing = render.display_array(image)
    shown = {k: render.display_array(v)[0] for k, v in layers.items()}
    centre = _display_point(image, layers, at)
    label_colors = {v: lab.color for v, lab in layers["labels"].labels.items()} if "labels" in layers else {}
    heat_max = float(np.nanmax(layers["heat"].array)) if "heat" in layers else 1.0
    heat_max = heat_max if math.isfinite(heat_max) and heat_max > 0 else 1.0
    second_window = render.auto_window(layers["second"]) if "second" in layers else None
    pictures = {}
    for plane in planes:
        index = int(np.clip(round(centre[render._NORMAL_AXIS[plane]]), 0, render.slice_count(image, plane) - 1)
                    ) if image.ndim == 3 else 0
        pictures[plane] = _plane_rgb(image, volume, shown, plane, index, (float(window), float(level)), outline,
                                     heat_max, heat_threshold, second_mode, second_window, label_colors)
    # one scale for every plane (as the viewer's snapshot), so a millimetre is as long in each
    extent = 0.0
    for plane, rgb in pictures.items():
        sx, sy = render.plane_spacing(spacing, plane)
        extent = max(extent, rgb.shape[1] * sx, rgb.shape[0] * sy)
    panels = [render.panel_picture(rgb, render.plane_spacing(spacing, plane), extent / size,
                                   letters=render.EDGE_LETTERS[plane] if image.ndim == 3 else None)
              for plane, rgb in pictures.items()]
    return render.montage(panels)


def _display_point(image: Image, layers: dict[str, Image], at) -> np.ndarray:
    """Display index ``(i, j, k)`` of the point the planes go through."""
    if image.ndim == 2:
        return np.zeros(3)
    if at is not None:
        try:
            point = np.asarray(at, float).reshape(3)
        except (TypeError, ValueError):
            raise ParameterError(f"at must be a point (x, y, z) in mm; got {at!r}") from None
        if not np.all(np.isfinite(point)):
            raise ParameterError(f"at must be finite; got {at!r}")
        index = image.physical_to_index(point)
    elif "labels" in layers and np.any(layers["labels"].array):
        index = np.argwhere(layers["labels"].array != 0).mean(axis=0)[::-1]
    elif "heat" in layers and np.any(np.isfinite(layers["heat"].array)):
        index = np.array(np.unravel_index(np.nanargmax(layers["heat"].array), image.shape)[::-1], float)
    else:
        index = (np.array(image.size) - 1) / 2.0
    return (np.linalg.inv(render.display_to_index(image)) @ [*index, 1.0])[:3]


def _plane_rgb(image, volume, shown, plane, index, window_level, outline, heat_max, heat_threshold,
               second_mode, second_window, label_colors) -> np.ndarray:
    raw = render.plane_array(volume, plane, index)
    window, level = window_level
    if image.rgb:
        return np.ascontiguousarray(raw[..., :3]).astype(np.uint8)
    if image.is_label:
        colors = {v: lab.color for v, lab in image.labels.items()}
        return render.compose(np.zeros(raw.shape, np.uint8), labels=raw, label_colors=colors, label_opacity=1.0)
    kwargs: dict[str, Any] = {}
    if "second" in shown:
        kwargs.update(second=render.window_level(render.plane_array(shown["second"], plane, index), *second_window),
                      second_mode=second_mode, checker=max(4, raw.shape[0] // 8))
    if "heat" in shown:
        kwargs.update(heat=np.nan_to_num(render.plane_array(shown["heat"], plane, index)), heat_range=(0.0, heat_max),
                      heat_threshold=heat_threshold * heat_max, heat_opacity=0.6)
    if "labels" in shown:
        kwargs.update(labels=render.plane_array(shown["labels"], plane, index), label_colors=label_colors,
                      label_outline_only=outline, label_opacity=0.4)
    return render.compose(render.window_level(raw, window, level), **kwargs)


def surface_picture(meshes: Sequence[Any], *, size: tuple[int, int] = (520, 420), elevation: float = 15.0,
                    azimuth: float = -70.0, opacity: Mapping[str, float] | None = None,
                    title: str = "") -> np.ndarray:
    """A 3D picture of surfaces (:class:`medlab.mesh.Mesh`, mm, LPS), rendered without a screen.

    Drawn with matplotlib's ``mplot3d`` on the Agg backend (flat shading from one light,
    painter's-algorithm depth order), so it works in a script or on a server where the notebook's
    WebGL view (:mod:`medlab.widgets.view3d`) cannot run. Axes are in mm with the patient's
    directions; the default view is from the front-right, so the patient's right is on the
    left as in radiology. Keep meshes below ~20,000 faces (``reduction=`` of
    :func:`medlab.mesh.label_surfaces`): every triangle is a matplotlib polygon.

    Parameters
    ----------
    meshes : sequence of Mesh
        Drawn in their label colours.
    size : (width, height)
        Pixels.
    elevation, azimuth : float
        Camera angles in degrees (matplotlib's ``view_init``); azimuth -90 looks from the front.
    opacity : mapping, optional
        ``{mesh name: alpha}``; default 1 for the first mesh and 0.35 for the others.
    title : str

    Returns
    -------
    ndarray
        ``[height, width, 3]`` uint8.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab.mesh import Mesh
    >>> tetra = Mesh(np.eye(3).tolist() + [[0, 0, 0]], [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    >>> surface_picture([tetra], size=(120, 100)).shape
    (100, 120, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    meshes = list(meshes)
    if not meshes or not all(hasattr(m, "vertices") and hasattr(m, "faces") for m in meshes):
        raise ParameterError("surface_picture needs one or more medlab.mesh.Mesh surfaces")
    width, height = (int(s) for s in size)
    if not (32 <= width <= 4096 and 32 <= height <= 4096):
        raise ParameterError(f"size must be (width, height) in 32..4096 pixels; got {size!r}")
    faces_total = sum(len(m.faces) for m in meshes)
    if faces_total > 200_000:
        raise ParameterError(f"{faces_total} faces are too many to draw with matplotlib; decimate first "
                             "(medlab.mesh.label_surfaces(..., reduction=0.9))")
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    light = np.array([-0.4, -0.8, 0.6])
    light /= np.linalg.norm(light)
    for n, mesh in enumerate(meshes):
        tri = mesh.vertices[mesh.faces]
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.clip(normals @ light, 0.0, 1.0)
        alpha = (opacity or {}).get(mesh.name, 1.0 if n == 0 else 0.35)
        colours = np.concatenate([np.asarray(mesh.color, float)[None] / 255.0 * shade[:, None],
                                  np.full((len(tri), 1), alpha)], axis=1)
        ax.add_collection3d(Poly3DCollection(tri, facecolors=colours, edgecolors="none"))
    lo = np.min([m.vertices.min(axis=0) for m in meshes], axis=0)
    hi = np.max([m.vertices.max(axis=0) for m in meshes], axis=0)
    pad = 0.05 * (hi - lo).max()
    ax.set_xlim(lo[0] - pad, hi[0] + pad)
    ax.set_ylim(lo[1] - pad, hi[1] + pad)
    ax.set_zlim(lo[2] - pad, hi[2] + pad)
    ax.set_box_aspect(np.maximum(hi - lo + 2 * pad, 1e-3))       # millimetres are equal on every axis
    ax.set_xlabel("x mm (→ L)", fontsize=8)
    ax.set_ylabel("y mm (→ P)", fontsize=8)
    ax.set_zlabel("z mm (→ S)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.view_init(elev=elevation, azim=azimuth)
    if title:
        ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.95 if title else 1)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _curve_png(curve: Curve, width: int = 640, height: int = 300) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, (xs, ys) in curve.data().items():
        ax.plot(xs, ys, label=name, linewidth=1.4, marker="." if len(xs) < 40 else None)
    best = curve.best()
    if best is not None:
        ax.plot([best[0]], [best[1]], "o", markersize=8, markerfacecolor="none", markeredgecolor="k",
                label=f"best {format_number(best[1])}")
    xu = f" [{curve.x_unit}]" if curve.x_unit else ""
    yu = f" [{curve.y_unit}]" if curve.y_unit else ""
    ax.set_xlabel(curve.x_label + xu)
    ax.set_ylabel(curve.y_label + yu)
    ax.grid(alpha=0.3)
    if curve.series_names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def _png_bytes(picture) -> bytes:
    if isinstance(picture, (bytes, bytearray)):
        data = bytes(picture)
        if not data.startswith(PNG_SIGNATURE):
            raise ImageError("the picture bytes are not a PNG (no PNG signature); give PNG bytes, "
                             "a uint8 array or a medlab Image")
        return data
    arr = np.asarray(picture)
    if arr.dtype != np.uint8:
        raise ParameterError(f"a picture array must be uint8 ([y, x] or [y, x, 3|4]); got {arr.dtype}: "
                             "use medlab.render.window_level first")
    return render.to_png(arr, compress_level=6)


# ---------------------------------------------------------------------------- the report
class Report:
    """One HTML report, built in the order things are added.

    Parameters
    ----------
    title : str
        The report's title (and the HTML page's).
    subtitle : str
        A line under the title (e.g. the scan and the date).

    Every ``add_*`` method returns the report, so calls chain. Nothing is written until
    :meth:`save`.

    Examples
    --------
    >>> from medlab.outputs import Curve, Table
    >>> c = Curve("loss", x_label="epoch", y_label="Dice loss", lower_is_better=True)
    >>> for epoch, loss in enumerate([0.9, 0.5, 0.4], 1):
    ...     c.append("train", epoch, loss)
    >>> r = (Report("Training").add_curve(c, caption="loss per epoch")
    ...      .add_table(Table([{"label": "tumour", "dice": 0.875}], units={"dice": ""}, title="overlap")))
    >>> html = r.to_html()
    >>> "0.875" in html, html.count("<img")
    (True, 1)
    """

    def __init__(self, title: str, *, subtitle: str = ""):
        if not isinstance(title, str) or not title.strip():
            raise ParameterError("a report needs a title (a non-empty string)")
        self.title = title.strip()
        self.subtitle = str(subtitle)
        self.created = datetime.datetime.now().astimezone()
        self._blocks: list[str] = []
        self._sections: list[tuple[str, str]] = []
        self._slugs: set[str] = set()
        self._section = ""
        self._numbers: list[dict[str, Any]] = []
        self._skipped: list[dict[str, str]] = []
        self._recipes: list[dict] = []
        self._figures = 0

    # ------------------------------------------------------------------ content
    def add_section(self, title: str) -> Report:
        """Start a section (a heading, listed in the table of contents)."""
        if not isinstance(title, str) or not title.strip():
            raise ParameterError("a section needs a title (a non-empty string)")
        slug = _slug(title, self._slugs)
        self._section = title.strip()
        self._sections.append((slug, self._section))
        self._blocks.append(f'<h2 id="{slug}">{html.escape(self._section)}</h2>')
        return self

    def add_text(self, text: str) -> Report:
        """Plain text; blank lines separate paragraphs. It is escaped, never read as HTML."""
        for para in str(text).strip().split("\n\n"):
            if para.strip():
                self._blocks.append(f"<p>{html.escape(' '.join(para.split()))}</p>")
        return self

    def add_skipped(self, step: str, reason: str) -> Report:
        """Say that a step did not run and why (shown in place and listed at the end)."""
        self._skipped.append({"step": str(step), "reason": str(reason), "section": self._section})
        self._blocks.append(f'<div class="skipped"><b>Skipped: {html.escape(str(step))}.</b> '
                            f'{html.escape(str(reason))}</div>')
        return self

    def add_image(self, picture, *, caption: str = "", labels: Image | None = None, heat: Image | None = None,
                  second: Image | None = None, at: Sequence[float] | None = None,
                  planes: Sequence[str] = render.PLANES, window: float | None = None, level: float | None = None,
                  outline: bool = True, size: int = 300) -> Report:
        """A figure: a medlab Image as planes with overlays (:func:`slice_figure`), or a picture.

        Parameters
        ----------
        picture : Image, bytes or ndarray
            An :class:`~medlab.Image` (drawn by :func:`slice_figure` with the overlay
            arguments), PNG bytes (e.g. ``Viewer.snapshot()``, a 3D picture) or a uint8 array
            ``[y, x]`` / ``[y, x, 3|4]``.
        caption : str
            Shown under the figure.
        labels, heat, second, at, planes, window, level, outline, size
            See :func:`slice_figure` (Images only).
        """
        if isinstance(picture, Image):
            pixels = slice_figure(picture, labels=labels, heat=heat, second=second, at=at, planes=planes,
                                  window=window, level=level, outline=outline, size=size)
            png = render.to_png(pixels, compress_level=6)
        else:
            if any(v is not None for v in (labels, heat, second, at)):
                raise ParameterError("labels, heat, second and at apply to a medlab Image, not to a picture")
            png = _png_bytes(picture)
        self._figure(png, caption)
        return self

    def add_curve(self, curve: Curve, *, caption: str = "") -> Report:
        """A plot of every series of a :class:`~medlab.outputs.Curve`, with a table of each
        series' last (and best) value and a CSV link holding every point."""
        if not isinstance(curve, Curve):
            raise ParameterError(f"add_curve needs a medlab Curve; got {type(curve).__name__}")
        if len(curve) == 0:
            return self.add_skipped(caption or curve.name, "the curve has no points")
        self._figure(_curve_png(curve), caption or curve.describe())
        rows = []
        for name, (xs, ys) in curve.data().items():
            row = {"series": name, "points": len(xs), f"last {curve.x_label}": xs[-1], f"last {curve.y_label}": ys[-1]}
            best = curve.best(name)
            if best is not None:
                row[f"best {curve.y_label}"], row[f"at {curve.x_label}"] = best[1], best[0]
            rows.append(row)
        slug = "".join(c if c.isalnum() else "_" for c in curve.name)
        self._blocks.append(self._table_html(Table(rows), "", extra=_data_link(
            curve.to_csv(), f"{slug}.csv", "text/csv", "every point (CSV)")))
        return self

    def add_table(self, table: Table | Iterable[Mapping[str, Any]], *, caption: str = "") -> Report:
        """A table (a :class:`~medlab.outputs.Table` or rows of dicts), units in the headers,
        with a CSV link holding the exact values."""
        if not isinstance(table, Table):
            try:
                table = Table(table)
            except (TypeError, ValueError):
                raise ParameterError("add_table needs a medlab Table or an iterable of row dicts") from None
        slug = "".join(c if c.isalnum() else "_" for c in (caption or table.title or "table"))[:40]
        self._blocks.append(self._table_html(table, caption or table.title, extra=_data_link(
            table.to_csv(), f"{slug}.csv", "text/csv", "CSV")))
        return self

    def add_number(self, name: str, value: Any, *, unit: str = "", note: str = "") -> Report:
        """One measured number (or a yes/no, or a short text); every one is listed in the
        closing table "Every measured number" under the section it was added in."""
        if not isinstance(name, str) or not name.strip():
            raise ParameterError("a number needs a name")
        if isinstance(value, (np.ndarray, list, tuple)) and np.size(value) > 16:
            raise ParameterError(f"{name}: a number must be a scalar (or a few values); use add_table for arrays")
        self._numbers.append({"section": self._section, "name": name.strip(), "value": value,
                              "unit": str(unit), "note": str(note)})
        return self

    def add_numbers(self, values: Mapping[str, Any], *, units: Mapping[str, str] | None = None) -> Report:
        """Several numbers at once: ``{name: value}``, with optional ``{name: unit}``."""
        for name, value in values.items():
            self.add_number(name, value, unit=(units or {}).get(name, ""))
        return self

    def add_output(self, value, *, caption: str = "", over: Image | None = None) -> Report:
        """Any stage output, shown by its type: an Image as planes (a label map or a map of
        values drawn ``over`` the scan when given), a Curve plotted, a Table, a Transform's
        parameters (rotation in degrees, translation in mm), a PointSet's points, a model's card,
        a number; PNG bytes as a picture.

        Examples
        --------
        >>> from medlab.outputs import Table
        >>> r = Report("x").add_output(Table([{"dice": 0.9}]), caption="scores").add_output(2.5, caption="TRE")
        >>> [n["name"] for n in r.numbers.rows]
        ['TRE']
        """
        from .outputs import Checkpoint, PointSet, Transform

        if isinstance(value, Image):
            if over is not None and value.is_label:
                return self.add_image(over, labels=value, caption=caption)
            if over is not None:
                return self.add_image(over, heat=value, caption=caption)
            return self.add_image(value, caption=caption or value.describe())
        if isinstance(value, Curve):
            return self.add_curve(value, caption=caption)
        if isinstance(value, Table):
            return self.add_table(value, caption=caption)
        if isinstance(value, Transform):
            summary = value.summary()
            return self.add_table(Table([{"quantity": k, "value": v} for k, v in summary.items()],
                                        title=caption or f"transform: {value.describe()}"))
        if isinstance(value, PointSet):
            return self.add_table(Table([{"name": n, "x": p[0], "y": p[1], **({"z": p[2]} if len(p) > 2 else {})}
                                         for n, p in zip(value.names, value.points)],
                                        units={"x": "mm", "y": "mm", "z": "mm"}, title=caption or value.describe()))
        if isinstance(value, Checkpoint):
            return self.add_text(f"{caption + ': ' if caption else ''}{value.describe()}")
        if isinstance(value, (bytes, bytearray, np.ndarray)):
            return self.add_image(value, caption=caption)
        if _is_number(value) or isinstance(value, (bool, np.bool_)):
            return self.add_number(caption or "value", value)
        if value is None:
            return self.add_skipped(caption or "output", "no value (an optional output that was not made)")
        raise ParameterError(f"add_output does not know how to show a {type(value).__name__}; "
                             "use add_text, add_number or add_image")

    def add_outputs(self, outputs, *, over: Image | None = None) -> Report:
        """Every output of a stage :class:`~medlab.stage.Result` or of ``Recipe.run`` (anything
        with ``items()``), each captioned with its name, as :meth:`add_output` shows it."""
        if not hasattr(outputs, "items"):
            raise ParameterError("add_outputs needs a stage Result or a mapping {name: output}; for one value "
                                 "use add_output")
        for name, value in outputs.items():
            self.add_output(value, caption=str(name), over=over)
        return self

    def add_recipe(self, recipe, *, caption: str = "Recipe") -> Report:
        """The recipe as Python (what a person would write) and as JSON (what replays), both
        also downloadable from the report."""
        if not (hasattr(recipe, "to_json") and hasattr(recipe, "to_python")):
            raise ParameterError(f"add_recipe needs a medlab Recipe; got {type(recipe).__name__}")
        text_json, text_py = recipe.to_json(), recipe.to_python()
        self._recipes.append(json.loads(text_json))
        links = (_data_link(text_json + "\n", "recipe.json", "application/json", "recipe.json") + " · "
                 + _data_link(text_py, "recipe.py", "text/x-python", "recipe.py"))
        self._blocks.append(
            f'<div class="caption">{html.escape(caption)} ({len(recipe)} steps, inputs: '
            f'{html.escape(", ".join(recipe.inputs))}) — download {links}</div>'
            f"<details open><summary>as Python</summary><pre>{html.escape(text_py)}</pre></details>"
            f"<details><summary>as JSON (replays with medlab.recipe.Recipe.from_json)</summary>"
            f"<pre>{html.escape(text_json)}</pre></details>")
        return self

    # ------------------------------------------------------------------ reading back
    @property
    def numbers(self) -> Table:
        """Every number added, as a Table (section, name, value, unit, note)."""
        return Table([dict(r) for r in self._numbers], title="every measured number")

    @property
    def skipped(self) -> list[dict[str, str]]:
        """The steps reported as skipped, with their reasons."""
        return [dict(s) for s in self._skipped]

    # ------------------------------------------------------------------ output
    def to_html(self) -> str:
        """The whole report as one HTML document (a string)."""
        head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width,initial-scale=1">'
                f'<meta name="generator" content="medlab">'
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body><main>")
        from . import __version__

        parts = [head, f"<h1>{html.escape(self.title)}</h1>"]
        when = self.created.strftime("%Y-%m-%d %H:%M %Z").strip()
        parts.append(f'<p class="sub">{html.escape(self.subtitle + " · " if self.subtitle else "")}'
                     f"{html.escape(when)} · medlab {html.escape(__version__)}</p>")
        nav = list(self._sections)
        if self._numbers:
            nav.append(("every-measured-number", "Every measured number"))
        if self._skipped:
            nav.append(("skipped-steps", "Skipped steps"))
        if nav:
            parts.append("<nav>" + "".join(f'<a href="#{s}">{html.escape(t)}</a>' for s, t in nav) + "</nav>")
        parts.extend(self._blocks)
        if self._numbers:
            parts.append('<h2 id="every-measured-number">Every measured number</h2>')
            parts.append(self._table_html(self.numbers, "", extra=_data_link(
                self.numbers.to_csv(), "numbers.csv", "text/csv", "CSV")))
        if self._skipped:
            parts.append('<h2 id="skipped-steps">Skipped steps</h2><ul>' + "".join(
                f"<li><b>{html.escape(s['step'])}</b>: {html.escape(s['reason'])}</li>" for s in self._skipped)
                + "</ul>")
        parts.append(_script_json([{k: _json_value(v) if k == "value" else v for k, v in r.items()}
                                   for r in self._numbers], "medlab-numbers"))
        if self._recipes:
            parts.append(_script_json(self._recipes[-1], "medlab-recipe"))
        parts.append(f"<footer>Written by medlab {html.escape(__version__)}. Self-contained: every figure is "
                     "embedded; nothing is loaded from the network.</footer></main></body></html>\n")
        return "".join(parts)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the report as one HTML file, atomically; refuses to overwrite unless asked."""
        from .io import atomic_write_text

        path = Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ParameterError(f"a report is saved as .html; got {path.name!r}")
        return atomic_write_text(path, self.to_html(), overwrite=overwrite)

    # ------------------------------------------------------------------ pieces
    def _figure(self, png: bytes, caption: str) -> None:
        self._figures += 1
        b64 = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption or f"figure {self._figures}")
        cap = f"<figcaption>Figure {self._figures}. {html.escape(caption)}</figcaption>" if caption else ""
        self._blocks.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{b64}">{cap}</figure>')

    @staticmethod
    def _table_html(table: Table, caption: str, *, extra: str = "") -> str:
        head = "".join(f"<th>{html.escape(table.header(c))}</th>" for c in table.columns)
        body = []
        for row in table.rows:
            cells = []
            for c in table.columns:
                v = row.get(c)
                cls = ' class="num"' if _is_number(v) else ""
                full = f' title="{html.escape(repr(float(v)))}"' if isinstance(v, (float, np.floating)) else ""
                cells.append(f"<td{cls}{full}>{html.escape(format_number(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f'<div class="caption">{html.escape(caption)}</div>' if caption else ""
        return f"{cap}<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{extra}"
