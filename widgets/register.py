"""The register widget: the workbench configured for registration. Two viewers (fixed and
moving) linked in physical space, the moving image drawn over the fixed one through the
current transform, a live metric curve, Start and Cancel, a result summary in degrees and
millimetres, landmark pairs with their errors, and export.

What it adds to :class:`~medlab.widgets.workbench.Workbench` (and only that):

* **Fixed and moving viewers** side by side, linked by position in mm (each keeps its own
  window/level: a T1 and a PD image do not share a grey scale).
* **The overlay**: the moving image resampled onto the fixed grid through the current
  transform (identity before any registration), drawn over the fixed image as a
  checkerboard (tile size in mm, converted to the viewer's pixels from the fixed image's
  in-plane spacing), an alpha blend, a difference, or a green-magenta composite of the shown
  slice (green: fixed, magenta: moving; aligned structures turn grey-white).
* **Live during a run**: the panel's metric curve grows (one line per resolution level) and
  the overlay follows the best transform published so far, at most twice a second (less often
  for volumes whose resampling takes longer), without clearing the cell output.
* **A result summary**: the transform's rotation (degrees) and translation (mm), the final
  metric, iterations, stop reason and time, folded voxels of a deformation, and the target
  registration error when a true transform or true target positions are given: before (at
  the transform the optimiser starts from, named in the row: an initial transform such as a
  landmark pre-alignment, or the initialisation) and after. A cancelled run keeps the best
  transform so far, and the summary says so.
* **Chained runs**: after a run, the menu *initial* of the next one shows the result just
  produced (landmarks, then rigid, then deformable: each starts from the previous result, one
  recipe); a transform chosen in that menu is kept across stages, and '(none)' starts afresh.
* **Landmark mode** (the landmark stage): click a landmark in the fixed image, then the same
  one in the moving image (the widget switches between the two viewers); targets likewise.
  A table lists the pairs with the error of each: FRE for the landmarks the fit uses, TRE for
  the held-out targets, recomputed at every click (the overlay follows the fit).
* **Export** of the transform (``.h5``/``.tfm``) and the registered image (NIfTI ...), beside
  the workbench's recipe export.

Examples
--------
>>> import medlab
>>> from medlab.widgets import RegisterWidget
>>> pair = medlab.data.registration_pair(size=(64, 64, 32))                       # doctest: +SKIP
>>> w = RegisterWidget(pair.fixed, pair.moving, truth=pair.transform,
...                    targets=pair.landmarks); w                                 # doctest: +SKIP
>>> w.start()          # returns at once: the curve and the overlay update live   # doctest: +SKIP
>>> w.wait(); w.summary_rows                                                       # doctest: +SKIP
>>> w.save_transform("t1_to_t2.h5"); w.save_registered("t2_on_t1.nii.gz")         # doctest: +SKIP

CSS classes (besides those of the workbench and the panel)
-----------------------------------------------------------
``medlab-register``                 the whole widget
``medlab-register-hint``            what to do now (one sentence)
``medlab-register-fixed``, ``medlab-register-moving``  the two viewers
``medlab-register-overlay``         the overlay mode dropdown
``medlab-register-tile``            tile size slider (mm); ``medlab-register-tile-px`` its size in pixels
``medlab-register-alpha``           the blend slider
``medlab-register-overlay-note``    what the overlay shows now (which transform, how many updates)
``medlab-register-gm``              the green-magenta picture of the shown slice
``medlab-register-summary``         the result summary
``medlab-register-curve``           the metric curve of the run (live), beside the summary
``medlab-register-landmarks``       the table of landmark pairs and their errors
``medlab-register-save-path``, ``medlab-register-save-overwrite``,
``medlab-register-save-transform``, ``medlab-register-save-image``   export
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from medlab import render
from medlab.errors import GeometryError, ImageError, MedlabError, ParameterError
from medlab.image import Image, as_image
from medlab.outputs import Table, Transform
from medlab.stage import Result, StageSpec

from .outputs import CurvePlot, table_html, transform_html
from .panel import StagePanel
from .workbench import Workbench

__all__ = ["RegisterWidget", "green_magenta", "link_position"]

OVERLAY_MODES = (("checkerboard", "checkerboard"), ("alpha blend", "blend"), ("difference", "difference"),
                 ("green-magenta", "green_magenta"), ("off", "off"))

#: Colour and marker of the point roles the viewer's own table has no entry for.
TARGET_ROLES = {"fixed_targets": ((204, 121, 167), "plus", "fixed targets"),
                "moving_targets": ((204, 121, 167), "triangle", "moving targets")}

LIVE_INTERVAL = 0.5
"""Shortest time (s) between two live overlay updates during a run (at most 2 Hz)."""


# ---------------------------------------------------------------------------- helpers
def link_position(a, b) -> Callable[[], None]:
    """Keep two viewers at the same position in mm (each keeps its own window/level); returns
    an unlink function.

    :func:`medlab.widgets.link` also shares window and level, which suits two images of one
    contrast; a fixed T1 and a moving PD image need their own grey scales.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> from medlab.widgets import Viewer
    >>> a, b = Viewer(Image(np.zeros((8, 8, 8)))), Viewer(Image(np.ones((8, 8, 8))))
    >>> unlink = link_position(a, b)
    >>> a.position = [2.0, 3.0, 4.0]
    >>> b.position, b.window == a.window
    ([2.0, 3.0, 4.0], True)
    >>> b.window = 9.0; a.window
    1.0
    >>> unlink()
    """
    busy = [False]

    def follower(src, dst):
        def sync(change):
            if busy[0] or dst.image is None:
                return
            value = [float(v) for v in src.position]  # after src's own snapping
            if [float(v) for v in dst.position] == value:
                return
            busy[0] = True
            try:
                dst.position = value
            finally:
                busy[0] = False
        return sync

    handlers = [(a, follower(a, b)), (b, follower(b, a))]
    for src, handler in handlers:
        src.observe(handler, names="position")
    if a.image is not None and b.image is not None:
        handlers[0][1]({"name": "position"})

    def unlink() -> None:
        for src, handler in handlers:
            src.unobserve(handler, names="position")

    return unlink


def green_magenta(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """RGB composite of two grey slices (uint8): fixed in green, moving in magenta (red + blue).

    Where both are bright the pixel is white, where both are dark black; a structure only in
    the fixed image shows green, only in the moving image magenta.

    Examples
    --------
    >>> import numpy as np
    >>> green_magenta(np.array([[255, 0]], np.uint8), np.array([[255, 255]], np.uint8)).tolist()
    [[[255, 255, 255], [255, 0, 255]]]
    """
    f, m = np.asarray(fixed, np.uint8), np.asarray(moving, np.uint8)
    if f.shape != m.shape:
        raise ParameterError(f"green_magenta needs two slices of one shape; got {f.shape} and {m.shape}")
    return np.stack([m, f, m], axis=-1)


def checker_pixels(tile_mm: float, image: Image, plane: str) -> int:
    """Tile size in the viewer's pixels (one per voxel of the displayed plane) for tiles of
    ``tile_mm``, from the finer in-plane spacing of ``plane`` (tiles are at least ``tile_mm``
    along both axes of an anisotropic plane).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.zeros((10, 20, 20)), spacing=(0.5, 0.5, 3.0))
    >>> checker_pixels(10.0, img, "axial"), checker_pixels(10.0, img, "coronal")
    (20, 20)
    """
    if image.ndim == 3:
        spacing = render.plane_spacing(render.display_image(image).spacing, plane)
    else:
        spacing = image.spacing[:2]
    return int(min(4096, max(1, round(float(tile_mm) / min(spacing)))))


class _Throttle:
    """Runs the newest submitted job in one worker thread, no sooner than ``interval`` seconds
    (and twice the last job's duration) after the previous one; older pending jobs are dropped."""

    def __init__(self, interval: float):
        self.interval = interval
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._next = 0.0
        self._busy = False
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, job: Callable[[], None], *, now: bool = False) -> None:
        with self._cond:
            if self._closed:
                return
            self._job = job
            if now:
                self._next = 0.0
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="medlab-register-overlay", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        end = time.monotonic() + timeout
        with self._cond:
            while self._job is not None or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed, self._job = True, None
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._job is None or time.monotonic() < self._next):
                    if self._job is None:
                        if not self._cond.wait(10.0) and self._job is None:
                            self._thread = None
                            return
                    else:
                        self._cond.wait(max(self._next - time.monotonic(), 0.0))
                if self._closed:
                    self._thread = None
                    return
                job, self._job, self._busy = self._job, None, True
            t0 = time.monotonic()
            try:
                job()
            except Exception:  # noqa: BLE001 - the job shows its own errors
                import traceback

                traceback.print_exc()
            finally:
                took = time.monotonic() - t0
                with self._cond:
                    self._busy = False
                    self._next = time.monotonic() + max(self.interval, 2.0 * took)
                    self._cond.notify_all()


# ---------------------------------------------------------------------------- the panel
class _RegisterPanel(StagePanel):
    """A stage panel whose points parameters go to the viewer of their image input (fixed
    landmarks to the fixed viewer, moving landmarks to the moving viewer), whose Apply reads
    "Start", and which hands every published value to the widget (the live overlay).

    Hook wanted in StagePanel: ``viewers={input name: viewer}`` routing each ``Points(image=...)``
    parameter to the viewer showing that input, and an ``on_publish(callback)``.
    """

    def __init__(self, stage, viewer=None, *, moving_viewer=None, on_live: Callable | None = None, **kwargs):
        self.moving_viewer = moving_viewer
        self._on_live = on_live
        super().__init__(stage, viewer, **kwargs)
        self.apply_button.description = "Start"
        self.apply_button.tooltip = "run on the whole images in the background (the notebook stays free)"

    # -------------------------------------------------------------- which viewer
    def viewer_of(self, name: str):
        """The viewer where points of parameter ``name`` are clicked."""
        p = self.spec.params[name]
        if p.image is not None and p.image != self.spec.primary and self.moving_viewer is not None:
            return self.moving_viewer
        return self.viewer

    def _viewers(self) -> list:
        return [v for v in (self.viewer, self.moving_viewer) if v is not None and hasattr(v, "observe")]

    def _bind_viewer(self) -> None:
        v = self.viewer
        if v is None or not hasattr(v, "observe"):
            return
        v.observe(self._on_view_change, ["plane", "slice_index"])
        for n, p in self.spec.point_params().items():
            target = self.viewer_of(n)
            label = p.label or p.role.replace("_", " ")
            color, marker, text = TARGET_ROLES.get(p.role, (None, None, label))
            kept = [[*q, 0.0][:3] for q in (self.controls[n].value or ())]
            target.add_point_set(n, role=p.role, label=text, points=kept, color=color, marker=marker)
        for viewer in self._viewers():
            viewer.observe(self._on_point_sets, "point_sets")
            viewer.observe(self._on_active_set, ["active_set", "point_mode"])
        self._on_point_sets({"new": None})

    def detach(self) -> None:
        super().detach()  # the fixed viewer
        m = self.moving_viewer
        if m is None or not hasattr(m, "unobserve"):
            return
        for fn, names in ((self._on_point_sets, ["point_sets"]), (self._on_active_set, ["active_set", "point_mode"])):
            for n in names:
                try:
                    m.unobserve(fn, n)
                except ValueError:
                    pass
        for n in self.spec.point_params():
            m.remove_point_set(n)
        if m.point_mode == "edit":
            m.point_mode = "off"

    # -------------------------------------------------------------- points
    def _on_point_sets(self, change) -> None:
        if self._syncing_points:
            return
        for n in self.spec.point_params():
            try:
                self.controls[n].value = self.viewer_of(n).point_set(n)
            except ParameterError:  # the set is being rebuilt
                pass

    def _on_active_set(self, change=None) -> None:
        for n, c in self.controls.items():
            if hasattr(c, "pick"):
                v = self.viewer_of(n)
                want = v.point_mode == "edit" and v.active_set == n
                if c.pick.value != want:
                    c.pick.value = want

    def _on_pick(self, name: str, change) -> None:
        v = self.viewer_of(name)
        if v is None:
            return
        if change["new"]:
            v.active_set = name
            v.point_mode = "edit"
        elif v.active_set == name:
            v.point_mode = "off"

    def set(self, **params) -> None:
        """As :meth:`StagePanel.set`; too few landmarks (none clicked yet) is allowed, it is a
        step of the work (Start checks again)."""
        points = self.spec.point_params()
        values = {**self.params, **params}
        short = {n: ((0.0, 0.0, 0.0),) * p.min_count for n, p in points.items()
                 if len(values.get(n) or ()) < p.min_count}
        try:
            self.spec.validate({**values, **short})
        except ParameterError as exc:
            self._fail(exc, source="params")
            raise
        for n, v in params.items():
            self.controls[n].value = v
            if n in points:
                self._syncing_points = True
                try:
                    self.viewer_of(n).set_point_set(n, [[*q, 0.0][:3] for q in v])
                finally:
                    self._syncing_points = False

    # -------------------------------------------------------------- live values
    def _on_publish(self, stage: str, values: dict) -> None:
        super()._on_publish(stage, values)
        if stage == self.spec.name and self._on_live is not None:
            self._on_live(values)


class _Elsewhere:
    """Stands in for the moving viewer while the workbench files a result: the workbench shows
    a registered image in its second viewer, which here keeps the moving image (the registered
    one is drawn over the fixed image instead). Hook wanted: ``Workbench.show_result(panel, image)``."""

    def __init__(self, viewer):
        self.image = viewer.image
        self.layout = viewer.layout

    def set_labels(self, *args, **kwargs) -> None:
        pass


# ---------------------------------------------------------------------------- the widget
class RegisterWidget(Workbench):
    """The :class:`~medlab.widgets.workbench.Workbench` with the register stages, two linked
    viewers, the moving image over the fixed one (live during a run), a result summary with
    TRE, landmark pairs with their errors, and export.

    Parameters
    ----------
    fixed, moving : Image
        The reference image and the image to align to it (same dimension, overlapping in
        physical space; any spacing, origin and direction). Never modified.
    truth : Transform or SimpleITK.Transform, optional
        The true fixed → moving transform (a phantom, a synthetic motion): the summary then
        gives the TRE at ``targets``.
    targets : (n, d) array, optional
        Target points in the fixed image (mm, LPS). Default with ``truth``: 500 points inside
        the fixed image's foreground (above its Otsu threshold).
    target_moving : (n, d) array, optional
        The true positions of ``targets`` in the moving image (instead of ``truth``).
    fixed_labels, moving_labels : Image, optional
        Label maps of the two images (surface registration, carrying labels through).
    stages : sequence, optional
        Stages offered; default every register stage.
    stage : str
        The stage selected first (default ``"linear_register"``).
    tile_mm : float, optional
        Checkerboard tile size in mm; default about an eighth of the fixed image's field of view.
    height : int
        Height of each viewer in pixels.
    live_interval : float
        Shortest time (s) between two overlay updates during a run.

    Attributes
    ----------
    transform : Transform or None
        The current transform: the last run's (or the best so far of a cancelled run), or the
        live landmark fit.
    registered : Image or None
        What the overlay shows: the moving image on the fixed grid through :attr:`transform`
        once :attr:`overlay_current` is true (the resampling follows in a worker thread).
    summary_rows : list of (str, str)
        The rows of the result summary.
    landmark_rows : list of dict
        The rows of the landmark table.
    overlay_updates : int
        How many times the overlay has been redrawn.

    Examples
    --------
    >>> w = RegisterWidget(t1, pd, stage="linear_register")            # doctest: +SKIP
    >>> w.set(metric="mattes_mi", shrink_factors=(4, 2, 1)); w.start()   # doctest: +SKIP
    >>> w.cancel()      # keeps the best transform so far                # doctest: +SKIP
    """

    def __init__(self, fixed: Image, moving: Image, *, truth=None, targets=None, target_moving=None,
                 fixed_labels: Image | None = None, moving_labels: Image | None = None,
                 stages: Sequence | None = None, stage: str | None = "linear_register", tile_mm: float | None = None,
                 height: int = 360, live_interval: float = LIVE_INTERVAL, debounce: float = 0.15):
        fixed, moving = _check_pair(fixed, moving)
        self._ready = False
        self._fixed_key, self._moving_key = "fixed", "moving"
        self.transform: Transform | None = None
        self.registered: Image | None = None
        self.summary_rows: list[tuple[str, str]] = []
        self.landmark_rows: list[dict] = []
        self.overlay_updates = 0
        self._overlay_source = "physical space (no transform yet)"
        self._overlay_lock = threading.RLock()
        self._requested = self._shown = 0
        self._throttle = _Throttle(live_interval)
        self._run_started: float | None = None
        self._alternating = False
        # the session key of the transform the next run starts from (menu "initial"): the last
        # result, or what the user chose there ("" for none); None until either happens
        self._start_key: str | None = None
        self._run_start: tuple[Transform, str] | None = None
        self._run_panel: StagePanel | None = None      # the panel whose run the summary follows
        session: dict[str, Any] = {"fixed": fixed, "moving": moving}
        for name, lab in (("fixed_labels", fixed_labels), ("moving_labels", moving_labels)):
            if lab is not None:
                session[name] = as_image(lab, name)
        offered = list(stages) if stages is not None else None
        super().__init__(session, group=None if offered is not None else "register", stages=offered,
                         stage=stage, height=height, debounce=debounce)
        self.add_class("medlab-register")
        self.truth, self.targets, self.target_moving = _truth(truth, targets, target_moving, fixed)
        self._unlink()                                  # the workbench shares window/level: not here
        self._unlink = link_position(self.before, self.after)
        self.before.add_class("medlab-register-fixed")
        self.after.add_class("medlab-register-moving")
        self.after.image = moving
        self._build_register(tile_mm)
        self._ready = True
        self._stage_chosen(self.panel)
        self._caption("preview")
        self._show_after_pane()
        self._update_summary()
        self.set_transform(None)

    # -------------------------------------------------------------- construction
    def _build_register(self, tile_mm: float | None) -> None:
        fixed = self.session[self._fixed_key]
        self.hint = widgets.HTML("")
        self.hint.add_class("medlab-register-hint")
        fov = min(s * n for s, n in zip(fixed.spacing, fixed.size))
        default_tile = tile_mm if tile_mm is not None else max(2.0, float(round(fov / 8.0)))
        self.overlay_mode = widgets.Dropdown(options=OVERLAY_MODES, value="checkerboard", description="overlay",
                                             layout=widgets.Layout(width="16em"))
        self.overlay_mode.add_class("medlab-register-overlay")
        self.tile = widgets.FloatSlider(value=default_tile, min=1.0, max=max(100.0, default_tile), step=1.0,
                                        description="tile (mm)", continuous_update=False,
                                        style={"description_width": "initial"}, layout=widgets.Layout(width="22em"))
        self.tile.add_class("medlab-register-tile")
        self.tile_px = widgets.HTML("")
        self.tile_px.add_class("medlab-register-tile-px")
        self.alpha = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="moving weight",
                                         continuous_update=False, style={"description_width": "initial"},
                                         layout=widgets.Layout(width="22em"))
        self.alpha.add_class("medlab-register-alpha")
        self.overlay_note = widgets.HTML("")
        self.overlay_note.add_class("medlab-register-overlay-note")
        self.gm_picture = widgets.Image(format="png", layout=widgets.Layout(display="none", max_width="100%"))
        self.gm_picture.add_class("medlab-register-gm")
        self.gm_caption = widgets.HTML("<span style='opacity:.8'>green: fixed, magenta: moving through the "
                                       "transform; aligned structures are grey-white</span>",
                                       layout=widgets.Layout(display="none"))
        for w in (self.overlay_mode, self.tile, self.alpha):
            w.observe(lambda _: self._safely(self._style_changed), "value")
        self.before.observe(lambda ch: self._safely(self._view_moved), ["plane", "slice_index"])
        self.before.observe(lambda ch: self._safely(self._window_moved), ["window", "level"])
        overlay = widgets.VBox([
            widgets.HBox([self.overlay_mode, self.tile, self.tile_px, self.alpha],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
            self.overlay_note, self.gm_caption, self.gm_picture])
        self.summary = widgets.HTML("", layout=widgets.Layout(flex="1 1 24em"))
        self.summary.add_class("medlab-register-summary")
        # the run's metric curve beside the summary, under the images: one place to watch a run
        # (the panel's own live area, lower down, is hidden for register stages)
        self.curve = CurvePlot(width=420, height=200, layout=widgets.Layout(display="none"))
        self.curve.add_class("medlab-register-curve")
        self._curve_sent = 0.0
        self.landmarks = widgets.HTML("")
        self.landmarks.add_class("medlab-register-landmarks")
        for v in (self.before, self.after):
            v.observe(lambda ch: self._safely(self._points_moved), "point_sets")
        save = self._build_save()
        kids = list(self.children)
        viewers_at = next(i for i, c in enumerate(kids) if isinstance(c, widgets.HBox) and any(
            isinstance(g, widgets.VBox) and self.before in g.children for g in c.children))
        panel_at = kids.index(self._panel_box)
        results = widgets.HBox([self.summary, self.curve], layout=widgets.Layout(flex_flow="row wrap",
                                                                                 align_items="flex-start"))
        self.children = [*kids[:viewers_at], self.hint, kids[viewers_at], overlay, results, self.landmarks,
                         *kids[viewers_at + 1: panel_at + 1], save, *kids[panel_at + 1:]]
        self._update_tile_px()

    def _build_save(self) -> widgets.Widget:
        self.save_path = widgets.Text(value="", placeholder="e.g. moving_to_fixed.h5 · registered.nii.gz",
                                      description="file", layout=widgets.Layout(width="26em"))
        self.save_path.add_class("medlab-register-save-path")
        self.save_overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                               layout=widgets.Layout(width="8em"))
        self.save_overwrite.add_class("medlab-register-save-overwrite")
        buttons = []
        tips = {"transform": ".h5 (exact) or .tfm (ITK text): maps fixed → moving points; 3D Slicer, elastix "
                             "and ANTs read it",
                "image": "the moving image resampled on the fixed grid (NIfTI, NRRD, MHA)"}
        for what, text in (("transform", "Save transform"), ("image", "Save registered image")):
            tip = tips[what]
            b = widgets.Button(description=text, icon="download", tooltip=tip, layout=widgets.Layout(width="auto"))
            b.add_class(f"medlab-register-save-{what}")
            b.on_click(lambda _, w=what: self._safely(lambda: self._save_clicked(w)))
            buttons.append(b)
        return widgets.VBox([widgets.HTML("<b>Save the current transform and the registered image</b> "
                                          "(the recipe: below)"),
                             widgets.HBox([self.save_path, self.save_overwrite, *buttons],
                                          layout=widgets.Layout(flex_flow="row wrap", align_items="center"))])

    # -------------------------------------------------------------- stages and inputs
    def select(self, name: str) -> StagePanel:
        """Show the panel of stage ``name`` (see :meth:`Workbench.select`)."""
        if name in self.specs and name not in self._panels:
            panel = _RegisterPanel(self.specs[name], self.before, after=self.after, moving_viewer=self.after,
                                   on_live=self._live, debounce=self._debounce)
            panel.live_view.layout.display = "none"      # shown beside the summary instead
            panel.on_apply(self._applied)
            panel.outputs_view.on_use = self._use_output
            panel.observe(lambda ch, p=panel: self._safely(lambda: self._run_state(p, ch["new"])), "running")
            for n in ("initialisation", "transform"):      # they choose where a run starts: "TRE before"
                if n in panel.controls:
                    panel.controls[n].observe(lambda _ch, p=panel: self._safely(lambda: self._start_changed(p)))
            self._panels[name] = panel
        panel = super().select(name)
        if getattr(self, "_ready", False):
            self._stage_chosen(panel)
        return panel

    def _wire_inputs(self, panel: StagePanel) -> None:
        """As the workbench, then each input takes the session value of its own name when there
        is one (``fixed``, ``moving``; label inputs ``fixed_labels``/``moving_labels``; the
        image carried through a transform: ``moving``; its reference grid: ``fixed``)."""
        super()._wire_inputs(panel)
        wanted = {"fixed": [self._fixed_key], "moving": [self._moving_key], "reference": [self._fixed_key],
                  "image": [self._moving_key], "labels": ["moving_labels"]}
        for box in self._inputs_box.children:
            name = next((c[len("medlab-input-"):] for c in box._dom_classes if c.startswith("medlab-input-")), None)
            spec_input = panel.spec.inputs.get(name)
            if spec_input is None:
                continue
            kinds = tuple(getattr(spec_input, "kinds", ()))
            prefer = wanted.get(name, [])
            if kinds == ("label",) and name != "labels":
                prefer = [f"{name}_labels"]
            keys = [k for _, k in box.options]
            pick = next((k for k in prefer if k in keys), None)
            if pick is not None and box.value != pick:
                box.value = pick
        self._offer_start(panel)

    def _fits(self, inp, value) -> bool:
        """As the workbench, and a transform fits only if it has the images' dimension (a 2D
        transform offered to a 3D pair failed inside SimpleITK, or in the TRE, at Start)."""
        if self._other_dimension(value):
            return False
        panel = getattr(self, "panel", None)
        if (isinstance(value, Transform) and panel is not None and panel.spec.name == "surface_register"
                and inp is panel.spec.inputs.get("initial") and not _is_linear(value)):
            return False            # ICP starts from a linear transform only (it failed at Start)
        return super()._fits(inp, value)

    def set_input(self, name: str, key_or_value) -> None:
        """As the workbench; a transform of another dimension than the images is refused by name."""
        value = self.session.get(key_or_value) if isinstance(key_or_value, str) else key_or_value
        if self._other_dimension(value):
            ndim = self.session[self._fixed_key].ndim
            raise ParameterError(f"input {name!r}: the transform is {value.dimension}D but the images are "
                                 f"{ndim}D; give a {ndim}D transform")
        super().set_input(name, key_or_value)

    def _other_dimension(self, value) -> bool:
        """Whether ``value`` is a transform of another dimension than the images."""
        fixed = getattr(self, "session", {}).get(self._fixed_key)
        return isinstance(value, Transform) and isinstance(fixed, Image) and value.dimension != fixed.ndim

    def undo(self):
        """As the workbench; the overlay, the hint and "TRE before" forget the undone step (its
        transform stayed over the fixed image and the hint still offered it as the start)."""
        image = super().undo()
        if self.transform is not None and not any(v is self.transform for v in self.session.values()):
            kept = [v for v in self.session.values() if isinstance(v, Transform)]
            self.set_transform(kept[-1] if kept else None, source="last step kept after undo", now=True)
        if self._start_key and self._start_key not in self.session:
            self._start_key = None
        self._hint_refresh()
        if getattr(self, "_summary_title", "") == "Before registration":
            self._update_summary()
        return image

    def _offer_start(self, panel: StagePanel) -> None:
        """Menu "initial" shows the transform the next run starts from: the result just produced
        (a landmark pre-alignment, a rigid result before a deformable run), or what the user chose
        there, when this stage can start from it."""
        if "initial" not in panel.spec.inputs or panel is not self.panel or not self._start_key:
            return
        box = next((b for b in self._inputs_box.children if "medlab-input-initial" in b._dom_classes), None)
        key = self._start_key
        if box is None or key not in [k for _, k in box.options] or box.value == key:
            return
        if panel.spec.name == "surface_register" and not _is_linear(self.session[key]):
            return                       # ICP starts from a linear transform only: "(none)" stays
        box.value = key

    def _start_changed(self, panel: StagePanel) -> None:
        """Before a run, "TRE before" follows the initialisation chosen (it stayed that of the
        geometry centres when 'moments' was chosen)."""
        if panel is self.panel and not panel.running and getattr(self, "_summary_title", "") == "Before registration":
            self._update_summary()

    def _input_chosen(self, name: str, key: str) -> None:
        super()._input_chosen(name, key)
        if name == "initial" and "initial" in self.panel.spec.inputs:
            self._start_key = key or ""
            if getattr(self, "_ready", False):
                self._hint_refresh()
                if getattr(self, "_summary_title", "") == "Before registration":
                    self._update_summary()      # "TRE before" is that of the new start
        value = self.session.get(key) if key else None
        if not isinstance(value, Image) or value.is_label:
            return                   # label maps (surface registration) leave the overlay as it is
        if name == "moving":
            self._moving_key = key
            if self.after.image is not value:
                self.after.image = value
            self.set_transform(self.transform)
        elif name == "fixed":
            self._fixed_key = key
            self.set_transform(self.transform)

    def _stage_chosen(self, panel: StagePanel) -> None:
        spec = panel.spec
        landmarks = self._landmark_mode(spec)
        self.landmarks.layout.display = "" if landmarks else "none"
        if landmarks:
            c = panel.controls.get("fixed_landmarks")
            if c is not None and hasattr(c, "pick") and not (c.value or ()):
                c.pick.value = True                     # armed: the first click is landmark 1
            self._points_moved()
        self._hint_refresh()

    @staticmethod
    def _landmark_mode(spec: StageSpec) -> bool:
        roles = {p.role for p in spec.point_params().values()}
        return {"fixed_landmarks", "moving_landmarks"} <= roles

    def _hint_refresh(self) -> None:
        spec = self.panel.spec
        if self._landmark_mode(spec):
            text = self._landmark_hint()
        elif spec.keeps_best:
            text = ("Press <b>Start</b>: the metric curve (one line per resolution level) and the overlay on the "
                    "fixed image follow the run; <b>Cancel</b> keeps the best transform so far.")
        else:
            text = f"Press <b>Start</b> to run {html.escape(spec.title.lower())}."
        initial = self.panel._inputs.get("initial") if "initial" in spec.inputs else None
        key = next((k for k, v in self.session.items() if v is initial), None) if initial is not None else None
        if key is not None:
            text += (f" It starts from <code>{html.escape(key)}</code>, the {html.escape(self._start_text(key))} "
                     "(menu 'initial' above; '(none)' starts afresh).")
        elif "initial" in spec.inputs and self._unkept_landmark_fit():
            text += (" The landmark fit drawn over the fixed image is not a step yet: press <b>Start</b> in landmark "
                     "registration to keep it: it then becomes this run's initial transform.")
        self.hint.value = f"<span>{text}</span>"

    def _unkept_landmark_fit(self) -> bool:
        """Whether the overlay shows a landmark fit clicked but not run (so not in the session)."""
        t = self.transform
        return (t is not None and t.name.startswith("landmark") and t.name.endswith(" fit")
                and not any(v is t for v in self.session.values()))

    def _landmark_hint(self) -> str:
        nf = len(self._points(self.before, "fixed_landmarks"))
        nm = len(self._points(self.after, "moving_landmarks"))
        if nf > nm:
            return (f"Now click <b>landmark {nf}</b> again in the <b>moving</b> image (right): the same anatomical "
                    "point.")
        need = max(0, 3 - nf)
        more = f" ({need} more needed for a fit)" if need else " (or press Start)"
        return (f"Click <b>landmark {nf + 1}</b> in the <b>fixed</b> image (left), then the same point in the moving "
                f"image (right){more}. Targets (held out of the fit) measure the TRE: pick 'fixed targets' below.")

    # -------------------------------------------------------------- runs
    def start(self) -> None:
        """Start the selected stage in the background (the notebook stays free)."""
        self.apply(wait=False)

    def cancel(self) -> None:
        """Stop the run; a registration keeps its best transform so far."""
        self.panel.cancel()

    def wait(self, timeout: float = 600.0) -> None:
        """Block until the run and the overlay update after it are done (scripts and tests)."""
        end = time.monotonic() + timeout
        thread = self.panel._apply_thread
        if thread is not None:
            thread.join(timeout)
        while self.panel.running and time.monotonic() < end:
            time.sleep(0.02)
        self._throttle.wait_idle(max(1.0, end - time.monotonic()))

    def _applied(self, panel: StagePanel) -> None:
        moving_view = self.after
        self.after = _Elsewhere(moving_view)   # the registered image goes over the fixed one
        try:
            super()._applied(panel)
        finally:
            self.after = moving_view
        result = _get(panel.outputs, "transform")
        key = next((k for k, v in self.session.items() if v is result), None) if result is not None else None
        if key is not None:                    # the next run (e.g. deformable) starts from this result
            self._start_key = key
            self._offer_start(self.panel)
        self._caption("result")
        self._hint_refresh()

    def _run_state(self, panel: StagePanel, running: bool) -> None:
        # a run ends where it started: the user may have switched stage meanwhile, and its result
        # (already a step) is still summarised instead of "running" staying on screen
        if panel is not (self.panel if running else self._run_panel):
            return
        if running:
            self._run_panel = panel
            self._run_started = time.perf_counter()
            self._run_seconds = None
            self._run_start = self._start_of(panel)
            self.curve.series, self.curve.title = {}, "starting…"
            rows = self._before_rows(self._run_start)
            self._render_summary(rows, f"{panel.spec.title}: running (Cancel keeps the best transform so far)")
            return
        history = _get(panel.outputs, "history") or panel.live_values.get("history")
        if history is not None and hasattr(history, "series_names"):
            self._show_curve(history)
        self._run_seconds = time.perf_counter() - self._run_started if self._run_started else None
        outputs = panel.outputs
        cancelled = isinstance(outputs, Result) and outputs.cancelled
        failed = panel.error is not None and not cancelled
        transform = _get(outputs, "transform") if not failed else None
        if isinstance(transform, Transform):
            self.set_transform(transform, source="best transform so far (run cancelled)" if cancelled
                               else f"result of {panel.spec.title}", now=True)
        self._update_summary(panel, cancelled=cancelled, failed=failed)

    def _live(self, values: dict) -> None:
        """Runs in the registration thread at each publish: keep it quick."""
        history = values.get("history")
        if history is not None and time.monotonic() - self._curve_sent >= 0.2:
            self._show_curve(history)
        t = values.get("transform")
        if isinstance(t, Transform) and t is not self.transform:
            history = values.get("history") or self.panel.live_values.get("history")
            n = len(history) if history is not None else 0
            self.set_transform(t, source=f"best transform so far (iteration {n})", live=True)

    def _show_curve(self, history) -> None:
        self._curve_sent = time.monotonic()
        self.curve.show(history)
        if self.curve.layout.display == "none":
            self.curve.layout.display = ""

    # -------------------------------------------------------------- the overlay
    def set_transform(self, transform: Transform | None, *, source: str = "", live: bool = False,
                      now: bool = False) -> None:
        """Show the moving image through ``transform`` over the fixed one (``None``: by physical
        position). During a run the update is throttled; the resampling runs in a worker thread."""
        with self._overlay_lock:
            self.transform = transform
        if not getattr(self, "_ready", False):
            return                  # still being built: the first overlay comes at the end of __init__
        fixed, moving = self.session.get(self._fixed_key), self.session.get(self._moving_key)
        if not isinstance(fixed, Image) or not isinstance(moving, Image):
            return
        with self._overlay_lock:
            self._requested += 1    # counted only when a job follows: overlay_current can become true
            seq = self._requested
        label = source or ("physical space (no transform yet)" if transform is None else transform.name)

        def job():
            from medlab.register import resample_image

            t = transform if transform is not None else _identity(fixed.ndim)
            registered = resample_image(moving, t, fixed)
            with self._overlay_lock:
                if seq <= self._shown:
                    return          # a newer transform is already shown
                # shown even when a newer one has arrived meanwhile (it is queued): during a run
                # whose resampling takes longer than the publications, every picture would be stale
                self._shown = seq
                self.registered = registered
                self._overlay_source = label
                self.overlay_updates += 1
                self._show_overlay()
                if live:
                    self._update_live_tre(transform)

        self._throttle.submit(job, now=now or not live)

    @property
    def overlay_current(self) -> bool:
        """Whether the overlay (and :attr:`registered`) shows :attr:`transform` yet.

        The resampling runs in a worker thread: right after a run ends (or a landmark click),
        :attr:`transform` is the new one while the overlay still shows the previous picture for
        the time of one resampling. :meth:`wait` returns once it is current.
        """
        with self._overlay_lock:
            return self._shown == self._requested

    def _show_overlay(self) -> None:
        reg = self.registered
        mode = self.overlay_mode.value
        if reg is None or mode in ("off", "green_magenta"):
            self.before.set_second_image(None)
        else:
            px = checker_pixels(self.tile.value, reg, self.before.plane)
            self.before.set_second_image(reg, mode=mode, alpha=float(self.alpha.value), checker=px)
        self._update_tile_px()
        self._update_gm()
        what = {"checkerboard": f"checkerboard, {self.tile.value:g} mm tiles", "blend": "alpha blend",
                "difference": "difference |fixed − moving|", "green_magenta": "green-magenta picture below",
                "off": "not shown"}[mode]
        self.overlay_note.value = (f"<span style='opacity:.85'>Over the fixed image: the moving image through "
                                   f"<b>{html.escape(self._overlay_source)}</b> ({what}); "
                                   f"overlay updates: {self.overlay_updates}</span>")

    def _style_changed(self) -> None:
        mode = self.overlay_mode.value
        self.tile.layout.display = "" if mode == "checkerboard" else "none"
        self.tile_px.layout.display = self.tile.layout.display
        self.alpha.layout.display = "" if mode == "blend" else "none"
        for w in (self.gm_picture, self.gm_caption):
            w.layout.display = "" if mode == "green_magenta" else "none"
        with self._overlay_lock:
            self._show_overlay()

    def _view_moved(self) -> None:
        if self.overlay_mode.value == "checkerboard" and self.registered is not None:
            px = checker_pixels(self.tile.value, self.registered, self.before.plane)
            if px != self.before._second_info.get("checker"):
                with self._overlay_lock:
                    self._show_overlay()                 # the plane changed: tiles stay square in mm
                return
        self._update_gm()

    def _window_moved(self) -> None:
        if self.overlay_mode.value == "green_magenta":
            self._update_gm()

    def _update_tile_px(self) -> None:
        fixed = self.session.get(self._fixed_key)
        if isinstance(fixed, Image):
            px = checker_pixels(self.tile.value, fixed, self.before.plane)
            self.tile_px.value = f"<span style='opacity:.8'>= {px} px in this plane</span>"

    def _update_gm(self) -> None:
        reg = self.registered
        if self.overlay_mode.value != "green_magenta" or reg is None or self.before.image is None:
            return
        v = self.before
        plane = v.plane if reg.ndim == 3 else "axial"
        index = v.slice_index if reg.ndim == 3 else 0
        f = render.extract_slice(v.image, plane, index) if v.image.ndim == 3 else v.image
        m = render.extract_slice(reg, plane, index) if reg.ndim == 3 else reg
        if f.shape != m.shape:
            return
        rgb = green_magenta(render.window_level(f.array, v.window, v.level),
                            render.window_level(m.array, *render.auto_window(reg)))
        spacing = f.spacing[:2]
        mm = max(rgb.shape[1] * spacing[0], rgb.shape[0] * spacing[1]) / max(v.height, 120)
        self.gm_picture.value = render.to_png(render.panel_picture(rgb, spacing, mm))

    # -------------------------------------------------------------- landmarks
    @staticmethod
    def _points(viewer, name: str) -> list[list[float]]:
        try:
            return viewer.point_set(name)
        except ParameterError:
            return []

    def _points_moved(self) -> None:
        if not getattr(self, "_ready", False) or not self._landmark_mode(self.panel.spec):
            return
        self._alternate()
        self._update_landmarks()
        self._hint_refresh()

    def _alternate(self) -> None:
        """Pair mode: after a click in one viewer, the other viewer takes the next click."""
        if self._alternating:
            return
        c = self.panel.controls
        self._alternating = True
        try:
            for fixed_set, moving_set in (("fixed_landmarks", "moving_landmarks"), ("fixed_targets", "moving_targets")):
                if fixed_set not in c or moving_set not in c or not hasattr(c[fixed_set], "pick"):
                    continue
                picking = c[fixed_set].pick.value or c[moving_set].pick.value
                if not picking:
                    continue
                nf = len(self._points(self.before, fixed_set))
                nm = len(self._points(self.after, moving_set))
                want_moving = nf > nm
                if c[moving_set].pick.value != want_moving:
                    c[moving_set].pick.value = want_moving
                if c[fixed_set].pick.value == want_moving:
                    c[fixed_set].pick.value = not want_moving
        finally:
            self._alternating = False

    def _update_landmarks(self) -> None:
        from medlab.register import fit_landmark_transform, target_registration_error

        d = self.session[self._fixed_key].ndim
        f = np.asarray(self._points(self.before, "fixed_landmarks"), float).reshape(-1, 3)[:, :d]
        m = np.asarray(self._points(self.after, "moving_landmarks"), float).reshape(-1, 3)[:, :d]
        ft = np.asarray(self._points(self.before, "fixed_targets"), float).reshape(-1, 3)[:, :d]
        mt = np.asarray(self._points(self.after, "moving_targets"), float).reshape(-1, 3)[:, :d]
        n, nt = min(len(f), len(m)), min(len(ft), len(mt))
        kind = self.panel.params.get("transform", "rigid")
        rows: list[dict] = []
        note = ""
        fit = None
        if n >= (d + 1 if kind == "affine" else 3):
            try:
                fit = fit_landmark_transform(f[:n], m[:n], kind)
            except MedlabError as exc:
                note = str(exc)
        fre = target_registration_error(fit, f[:n], moving_points=m[:n]) if fit is not None else [None] * n
        tre = target_registration_error(fit, ft[:nt], moving_points=mt[:nt]) if fit is not None and nt else [None] * nt
        for i in range(max(len(f), len(m))):
            rows.append({"pair": f"landmark {i + 1}", "use": "fiducial (fit)", "fixed": _xyz(f, i), "moving": _xyz(m, i),
                         "error": _mm(fre[i]) if i < n else None})
        for i in range(max(len(ft), len(mt))):
            rows.append({"pair": f"target {i + 1}", "use": "target (held out)", "fixed": _xyz(ft, i),
                         "moving": _xyz(mt, i), "error": _mm(tre[i]) if i < nt else None})
        self.landmark_rows = rows
        summary = []
        if fit is not None:
            summary.append(f"FRE (RMS over {n} landmarks) {np.sqrt(np.mean(np.square(fre))):.2f} mm")
            if nt:
                summary.append(f"TRE (RMS over {nt} targets) {np.sqrt(np.mean(np.square(tre))):.2f} mm")
            else:
                summary.append("no targets yet: the FRE alone does not tell how good the registration is")
        elif not note:
            need = (d + 1 if kind == "affine" else 3) - n
            note = f"{need} more landmark pair(s) for a {kind} fit" if need > 0 else ""
        table = Table([{k: v for k, v in r.items() if v is not None} for r in rows], units={"error": "mm"},
                      title="landmark pairs (mm, LPS) and their errors") if rows else None
        text = table_html(table) if table is not None else "<i>no landmark yet</i>"
        extra = "; ".join(summary) + (f" <span style='color:#b00020'>{html.escape(note)}</span>" if note else "")
        self.landmarks.value = f"{text}<div>{extra}</div>"
        if fit is not None:
            t = Transform(fit, name=f"landmark {kind} fit")
            self.set_transform(t, source=f"landmark fit ({n} pairs)", live=True)

    # -------------------------------------------------------------- summary
    def _tre(self, transform) -> np.ndarray | None:
        if self.targets is None:
            return None
        from medlab.register import target_registration_error

        if self.truth is not None:
            return target_registration_error(transform, self.targets, truth=self.truth)
        return target_registration_error(transform, self.targets, moving_points=self.target_moving)

    def _update_live_tre(self, transform) -> None:
        """During a run (or while clicking landmarks): the TRE of the transform the overlay shows."""
        if self.targets is None or transform is None or not (self.panel.running or self._landmark_mode(self.panel.spec)):
            return
        try:
            e = self._tre(transform)
        except MedlabError:
            return
        rows = [r for r in self.summary_rows if not r[0].startswith("TRE now")]
        rows.append(("TRE now", f"mean {e.mean():.3f} mm, max {e.max():.3f} mm ({len(e)} targets)"))
        self._render_summary(rows, self._summary_title)

    def _start_of(self, panel: StagePanel) -> tuple[Transform, str]:
        """The transform a run of ``panel`` starts from (its initial transform, else its
        initialisation, else the images as they lie), and how to name it."""
        fixed, moving = (panel._inputs.get(n) for n in ("fixed", "moving"))
        fixed = fixed if isinstance(fixed, Image) and not fixed.is_label else self.session[self._fixed_key]
        moving = moving if isinstance(moving, Image) and not moving.is_label else self.session[self._moving_key]
        initial = panel._inputs.get("initial") if "initial" in panel.spec.inputs else None
        if isinstance(initial, Transform):
            key = next((k for k, v in self.session.items() if v is initial), None)
            return initial, f"from the {self._start_text(key)}"
        mode = panel.params.get("initialisation")
        if panel.spec.name == "linear_register" and mode in ("geometry", "moments"):
            from medlab.register._common import to_float
            from medlab.register.intensity import _start

            start, _ = _start(panel.params.get("transform", "rigid"), to_float(fixed), to_float(moving), mode, None)
            what = "geometry-centre initialisation" if mode == "geometry" else "centre-of-mass (moments) initialisation"
            return Transform(start, name=what), f"from the {what}"
        return _identity(fixed.ndim), "no initial transform: the images as they lie in mm"

    def _start_text(self, key: str | None) -> str:
        """What an initial transform is, from the step that made it."""
        if key is None:
            return "initial transform"
        sid = key.split(".")[0]
        step = next((s for s in self.recipe.steps if s.id == sid), None) if "." in key else None
        if step is None:
            return f"initial transform {key}"
        if step.stage == "landmark_register":
            return f"landmark initialisation of {sid}"
        title = self.specs[step.stage].title if step.stage in self.specs else step.stage
        return f"{title.lower()} result of {sid}"

    def _before_rows(self, start: tuple[Transform, str] | None) -> list[tuple[str, str]]:
        if self.targets is None or start is None:
            return []
        e0 = self._tre(start[0])
        return [(f"TRE before ({start[1]})", f"mean {e0.mean():.3f} mm, max {e0.max():.3f} mm ({len(e0)} targets)")]

    def _update_summary(self, panel: StagePanel | None = None, *, cancelled: bool = False, failed: bool = False) -> None:
        """The summary of ``panel``'s run (``None``: before a run, with the TRE of the transform
        the next run starts from)."""
        title = "Before registration"
        start = self._run_start if panel is not None else (self._start_of(self.panel) if self.panel else None)
        rows = self._before_rows(start)
        extra_html = ""
        if panel is not None:
            outputs = panel.outputs
            title = (f"{panel.spec.title}: " + ("cancelled — the best transform so far is kept" if cancelled
                                                  else "failed (see the status line)" if failed else "done"))
            transform = _get(outputs, "transform") if not failed else None
            report = _get(outputs, "report")
            history = _get(outputs, "history") or panel.live_values.get("history")
            if isinstance(transform, Transform):
                extra_html = transform_html(transform)
            last = None
            if isinstance(report, Table) and report.rows:
                last = report.rows[-1]
            elif isinstance(report, list) and report:
                last = report[-1]
            if last is not None:
                metric = last.get("metric", "")
                if last.get("final metric") is not None:
                    rows.append(("final metric", f"{last['final metric']:.6g} {html.escape(str(metric))}".strip()))
                if "iterations" in last:
                    rows.append(("iterations", str(last["iterations"])))
                if last.get("stop reason"):
                    rows.append(("stop reason", html.escape(str(last["stop reason"]))))
                if "folded voxels" in last:
                    jac = f"Jacobian {last['jacobian min']:.3g} to {last['jacobian max']:.3g}"
                    rows.append(("folded voxels", f"{last['folded voxels']} ({jac})"))
                if "final RMS distance" in last:
                    rows.append(("RMS surface distance", f"{last['final RMS distance']:.3f} mm"))
            elif history is not None and history.best() is not None:
                rows.append(("best metric so far", f"{history.best()[1]:.6g}"))
            errors = _get(outputs, "errors")
            if isinstance(errors, Table):
                for r in errors.rows:
                    if r.get("point") == "RMS":
                        rows.append((f"RMS {'FRE' if r['use'] == 'fiducial' else 'TRE'}", f"{r['error']:.3f} mm"))
            seconds = getattr(self, "_run_seconds", None)
            if seconds is not None:
                rows.append(("time", f"{seconds:.2f} s"))
            if isinstance(transform, Transform) and self.targets is not None:
                e = self._tre(transform)
                rows.append(("TRE after", f"mean {e.mean():.3f} mm, max {e.max():.3f} mm ({len(e)} targets)"))
        self._summary_extra = extra_html
        self._render_summary(rows, title)

    def _render_summary(self, rows: list[tuple[str, str]], title: str) -> None:
        self.summary_rows, self._summary_title = rows, title
        body = "".join(f"<tr><td style='white-space:nowrap;padding-right:1em'>{html.escape(k)}</td><td>{v}</td></tr>"
                       for k, v in rows)
        self.summary.value = (f"<div class='medlab-register-summary-box'><b>{html.escape(title)}</b>"
                              f"<table>{body}</table>{getattr(self, '_summary_extra', '')}</div>")

    # -------------------------------------------------------------- captions
    def _caption(self, what: str, *, overlaid: bool = False) -> None:
        if not getattr(self, "_ready", False):
            return super()._caption(what, overlaid=overlaid)
        fk, mk = html.escape(self._fixed_key), html.escape(self._moving_key)
        self.before_caption.value = (f"<b>fixed image</b> (<code>{fk}</code>) with the moving image drawn over "
                                     "it: choose how under the images")
        self.after_caption.value = (f"<b>moving image</b> (<code>{mk}</code>) on its own grid; the two viewers "
                                    "follow each other in mm")

    # -------------------------------------------------------------- export
    def save_transform(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the current transform (``.h5`` exact, ``.tfm`` ITK text), atomically."""
        if self.transform is None:
            raise MedlabError("no transform yet: run a registration (or click landmarks) first")
        return self.transform.save(Path(path).expanduser(), overwrite=overwrite)

    def save_registered(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the moving image resampled on the fixed grid through the current transform."""
        from medlab.io import save
        from medlab.register import resample_image

        if self.transform is None:
            raise MedlabError("no transform yet: run a registration (or click landmarks) first")
        image = resample_image(self.session[self._moving_key], self.transform, self.session[self._fixed_key])
        return save(image, Path(path).expanduser(), overwrite=overwrite)

    def _save_clicked(self, what: str) -> None:
        target = self.save_path.value.strip()
        if not target:
            example = "moving_to_fixed.h5" if what == "transform" else "registered.nii.gz"
            raise MedlabError(f"type a file name first (e.g. {example})")
        fn = self.save_transform if what == "transform" else self.save_registered
        written = fn(target, overwrite=self.save_overwrite.value)
        self.panel.show_status(f"{'transform' if what == 'transform' else 'registered image'} written to {written}",
                               "ok")

    def close(self) -> None:
        throttle = getattr(self, "_throttle", None)
        if throttle is not None:
            throttle.close()
        if hasattr(self, "_panels"):
            super().close()


# ---------------------------------------------------------------------------- checks
def _check_pair(fixed, moving) -> tuple[Image, Image]:
    fixed, moving = as_image(fixed, "fixed"), as_image(moving, "moving")
    for name, img in (("fixed", fixed), ("moving", moving)):
        if img.is_label or img.rgb:
            raise ImageError(f"RegisterWidget: {name!r} must be an intensity image; got a "
                             f"{'colour' if img.rgb else 'label'} image (give label maps as {name}_labels=)")
    if fixed.ndim != moving.ndim:
        raise ImageError(f"RegisterWidget: 'fixed' is {fixed.ndim}D and 'moving' {moving.ndim}D; register images "
                         "of the same dimension")
    if not fixed.overlaps(moving):
        raise GeometryError(f"RegisterWidget: the images do not overlap in physical space (fixed: {fixed.describe()}; "
                            f"moving: {moving.describe()}); check their origins and directions")
    return fixed, moving


def _truth(truth, targets, target_moving, fixed: Image):
    """``(truth transform, target points, true moving positions)``, checked."""
    import SimpleITK as sitk

    if truth is not None and target_moving is not None:
        raise ParameterError("give either truth (the true transform) or target_moving (the true positions), not both")
    if truth is not None and not isinstance(truth, (Transform, sitk.Transform)):
        raise ParameterError(f"truth must be a medlab Transform or a SimpleITK transform; got {type(truth).__name__}")
    if target_moving is not None and targets is None:
        raise ParameterError("target_moving needs targets (the same points in the fixed image)")
    if targets is not None and truth is None and target_moving is None:
        raise ParameterError("targets need truth (the true transform) or target_moving (their true positions in "
                             "the moving image) to measure the target registration error")
    if targets is None and truth is None:
        return None, None, None
    if targets is None:
        targets = _foreground_points(fixed)
    pts = np.asarray(targets, float)
    if pts.ndim != 2 or pts.shape[1] != fixed.ndim or not np.all(np.isfinite(pts)) or len(pts) == 0:
        raise ParameterError(f"targets must be an (n, {fixed.ndim}) array of finite points in mm; got shape {pts.shape}")
    moved = None
    if target_moving is not None:
        moved = np.asarray(target_moving, float)
        if moved.shape != pts.shape:
            raise ParameterError(f"target_moving has shape {moved.shape}; targets has {pts.shape}")
    return truth, pts, moved


def _foreground_points(fixed: Image, n: int = 500) -> np.ndarray:
    from skimage.filters import threshold_otsu

    from medlab.register import sample_points

    a = np.asarray(fixed.array, np.float32)
    level = threshold_otsu(a[:: max(1, a.shape[0] // 32)])
    mask = fixed.with_array((a > level).astype(np.uint8), kind="label", labels=None)
    return sample_points(mask, n, seed=0)


def _is_linear(value) -> bool:
    """Whether a transform is affine (rigid, similarity, affine): what ICP can start from."""
    from medlab.register.intensity import affine_parts

    return isinstance(value, Transform) and affine_parts(value.sitk, value.dimension) is not None


def _identity(ndim: int) -> Transform:
    import SimpleITK as sitk

    return Transform(sitk.Transform(ndim, sitk.sitkIdentity), name="identity")


def _get(outputs, name: str):
    if isinstance(outputs, Result):
        return outputs[name] if name in outputs.names else None
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return None


def _xyz(points: np.ndarray, i: int) -> str | None:
    if i >= len(points):
        return None
    return "(" + ", ".join(f"{v:.1f}" for v in points[i]) + ")"


def _mm(value) -> float | None:
    return None if value is None else round(float(value), 3)
