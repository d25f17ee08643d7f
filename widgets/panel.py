"""The stage panel: controls built from a stage's declaration, a live slice preview, and Apply
with progress and Cancel.

One panel works for every stage: it reads ``stage.params`` (ranges, steps, options, units, help)
and never holds code for a particular stage's parameters. The preview runs the stage on the slice
the viewer shows (a thin slab around it for 3D-only stages) in a worker thread, debounced, and a
stale preview is never shown after a newer one. Apply runs the stage on the whole image in a
background thread, so the kernel stays free; progress goes to a bar and Cancel stops it, leaving
the input unchanged. Every error lands in the status line.

Examples
--------
>>> import medlab
>>> from medlab.widgets.panel import StagePanel
>>> img = medlab.data.brain_mri(size=(64, 64, 32)).t1                  # doctest: +SKIP
>>> panel = StagePanel(medlab.preprocess.gaussian_smooth, image=img)  # doctest: +SKIP
>>> panel                                                             # doctest: +SKIP
>>> panel.set(sigma=1.5)                                              # doctest: +SKIP
>>> out = panel.apply(wait=True)                                      # doctest: +SKIP

CSS classes (stable names for browser tests)
--------------------------------------------
``medlab-panel``             the panel (a VBox)
``medlab-stage-title``       the stage's title and one-line summary
``medlab-param``             every parameter control
``medlab-param-<name>``      the control of parameter ``<name>`` (slider, dropdown, checkbox,
                             a row of number boxes for a vector, a note for a grid)
``medlab-points-pick``       toggle of point picking in the viewer (points parameters)
``medlab-apply``             the Apply button
``medlab-cancel``            the Cancel button
``medlab-progress``          the progress bar of Apply
``medlab-status``            the status line (messages and errors)
``medlab-preview-time``      "preview N ms"
``medlab-preview-note``      why there is no live preview (stage without slice preview, grid set)
``medlab-difference``        checkbox: show the preview as a difference to the input
``medlab-metrics``           the table of quality numbers (before / after)
``medlab-before``, ``medlab-after``  the viewers the panel creates itself (if any)

The status line also carries one class for its state: ``medlab-status-error``,
``medlab-status-ok``, ``medlab-status-busy`` or ``medlab-status-info``. The classes sit on the
root element of each ipywidget; a slider's value can be typed into its
``.medlab-param-<name> .widget-readout`` (then Enter), a dropdown is a ``select`` inside
``.medlab-param-<name>``, and Python-only text (``preview 12 ms``, the metrics table, the status
line, the recipe code) proves a kernel round trip.
"""

from __future__ import annotations

import atexit
import contextvars
import html
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as widgets
import numpy as np
import traitlets

from medlab.errors import Cancelled, MedlabError, ParameterError
from medlab.image import Image
from medlab.outputs import Curve, describe_value
from medlab.stage import Points, Result, StageSpec, get_stage, progress_to, record

from .controls import ParamControl, param_control
from .outputs import LiveView, OutputsView

__all__ = ["ParamControl", "StagePanel", "link_window", "param_control", "preview_quality"]

_DESC_STYLE = {"description_width": "initial"}


# ---------------------------------------------------------------------------- quality numbers
def preview_quality(before: Image, after: Image) -> list[tuple[str, float | None, float | None]]:
    """Quality numbers of a preview: ``(name, value on the input, value on the preview)`` rows.

    Noise sigma (:func:`medlab.metrics.estimate_noise_sigma`); SNR (tissue over background)
    and CNR (between the two tissue classes) in regions found automatically on the *input*
    slice and used for both, so the numbers compare; edge preservation of the preview against
    the input (:func:`medlab.metrics.edge_preservation`). A number that cannot be computed on
    this slice is left out, so the widget never breaks on a metric.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> rng = np.random.default_rng(0)
    >>> a = np.zeros((64, 64)); a[16:48, 16:48] = 50; a[24:40, 24:40] = 100
    >>> noisy = Image(a + rng.normal(0, 5, a.shape))
    >>> [name for name, _, _ in preview_quality(noisy, noisy)]
    ['noise σ', 'SNR', 'CNR', 'edge preservation']
    """
    from medlab import metrics

    rows: list[tuple[str, float | None, float | None]] = []

    def add(name, fn, both=True):
        try:
            rows.append((name, fn(before) if both else None, fn(after)))
        except (MedlabError, ValueError, ZeroDivisionError):
            pass

    add("noise σ", metrics.estimate_noise_sigma)
    same = before.shape == after.shape
    regions = metrics.auto_regions(before) if same else None
    if regions is not None:
        background, low, high = regions
        add("SNR", lambda im: metrics.snr(im, low | high, background))
        add("CNR", lambda im: metrics.cnr(im, low, high))
    if same:
        add("edge preservation", lambda im: metrics.edge_preservation(im, before), both=False)
    return rows


def _metrics_html(rows) -> str:
    if not rows:
        return ""
    def cell(v):
        return "" if v is None else f"{v:.3g}"
    body = "".join(f"<tr><td>{html.escape(n)}</td><td>{cell(b)}</td><td>{cell(a)}</td></tr>" for n, b, a in rows)
    return ("<table class='medlab-metrics-table'><tr><th></th><th>input</th><th>preview</th></tr>"
            f"{body}</table>")


# ---------------------------------------------------------------------------- worker
class _LatestOnly:
    """One worker thread that runs only the newest submitted job, after a quiet period.

    Submitting a job replaces a pending one and sets the cancel event of the running one,
    so a drag of a slider costs one computation, not one per step.
    """

    def __init__(self, delay: float):
        self.delay = delay
        self._cond = threading.Condition()
        self._job: Callable | None = None
        self._due = 0.0
        self._running: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[threading.Event], None]) -> None:
        with self._cond:
            self._job, self._due = job, time.monotonic() + self.delay
            if self._running is not None:
                self._running.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="medlab-preview", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def cancel(self) -> None:
        """Drop the pending job and ask the running one to stop."""
        with self._cond:
            self._job = None
            if self._running is not None:
                self._running.set()
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending or running; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._job is not None or self._running is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._job is None or time.monotonic() < self._due:
                    if self._job is None:
                        if not self._cond.wait(10.0) and self._job is None:
                            self._thread = None  # idle: let the thread end
                            return
                    else:
                        self._cond.wait(max(self._due - time.monotonic(), 0.0))
                job, self._job = self._job, None
                cancel = self._running = threading.Event()
            try:
                job(cancel)
            except Exception:  # noqa: BLE001 - a job reports its own errors; never kill the worker
                traceback.print_exc()
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()


def _noop_progress(fraction: float, message: str) -> None:
    pass


# ---------------------------------------------------------------------------- slices and slabs
# display index axis (i towards L, j towards P, k towards S) normal to each plane, as in medlab.render
_NORMAL_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def _slab(image: Image, plane: str, index: int | None, half: int) -> Image:
    """``2*half+1`` slices of the display-oriented volume around slice ``index`` of ``plane``,
    as a 3D image that keeps its physical geometry (a point in mm lands where it was clicked).

    Slice ``half`` of the slab is slice ``index`` of the image in that plane (as
    :func:`medlab.render.extract_slice` numbers them); indices beyond the volume are mirrored.
    """
    from medlab.render import display_image

    disp = display_image(image)
    axis = _NORMAL_AXIS[plane]
    n = disp.size[axis]
    k = n // 2 if index is None else int(np.clip(index, 0, n - 1))
    idx = np.abs(np.arange(k - half, k + half + 1))
    idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx).clip(0, n - 1)
    start = np.zeros(3)
    start[axis] = k - half
    return Image(np.take(disp.array, idx, axis=2 - axis), disp.spacing, disp.index_to_physical(start),
                 disp.direction, kind=image.kind, labels=image.labels,
                 metadata=dict(image.metadata, slab_of=(plane, int(k))))


def _middle_slice(slab: Image, plane: str, half: int) -> Image:
    """Slice ``half`` of a :func:`_slab`, numbered as the volume's slice (the caption of a
    preview pane reads "axial 12", not the slab's "axial 1")."""
    from medlab.render import extract_slice

    cut = extract_slice(slab, plane, half)
    of = cut.metadata.pop("slab_of", None)
    if of is not None and of[0] == plane:
        cut.metadata["slice_index"] = int(of[1])
    return cut


def _downsampled(image: Image, largest: int) -> Image:
    """``image`` shrunk by whole factors so that no axis exceeds ``largest`` voxels (block mean
    for intensities, every n-th voxel for labels); the physical extent is kept."""
    import SimpleITK as sitk

    factors = [max(1, int(np.ceil(s / largest))) for s in image.size]
    if max(factors) == 1:
        return image
    src = image.to_sitk()
    out = sitk.Shrink(src, factors) if image.is_label else sitk.BinShrink(sitk.Cast(src, sitk.sitkFloat32), factors)
    return Image.from_sitk(out, kind=image.kind, labels=image.labels, metadata=image.metadata)


def _first_image(outputs: dict) -> tuple[str | None, Image | None]:
    for name, value in outputs.items():
        if isinstance(value, Image):
            return name, value
    return None, None


def _as_dict(spec: StageSpec, out) -> dict:
    return out.as_dict() if isinstance(out, Result) else {next(iter(spec.outputs)): out}


# ---------------------------------------------------------------------------- the panel
class StagePanel(widgets.VBox):
    """Controls, live preview and Apply for one stage, built from its declaration.

    Parameters
    ----------
    stage : callable, StageSpec or str
        A stage function (``medlab.preprocess.nlm_denoise``), its declaration, or its name.
    viewer : Viewer, optional
        The viewer showing the stage's first image input; the preview runs on the slice it shows
        and follows it, and each points parameter gets its own point set in it (by role: colour,
        marker, legend chip).
    after : Viewer, optional
        Where the preview is shown. Created when ``viewer`` or ``image`` is given.
    image : Image, optional
        The first image input when there is no viewer (a viewer is then created for it).
    inputs : dict, optional
        Values of the other inputs (``{"moving": img}``); see :meth:`set_input`.
    debounce : float
        Quiet time in seconds after the last change before a preview starts.
    slab : int
        Half thickness, in slices, of the slab a 3D-only stage is previewed on.
    quality : callable, optional
        ``quality(before_slice, after_slice) -> [(name, before, after), ...]``;
        default :func:`preview_quality`.
    live : bool
        Preview on every change (True) or only on :meth:`request_preview`.
    volume_preview_size : int
        Largest axis, in voxels, of the downsampled volume a ``preview="volume"`` stage runs on.

    Attributes
    ----------
    result : Image or None
        The first image output of the last Apply.
    outputs : tuple or Result or None
        Everything the last Apply returned (a :class:`~medlab.stage.Result` for several outputs;
        after a Cancel that kept the best so far, that partial result).
    steps : list
        The recipe steps the last Apply recorded.
    live_values : dict
        What the running (or last) Apply published, by name.
    preview, preview_input : Image or None
        The shown preview and the input it came from (2D slices, or the downsampled volumes
        of a volume preview).
    message : str
        The status line's text; ``error`` holds the last exception (None if the last action
        succeeded).

    Examples
    --------
    >>> panel = StagePanel(medlab.preprocess.nlm_denoise, viewer)   # doctest: +SKIP
    >>> panel.set(h=2.0)                                           # doctest: +SKIP
    >>> panel.wait_preview(); panel.preview_ms                      # doctest: +SKIP
    >>> volume = panel.apply(wait=True)                              # doctest: +SKIP
    """

    message = traitlets.Unicode("")
    running = traitlets.Bool(False)
    preview_ms = traitlets.Float(float("nan"))

    def __init__(self, stage, viewer=None, *, after=None, image: Image | None = None, inputs: dict | None = None,
                 debounce: float = 0.15, slab: int = 2, quality: Callable | None = None, live: bool = True,
                 volume_preview_size: int = 64):
        super().__init__()
        self.add_class("medlab-panel")
        self.spec: StageSpec = _as_spec(stage)
        self.function = self.spec.function or self.spec.func
        for what, value, low in (("slab", slab, 0), ("volume_preview_size", volume_preview_size, 8)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= 4096:
                raise ParameterError(f"{what} must be a whole number from {low} to 4096; got {value!r}")
        if isinstance(debounce, bool) or not isinstance(debounce, (int, float)) or not 0 <= debounce <= 60:
            raise ParameterError(f"debounce is a quiet time in seconds, from 0 to 60; got {debounce!r}")
        self._inputs: dict[str, Any] = dict(inputs or {})
        if image is not None and self.spec.primary is not None:
            self._inputs[self.spec.primary] = image
        self.slab, self.live = int(slab), live
        self.volume_preview_size = int(volume_preview_size)
        self.quality = preview_quality if quality is None else quality
        self.result = self.outputs = self.preview = self.preview_input = self.error = None
        self.preview_outputs: dict = {}
        self.quality_rows: list = []
        self.live_values: dict[str, Any] = {}
        self._apply_error: BaseException | None = None
        self.steps: list = []
        self._lock = threading.RLock()
        self._display_lock = threading.Lock()
        self._generation = 0
        self._shown_generation = 0
        self._worker = _LatestOnly(debounce)
        self._apply_thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._apply_callbacks: list[Callable] = []
        self._preview_callbacks: list[Callable] = []
        self._active = True
        self._unlink = None
        self._error_source = ""
        self._syncing_points = False
        self._held = self._user_change = False

        _LIVE.add(self)
        created = self._make_viewers(viewer, after, image)
        self._build(created)
        self._bind_viewer()
        self.request_preview()

    # -------------------------------------------------------------- construction
    def _make_viewers(self, viewer, after, image) -> list:
        self.viewer, self.after = viewer, after
        created = []
        if self.viewer is None and image is not None:
            self.viewer = _new_viewer(image)
            if self.viewer is not None:
                self.viewer.add_class("medlab-before")
                created.append(self.viewer)
        if self.after is None and self.viewer is not None and self.spec.preview is not None:
            self.after = _new_viewer(None)
            if self.after is not None:
                self.after.add_class("medlab-after")
                created.append(self.after)
                self._unlink = link_window(self.viewer, self.after)
        return created

    def _build(self, viewers: list) -> None:
        s = self.spec
        summary = "" if s.summary.strip(". ") == s.title else s.summary
        title = widgets.HTML(f"<b>{html.escape(s.title)}</b> <span style='opacity:.75'>{html.escape(summary)}</span>")
        title.add_class("medlab-stage-title")
        self.inputs_note = widgets.HTML(self._inputs_html())
        self.inputs_note.add_class("medlab-inputs")
        self.controls = {n: param_control(p, self.image) for n, p in s.params.items()}
        for c in self.controls.values():
            c.observe(self._on_param_change)
        self.apply_button = widgets.Button(description="Apply", button_style="primary", icon="check",
                                           tooltip="run on the whole image")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            tooltip="stop the run" + (" and keep the best result so far"
                                                                      if s.keeps_best else ""))
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="",
                                              layout=widgets.Layout(width="14em", visibility="hidden"))
        self.status = widgets.HTML("")
        self.preview_time = widgets.HTML("")
        self.preview_note = widgets.HTML(self._preview_off_reason() or "")
        self.difference = widgets.Checkbox(value=False, description="difference", indent=False,
                                           tooltip="show preview minus input", layout=widgets.Layout(width="8em"))
        self.metrics = widgets.HTML("")
        self.live_view = LiveView()
        self.outputs_view = OutputsView(on_show=self._show_output, on_overlay=self._overlay_output,
                                        on_error=lambda exc: self._fail(exc))
        for w, cls in ((self.apply_button, "medlab-apply"), (self.cancel_button, "medlab-cancel"),
                       (self.progress, "medlab-progress"), (self.status, "medlab-status"),
                       (self.preview_time, "medlab-preview-time"), (self.preview_note, "medlab-preview-note"),
                       (self.difference, "medlab-difference"), (self.metrics, "medlab-metrics")):
            w.add_class(cls)
        self.apply_button.on_click(lambda _: self.apply())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.difference.observe(lambda _: self._redisplay(), "value")
        for n, c in self.controls.items():
            if hasattr(c, "pick"):
                c.pick.observe(lambda ch, name=n: self._on_pick(name, ch), "value")
        self._set_status("", "info")
        rows = [title, self.inputs_note, widgets.VBox([c.row for c in self.controls.values()]),
                widgets.HBox([self.apply_button, self.cancel_button, self.progress]),
                widgets.HBox([self.preview_time, self.difference, self.preview_note]), self.metrics, self.status,
                self.live_view, self.outputs_view]
        if viewers:
            rows.append(widgets.HBox(viewers))
        self.children = rows

    def _inputs_html(self) -> str:
        others = [n for n in self.spec.inputs if n != self.spec.primary]
        if not others:
            return ""
        parts = []
        for n in others:
            v = self._inputs.get(n)
            text = describe_value(v) if v is not None else (
                "optional, not set" if self.spec.inputs[n].optional else f"not set: panel.set_input({n!r}, value)")
            parts.append(f"<b>{html.escape(n)}</b>: {html.escape(text)}")
        return "<br>".join(parts)

    def _point_set_name(self, name: str) -> str:
        """The viewer point set a points parameter uses: its own, or the shared 'points' set."""
        p = self.spec.params[name]
        return "points" if p.role == "points" else name

    def _bind_viewer(self) -> None:
        v = self.viewer
        if v is None or not hasattr(v, "observe"):
            return
        names = [n for n in ("plane", "slice_index") if v.has_trait(n)]
        v.observe(self._on_view_change, names)
        if v.has_trait("point_sets"):
            for n, p in self.spec.point_params().items():
                label = p.label or (p.role.replace("_", " ") if p.role != "points" else n)
                if self._point_set_name(n) != "points":
                    kept = [[*q, 0.0][:3] for q in (self.controls[n].value or ())]
                    v.add_point_set(n, role=p.role, label=label, points=kept)
            v.observe(self._on_point_sets, "point_sets")
            v.observe(self._on_active_set, ["active_set", "point_mode"])
            self._on_point_sets({"new": v.point_sets})
        elif v.has_trait("points"):
            v.observe(self._on_point_sets, "points")

    def detach(self) -> None:
        """Stop following the viewer (when another panel takes over the same viewers); this
        panel's own point sets leave the viewer (their points stay in the controls). Detached
        already: nothing (a set of the same name may belong to the panel that took over)."""
        if not self._active:
            return
        self._active = False
        with self._lock:
            self._generation += 1  # drop any preview in flight
        self._worker.cancel()
        v = self.viewer
        if v is not None and hasattr(v, "unobserve"):
            for fn, names in ((self._on_view_change, ["plane", "slice_index"]),
                              (self._on_point_sets, ["point_sets", "points"]),
                              (self._on_active_set, ["active_set", "point_mode"])):
                for n in names:
                    try:
                        v.unobserve(fn, n)
                    except ValueError:
                        pass
            if v.has_trait("point_sets"):
                for n in self.spec.point_params():
                    if self._point_set_name(n) != "points":
                        v.remove_point_set(n)
                if v.point_mode == "edit":
                    v.point_mode = "off"

    def attach(self) -> None:
        """Follow the viewer again (its point sets come back with their points) and refresh the preview."""
        if not self._active:
            self._active = True
            self._bind_viewer()
        self._user_change = True  # picking a stage asks for its preview
        self.request_preview()

    # -------------------------------------------------------------- inputs and parameters
    @property
    def image(self) -> Image | None:
        """The first image input: the one given, else the viewer's image."""
        primary = self.spec.primary
        if primary is not None and self._inputs.get(primary) is not None:
            return self._inputs[primary]
        return getattr(self.viewer, "image", None)

    @image.setter
    def image(self, image: Image | None) -> None:
        self.set_input(self.spec.primary or "image", image)

    @property
    def inputs(self) -> dict[str, Any]:
        """Every input's current value (the first image input from :attr:`image`)."""
        out = {n: self._inputs.get(n) for n in self.spec.inputs}
        if self.spec.primary is not None:
            out[self.spec.primary] = self.image
        return out

    def set_input(self, name: str, value) -> None:
        """Give input ``name`` a value (the first image input is also shown in the viewer)."""
        if name not in self.spec.inputs:
            raise ParameterError(f"{self.spec.name} has no input {name!r}; its inputs are {list(self.spec.inputs)}")
        self._inputs[name] = value
        if name == self.spec.primary and self.viewer is not None and value is not None \
                and getattr(self.viewer, "image", None) is not value:
            self.viewer.image = value
        self.inputs_note.value = self._inputs_html()
        self.request_preview()

    @property
    def params(self) -> dict[str, Any]:
        """The parameter values shown in the controls (not yet validated)."""
        return {n: c.value for n, c in self.controls.items()}

    def set(self, **params) -> None:
        """Show new parameter values; invalid ones raise :class:`ParameterError` (also shown).

        Examples
        --------
        >>> panel.set(sigma=2.0, mode="reflect")     # doctest: +SKIP
        """
        # a generator or iterator of points is read once, here: checking it would use it up
        params = {n: list(v) if isinstance(v, Iterator) else v for n, v in params.items()}
        try:
            self._validate(params)
        except ParameterError as exc:
            self._fail(exc, source="params")
            raise
        for n, v in params.items():
            self.controls[n].value = v
            if self.spec.params[n].kind == "points" and self.viewer is not None and self.viewer.has_trait("point_sets"):
                # the viewer works in 3D mm: a 2D image's points lie at z = 0
                self._syncing_points = True
                try:
                    self.viewer.set_point_set(self._point_set_name(n), [[*p, 0.0][:3] for p in v])
                finally:
                    self._syncing_points = False

    def _validate(self, params: dict) -> None:
        """Check new values as the stage will, except that too few points is not an error while
        the user is still clicking them (Apply checks the count)."""
        if unknown := set(params) - set(self.spec.params):
            raise ParameterError(f"{self.spec.name}: unknown parameter(s) {sorted(unknown)}; it takes "
                                 f"{sorted(self.spec.params)}")
        for n, v in params.items():
            p = self.spec.params[n]
            if isinstance(p, Points) and _count(v) < p.min_count:
                p = Points(role=p.role, max_count=p.max_count)  # the coordinates, not the count
                p.name = n
            p.validate(v, self.spec.name)

    def _waiting_for_points(self) -> str:
        """A note when a points parameter has fewer points than it needs (the user is clicking)."""
        for n, p in self.spec.point_params().items():
            have = len(self.controls[n].value or ())
            if have < p.min_count:
                what = p.role.replace("_", " ")
                return (f"<i>click {p.min_count - have} {html.escape(what)} point(s) in the viewer to preview "
                        f"(the <b>pick in viewer</b> toggle of {html.escape(n)})</i>")
        return ""

    def reset(self) -> None:
        """Back to the declared defaults."""
        for n, c in self.controls.items():
            c.value = self.spec.params[n].default

    def on_apply(self, callback: Callable[[StagePanel], None]) -> None:
        """Call ``callback(panel)`` (in the worker thread) after each successful Apply."""
        self._apply_callbacks.append(callback)

    def on_preview(self, callback: Callable[[StagePanel], None]) -> None:
        """Call ``callback(panel)`` after each preview is shown."""
        self._preview_callbacks.append(callback)

    # -------------------------------------------------------------- preview
    def _preview_off_reason(self) -> str | None:
        if self.spec.preview is None:
            return "<i>no slice preview for this stage: Apply runs it on the whole image</i>"
        if any(c.param.kind == "grid" and c.value is not None for c in self.controls.values()):
            return "<i>no slice preview while a target grid is set: Apply to see the result</i>"
        missing = [n for n, i in self.spec.inputs.items() if not i.optional and self.inputs.get(n) is None
                   and n != self.spec.primary]
        if missing:
            return f"<i>no preview until input(s) {', '.join(missing)} are set</i>"
        return None

    def _on_param_change(self, change=None) -> None:
        self.preview_note.value = self._preview_off_reason() or ""
        self._user_change = True
        if self.live:
            self.request_preview()

    def _on_view_change(self, change=None) -> None:
        self._user_change = True
        if self.live:
            self.request_preview()

    def _on_point_sets(self, change) -> None:
        if self._syncing_points:
            return
        v = self.viewer
        for n in self.spec.point_params():
            set_name = self._point_set_name(n)
            pts = v.point_set(set_name) if v.has_trait("point_sets") else (change["new"] or [])
            self.controls[n].value = pts

    def _on_active_set(self, change=None) -> None:
        """The pick toggles show which set clicks go to (also when it is picked in the viewer)."""
        v = self.viewer
        editing = v.point_mode == "edit"
        for n, c in self.controls.items():
            if hasattr(c, "pick"):
                want = editing and v.active_set == self._point_set_name(n)
                if c.pick.value != want:
                    c.pick.value = want

    def _on_pick(self, name: str, change) -> None:
        v = self.viewer
        if v is None or not v.has_trait("point_mode"):
            return
        if change["new"]:
            if v.has_trait("active_set"):
                v.active_set = self._point_set_name(name)
            v.point_mode = "edit"
        elif not v.has_trait("active_set") or v.active_set == self._point_set_name(name):
            v.point_mode = "off"

    def hold_preview(self) -> None:
        """No automatic preview until the user changes a parameter, the slice or the stage
        (after an Apply, both panes show the result instead)."""
        with self._lock:
            self._generation += 1  # drop any preview in flight
            self._held = True
        self._worker.cancel()
        self.preview = self.preview_input = None
        self.preview_time.value, self.metrics.value, self.quality_rows = "", "", []

    def request_preview(self) -> int:
        """Ask for a preview of the current parameters; returns its generation (0: none)."""
        if self._held and not self._user_change:
            return 0
        self._held = self._user_change = False
        if not self._active or self._preview_off_reason() or self.image is None:
            return 0
        waiting = self._waiting_for_points()
        if waiting:
            self.preview_note.value = waiting
            return 0
        try:
            values = self.spec.validate(self.params)
        except ParameterError as exc:
            with self._lock:
                self._generation += 1  # what is computing now is for other values
            self._fail(exc, source="params")
            return 0
        with self._lock:
            self._generation += 1
            gen = self._generation
        self._worker.submit(lambda cancel: self._compute_preview(gen, values, cancel))
        return gen

    def wait_preview(self, timeout: float | None = 30.0) -> Image | None:
        """Wait for pending previews to finish; returns the shown preview."""
        self._worker.wait_idle(timeout)
        return self.preview

    def _preview_source(self):
        """``(input shown, inputs to run on, cut)``: ``cut(output)`` gives what to show."""
        image, v = self.image, self.viewer
        inputs = self.inputs
        primary = self.spec.primary
        if self.spec.preview == "volume":
            small = _downsampled(image, self.volume_preview_size)
            for n, inp in self.spec.inputs.items():
                if n != primary and getattr(inp, "same_grid", None) == primary and inputs.get(n) is not None:
                    inputs[n] = _downsampled(inputs[n], self.volume_preview_size)
            inputs[primary] = small
            return small, inputs, None
        if image.ndim == 2:
            return image, inputs, None
        shows_it = v is not None and getattr(v, "image", None) is image
        plane = v.plane if shows_it else "axial"
        index = v.slice_index if shows_it else None
        physical = bool(self.spec.point_params()) or len(self.spec.image_inputs) > 1
        if 2 in self.spec.dims and not physical:
            cut = v.current_slice() if shows_it else _middle_slice(_slab(image, plane, index, 0), plane, 0)
            inputs[primary] = cut
            return cut, inputs, None
        # a slab in physical space: seeds in mm land on it, other images are found where they are
        half = 0 if 2 in self.spec.dims else self.slab
        slab = _slab(image, plane, index, half)
        for n, inp in self.spec.inputs.items():
            if n != primary and getattr(inp, "same_grid", None) == primary and inputs.get(n) is not None:
                inputs[n] = _slab(inputs[n], plane, index, half)
        inputs[primary] = slab
        return _middle_slice(slab, plane, half), inputs, lambda out: _middle_slice(out, plane, half)

    def _preview_points(self, values: dict, inputs: dict) -> str | None:
        """Keep the points that lie on the previewed slab; a reason when too few are left."""
        for n, p in self.spec.point_params().items():
            image = inputs.get(p.image) if p.image else None
            if image is None or not values.get(n):
                continue
            inside = tuple(q for q in values[n] if image.contains(q[: image.ndim] if image.ndim == 2 else q))
            if len(inside) < p.min_count:
                return (f"<i>put {p.min_count - len(inside)} more {html.escape(p.role.replace('_', ' '))} point(s) on "
                        "this slice to preview (Apply uses every point)</i>")
            values[n] = inside
        return None

    def _compute_preview(self, gen: int, values: dict, cancel: threading.Event) -> None:
        if gen != self._generation:
            return
        try:
            before, inputs, cut = self._preview_source()
            values = dict(values)
            reason = self._preview_points(values, inputs)
            if reason is not None:
                self.preview_note.value = reason
                return
            t0 = time.perf_counter()
            with progress_to(_noop_progress, cancel, publish=_noop_publish):
                out = self.function(**inputs, **values)
            ms = (time.perf_counter() - t0) * 1000
            outputs = _as_dict(self.spec, out)
            _, after = _first_image(outputs)
            if after is not None and cut is not None:
                after = cut(after)
        except Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - any failure belongs in the status line
            with self._lock:
                if gen != self._generation:
                    return
            self._fail(exc, "preview: ", source="preview")
            return
        with self._lock:
            if gen != self._generation or gen <= self._shown_generation:
                return  # a newer request exists: this preview is stale
            self._shown_generation = gen
        self.preview_outputs = outputs
        if after is None:
            return
        if not self._show_preview(before, after, ms, gen):
            return
        if after.is_label or self.spec.preview == "volume":
            self.quality_rows, self.metrics.value = [], ""
            return
        try:
            rows = self.quality(before, after)
        except Exception as exc:  # noqa: BLE001 - numbers are a bonus; say why they are missing
            rows = [(f"quality numbers failed: {exc}", None, None)]
        if gen == self._generation:
            self.quality_rows = rows
            self.metrics.value = _metrics_html(rows)

    def _show_preview(self, before: Image, after: Image, ms: float, gen: int | None = None) -> bool:
        """Show a preview unless a newer request (or a parameter error) came meanwhile."""
        with self._lock:  # the same lock as parameter changes: no error is cleared by a stale preview
            if gen is not None and gen != self._generation:
                return False
            self.preview_input, self.preview, self.preview_ms = before, after, ms
            what = "preview on a downsampled volume" if self.spec.preview == "volume" else "preview"
            self.preview_time.value = f"{what} {ms:.1f} ms" if ms < 10 else f"{what} {ms:.0f} ms"
            self.preview_note.value = self._preview_off_reason() or ""
            if self.error is not None and self._error_source in ("params", "preview") and not self.running:
                self._set_status("", "info")  # the values are valid again
                self.error = None
            self._redisplay()
        for cb in self._preview_callbacks:
            try:
                cb(self)
            except Exception as exc:  # noqa: BLE001 - a user callback's error belongs in the status line
                self._fail(exc, "preview callback: ")
        return True

    def _redisplay(self) -> None:
        a = self.after
        if a is None or self.preview is None:
            return
        with self._display_lock:
            try:
                wl = (self.viewer.window, self.viewer.level) if self.viewer is not None else None
                if self.preview.is_label:  # a segmentation: the input with the labels over it
                    a.image = self.preview_input
                    a.set_labels(self.preview, opacity=0.45)
                else:
                    a.image = self.preview
                    if hasattr(a, "set_labels"):
                        a.set_labels(None)
                if wl is not None:  # the preview keeps the input's window (not its own automatic one)
                    a.window, a.level = wl
                if hasattr(a, "set_second_image") and not self.preview.is_label:
                    diff = self.difference.value and self.preview.same_grid(self.preview_input)
                    a.set_second_image(self.preview_input if diff else None, mode="difference")
                if self.spec.preview == "volume" and self.viewer is not None and self.preview.ndim == 3:
                    a.position = list(self.viewer.position)  # same place, in mm
            except Exception as exc:  # noqa: BLE001
                self._fail(exc, "display: ")

    # -------------------------------------------------------------- outputs
    def _show_output(self, name: str, image: Image) -> None:
        target = self.after if self.after is not None else self.viewer
        if target is None:
            raise MedlabError("no viewer to show the output in")
        target.image = image
        if hasattr(target, "set_labels"):
            target.set_labels(None)
        self._set_status(f"showing output {name!r}", "info")

    def _overlay_output(self, name: str, image: Image) -> None:
        if self.viewer is None:
            raise MedlabError("no viewer to overlay the output on")
        self.viewer.set_labels(image, opacity=0.4)
        self._set_status(f"output {name!r} overlaid on the input", "info")

    # -------------------------------------------------------------- apply
    def apply(self, wait: bool = False):
        """Run the stage on the whole inputs in a background thread.

        Parameters
        ----------
        wait : bool
            Block until done and return the result (for scripts and tests); errors and
            cancellation are then raised as well as shown.

        Returns
        -------
        Image, Result or None
            When ``wait`` is true: the stage's output (its image for one-output stages).
        """
        if self.running:
            self._set_status("already running: wait, or Cancel", "busy")
            if wait:
                raise MedlabError(f"{self.spec.name} is already running; wait for it or cancel it")
            return None
        try:
            inputs = self.inputs
            if self.spec.primary is not None and inputs.get(self.spec.primary) is None:
                raise ParameterError("no input image: give the panel an image or a viewer showing one")
            values = self.spec.validate(self.params)
        except MedlabError as exc:
            self._fail(exc)
            if wait:
                raise
            return None
        self._cancel = threading.Event()
        self.error = self._apply_error = None
        self.running = True
        self.apply_button.disabled, self.cancel_button.disabled = True, False
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.progress.layout.visibility = "visible"
        self.live_values = {}
        self.live_view.clear()
        self._set_status(f"running {self.spec.title} on the whole image…", "busy")
        # in the caller's context, so that an enclosing Recipe.record() sees the step
        context = contextvars.copy_context()
        self._apply_thread = threading.Thread(target=context.run, args=(self._apply_job, inputs, values, self._cancel),
                                              name=f"medlab-apply-{self.spec.name}", daemon=True)
        self._apply_thread.start()
        if not wait:
            return None
        self._apply_thread.join()
        if self._apply_error is not None:
            raise self._apply_error
        return self.outputs if isinstance(self.outputs, Result) else self.outputs[0]

    def cancel(self) -> None:
        """Ask the running Apply to stop at its next progress step."""
        self._cancel.set()
        if self.running:
            self._set_status("cancelling…", "busy")

    def _on_publish(self, stage: str, values: dict) -> None:
        if stage != self.spec.name:
            return  # a stage the running one calls inside
        self.live_values.update(values)
        self.live_view.update(values)

    def _apply_job(self, inputs: dict, values: dict, cancel: threading.Event) -> None:
        t0 = time.perf_counter()
        last = [-1.0]

        def report(fraction: float, message: str) -> None:
            if fraction - last[0] >= 0.01 or fraction >= 1.0:  # spare the comm channel
                last[0] = fraction
                self.progress.value = fraction
                self.progress.description = f"{fraction:.0%}"

        try:
            with progress_to(report, cancel, publish=self._on_publish), record() as steps:
                out = self.function(**inputs, **values)
            self.live_view.flush()
            self._keep(out)
            if any(isinstance(v, Curve) for v in _as_dict(self.spec, out).values()):
                self.live_view.clear()  # the outputs below show the final curves
            self.steps = list(steps)
            self.progress.value, self.progress.bar_style = 1.0, "success"
            self._set_status(f"applied {self.spec.title} in {time.perf_counter() - t0:.2f} s", "ok")
            for cb in self._apply_callbacks:
                cb(self)
        except Cancelled as exc:
            self.live_view.flush()
            self.error = self._apply_error = exc
            self.progress.bar_style = "warning"
            kept = getattr(exc, "result", None)
            if kept is not None:
                self._keep(kept, title=f"{self.spec.title} (cancelled: the best result so far)")
                self._set_status("cancelled: the best result so far is kept below (it is not in the recipe); "
                                 "the input is unchanged", "info")
            else:
                self._set_status("cancelled: the input is unchanged", "info")
        except Exception as exc:  # noqa: BLE001 - never a dead callback: show it
            self.live_view.flush()
            self.progress.bar_style = "danger"
            self._apply_error = exc
            self._fail(exc)
        finally:
            self.running = False
            self.apply_button.disabled, self.cancel_button.disabled = False, True
            self.progress.layout.visibility = "hidden" if self._apply_error is None else "visible"

    def _keep(self, out, title: str = "") -> None:
        outputs = _as_dict(self.spec, out)
        self.outputs = out if isinstance(out, Result) else (out,)
        self.result = _first_image(outputs)[1]
        self.outputs_view.show(outputs, title=title or f"outputs of {self.spec.title}")

    # -------------------------------------------------------------- status
    def _fail(self, exc: BaseException, prefix: str = "", source: str = "action") -> None:
        """Show an error; ``source`` ('params', 'preview', 'action') says what may clear it."""
        self.error, self._error_source = exc, source
        text = str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}"
        self._set_status(prefix + text, "error")

    def show_status(self, text: str, level: str = "info") -> None:
        """Show a message in the status line; ``level`` is 'info', 'ok', 'busy' or 'error'."""
        self._set_status(text, level)

    def _set_status(self, text: str, level: str) -> None:
        colour = {"error": "#b00020", "ok": "#1b5e20", "busy": "#555", "info": "#333"}[level]
        self.message = text
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>" if text else ""
        for lv in ("error", "ok", "busy", "info"):
            self.status.remove_class(f"medlab-status-{lv}")
        self.status.add_class(f"medlab-status-{level}")

    def close(self) -> None:
        self.detach()
        self.cancel()
        if self._unlink is not None:
            self._unlink()
        super().close()


def _count(points) -> int:
    """How many points a value holds; a value that is not a list (5, None) counts as none, so
    the Points check says what it needs."""
    try:
        return len(points)
    except TypeError:
        return 0


def _noop_publish(stage: str, values: dict) -> None:
    pass


_LIVE: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_all(timeout: float = 2.0) -> None:
    """At interpreter exit, stop previews and applies still running in native code."""
    panels = list(_LIVE)
    for panel in panels:
        panel._worker.cancel()
        panel._cancel.set()
    for panel in panels:
        panel._worker.wait_idle(timeout)
        if panel._apply_thread is not None:
            panel._apply_thread.join(timeout)


def _as_spec(stage) -> StageSpec:
    if isinstance(stage, StageSpec):
        return stage
    if isinstance(stage, str):
        return get_stage(stage)
    spec = getattr(stage, "stage", None)
    if isinstance(spec, StageSpec):
        return spec
    raise ParameterError(f"stage must be a stage function, a StageSpec or a stage name; got {type(stage).__name__}")


def link_window(before, after) -> Callable[[], None]:
    """Keep window and level of two viewers equal; returns an unlink function.

    The preview viewer shows a 2D slice, so unlike :func:`medlab.widgets.viewer.link` the
    crosshair position is not shared (a 3D point means nothing on the 2D preview, and a click
    there must not move the input viewer).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> from medlab.widgets.viewer import Viewer
    >>> a, b = Viewer(Image(np.zeros((4, 8, 8)))), Viewer(Image(np.ones((8, 8))))
    >>> unlink = link_window(a, b)
    >>> a.window = 42.0
    >>> b.window
    42.0
    >>> unlink()
    """
    links = [traitlets.link((before, n), (after, n)) for n in ("window", "level")]

    def unlink() -> None:
        for lk in links:
            lk.unlink()

    return unlink


def _new_viewer(image):
    try:
        from .viewer import Viewer
    except ImportError:
        return None
    return Viewer(image, height=320)
