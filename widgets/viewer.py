"""The slice viewer: an anywidget, the one place where pixels reach the browser.

How it works
------------
The browser side is ``widgets/js/*.js``: small units (core helpers, slices, drawing, overlays,
interaction, toolbar, the widget) joined in :data:`JS_UNITS` order into one offline ES module.
Python computes the display geometry once (:func:`medlab.render.plane_geometry`: per plane,
pixel size, screen flips, pixel ↔ mm, strides into the volume) and sends it in ``_geometry``;
the JavaScript never recomputes it.

Python puts the image in *display orientation* (:func:`medlab.render.display_array`: axes
permuted/flipped, never interpolated, so index ``(i, j, k)`` runs towards patient Left,
Posterior, Superior) and sends raw voxels as binary buffers (int16 stays int16, floats go as
float32). JavaScript does window/level, colour maps and overlays, so a window/level change
never goes back to Python. Layers (label map, heat map, second image) are resampled once into
the base image's grid (:func:`medlab.render.resample_like`), so a layer with another direction
or spacing lands where it belongs.

How voxels travel
-----------------
A kernel round trip through JupyterLab costs about 50 ms, so slice steps are drawn from voxels
the browser already holds whenever it can:

* **Small volumes** (voxels and layers within :data:`VOLUME_CACHE_BYTES`, 8 MiB) travel
  **once, whole**, in ``_volumes``; the browser cuts every slice of every plane itself. The
  first picture waits for the whole transfer, hence the low limit.
* **Larger volumes** show their first picture from one slice per visible plane (``_axial``
  etc.), then **stream** in the background: slabs of whole axial slices (about
  :data:`SLAB_BYTES`, every array: base and layers) sent with ``Widget.send`` as binary
  buffers, nearest the cursor first, each acknowledged by the browser, with at most
  :data:`STREAM_WINDOW` unacknowledged (so a slice the kernel sends waits behind at most that
  much). :class:`SlabPlan` decides which slab goes into which browser slot, so Python knows
  what the browser holds without asking; a slice change whose voxels are held sends only the
  index. The stream starts when a view is shown (``stream-ready``), restarts for a new image
  or layer set (``_stream["gen"]``), and pauses while a cell runs.
* **Memory bound.** The browser holds at most :data:`BROWSER_CACHE_BYTES` (512 MiB) of slabs
  per viewer: the whole volume with its layers when it fits (a 512×512×600 int16 CT: 300 MiB),
  else a ring of the slabs nearest the cursor, refilled as the cursor moves; plus at most
  24 cut slices per view and the last slice the kernel sent per plane. When the whole volume
  fits, each slab also gets a **transposed copy** (every axial slice stored ``[i][j]``), made
  in the background as slabs arrive: a sagittal slice read voxel by voxel from ``[k][j][i]``
  touches one cache line per pixel and one memory page every four (24–60 ms a slice on this
  machine), while rows of the copy are contiguous (0.5 ms). Made only when a sagittal plane is
  first shown, the copy took 29 s on the loaded machine, with slower steps meanwhile. So the
  bound is twice :data:`BROWSER_CACHE_BYTES` (slabs and copies) per viewer. Measured with
  ``benchmarks/bench_viewer_browser.py`` (page memory through the DevTools protocol):
  streaming the 300 MiB CT grew the page's ArrayBuffers by 327 MiB (the slabs, the cut slices,
  the last kernel slices) and its JS heap by 2 MiB before the sagittal copy; the copy adds
  300 MiB.
* **Coronal and sagittal planes** need a row from every axial slice, so they are cut in the
  browser only once the whole volume is held; until then, and always when the volume is over
  :data:`BROWSER_CACHE_BYTES` (a ring), their slices come from the kernel. Per-plane slab
  caches were not added: they would triple the memory for the same voxels, while the whole
  volume serves all three planes.
* ``BROWSER_CACHE_BYTES = 0`` turns streaming off: every slice then travels from the kernel.

While a step waits for the kernel (a slab not there yet), the step the user asked for stays the
cursor (later keys step from it), and Python's echoes of older steps do not pull the picture
back.

DOM (stable CSS classes, for tests and styling)
-----------------------------------------------
``.medlab-viewer`` (root; ``data-layout``) contains a toolbar with ``select.medlab-plane``,
``select.medlab-layout``, ``input.medlab-window``, ``input.medlab-level``,
``select.medlab-preset``, ``button.medlab-pointmode`` (``aria-pressed`` and
``data-mode="off|edit"``); then one ``.medlab-pane[data-plane=P]`` per visible plane, each with
``canvas.medlab-canvas[data-plane=P]`` (the picture), ``canvas.medlab-overlay[data-plane=P]``
(crosshair and point markers, drawn on top; never on ``.medlab-canvas``),
``.medlab-letter.medlab-left|right|top|bottom`` (orientation letters) and
``input.medlab-slice[data-plane=P]`` (range slider); then ``.medlab-readout``,
``.medlab-legend`` (one ``.medlab-legend-item[data-value=V]`` per label) and
``.medlab-status`` (``data-kind="info|error"``). A streamed volume sets ``data-streamed``
("held/total" slabs), ``data-cache-bytes`` (slabs) and ``data-copy-bytes`` (their transposed
copies, for sagittal slices) on the root, and dispatches ``medlab-streamed``
once every slab is in. Each canvas has ``data-drawn-index`` and ``data-drawn-from``
(``browser``: cut from held voxels, ``kernel``: a slice Python sent) and dispatches
``medlab-drawn`` (``detail.index``, ``detail.local``, and ``detail.phases``: ms spent cutting
the slice, colouring it and putting it on the canvas) after every picture.

Canvas pixels, exactly
----------------------
``canvas.medlab-canvas[data-plane=P]`` has ``width = cols`` and ``height = rows`` of the slice
(one canvas pixel per voxel; CSS stretches it to the physical aspect ratio), and its pixel
``(row, col)`` is ``medlab.render.compose(...)`` of the slice that ``v.current_slice()`` returns
for that plane (or ``medlab.render.extract_slice(v.image, P, index)``; ``index`` is in
``v._axial["index"]`` etc.), i.e. in the simplest case (no layers)::

    from medlab import render
    s = render.extract_slice(v.image, "axial", v.slice_index).array   # rows x cols, screen order
    grey = render.window_level(s, v.window, v.level)                  # uint8
    # canvas RGBA at (row, col) == (grey, grey, grey, 255)

Screen order of a slice (the flips) is that of :mod:`medlab.render`: axial ``D[k]`` (patient
right on screen left, anterior up), coronal ``D[::-1, j, :]`` (superior up, right on the left),
sagittal ``D[::-1, :, i]`` (superior up, anterior on the left), where ``D`` is the display array
``[k, j, i]``. Window/level is ``floor(clip((x - (level - window/2)) * (255/window), 0, 255) +
0.5)`` in float64 in both languages, so values agree exactly (allow 1 grey level for safety).
With layers, ``v.snapshot_planes()`` returns the composed RGB arrays (same shape as the
canvases) that the browser shows.

A click on canvas pixel ``(row, col)`` (``col = floor(offsetX * width / clientWidth)``, same for
rows) selects the voxel centre at display index given by
:func:`medlab.render.slice_pixel_to_display`; its physical point (mm, LPS) is
``v.display_affine @ [i, j, k, 1]``. Outside point mode the click moves ``v.position`` there
(three-plane layout: the other planes follow); in point mode (``v.point_mode == "edit"``) it
appends that point to the **active point set** (``v.active_set``); dragging a marker moves it,
shift-click or a right-click on it removes it. A viewer holds named point sets
(``v.add_point_set("seeds", role="seeds")``), each with a colour, a marker shape and a legend
chip (``.medlab-pointset[data-name=N]``, ``aria-pressed`` on the active one; a click on a chip
makes that set active); ``v.points`` is the active set's points. Mouse wheel and arrow keys (Up/Down, PageUp/PageDown) change the slice; a
right-button drag (or shift + left drag outside point mode) changes window (horizontal,
exponential: ``window * exp(dx / 200)``) and level (vertical, ``level - dy * window / 200``).
"""

from __future__ import annotations

import functools
import pathlib
import uuid
from collections.abc import Callable

import anywidget
import numpy as np
import traitlets

from medlab import render
from medlab.errors import MedlabError, ParameterError
from medlab.image import Image, as_image

from .viewer_layers import compose_plane, heat_layer, label_layer, second_layer
from .viewer_stream import SlabPlan

_HERE = pathlib.Path(__file__).parent
_SENDABLE = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "float32")}
VOLUME_CACHE_BYTES = 8 * 2**20
"""Volumes (with their layers) up to this size are sent whole with the widget, and sliced in the
browser; larger ones stream (the first picture of a whole 32 MiB volume waited 4 s for it on
a loaded machine, a streamed one 0.5 s)."""
BROWSER_CACHE_BYTES = 512 * 2**20
"""Most bytes of a larger volume (with its layers) the browser holds once streamed: the whole
volume when it fits, else the slabs nearest the cursor (0: no streaming, slices only)."""
SLAB_BYTES = 2 * 2**20
"""Target size of one streamed slab (whole axial slices of every array)."""
STREAM_WINDOW = 2
"""Slabs sent and not yet acknowledged by the browser: enough to keep the pipe busy, few enough
that a slice the kernel sends waits behind at most this many slabs."""


JS_UNITS = ("core", "stream", "slices", "draw", "overlay", "interact", "toolbar", "main")
"""The viewer's JavaScript units, in the order they are joined."""


def _viewer_module() -> str:
    """The viewer's ES module: its units joined in order.

    anywidget loads one module from a string, so relative ``import`` statements between files
    cannot resolve; joining a few plain files keeps the code split by job without adding a
    Node.js build step to the install.
    """
    parts = []
    for unit in JS_UNITS:
        parts.append((_HERE / "js" / f"{unit}.js").read_text(encoding="utf-8"))
    return "\n".join(parts)


#: Default look of the point set of each role: colour (Okabe-Ito, colour-blind safe), marker.
POINT_ROLES: dict[str, tuple[tuple[int, int, int], str]] = {
    "points": ((255, 255, 0), "circle"),
    "seeds": ((0, 158, 115), "circle"),
    "background": ((213, 94, 0), "cross"),
    "fixed_landmarks": ((86, 180, 233), "square"),
    "moving_landmarks": ((230, 159, 0), "diamond"),
    "target": ((204, 121, 167), "plus"),
}
MARKERS = ("circle", "cross", "plus", "square", "diamond", "triangle")


def _guarded(method: Callable) -> Callable:
    """Run a callback; show any exception in the status line instead of losing it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a callback must never die silently
            self.show_error(_describe(exc))
            return None

    return wrapper


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}"


def _sendable(array: np.ndarray) -> np.ndarray:
    """Voxels as a dtype JavaScript has a typed array for (int16 stays int16)."""
    if array.dtype in _SENDABLE:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.size:
        lo, hi = array.min(), array.max()
        if lo >= -32768 and hi <= 32767:
            return array.astype(np.int16)
    return array.astype(np.float32)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Viewer(anywidget.AnyWidget):
    """Axial / coronal / sagittal slice viewer with window/level, layers and points.

    Parameters
    ----------
    image : Image, optional
        The base image (2D, 3D, or 2D colour). A ``SimpleITK.Image`` or array is accepted.
    labels : Image, optional
        A label map shown over it (resampled into the image's space).
    layout : {'single', 'three'}
        One plane, or axial, coronal and sagittal side by side with a linked crosshair. Kept in
        the ``layout_mode`` trait (``layout`` is ipywidgets' own CSS layout attribute).
    plane : {'axial', 'coronal', 'sagittal'}
    height : int
        Height of the picture area in screen pixels (less when the notebook is too narrow for
        it). In ``'three'``, every pane has this height and the width of its slice's physical
        aspect (each pane its own zoom, as a workstation fits each view), so the row has no
        black band below a shorter plane; the viewer is as wide as its panes or toolbar.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> from medlab.widgets import Viewer
    >>> v = Viewer(Image(np.zeros((8, 16, 16), np.int16)), layout="three")
    >>> v.slice_index = 3
    >>> v.window, v.level = 400, 40
    >>> v.points                   # filled by clicks in point mode, in mm (LPS)
    []
    """

    _esm = _viewer_module()
    _css = _HERE / "viewer.css"

    plane = traitlets.Unicode("axial").tag(sync=True)
    layout_mode = traitlets.Unicode("single").tag(sync=True)
    height = traitlets.Int(420).tag(sync=True)
    slice_index = traitlets.Int(0).tag(sync=True)
    position = traitlets.List(traitlets.Float(), default_value=[0.0, 0.0, 0.0]).tag(sync=True)
    window = traitlets.Float(1.0).tag(sync=True)
    level = traitlets.Float(0.0).tag(sync=True)
    point_mode = traitlets.Unicode("off").tag(sync=True)
    points = traitlets.List(traitlets.List(traitlets.Float())).tag(sync=True)
    point_sets = traitlets.List(traitlets.Dict()).tag(sync=True)
    active_set = traitlets.Unicode("points").tag(sync=True)
    interpolation = traitlets.Unicode("nearest").tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    status_kind = traitlets.Unicode("info").tag(sync=True)

    _geometry = traitlets.Dict().tag(sync=True)
    _cursor = traitlets.List(traitlets.Int(), default_value=[0, 0, 0]).tag(sync=True)
    _presets = traitlets.Dict().tag(sync=True)
    _axial = traitlets.Dict().tag(sync=True)
    _coronal = traitlets.Dict().tag(sync=True)
    _sagittal = traitlets.Dict().tag(sync=True)
    _labels_info = traitlets.Dict().tag(sync=True)
    _heat_info = traitlets.Dict().tag(sync=True)
    _second_info = traitlets.Dict().tag(sync=True)
    _volumes = traitlets.Dict().tag(sync=True)
    _stream = traitlets.Dict().tag(sync=True)

    def __init__(self, image=None, *, labels=None, layout: str = "single", plane: str = "axial",
                 height: int = 420, **kwargs):
        # the stream's id is in the first state the browser gets, before any view is made
        super().__init__(_stream={"id": uuid.uuid4().hex, "gen": 0, "slabs": 0}, **kwargs)
        self._image: Image | None = None
        self._volume: np.ndarray | None = None
        self._spacing = (1.0, 1.0, 1.0)
        self._affine = np.eye(4)
        self._layers: dict[str, np.ndarray] = {}
        self._updating = False
        self._syncing_points = False
        self._plan: SlabPlan | None = None
        self._stream_arrays: dict[str, np.ndarray] = {}
        self._stream_ready = False
        self.point_sets = [self._new_set("points", "points", None, None, "points")]
        self._check_layout(layout)
        render._check_plane(plane)
        with self.hold_trait_notifications():
            self.layout_mode, self.plane, self.height = layout, plane, int(height)
        self.on_msg(self._on_message)
        if image is not None:
            self.image = image
        else:
            self._set_status("no image: assign viewer.image = medlab.load(...)")
        if labels is not None:
            self.set_labels(labels)

    # ------------------------------------------------------------------ the base image
    @property
    def image(self) -> Image | None:
        """The base image; assigning another one re-renders (keeping position on the same grid)."""
        return self._image

    @image.setter
    def image(self, image) -> None:
        try:
            self._show(as_image(image, "image"))
        except Exception as exc:
            self.show_error(_describe(exc))
            raise

    def _show(self, image: Image) -> None:
        same = (self._image is not None and self._image.same_grid(image) and not image.rgb
                and not self._image.rgb)
        old_position = list(self.position)
        volume, spacing = render.display_array(image)
        self._image = image
        self._volume = volume if image.rgb else _sendable(volume)
        self._spacing = spacing
        self._affine = self._display_affine(image)
        if not same:
            self._layers.clear()
            self._labels_info, self._heat_info, self._second_info = {}, {}, {}
        if image.ndim == 2 and (self.layout_mode != "single" or self.plane != "axial"):
            with self.hold_trait_notifications():
                self.layout_mode, self.plane = "single", "axial"
        self._geometry = self._geometry_dict(image)
        self._presets = self._preset_dict(image)
        if not same:
            self.window, self.level = (255.0, 127.5) if image.rgb else render.auto_window(image)
        note = render.orientation_note(image)
        self._set_status(note or image.describe())
        centre = [s // 2 for s in volume.shape[2::-1]]
        target = old_position if same else list(self._affine[:3] @ [*centre, 1])
        self._updating = True
        try:
            self.position = [float(v) for v in target]
        finally:
            self._updating = False
        self._send_volumes()
        self._move_to(self.position, force=True)

    @staticmethod
    def _display_affine(image: Image) -> np.ndarray:
        if image.ndim == 3:
            return render.display_image(image).affine
        a = np.eye(4)
        a[:2, :2] = image.affine[:2, :2]
        a[:2, 3] = image.affine[:2, 2]
        return a

    @property
    def display_affine(self) -> np.ndarray:
        """``4x4`` map from display index ``(i, j, k, 1)`` to an LPS point in mm."""
        return self._affine.copy()

    def _geometry_dict(self, image: Image) -> dict:
        nk, nj, ni = self._volume.shape[:3]
        return {
            "ndim": image.ndim,
            "shape": [int(ni), int(nj), int(nk)],
            "spacing": [float(s) for s in self._spacing],
            "affine": self._affine.tolist(),
            "inverse": np.linalg.inv(self._affine).tolist(),
            "to_index": render.display_to_index(image).tolist(),
            "letters": self._letters(image),
            "caption": self._caption(image),
            "units": str(image.metadata.get("units") or ("HU" if render.is_ct(image) else "")),
            "channels": int(image.array.shape[-1]) if image.rgb else 1,
            "oblique": bool(render.orientation_note(image)),
            "planes": render.plane_geometry(self._volume.shape[:3], self._spacing, self._affine),
        }

    @staticmethod
    def _letters(image: Image) -> dict | None:
        """Edge letters per pane; a 2D slice cut from a volume keeps its plane's letters."""
        if image.ndim == 3:
            return {p: list(v) for p, v in render.EDGE_LETTERS.items()}
        plane = image.metadata.get("plane")
        return {"axial": list(render.EDGE_LETTERS[plane])} if plane in render.EDGE_LETTERS else None

    @staticmethod
    def _caption(image: Image) -> str:
        """What a 2D picture is, when it is a slice of a volume (e.g. a preview)."""
        plane, index = image.metadata.get("plane"), image.metadata.get("slice_index")
        return f"{plane} {index + 1}" if image.ndim == 2 and plane and isinstance(index, int) else ""

    def __repr__(self) -> str:
        if self._image is None:
            return "<medlab Viewer: no image>"
        sets = [f"{d['name']} ({len(d['points'])})" for d in self.point_sets if d["points"] or d["name"] != "points"]
        where = f"{self.plane} slice {self.slice_index + 1}/{self._cursor_count(render._NORMAL_AXIS[self.plane])}" \
            if self._image.ndim == 3 else "2D"
        layers = [n for n in ("labels", "heat", "second") if n in self._layers]
        return (f"<medlab Viewer: {where} of {self._image.describe()}; W {self.window:.4g} L {self.level:.4g}"
                + (f"; layers: {', '.join(layers)}" if layers else "")
                + (f"; point sets: {', '.join(sets)}" if sets else "") + ">")

    @staticmethod
    def _preset_dict(image: Image) -> dict:
        if image.rgb:
            return {}
        if render.is_ct(image):
            presets = {"auto": list(render.auto_window(image))}
            presets.update({name: list(wl) for name, wl in render.CT_PRESETS.items()})
            return presets
        # MR and other images have no standard windows: percentiles of the image's own values
        step = max(1, image.array.size // 2_000_000)
        sample = image.array.reshape(-1)[::step]
        if sample.dtype.kind == "f":
            sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return {"auto": list(render.auto_window(image))}
        presets = {"auto": list(render.auto_window(image))}  # 0.5–99.5 %
        for lo, hi in ((1, 99), (2, 98), (5, 95)):
            a, b = (float(v) for v in np.percentile(sample, [lo, hi]))
            if b > a:
                presets[f"{lo}–{hi} %"] = [b - a, (a + b) / 2]
        lo, hi = float(sample.min()), float(sample.max())
        presets["full range"] = [max(hi - lo, 1e-6), (hi + lo) / 2]
        return presets

    # ------------------------------------------------------------------ position and slices
    def _cursor_of(self, position) -> list[int]:
        inv = np.linalg.inv(self._affine)
        idx = np.rint(inv[:3] @ [*position[:3], 1]).astype(int)
        shape = np.array(self._volume.shape[2::-1])  # (ni, nj, nk), colour too ([k, j, i, c])
        return [int(v) for v in np.clip(idx, 0, shape - 1)]

    def _visible_planes(self) -> tuple[str, ...]:
        if self._image is None:
            return ()
        return render.PLANES if self.layout_mode == "three" else (self.plane,)

    def _move_to(self, position, *, force: bool = False) -> None:
        old = list(self._cursor)
        cursor = self._cursor_of(position)
        with self.hold_sync():
            with self.hold_trait_notifications():
                self._cursor = cursor
                for plane in self._visible_planes():
                    axis = render._NORMAL_AXIS[plane]
                    payload = getattr(self, f"_{plane}")
                    if force or not payload or payload.get("index") != cursor[axis] or old[axis] != cursor[axis]:
                        setattr(self, f"_{plane}", self._payload(plane, cursor[axis]))
            # outside the held notifications, so that its observer sees _updating and keeps the
            # exact position (it would otherwise snap it to the voxel centre)
            self._updating = True
            try:
                self.slice_index = cursor[render._NORMAL_AXIS[self.plane]]
            finally:
                self._updating = False
        self._pump()

    def _payload(self, plane: str, index: int) -> dict:
        """Raw voxels of one slice (and of each layer) as bytes, plus what JS needs to draw them.

        When the browser holds the voxels (the whole volume, :meth:`_send_volumes`, or the
        streamed slab of an axial slice, :meth:`_pump`), only the index and the slice's shape
        travel: the browser slices its own copy.
        """
        view = render.plane_array(self._volume, plane, index)
        out = {"index": int(index), "rows": int(view.shape[0]), "cols": int(view.shape[1]),
               "dtype": str(view.dtype)}
        plan = self._plan
        if self._volumes or (plan is not None and (plan.complete or (plane == "axial" and plan.holds(index)))):
            return out
        data = np.ascontiguousarray(view)
        out["data"] = memoryview(data).cast("B")
        for name, volume in self._layers.items():
            layer = np.ascontiguousarray(render.plane_array(volume, plane, index))
            out[name] = memoryview(layer).cast("B")
            out[name + "_dtype"] = str(layer.dtype)
        return out

    def _refresh(self) -> None:
        if self._image is not None:
            self._move_to(self.position, force=True)

    def _layers_changed(self) -> None:
        if self._image is not None:
            self._send_volumes()
        self._refresh()

    def _send_volumes(self) -> None:
        """Send the whole display volume (and layers) once when it is small enough, so that
        slice changes are drawn in the browser without waiting for the kernel (a round trip
        through JupyterLab costs ~50 ms); stream larger volumes in slabs (:meth:`_start_stream`)
        and send each slice the browser lacks as it is shown."""
        image = self._image
        arrays = {"base": self._volume, **self._layers}
        self._plan, self._stream_arrays, self._stream_ready = None, {}, False
        stream = {"id": self._stream["id"], "gen": self._stream["gen"] + 1, "slabs": 0}
        if image is None or image.ndim != 3 or image.rgb:
            self._volumes, self._stream = {}, stream
            return
        if sum(a.nbytes for a in arrays.values()) > VOLUME_CACHE_BYTES:
            self._volumes, self._stream = {}, self._start_stream(arrays, stream)
            return
        self._stream = stream
        out = {"shape": [int(n) for n in self._volume.shape]}
        for name, volume in arrays.items():
            volume = np.ascontiguousarray(volume)
            out[name] = memoryview(volume).cast("B")
            out[name + "_dtype"] = str(volume.dtype)
        self._volumes = out

    # ------------------------------------------------------------------ streaming large volumes
    def _start_stream(self, arrays: dict[str, np.ndarray], stream: dict) -> dict:
        """Plan the background stream of a volume too large to send at once: slabs of whole
        axial slices (every array: base and layers), nearest the cursor first, at most
        :data:`BROWSER_CACHE_BYTES` held by the browser. It starts when a view asks for it
        (``stream-ready``), so a viewer never shown never streams. Returns ``_stream``."""
        slice_bytes = sum(a[0].nbytes for a in arrays.values())
        per_slab = max(1, SLAB_BYTES // slice_bytes)
        capacity = BROWSER_CACHE_BYTES // (per_slab * slice_bytes)
        if capacity < 1:
            return stream
        nk = int(self._volume.shape[0])
        self._plan = SlabPlan(nk, per_slab, capacity)
        self._stream_arrays = dict(arrays)
        return {**stream, "slabs": self._plan.count, "slots": self._plan.capacity, "per_slab": per_slab,
                "shape": [int(n) for n in self._volume.shape[:3]], "names": list(arrays),
                "dtypes": {name: str(a.dtype) for name, a in arrays.items()}}

    def _pump(self) -> None:
        """Send the next slabs (nearest the cursor) while fewer than :data:`STREAM_WINDOW` are
        unacknowledged; each acknowledgement calls this again."""
        plan = self._plan
        if plan is None or not self._stream_ready:
            return
        cursor = self._cursor[2]
        while len(plan.in_flight) < STREAM_WINDOW:
            move = plan.next(cursor)
            if move is None:
                return
            slab, slot = move
            k0, k1 = plan.slices(slab)
            buffers = [memoryview(np.ascontiguousarray(a[k0:k1])).cast("B") for a in self._stream_arrays.values()]
            self.send({"type": "slab", "gen": self._stream["gen"], "slab": slab, "slot": slot, "k0": k0, "k1": k1},
                      buffers)

    def _stream_message(self, content: dict) -> None:
        if self._plan is None or content.get("gen") != self._stream["gen"]:
            return  # about an older volume or layer set
        if content["type"] == "stream-ready":
            # a (new) view starts from nothing: forget what was sent, resend the shown slices
            self._plan.reset()
            self._stream_ready = True
            self._refresh()
        else:
            self._plan.acknowledged(content.get("slab", -1))
        self._pump()

    # ------------------------------------------------------------------ validation
    # A bad value is refused before it is stored: it is shown in the status line and the trait
    # keeps its previous value, so nothing is left half-changed (and a value sent from the
    # browser cannot break the widget).
    def _refuse(self, name: str, message: str):
        self.show_error(message)
        return getattr(self, name)

    @traitlets.validate("position")
    def _valid_position(self, proposal):
        value = proposal["value"]
        if len(value) != 3 or not all(np.isfinite(value)):
            return self._refuse("position", f"position must be a point (x, y, z) in mm with finite values; got {list(value)}")
        if self._image is not None and not self._near_image(value):
            lo, hi = self._image.bounds()
            return self._refuse("position", f"position {[round(v, 1) for v in value]} mm is far outside the image "
                                            f"(it spans {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()} mm)")
        return value

    def _near_image(self, point) -> bool:
        """Within the image's box, with a margin of the box's own size (clicks snap to a voxel)."""
        lo, hi = (np.asarray(b, float) for b in self._image.bounds())
        p = np.asarray(point[: self._image.ndim], float)
        margin = (hi - lo) + 10.0
        return bool(np.all(p >= lo - margin) and np.all(p <= hi + margin))

    @traitlets.validate("window")
    def _valid_window(self, proposal):
        if not (np.isfinite(proposal["value"]) and proposal["value"] > 0):
            return self._refuse("window", f"window must be a positive number; got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("level")
    def _valid_level(self, proposal):
        if not np.isfinite(proposal["value"]):
            return self._refuse("level", f"level must be a finite number; got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("points")
    def _valid_points(self, proposal):
        bad = [p for p in proposal["value"] if len(p) != 3 or not all(np.isfinite(p))]
        if bad:
            return self._refuse("points", f"each point must be (x, y, z) in mm with finite values; got {list(bad[0])}")
        return proposal["value"]

    @traitlets.validate("slice_index")
    def _valid_slice_index(self, proposal):
        value = proposal["value"]
        if self._volume is None or self._updating:
            return value
        n = self._cursor_count(render._NORMAL_AXIS[self.plane])
        if not 0 <= value < n:
            return self._refuse("slice_index", f"slice index {value} is outside 0..{n - 1} for the {self.plane} plane")
        return value

    @traitlets.validate("plane")
    def _valid_plane(self, proposal):
        if proposal["value"] not in render.PLANES:
            return self._refuse("plane", f"plane must be one of {render.PLANES}; got {proposal['value']!r}")
        if self._image is not None and self._image.ndim == 2 and proposal["value"] != "axial":
            return self._refuse("plane", "a 2D image has only one plane")
        return proposal["value"]

    @traitlets.validate("layout_mode")
    def _valid_layout(self, proposal):
        if proposal["value"] not in ("single", "three"):
            return self._refuse("layout_mode", f"layout must be 'single' or 'three'; got {proposal['value']!r}")
        if self._image is not None and self._image.ndim == 2 and proposal["value"] != "single":
            return self._refuse("layout_mode", "a 2D image has only one plane")
        return proposal["value"]

    @traitlets.validate("point_mode")
    def _valid_point_mode(self, proposal):
        if proposal["value"] not in ("off", "edit"):
            return self._refuse("point_mode", f"point_mode must be 'off' or 'edit'; got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("height")
    def _valid_height(self, proposal):
        if not 80 <= proposal["value"] <= 4000:
            return self._refuse("height", f"height must be between 80 and 4000 screen pixels; got {proposal['value']}")
        return proposal["value"]

    @traitlets.validate("interpolation")
    def _valid_interpolation(self, proposal):
        if proposal["value"] not in ("nearest", "linear"):
            return self._refuse("interpolation", f"interpolation must be 'nearest' or 'linear'; got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("active_set")
    def _valid_active_set(self, proposal):
        names = [d["name"] for d in self.point_sets]
        if proposal["value"] not in names:
            return self._refuse("active_set", f"no point set {proposal['value']!r}; sets: {names}")
        return proposal["value"]

    @traitlets.validate("point_sets")
    def _valid_point_sets(self, proposal):
        sets = proposal["value"]
        names = [d.get("name") for d in sets]
        if not sets or len(set(names)) != len(names):
            return self._refuse("point_sets", f"point sets need distinct names and at least one set; got {names}")
        for d in sets:
            bad = [p for p in d.get("points", []) if len(p) != 3 or not all(np.isfinite(p))]
            if bad:
                return self._refuse("point_sets", f"points of {d.get('name')!r} must be (x, y, z) in mm; got {bad[0]}")
        return sets

    @traitlets.observe("position")
    @_guarded
    def _position_changed(self, change) -> None:
        if self._image is None or self._updating:
            return
        self._move_to(change["new"])

    @traitlets.observe("slice_index")
    @_guarded
    def _slice_index_changed(self, change) -> None:
        if self._image is None or self._updating:
            return
        axis = render._NORMAL_AXIS[self.plane]
        cursor = list(self._cursor)
        cursor[axis] = int(change["new"])
        point = [float(v) for v in self._affine[:3] @ [*cursor, 1]]
        self._updating = True
        try:
            self.position = point
        finally:
            self._updating = False
        self._move_to(point)

    def _cursor_count(self, axis: int) -> int:
        return int(self._volume.shape[2 - axis]) if self._volume is not None else 0

    @traitlets.observe("plane", "layout_mode")
    @_guarded
    def _view_changed(self, change) -> None:
        self._refresh()

    @staticmethod
    def _check_layout(layout: str) -> None:
        if layout not in ("single", "three"):
            raise ParameterError(f"layout must be 'single' or 'three'; got {layout!r}")

    # ------------------------------------------------------------------ point sets
    @staticmethod
    def _new_set(name: str, role: str, color, marker, label) -> dict:
        default_color, default_marker = POINT_ROLES.get(role, POINT_ROLES["points"])
        color = tuple(int(c) for c in (color if color is not None else default_color))
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ParameterError(f"colour of point set {name!r} must be (r, g, b) in 0..255; got {color}")
        marker = marker or default_marker
        if marker not in MARKERS:
            raise ParameterError(f"marker must be one of {MARKERS}; got {marker!r}")
        return {"name": name, "role": role, "label": label or name.replace("_", " "), "color": list(color),
                "marker": marker, "points": []}

    def add_point_set(self, name: str, *, role: str | None = None, color=None, marker: str | None = None,
                      label: str | None = None, points=(), active: bool = False) -> None:
        """Add a named point set (or restyle an existing one), with its own colour and marker.

        Parameters
        ----------
        name : str
            Key of the set (a stage's points parameter uses its own name).
        role : str, optional
            ``seeds``, ``background``, ``fixed_landmarks``, ``moving_landmarks`` ... picks the
            default colour and marker (:data:`POINT_ROLES`); default ``name``.
        color : (r, g, b), optional
        marker : {'circle', 'cross', 'plus', 'square', 'diamond', 'triangle'}, optional
        label : str, optional
            Legend text; default the name.
        points : sequence of (x, y, z)
            Initial points in mm (LPS).
        active : bool
            Make it the set that clicks add to.

        Examples
        --------
        >>> import numpy as np
        >>> from medlab import Image
        >>> v = Viewer(Image(np.zeros((4, 8, 8))))
        >>> v.add_point_set("seeds", role="seeds", active=True)
        >>> v.add_point_set("background", role="background")
        >>> [s["name"] for s in v.point_sets], v.active_set
        (['points', 'seeds', 'background'], 'seeds')
        """
        try:
            if not isinstance(name, str) or not name:
                raise ParameterError(f"a point set needs a name; got {name!r}")
            new = self._new_set(name, role or name, color, marker, label)
            new["points"] = [[float(c) for c in p] for p in points]
            sets = [dict(d) for d in self.point_sets]
            old = next((d for d in sets if d["name"] == name), None)
            if old is not None:
                new["points"] = new["points"] or old["points"]
                sets[sets.index(old)] = new
            else:
                sets.append(new)
            self.point_sets = sets
            if active:
                self.active_set = name
        except Exception as exc:
            self.show_error(_describe(exc))
            raise

    def remove_point_set(self, name: str) -> None:
        """Remove a point set (the default ``points`` set stays)."""
        if name == "points":
            raise ParameterError("the default point set 'points' cannot be removed")
        sets = [d for d in self.point_sets if d["name"] != name]
        if self.active_set == name:
            self.active_set = "points"
        self.point_sets = sets

    def point_set(self, name: str) -> list[list[float]]:
        """The points (mm, LPS) of set ``name``."""
        for d in self.point_sets:
            if d["name"] == name:
                return [list(p) for p in d["points"]]
        raise ParameterError(f"no point set {name!r}; sets: {[d['name'] for d in self.point_sets]}")

    def set_point_set(self, name: str, points) -> None:
        """Replace the points of set ``name``."""
        self.point_set(name)  # exists?
        try:
            pts = [[float(c) for c in p] for p in points]
        except (TypeError, ValueError):
            raise ParameterError(f"points of {name!r} must be a list of (x, y, z) in mm; got {str(points)[:80]}") from None
        image = getattr(self, "image", None)
        if image is not None and image.ndim == 2:   # a 2D image is shown as one slice at z = 0
            pts = [p + [0.0] if len(p) == 2 else p for p in pts]
        if any(len(p) != 3 for p in pts):
            raise ParameterError(f"points of {name!r} must be (x, y, z) in mm (or (x, y) on a 2D image); "
                                 f"got {str(points)[:80]}")
        self.point_sets = [{**d, "points": pts} if d["name"] == name else d for d in self.point_sets]

    @traitlets.observe("point_sets", "active_set")
    def _sets_changed(self, change) -> None:
        if self._syncing_points:
            return
        self._syncing_points = True
        try:
            self.points = self.point_set(self.active_set)
        finally:
            self._syncing_points = False

    @traitlets.observe("points")
    def _points_changed(self, change) -> None:
        if self._syncing_points:
            return
        self._syncing_points = True
        try:
            self.point_sets = [{**d, "points": [list(p) for p in change["new"]]} if d["name"] == self.active_set else d
                               for d in self.point_sets]
        finally:
            self._syncing_points = False

    # ------------------------------------------------------------------ layers
    def set_labels(self, labels, *, opacity: float = 0.5, outline: bool = False) -> None:
        """Show a label map over the image (``None`` removes it): per-label colours and names.

        Examples
        --------
        >>> import numpy as np
        >>> from medlab import Image
        >>> img = Image(np.zeros((4, 8, 8)))
        >>> v = Viewer(img)
        >>> v.set_labels(img.with_array(np.ones((4, 8, 8), np.uint8), kind="label", labels={1: "organ"}))
        >>> v._labels_info["legend"][0]["name"]
        'organ'
        """
        try:
            self._check_alpha(opacity, "opacity")
            if labels is None:
                self._layers.pop("labels", None)
                self._labels_info = {}
            else:
                self._layers["labels"], self._labels_info = label_layer(labels, self._image, opacity=opacity,
                                                                        outline=outline)
            self._layers_changed()
        except Exception as exc:
            self.show_error(_describe(exc))
            raise

    def set_heatmap(self, image, *, cmap: str = "inferno", opacity: float = 0.5, threshold: float = 0.0) -> None:
        """Show a heat map (e.g. saliency) over the image: values above ``threshold`` coloured by
        ``cmap`` scaled to the map's own range; ``None`` removes it."""
        try:
            self._check_alpha(opacity, "opacity")
            if image is None:
                self._layers.pop("heat", None)
                self._heat_info = {}
            else:
                self._layers["heat"], self._heat_info = heat_layer(image, self._image, cmap=cmap, opacity=opacity,
                                                                   threshold=threshold)
            self._layers_changed()
        except Exception as exc:
            self.show_error(_describe(exc))
            raise

    def set_second_image(self, image, *, mode: str = "blend", alpha: float = 0.5, checker: int = 16) -> None:
        """Show a second image with the base one: ``blend``, ``checkerboard`` or ``difference``
        (each windowed with its own automatic window); ``None`` removes it."""
        try:
            self._check_alpha(alpha, "alpha")
            if mode not in ("blend", "checkerboard", "difference"):
                raise ParameterError(f"mode must be 'blend', 'checkerboard' or 'difference'; got {mode!r}")
            if isinstance(checker, bool) or not isinstance(checker, (int, np.integer)) or not 1 <= checker <= 4096:
                raise ParameterError(f"checker must be a tile size of 1 to 4096 pixels; got {checker!r}")
            if image is None:
                self._layers.pop("second", None)
                self._second_info = {}
            else:
                self._layers["second"], self._second_info = second_layer(image, self._image, mode=mode, alpha=alpha,
                                                                         checker=checker)
            self._layers_changed()
        except Exception as exc:
            self.show_error(_describe(exc))
            raise

    @staticmethod
    def _check_alpha(value: float, name: str) -> None:
        if not (_is_real(value) and 0.0 <= float(value) <= 1.0):
            raise ParameterError(f"{name} must be between 0 and 1; got {value}")

    # ------------------------------------------------------------------ output
    def current_slice(self) -> Image:
        """The 2D slice of the base image now shown in :attr:`plane` (screen orientation)."""
        if self._image is None:
            raise ParameterError("the viewer shows no image")
        return render.extract_slice(self._image, self.plane, self.slice_index)

    def snapshot_planes(self) -> dict[str, np.ndarray]:
        """The composed RGB picture of each visible plane, one pixel per voxel (as the canvases)."""
        if self._image is None:
            raise ParameterError("the viewer shows no image")
        infos = {"labels": self._labels_info, "heat": self._heat_info, "second": self._second_info}
        out = {}
        for plane in self._visible_planes():
            index = self._cursor[render._NORMAL_AXIS[plane]]
            if self._image.rgb:
                out[plane] = np.ascontiguousarray(render.plane_array(self._volume, plane, index)[..., :3])
                continue
            out[plane] = compose_plane(self._volume, plane, index, self.window, self.level, layers=self._layers,
                                       infos=infos)
        return out

    def snapshot(self) -> bytes:
        """PNG of the current view (all visible planes, correct proportions, edge letters and
        point markers), rendered in Python: works without a browser, for reports.

        Examples
        --------
        >>> import numpy as np
        >>> from medlab import Image
        >>> Viewer(Image(np.zeros((4, 8, 8)))).snapshot()[:4]
        b'\\x89PNG'
        """
        pictures = self.snapshot_planes()
        mm = min(self._spacing) if self._image.ndim == 3 else min(self._spacing[:2])
        letters = self._geometry.get("letters")
        panels = []
        for plane, rgb in pictures.items():
            spacing = render.plane_spacing(self._spacing, plane)
            panels.append(render.panel_picture(rgb, spacing, mm, letters=letters and letters[plane],
                                               points=self._points_on(plane)))
        return render.to_png(render.montage(panels))

    def _points_on(self, plane: str) -> list[tuple[float, float, tuple[int, int, int]]]:
        """Slice pixel ``(row, col)`` and colour of the points of every set in the shown slice."""
        if self._image is None:
            return []
        geom = self._geometry["planes"][plane]
        from_mm = np.asarray(geom["from_mm"])
        index = (np.asarray(geom["from_display"]) @ [*self._cursor, 1])[2]
        out = []
        for d in self.point_sets:
            for p in d["points"]:
                col, row, k = (from_mm @ [*p, 1])[:3]
                if abs(k - index) <= 0.5:
                    out.append((row, col, tuple(d["color"])))
        return out

    # ------------------------------------------------------------------ messages and errors
    def _set_status(self, message: str, kind: str = "info") -> None:
        self.status_kind = kind
        self.status = message

    def show_error(self, message: str) -> None:
        """Show an error in the viewer's status line (and keep the viewer alive)."""
        self._set_status(f"Error: {message}", "error")

    @_guarded
    def _on_message(self, widget, content, buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "error":
            self.show_error(f"in the browser: {content.get('message', '')}")
        elif kind == "status":
            self._set_status(str(content.get("message", "")))
        elif kind in ("stream-ready", "slab-ack"):
            self._stream_message(content)
        else:
            raise ParameterError(f"unknown message from the viewer: {content!r}")


def link(a: Viewer, b: Viewer) -> Callable[[], None]:
    """Keep two viewers on the same position (mm) and window/level; returns an unlink function.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> a, b = Viewer(Image(np.zeros((4, 8, 8)))), Viewer(Image(np.ones((4, 8, 8))))
    >>> unlink = link(a, b)
    >>> a.window = 123.0
    >>> b.window
    123.0
    >>> unlink()
    """
    for v, name in ((a, "a"), (b, "b")):
        if not isinstance(v, Viewer):
            raise ParameterError(f"link needs two Viewers; {name} is a {type(v).__name__}")
    # Not traitlets.link: a viewer snaps its position to the nearest voxel centre while
    # handling a change, which traitlets.link reports as a broken link.
    busy = [False]
    names = ["position", "window", "level"]

    def follower(src, dst):
        def sync(change):
            value = getattr(src, change["name"])  # after src's own snapping, not change["new"]
            if busy[0] or getattr(dst, change["name"]) == value:
                return
            busy[0] = True
            try:
                setattr(dst, change["name"], value)
            finally:
                busy[0] = False
        return sync

    handlers = [(a, follower(a, b)), (b, follower(b, a))]
    for src, handler in handlers:
        src.observe(handler, names=names)
    b.window, b.level, b.position = a.window, a.level, list(a.position)

    def unlink() -> None:
        for src, handler in handlers:
            src.unobserve(handler, names=names)

    return unlink
