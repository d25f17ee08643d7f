"""The segment widget: the workbench configured for segmentation. Pick a method, click seeds,
watch the label map grow on a live preview, correct it with a brush or by clicking pieces
away, compare it with a ground truth, train a U-Net, and export everything.

What it adds to :class:`~medlab.widgets.workbench.Workbench` (and only that):

* **Seeds** of a seeded method are picked at once when the method is chosen: click inside the
  structure in the left image (foreground seeds, green), or pick the *background* chip under it
  for points the region must not reach (orange). The panel routes each role to its parameter.
* **Intensity sliders start on the image's scale**: the tolerance of region growing at a tenth
  of the image's 1st-99th percentile range, the manual threshold's levels over the image's
  range (a slider from -10⁶ to 10⁶ cannot pick 0.42 on a phantom in [0, 1]).
* **A histogram** of the image with the threshold(s) of the shown result marked, for the
  threshold and region-growing methods (they record their levels in ``labels.metadata["thresholds"]``):
  the levels of the preview (on the shown slice) while you tune, those of Apply (whole image) after.
* **Editing** stages (:func:`medlab.segment.paint_labels`, :func:`medlab.segment.remove_components`)
  work on the newest label map shown over the scan; clicks are brush positions or pieces to
  remove, previewed live, kept by Apply as recipe steps (so edits replay), undone by *Undo last*.
* **Scores against a ground truth** (:func:`medlab.metrics.segmentation_scores`: Dice, HD95 and
  ASSD in mm, volumes in mL) after each Apply and Undo, when ``truth`` is given.
* **A training panel**: a U-Net (:func:`medlab.deep.train_segmenter`) on brain tumour phantoms or
  your image/label pairs, with live loss and Dice curves and Cancel keeping the best weights;
  the model joins the session and *Segment this image* runs :func:`medlab.deep.deep_segment`.
* **Export** of the newest label map: NIfTI/NRRD/MHA (:func:`medlab.save`), DICOM SEG referencing
  the source series when the image came from DICOM (:func:`medlab.segment.write_dicom_seg`),
  surface meshes STL/OBJ/PLY (:mod:`medlab.mesh`), and the recipe (the workbench's export).
* **A 3D view** (:class:`~medlab.widgets.view3d.View3D`) of the scan and the label surfaces,
  its crosshair linked to the left viewer.

Examples
--------
>>> import medlab
>>> from medlab.widgets import SegmentWidget
>>> brain = medlab.data.brain_mri(size=(64, 64, 32))                          # doctest: +SKIP
>>> tumour = brain.labels.with_array(brain.mask("oedema", "enhancing tumour", "necrotic core"),
...                                  kind="label", labels={1: "tumour"})     # doctest: +SKIP
>>> w = SegmentWidget(brain.flair, truth=tumour); w                         # doctest: +SKIP
>>> w.set(seeds=[brain.info["tumour_centre_mm"]], tolerance=0.2)           # doctest: +SKIP
>>> w.apply(wait=True); w.scores[0]["dice"]                                  # doctest: +SKIP
>>> w.save_labels("tumour.nii.gz"); w.export("tumour_recipe.json")          # doctest: +SKIP

CSS classes (besides those of the workbench and the panel)
-----------------------------------------------------------
``medlab-segment``              the whole widget
``medlab-segment-hint``         what to do now with the chosen method (one sentence)
``medlab-segment-histogram``    the histogram (a :class:`CurvePlot`; ``.medlab-curve[data-markers]``)
``medlab-segment-edit-paint`` / ``-erase`` / ``-remove``   buttons choosing an editing tool
``medlab-segment-scores``       the table of scores against the ground truth
``medlab-segment-save-path``, ``medlab-segment-save-overwrite``   file name and overwrite box
``medlab-segment-save-labels`` / ``-save-seg`` / ``-save-mesh``   export buttons
``medlab-segment-3d``           the "3D view" button; ``medlab-segment-3d-box`` holds the view
``medlab-segment-train``        the training panel; inside it ``medlab-train-data``,
                                ``medlab-train-target``, ``medlab-train-count``, ``medlab-train-size``, ``medlab-train-contrast``,
                                ``medlab-train-epochs``, ``medlab-train-learning-rate``, ``medlab-train-seed``, ``medlab-train-start``,
                                ``medlab-train-cancel``, ``medlab-train-progress``,
                                ``medlab-train-status``, ``medlab-train-segment``, ``medlab-train-load``
"""

from __future__ import annotations

import html
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from medlab.errors import Cancelled, ImageError, MedlabError, ParameterError
from medlab.image import Image, as_image
from medlab.outputs import Checkpoint
from medlab.render import extract_slice
from medlab.stage import ImageInput, StageSpec, progress_to
from medlab.stage import stages as registered_stages

from .outputs import CurvePlot, LiveView
from .panel import StagePanel, _middle_slice, _slab
from .workbench import Workbench

__all__ = ["HistogramPlot", "SegmentWidget", "TrainingPanel"]

#: Colour (RGB) and marker of the point sets of the editing roles (the viewer's own table has
#: none for them): a white brush, red crosses on pieces to remove.
EDIT_ROLES = {"paint": ((240, 240, 240), "circle", "brush"), "remove": ((230, 50, 50), "cross", "remove")}

#: Parameters that are intensity levels (slider re-ranged to the image) and intensity spans
#: (started at a tenth of the image's range). The hook this stands for: a declared
#: ``unit="intensity"`` on such parameters, read by every widget.
INTENSITY_LEVELS = {"threshold": ("lower", "upper")}
INTENSITY_SPANS = ("tolerance",)
#: Label-value sliders shown up to this value (a slider to 65535 cannot pick 3; typing a
#: larger value in Python still works).
LABEL_SLIDER_MAX = 255

_MARKER_COLOURS = ("#e69f00", "#56b4e9", "#009e73", "#cc79a7")


def _segment_stages() -> list[StageSpec]:
    """The segment group in a method picker's order: thresholds, seeds, boundaries, clean-up,
    editing, then deep learning (imported here so that its stage is registered)."""
    try:
        import medlab.deep  # noqa: F401 - registers deep_segment
    except ImportError:  # torch/monai missing: the classic methods still work
        pass
    specs = list(registered_stages("segment"))
    return [s for s in specs if s.name != "deep_segment"] + [s for s in specs if s.name == "deep_segment"]


def _is_label_input(spec: StageSpec, name: str | None) -> bool:
    inp = spec.inputs.get(name) if name else None
    return isinstance(inp, ImageInput) and tuple(inp.kinds) == ("label",)


def _round2(x: float) -> float:
    """``x`` to two significant digits (a slider start a person can read)."""
    if not x or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")


# ---------------------------------------------------------------------------- histogram
class HistogramPlot(CurvePlot):
    """The image's histogram (log counts) with threshold markers.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> h = HistogramPlot()
    >>> h.show_image(Image(np.linspace(0, 1, 1000).reshape(10, 100)))
    >>> h.set_thresholds([0.25, 0.75], "preview")
    >>> [m["x"] for m in h.markers], len(h.series["voxels"]["x"])
    ([0.25, 0.75], 128)
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("width", 460)
        kwargs.setdefault("height", 190)
        super().__init__(**kwargs)
        self.add_class("medlab-segment-histogram")
        self._key = None

    def show_image(self, image: Image, bins: int = 128) -> None:
        """Histogram of ``image`` (every voxel, or an even sample of ~2 million), once per image."""
        if self._key == id(image):
            return
        a = np.asarray(image.array).reshape(-1)
        a = a[:: max(1, a.size // 2_000_000)]
        a = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
        units = str(image.metadata.get("units") or "")
        with self.hold_sync():
            self.series = {"voxels": {"x": ((edges[:-1] + edges[1:]) / 2).tolist(),
                                      "y": np.log10(counts + 1.0).tolist()}}
            self.x_label = f"intensity ({units})" if units else "intensity"
            self.y_label = "log10(voxels + 1)"
            self.best = []
        self._key = id(image)

    def set_thresholds(self, levels: Sequence[float] | None, where: str) -> None:
        """Mark ``levels`` (image units); ``where`` says whose they are (preview or Apply)."""
        levels = [float(v) for v in (levels or ()) if v is not None and math.isfinite(float(v))]
        self.markers = [{"x": v, "label": f"{v:.4g}", "color": _MARKER_COLOURS[i % len(_MARKER_COLOURS)]}
                        for i, v in enumerate(levels)]
        if not levels:
            self.title = "histogram of the image (this method marks no threshold yet)"
        else:
            what = "threshold" if len(levels) == 1 else "thresholds"
            self.title = f"{what} {', '.join(f'{v:.4g}' for v in levels)} ({where})"


# ---------------------------------------------------------------------------- the panel
class _SegmentPanel(StagePanel):
    """A stage panel that shows a label-map input over the scan it belongs to.

    The plain panel shows a stage's first image input in the viewer; for post-processing and
    editing stages that is a label map, drawn as a grey picture. Here the viewer keeps the scan
    and the label map is its overlay, the preview is cut at the slice the viewer shows, and
    the preview pane shows the scan's slice under the previewed labels. Hook wanted in
    StagePanel: a ``display_image`` (the scan under a label input) that ``set_input``,
    ``_preview_source`` and ``_redisplay`` use.
    """

    def __init__(self, stage, viewer=None, *, scan=None, **kwargs):
        self._scan = scan if scan is not None else (lambda: None)
        self._scan_cut: Image | None = None
        super().__init__(stage, viewer, **kwargs)

    @property
    def labels_input(self) -> bool:
        """Whether the stage's first image input is a label map (post-processing, editing)."""
        return _is_label_input(self.spec, self.spec.primary)

    def _over_scan(self, labels: Image | None) -> Image | None:
        """The scan to draw ``labels`` over, when they share its grid."""
        scan = self._scan()
        if labels is None or scan is None or not self.labels_input or not labels.same_grid(scan):
            return None
        return scan

    @property
    def image(self) -> Image | None:
        if self.labels_input:  # never the viewer's scan: a label stage without a label map waits
            return self._inputs.get(self.spec.primary)
        return StagePanel.image.fget(self)

    @image.setter
    def image(self, image: Image | None) -> None:
        self.set_input(self.spec.primary or "image", image)

    def set_input(self, name: str, value) -> None:
        scan = self._over_scan(value) if name == self.spec.primary else None
        if scan is None:
            super().set_input(name, value)
            return
        self._inputs[name] = value
        if self.viewer is not None:
            if self.viewer.image is not scan:
                self.viewer.image = scan
            self.viewer.set_labels(value, opacity=0.4)
        self.inputs_note.value = self._inputs_html()
        self.request_preview()

    def _preview_off_reason(self) -> str | None:
        if self.labels_input and self._inputs.get(self.spec.primary) is None:
            return "<i>no label map yet: segment with a method first (Apply), then edit or clean it here</i>"
        return super()._preview_off_reason()

    def _waiting_for_points(self) -> str | None:
        """What to click before there is anything to preview (too few points of a role), or None."""
        for n, p in self.spec.point_params().items():
            have = len(self.controls[n].value or ())
            if have < p.min_count:
                what = {"seeds": "seed inside the structure", "paint": "brush position",
                        "remove": "click on a piece to remove"}.get(p.role, f"{p.role.replace('_', ' ')} point")
                return f"click in the left image: at least {p.min_count} {what} ({have} so far)"
        return None

    def set(self, **params) -> None:
        """As :meth:`StagePanel.set`, but too few points (none clicked yet, or cleared after an
        edit) is allowed: it is a step of the work, which the preview note explains and Apply
        checks again."""
        points = self.spec.point_params()
        values = {**self.params, **params}
        short = {n: ((0.0, 0.0, 0.0),) * p.min_count for n, p in points.items()
                 if len(values.get(n) or ()) < p.min_count}
        if not short:
            super().set(**params)
            return
        try:
            self.spec.validate({**values, **short})   # every other value, checked as usual
        except ParameterError as exc:
            self._fail(exc, source="params")
            raise
        for n, v in params.items():
            self.controls[n].value = v
            if n in points and self.viewer is not None and self.viewer.has_trait("point_sets"):
                self._syncing_points = True   # the viewer works in 3D mm: 2D points lie at z = 0
                try:
                    self.viewer.set_point_set(self._point_set_name(n), [[*q, 0.0][:3] for q in v])
                finally:
                    self._syncing_points = False

    def request_preview(self) -> int:
        # Too few points is a step of the work, not an error: say what to click (the plain panel
        # shows "parameter 'seeds' must be at least 1 points" in red before the first click).
        waiting = self._waiting_for_points() if self._active else None
        if waiting is None:
            return super().request_preview()
        with self._lock:
            self._generation += 1            # drop a preview in flight for the old points
        self.preview_note.value = f"<i>{html.escape(waiting)}</i>"
        if self.error is not None and self._error_source in ("params", "preview") and not self.running:
            self.error = None
            self._set_status("", "info")
        if self.after is not None and self.after.image is not None and self.preview is not None:
            self.after.set_labels(None)       # no stale region once its seeds are gone
        self.preview = None
        return 0

    def _preview_source(self):
        labels, v = self.image, self.viewer
        scan = self._over_scan(labels)
        if scan is None or v is None or v.image is not scan or labels.ndim != 3:
            self._scan_cut = None
            return super()._preview_source()
        primary, plane, index = self.spec.primary, v.plane, v.slice_index
        inputs = self.inputs
        physical = bool(self.spec.point_params()) or len(self.spec.image_inputs) > 1
        if 2 in self.spec.dims and not physical:        # as the plain panel: a 2D slice
            cut = extract_slice(labels, plane, index)
            self._scan_cut = extract_slice(scan, plane, index)
            inputs[primary] = cut
            return cut, inputs, None
        half = 0 if 2 in self.spec.dims else self.slab   # a slab in mm: clicks land on it
        slab = _slab(labels, plane, index, half)
        self._scan_cut = _middle_slice(_slab(scan, plane, index, half), plane, half)
        inputs[primary] = slab
        return _middle_slice(slab, plane, half), inputs, lambda out: _middle_slice(out, plane, half)

    def _redisplay(self) -> None:
        scan, a, preview = self._scan_cut, self.after, self.preview
        if scan is None or a is None or preview is None or not preview.is_label or not scan.same_grid(preview):
            super()._redisplay()
            return
        with self._display_lock:
            try:
                a.image = scan
                a.set_labels(preview, opacity=0.45)
                if self.viewer is not None:
                    a.window, a.level = self.viewer.window, self.viewer.level
            except Exception as exc:  # noqa: BLE001 - a display error belongs in the status line
                self._fail(exc, "display: ")

    def _bind_viewer(self) -> None:
        super()._bind_viewer()
        v = self.viewer
        if v is None or not v.has_trait("point_sets"):
            return
        for n, p in self.spec.point_params().items():
            style = EDIT_ROLES.get(p.role)
            if style is not None and self._point_set_name(n) != "points":
                v.add_point_set(n, role=p.role, color=style[0], marker=style[1], label=style[2])


# ---------------------------------------------------------------------------- the widget
class SegmentWidget(Workbench):
    """The :class:`~medlab.widgets.workbench.Workbench` with the segment stages, seeds, a
    histogram, editing tools, scores against a ground truth, U-Net training and export.

    Parameters
    ----------
    image : Image
        The scan to segment (never modified).
    truth : Image, optional
        A ground-truth label map overlapping the scan; enables the scores table.
    truth_labels : sequence of int, optional
        Which values of ``truth`` make the structure (default: every non-zero value). A label
        map with the same values is scored per label (and as a whole); any other is scored as
        foreground (non-zero) against these values together.
    training_pairs : sequence of (Image, Image), optional
        Your own (image, label map) pairs offered to the training panel.
    stages : sequence, optional
        Stages offered; default every segment stage (classic, editing, deep).
    stage : str
        The stage selected first; default region growing (``"connected_threshold"``).
    height : int
        Height of each viewer in pixels.
    debounce : float
        Quiet time (s) before a preview starts.

    Attributes
    ----------
    labels : Image or None
        The newest label map of the session (what is scored, edited, exported and shown in 3D).
    scores : list of dict
        The rows of the scores table (see :func:`medlab.metrics.segmentation_scores`).
    training : TrainingPanel

    Examples
    --------
    >>> w = SegmentWidget(brain.flair, truth=tumour)                     # doctest: +SKIP
    >>> w.set(seeds=[centre_mm], tolerance=0.2); w.apply(wait=True)      # doctest: +SKIP
    >>> w.edit("remove"); w.set(pieces=[stray_mm]); w.apply(wait=True)  # doctest: +SKIP
    >>> w.save_labels("tumour.nii.gz"); w.save_mesh("tumour.stl")        # doctest: +SKIP
    """

    def __init__(self, image: Image, truth: Image | None = None, *, truth_labels: Sequence[int] | None = None,
                 training_pairs: Sequence[tuple[Image, Image]] | None = None, stages: Sequence | None = None,
                 stage: str | None = "connected_threshold", height: int = 360, debounce: float = 0.15):
        image = as_image(image, "image")
        if image.is_label or image.rgb:
            raise ImageError("SegmentWidget segments an intensity image; got a "
                             f"{'colour' if image.rgb else 'label'} image (pass the scan, and a label map as truth=)")
        truth, truth_values = _check_truth(truth, truth_labels, image)   # before anything is built
        self._ready = False
        specs = list(stages) if stages is not None else _segment_stages()
        names = [getattr(s, "name", None) or getattr(getattr(s, "stage", None), "name", s) for s in specs]
        super().__init__({"image": image}, stages=specs, stage=stage if stage in names else None,
                         height=height, debounce=debounce)
        self.add_class("medlab-segment")
        self.truth, self.truth_values = truth, truth_values
        self.scores: list[dict] = []
        self._view3d = None
        self._unlink3d = None
        self._build_segment(training_pairs)
        self._ready = True
        self._stage_chosen(self.panel)
        self.update_scores()

    # -------------------------------------------------------------- construction
    def _build_segment(self, training_pairs) -> None:
        self.hint = widgets.HTML("")
        self.hint.add_class("medlab-segment-hint")
        self.histogram = HistogramPlot()
        self.histogram.show_image(self.image)
        self.histogram_box = widgets.VBox([self.histogram])
        self.scores_html = widgets.HTML("")
        self.scores_html.add_class("medlab-segment-scores")
        edit_buttons = []
        for tool, text, icon, tip in (("paint", "Paint", "paint-brush", "add to the label map with a brush (mm)"),
                                      ("erase", "Erase", "eraser", "erase with a brush (mm)"),
                                      ("remove", "Remove piece", "scissors", "click on pieces to remove them")):
            b = widgets.Button(description=text, icon=icon, tooltip=tip, layout=widgets.Layout(width="auto"))
            b.add_class(f"medlab-segment-edit-{tool}")
            b.on_click(lambda _, t=tool: self._safely(lambda: self.edit(t)))
            edit_buttons.append(b)
        self.edit_buttons = edit_buttons
        self.view3d_button = widgets.Button(description="3D view", icon="cube", tooltip="the scan and the label "
                                            "surfaces in 3D, linked to the left viewer",
                                            disabled=self.original.ndim != 3, layout=widgets.Layout(width="auto"))
        self.view3d_button.add_class("medlab-segment-3d")
        self.view3d_button.on_click(lambda _: self._safely(self.open_3d))
        self.view3d_box = widgets.VBox([])
        self.view3d_box.add_class("medlab-segment-3d-box")
        tools = widgets.HBox([widgets.HTML("<b>Edit the newest label map:</b>&nbsp;"), *edit_buttons,
                              widgets.HTML("&nbsp;&nbsp;"), self.view3d_button],
                             layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        self.training = TrainingPanel(self, pairs=training_pairs)
        train = widgets.Accordion(children=[self.training])
        train.set_title(0, "Train a U-Net (phantoms or your pairs), then segment this image with it")
        train.selected_index = None
        self.train_accordion = train
        save = self._build_save()
        kids = list(self.children)
        # the workbench's rows: pickers, inputs, viewers, panel, history title, history, recipe export, code
        viewers_at = next(i for i, c in enumerate(kids) if isinstance(c, widgets.HBox) and any(
            isinstance(g, widgets.VBox) and self.before in g.children for g in c.children))
        panel_at = kids.index(self._panel_box)
        self.children = [*kids[:viewers_at], self.hint, kids[viewers_at], tools, self.view3d_box,
                         *kids[viewers_at + 1: panel_at + 1], self.histogram_box, self.scores_html,
                         *kids[panel_at + 1:], save, train]

    def _build_save(self) -> widgets.Widget:
        self.save_path = widgets.Text(value="", placeholder="e.g. tumour.nii.gz · tumour.nrrd · tumour_seg.dcm · tumour.stl",
                                      description="file", style={"description_width": "initial"},
                                      layout=widgets.Layout(width="30em"))
        self.save_path.add_class("medlab-segment-save-path")
        self.save_overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                               layout=widgets.Layout(width="8em"))
        self.save_overwrite.add_class("medlab-segment-save-overwrite")
        buttons = []
        for what, text, tip in (("labels", "Save label map", "NIfTI (.nii.gz), NRRD or MHA: overlays the scan exactly"),
                                ("seg", "Save DICOM SEG", ("a DICOM Segmentation referencing the source series "
                                                           "(for images loaded from DICOM)")),
                                ("mesh", "Save surface mesh", "STL, OBJ or PLY in mm (LPS), one file per label")):
            b = widgets.Button(description=text, icon="download", tooltip=tip, layout=widgets.Layout(width="auto"))
            b.add_class(f"medlab-segment-save-{what}")
            b.on_click(lambda _, w=what: self._safely(lambda: self._save_clicked(w)))
            buttons.append(b)
        self.save_seg_button = buttons[1]
        self.save_seg_button.disabled = self.dicom_source is None
        if self.dicom_source is None:
            self.save_seg_button.tooltip = "the image was not loaded from a DICOM series, so a SEG has nothing to refer to"
        return widgets.VBox([widgets.HTML("<b>Save the newest label map</b>"),
                             widgets.HBox([self.save_path, self.save_overwrite, *buttons],
                                          layout=widgets.Layout(flex_flow="row wrap", align_items="center"))])

    # -------------------------------------------------------------- stages
    def select(self, name: str) -> StagePanel:
        """Show the panel of stage ``name`` (see :meth:`Workbench.select`), with seeds armed."""
        if name in self.specs and name not in self._panels:
            panel = _SegmentPanel(self.specs[name], self.before, after=self.after, debounce=self._debounce,
                                  scan=lambda: self.image)
            panel.on_apply(self._applied)
            panel.on_apply(self._segment_applied)
            panel.on_preview(self._previewed)
            panel.outputs_view.on_use = self._use_output
            self._panels[name] = panel
            self._starting_values(panel)
        panel = super().select(name)
        if getattr(self, "_ready", False):
            self._stage_chosen(panel)
        return panel

    def _starting_values(self, panel: StagePanel) -> None:
        """Intensity sliders on the image's own scale (see the module notes)."""
        lo, p1, p99, hi = (float(v) for v in np.percentile(_sample(self.image), [0, 1, 99, 100]))
        for n in INTENSITY_SPANS:
            c = panel.controls.get(n)
            if c is not None and p99 > p1:
                p = panel.spec.params[n]
                c.value = min(max(_round2(0.1 * (p99 - p1)), p.min), p.max)
        for n, p in panel.spec.params.items():
            if n == "value" and _is_label_input(panel.spec, panel.spec.primary) and p.kind == "int":
                panel.controls[n].widget.max = min(p.max, LABEL_SLIDER_MAX)
        for n in INTENSITY_LEVELS.get(panel.spec.name, ()):
            c = panel.controls[n]
            w, step = c.widget, (hi - lo) / 200 if hi > lo else 1.0
            w.min, w.max = max(lo - 10 * step, -1e6), min(hi + 10 * step, 1e6)
            w.step = _round2(step)
            c.value = _round2((p1 + p99) / 2) if n == "lower" else _round2(p99)

    def _stage_chosen(self, panel: StagePanel) -> None:
        spec = panel.spec
        self.histogram_box.layout.display = "" if self._marks_thresholds(spec) else "none"
        if self._marks_thresholds(spec):
            self.histogram.show_image(self.image)
            self.histogram.set_thresholds(None, "")
            self._previewed(panel)          # a preview already shown (back to a stage, or built meanwhile)
        for n, p in spec.point_params().items():   # seeds: armed at once, the user just clicks
            if p.role == "seeds" and not panel.controls[n].value and hasattr(panel.controls[n], "pick"):
                panel.controls[n].pick.value = True
                break
        self._hint_refresh()

    @staticmethod
    def _marks_thresholds(spec: StageSpec) -> bool:
        module = getattr(spec.func, "__module__", "")
        return module.endswith((".threshold", ".region"))

    def _hint(self, spec: StageSpec) -> str:
        roles = {p.role for p in spec.point_params().values()}
        if _is_label_input(spec, spec.primary):
            source = "the newest label map" if self.labels is not None else "a label map (none yet: segment first)"
            if "paint" in roles:
                return (f"Click in the left image to paint on {source}: each click paints a ball of the brush radius "
                        "(mm); the right image previews it. Apply keeps the strokes; Undo last takes them back.")
            if "remove" in roles:
                return (f"Click on the pieces of {source} to remove (red crosses); the right image previews it. "
                        "Apply keeps the change; Undo last takes it back.")
            return f"Works on {source}; the right image previews it on the shown slice. Apply runs it on the whole volume."
        if "seeds" in roles:
            return ("Click inside the structure in the left image to place a seed (green); the right image previews "
                    "the region on this slice. For points it must not reach, click the 'background' chip under "
                    "the left image, then click. Move the sliders and watch; Apply segments the whole volume.")
        if "model" in spec.inputs:
            return ("Choose a model (train one, or load a shipped one, in the panel at the bottom), then Apply: "
                    "it segments the whole image.")
        if self._marks_thresholds(spec):
            return ("Move the sliders: the right image previews the label map on this slice, the histogram marks "
                    "the threshold(s). Apply segments the whole volume.")
        return "The right image previews the result on this slice; Apply segments the whole volume."

    def edit(self, tool: str) -> StagePanel:
        """Choose an editing tool: ``'paint'``, ``'erase'`` (brush) or ``'remove'`` (pieces), with
        clicking armed; returns its panel."""
        tools = {"paint": "paint_labels", "erase": "paint_labels", "remove": "remove_components"}
        if tool not in tools:
            raise ParameterError(f"tool must be one of {sorted(tools)}; got {tool!r}")
        if tools[tool] not in self.specs:
            raise MedlabError(f"the editing stage {tools[tool]} is not offered in this widget")
        if self.labels is None:
            raise MedlabError("there is no label map to edit yet: segment with a method first (Apply)")
        panel = self.select(tools[tool])
        if tool != "remove":
            panel.controls["erase"].value = tool == "erase"
        pick = next(c.pick for c in panel.controls.values() if hasattr(c, "pick"))
        pick.value = True
        return panel

    # -------------------------------------------------------------- results
    @property
    def labels(self) -> Image | None:
        """The newest label map in the session, or None."""
        return next((v for v in reversed(list(self.session.values())) if isinstance(v, Image) and v.is_label), None)

    @property
    def dicom_source(self) -> str | None:
        """The DICOM series (folder or file) the image was loaded from, or None."""
        meta = self.original.metadata
        src = meta.get("source")
        return str(src) if meta.get("format") == "DICOM" and src and Path(str(src)).exists() else None

    def _previewed(self, panel: StagePanel) -> None:
        if not getattr(self, "_ready", False) or panel is not self.panel or not self._marks_thresholds(panel.spec):
            return
        out = next((v for v in (panel.preview_outputs or {}).values() if isinstance(v, Image)), None)
        if out is not None:
            self.histogram.set_thresholds(out.metadata.get("thresholds"), "preview, on the shown slice")

    def _segment_applied(self, panel: StagePanel) -> None:
        """After each Apply (in its thread): histogram, scores, and edit clicks cleared."""
        if self._marks_thresholds(panel.spec) and isinstance(panel.result, Image):
            self.histogram.set_thresholds(panel.result.metadata.get("thresholds"), "Apply, on the whole image")
        for n, p in panel.spec.point_params().items():
            if p.role in EDIT_ROLES:   # the strokes are in the result now: do not preview them twice
                panel.set(**{n: ()})
        self._hint_refresh()
        self.update_scores()

    def _hint_refresh(self) -> None:
        if self._ready:
            for b in self.edit_buttons:       # nothing to edit before the first label map
                b.disabled = self.labels is None
            self.hint.value = f"<span style='opacity:.85'>{html.escape(self._hint(self.panel.spec))}</span>"

    def undo(self):
        """Undo the last step (see :meth:`Workbench.undo`); the scores follow."""
        out = super().undo()
        label_stage = _is_label_input(self.panel.spec, self.panel.spec.primary)
        if label_stage:
            self._wire_inputs(self.panel)
            if self.labels is None:
                self.before.set_labels(None)
        elif self.labels is not None and self.labels.overlaps(self.before.image):
            self.before.set_labels(self.labels, opacity=0.4)
        self._hint_refresh()
        self.update_scores()
        return out

    def update_scores(self) -> list[dict]:
        """Score the newest label map against the ground truth (nothing without one)."""
        if self.truth is None:
            return []
        labels = self.labels
        if labels is None:
            self.scores = []
            self.scores_html.value = "<i>scores against the ground truth appear after the first Apply</i>"
            return []
        self.scores = score_rows(labels, self.truth, self.truth_values)
        key = next((k for k, v in reversed(list(self.session.items())) if v is labels), "")
        self.scores_html.value = scores_html(self.scores, f"{key} against the ground truth")
        return self.scores

    # -------------------------------------------------------------- export
    def _newest_labels(self) -> Image:
        labels = self.labels
        if labels is None:
            raise MedlabError("there is no label map yet: segment with a method first (Apply)")
        return labels

    def _target(self, path) -> Path:
        if not str(path).strip():
            raise MedlabError("type a file name first, e.g. tumour.nii.gz, tumour_seg.dcm or tumour.stl")
        return Path(path).expanduser()

    def save_labels(self, path, *, overwrite: bool = False) -> Path:
        """Write the newest label map (NIfTI, NRRD or MHA by the suffix; atomic)."""
        from medlab.io import save

        written = save(self._newest_labels(), self._target(path), overwrite=overwrite)
        self.panel.show_status(f"label map written to {written}", "ok")
        return written

    def save_dicom_seg(self, path, *, overwrite: bool = False) -> Path:
        """Write the newest label map as a DICOM SEG referencing the series the image came from."""
        from medlab.segment import write_dicom_seg

        source = self.dicom_source
        if source is None:
            raise MedlabError("the image was not loaded from DICOM (or its files are gone), so a DICOM SEG has no "
                              "series to refer to; save a NIfTI instead")
        labels = self._newest_labels()
        meta = labels.metadata
        deep = "method" not in meta and str(meta.get("description", "")).startswith("segmented by")
        series = str(self.original.metadata.get("dicom", {}).get("SeriesInstanceUID") or "") or None
        written = write_dicom_seg(labels, source, self._target(path), series=series, overwrite=overwrite,
                                  algorithm_type="automatic" if deep and not meta.get("edited") else "semiautomatic",
                                  algorithm_family="ArtificialIntelligence" if deep else None)
        self.panel.show_status(f"DICOM SEG written to {written}", "ok")
        return written

    def save_mesh(self, path, *, overwrite: bool = False) -> list[Path]:
        """Write the surface of each label of the newest label map (STL, OBJ or PLY by the suffix;
        in mm, LPS). With several labels, one file each: ``<name>_<value><suffix>``."""
        from medlab.mesh import MESH_FORMATS, label_surfaces, save_mesh

        labels, target = self._newest_labels(), self._target(path)
        suffix = target.suffix.lower()
        if suffix not in MESH_FORMATS:
            raise ParameterError(f"a mesh file must end in {', '.join(MESH_FORMATS)}; got {target.name!r}")
        if labels.ndim != 3:
            raise ImageError("surfaces need a 3D label map; this one is 2D")
        meshes = label_surfaces(labels)
        paths = [target] if len(meshes) == 1 else [target.with_name(f"{target.stem}_{m.label}{suffix}") for m in meshes]
        written = [save_mesh(m, p, overwrite=overwrite) for m, p in zip(meshes, paths)]
        self.panel.show_status(f"{len(written)} surface(s) written: {', '.join(p.name for p in written)}", "ok")
        return written

    def _save_clicked(self, what: str) -> None:
        action = {"labels": self.save_labels, "seg": self.save_dicom_seg, "mesh": self.save_mesh}[what]
        action(self.save_path.value, overwrite=self.save_overwrite.value)

    # -------------------------------------------------------------- 3D
    def open_3d(self, *, height: int = 420):
        """Show the scan and the newest label map's surfaces in 3D, linked to the left viewer."""
        from .view3d import View3D

        if self.original.ndim != 3:
            raise ImageError("the 3D view needs a 3D image")
        self.close_3d()
        view = View3D(self.image, self.labels, height=height)
        self._unlink3d = view.link(self.before)
        close = widgets.Button(description="close 3D view", icon="times", layout=widgets.Layout(width="auto"))
        close.on_click(lambda _: self._safely(self.close_3d))
        self._view3d = view
        key = next((k for k, v in reversed(list(self.session.items())) if v is self.labels), None)
        caption = widgets.HTML(
            "<b>3D view</b>: the scan as a volume rendering"
            + (f" and the surface(s) of <code>{html.escape(key)}</code>" if key else "")
            + "; drag to turn it, scroll to zoom. Its red crosshair follows the left viewer (in mm).")
        self.view3d_box.children = [caption, view, close]
        what = f"{len(view.meshes)} surface(s)" if view.meshes else "no label map yet: the scan alone"
        self.panel.show_status(f"3D view: {what}; drag to turn it, its crosshair follows the left viewer", "ok")
        return view

    def close_3d(self) -> None:
        """Close the 3D view (and unlink it from the viewer)."""
        if getattr(self, "_unlink3d", None) is not None:
            self._unlink3d()
        self._unlink3d = None
        if getattr(self, "_view3d", None) is not None:
            self._view3d.close()
        self._view3d = None
        if hasattr(self, "view3d_box"):
            self.view3d_box.children = []

    def close(self) -> None:
        if not hasattr(self, "_panels"):
            return   # refused before the workbench was built: nothing is open
        self.close_3d()
        if hasattr(self, "training"):
            self.training.cancel()
        super().close()


# ---------------------------------------------------------------------------- scores
def _check_truth(truth, truth_labels, image: Image) -> tuple[Image | None, list[int]]:
    if truth is None:
        if truth_labels is not None:
            raise ParameterError("truth_labels needs a truth= label map")
        return None, []
    truth = as_image(truth, "truth")
    if not truth.is_label:
        if truth.dtype.kind not in "biu":
            raise ImageError("truth must be a label map (integers); got intensities")
        truth = truth.with_array(truth.array, kind="label")
    if truth.ndim != image.ndim or not truth.overlaps(image):
        raise ImageError("truth does not overlap the image in space (or has another dimension): is it the label "
                         "map of this scan?")
    present = sorted(int(v) for v in np.unique(truth.array) if v != 0)
    values = present if truth_labels is None else sorted({int(v) for v in truth_labels})
    if not values:
        raise ImageError("truth is empty (all zero): there is nothing to score against")
    missing = sorted(set(values) - set(present))
    if missing:
        raise ParameterError(f"truth_labels {missing} do not occur in truth (values present: {present})")
    return truth, values


def score_rows(labels: Image, truth: Image, truth_values: Sequence[int]) -> list[dict[str, Any]]:
    """Scores of a label map against ``truth`` restricted to ``truth_values``.

    A label map holding several of these values is scored per label, plus one row for all of
    them together; any other (e.g. label 1 of a region growing) is scored as foreground
    against the union of ``truth_values``.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> t = Image(np.pad(np.ones((4, 4), np.uint8), 2), kind="label", labels={1: "organ"})
    >>> [round(r["dice"], 2) for r in score_rows(t, t, [1])]
    [1.0]
    """
    from medlab.metrics import segmentation_scores

    resample = not labels.same_grid(truth)
    values = [int(v) for v in truth_values]
    present = sorted(int(v) for v in np.unique(labels.array) if v != 0)
    names = [truth.labels[v].name if v in truth.labels else f"label {v}" for v in values]
    whole = " + ".join(names) if len(names) <= 3 else f"{len(names)} labels"

    def binary(img: Image, keep) -> Image:
        return img.with_array(np.isin(img.array, keep).astype(np.uint8), kind="label", labels={1: whole})

    rows = []
    if len(values) > 1 and len(present) > 1 and set(present) <= set(values):
        kept = truth.with_array(np.where(np.isin(truth.array, values), truth.array, 0))
        rows = segmentation_scores(labels, kept, labels=values, resample=resample)
    rows += segmentation_scores(binary(labels, present or [1]), binary(truth, values), labels=[1], resample=resample)
    if len(rows) > 1:
        rows[-1]["name"] = f"whole ({whole})"
    return rows


def scores_html(rows: Sequence[dict], title: str) -> str:
    """The scores as a small HTML table (distances in mm, volumes in mL)."""
    if not rows:
        return ""
    area = "area_pred_mm2" in rows[0]

    def num(v, digits=3):
        if v is None:
            return ""
        if isinstance(v, float) and math.isinf(v):
            return "∞ (one is empty)"
        return f"{v:.{digits}g}"

    head = ["structure", "Dice", "IoU", "sensitivity", "precision", "HD95 (mm)", "ASSD (mm)",
            "area (mm²): result / truth" if area else "volume (mL): result / truth",
            "difference (mm²)" if area else "difference (mL)"]
    body = []
    for r in rows:
        vol = ((num(r["area_pred_mm2"]), num(r["area_truth_mm2"]), num(r["area_difference_mm2"])) if area else
               (num(r["volume_pred_ml"]), num(r["volume_truth_ml"]), num(r["volume_difference_ml"])))
        cells = [html.escape(str(r["name"])), num(r["dice"]), num(r["iou"]), num(r["sensitivity"]),
                 num(r["precision"]), num(r["hausdorff95_mm"]), num(r["assd_mm"]), f"{vol[0]} / {vol[1]}", vol[2]]
        body.append("<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in cells) + "</tr>")
    th = "".join(f"<th style='{_CELL}'>{html.escape(h)}</th>" for h in head)
    return (f"<div><b>Scores: {html.escape(title)}</b><table class='medlab-scores-table'><tr>{th}</tr>"
            f"{''.join(body)}</table><span style='opacity:.7'>Dice counts overlapping voxels; HD95 and ASSD say "
            "how far the borders are apart (mm), which Dice hides for small structures.</span></div>")


_CELL = "padding:1px 10px 1px 0; text-align:left"


def _sample(image: Image) -> np.ndarray:
    a = np.asarray(image.array).reshape(-1)
    a = a[:: max(1, a.size // 1_000_000)].astype(np.float64)
    return a[np.isfinite(a)] if a.size else np.zeros(1)


# ---------------------------------------------------------------------------- training
_SIZES = {"48×48×24": (48, 48, 24), "64×64×32": (64, 64, 32), "96×96×48": (96, 96, 48)}
_PHANTOM_SEEDS = 100
"""Training phantoms use seeds from here on, so none of them is a phantom of seed 0 to 99 that
you segment."""


class TrainingPanel(widgets.VBox):
    """Train a U-Net (:func:`medlab.deep.train_segmenter`) and use it on the widget's image.

    Data: brain tumour phantoms (:func:`medlab.deep.brain_tumour_cases`, in the contrast of
    the image when it says which; the whole tumour as one label, or its three classes) or the
    pairs given to the widget. Training runs in a
    background thread with live curves; Cancel keeps the best weights so far. The model joins
    the widget's session, so *Segment this image* (:func:`medlab.deep.deep_segment`) finds it.

    Attributes
    ----------
    model : Checkpoint or None
        The last trained (or loaded) model.
    result : Result or None
        What the last run returned (``model``, ``history``, ``dice``), or its best part after a Cancel.
    """

    def __init__(self, owner: SegmentWidget, *, pairs: Sequence[tuple[Image, Image]] | None = None):
        super().__init__()
        self.add_class("medlab-segment-train")
        self.owner = owner
        self.pairs = _check_pairs(pairs)
        self.model: Checkpoint | None = None
        self.result = None
        self.running = False
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._model_key = ""
        image = owner.original
        sources = [("brain tumour phantoms", "phantoms")]
        if self.pairs:
            sources.append((f"my {len(self.pairs)} image/label pair(s)", "pairs"))
        self.data = widgets.Dropdown(options=sources, value="phantoms", description="data")
        self.count = widgets.IntSlider(value=8, min=3, max=40, description="phantoms",
                                       tooltip="how many phantoms (one in five is kept for validation)")
        size = tuple(image.size) if image.metadata.get("phantom") == "brain_mri" and image.ndim == 3 else None
        sizes = dict(_SIZES)
        if size is not None and size not in sizes.values():
            sizes["×".join(map(str, size)) + " (as the image)"] = size
        self.size = widgets.Dropdown(options=list(sizes.items()), value=size or _SIZES["64×64×32"],
                                     description="size (voxels)", style={"description_width": "initial"})
        self.contrast = widgets.Dropdown(options=["t1", "t2", "flair"], value=_contrast_of(image),
                                         description="contrast", tooltip="train on the contrast of the image you segment")
        self.target = widgets.Dropdown(options=[("whole tumour (one label)", "whole"),
                                                ("three classes: enhancing, necrotic, oedema", "classes")],
                                       value="whole", description="learn", layout=widgets.Layout(width="24em"),
                                       tooltip="the whole tumour learns in minutes on a CPU; three classes take longer")
        self.epochs = widgets.IntSlider(value=20, min=1, max=200, description="epochs")
        self.learning_rate = widgets.FloatLogSlider(value=1e-2, base=10, min=-4, max=-1, step=0.1,
                                                    description="learning rate", readout_format=".1e",
                                                    style={"description_width": "initial"},
                                                    tooltip="Adam's step: 1e-2 learns one label in a few epochs; "
                                                            "the shipped three-class models used 3e-3 for longer")
        self.target.observe(lambda ch: setattr(self.learning_rate, "value", 1e-2 if ch["new"] == "whole" else 3e-3),
                            "value")
        self.seed = widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="12em"),
                                    tooltip="the same seed, data and settings give the same weights")
        self.start_button = widgets.Button(description="Train", icon="play", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            tooltip="stop; the best weights so far are kept")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="16em"))
        self.status = widgets.HTML("")
        self.live = LiveView()
        self.segment_button = widgets.Button(description="Segment this image", icon="magic", disabled=True,
                                             tooltip="run the model on the widget's image (deep_segment)",
                                             layout=widgets.Layout(width="auto"))
        shipped = _shipped_models()
        self.shipped = widgets.Dropdown(options=shipped or ["(none shipped)"], description="shipped model",
                                        style={"description_width": "initial"}, disabled=not shipped)
        self.load_button = widgets.Button(description="Load", icon="folder-open", disabled=not shipped)
        for w, cls in ((self.data, "data"), (self.target, "target"), (self.count, "count"), (self.size, "size"), (self.contrast, "contrast"),
                       (self.epochs, "epochs"), (self.learning_rate, "learning-rate"), (self.seed, "seed"), (self.start_button, "start"),
                       (self.cancel_button, "cancel"), (self.progress, "progress"), (self.status, "status"),
                       (self.segment_button, "segment"), (self.load_button, "load")):
            w.add_class(f"medlab-train-{cls}")
        self.start_button.on_click(lambda _: self._safely(self.train))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.segment_button.on_click(lambda _: self._safely(self.segment_image))
        self.load_button.on_click(lambda _: self._safely(lambda: self.load_shipped(self.shipped.value)))
        self.data.observe(lambda _: self._show_data_rows(), "value")
        self._phantom_rows = widgets.HBox([self.target, self.count, self.size, self.contrast],
                                          layout=widgets.Layout(flex_flow="row wrap"))
        self.children = [
            widgets.HTML("<span style='opacity:.85'>A 3D U-Net learns the tumour (as one label, or its three "
                         "classes) from brain phantoms in the contrast of this image, or the labels of your pairs, "
                         "on the CPU. The curves show the loss and the validation Dice per epoch; Cancel stops and "
                         "keeps the best weights.</span>"),
            widgets.HBox([self.data, self.epochs, self.learning_rate, self.seed],
                         layout=widgets.Layout(flex_flow="row wrap")),
            self._phantom_rows,
            widgets.HBox([self.start_button, self.cancel_button, self.progress]),
            self.status, self.live,
            widgets.HBox([self.segment_button, self.shipped, self.load_button],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
        ]

    def _show_data_rows(self) -> None:
        self._phantom_rows.layout.display = "" if self.data.value == "phantoms" else "none"

    # -------------------------------------------------------------- data
    def cases(self) -> tuple[list, list, dict | None, dict]:
        """The training data the controls describe: ``(images, labels, classes, settings)``.

        Phantoms are trained with the tutorial's settings (:data:`medlab.deep.train_models.BRAIN_SETTINGS`,
        the patch no larger than the phantom); your pairs with :func:`~medlab.deep.train_segmenter`'s
        defaults. The whole tumour (one label) is learnt in minutes on a CPU; the three classes apart
        take much longer.
        """
        from medlab.deep import brain_tumour_cases
        from medlab.deep.train_models import BRAIN_SETTINGS

        if self.data.value == "pairs":
            return [p[0] for p in self.pairs], [p[1] for p in self.pairs], None, {}
        size = tuple(self.size.value)
        cases = brain_tumour_cases(range(_PHANTOM_SEEDS, _PHANTOM_SEEDS + self.count.value),
                                   contrasts=(self.contrast.value,), size=size)
        settings = {k: v for k, v in BRAIN_SETTINGS.items() if k not in ("seed", "validation")}
        settings["patch_size"] = [min(p, (s // 8) * 8) for p, s in zip(BRAIN_SETTINGS["patch_size"], size)]
        if self.target.value == "classes":
            return cases.images, cases.labels, cases.classes, settings
        values = list(cases.classes)
        whole = [lab.with_array(np.isin(lab.array, values).astype(np.uint8), kind="label", labels={1: "tumour"})
                 for lab in cases.labels]
        return cases.images, whole, {1: "tumour"}, settings

    # -------------------------------------------------------------- running
    def train(self, wait: bool = False):
        """Train in a background thread (or wait for it); returns the Result when ``wait``."""
        if self.running:
            raise MedlabError("training is already running: wait for it or Cancel")
        self.error, self.result = None, None
        self._cancel = threading.Event()
        self.running = True
        self.start_button.disabled, self.cancel_button.disabled = True, False
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.live.clear()
        self._status("preparing the training data…", "busy")
        self._thread = threading.Thread(target=self._run, name="medlab-train", daemon=True)
        self._thread.start()
        if not wait:
            return None
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop training at the next step; the best weights so far are kept."""
        self._cancel.set()
        if self.running:
            self._status("cancelling… (the best weights so far will be kept)", "busy")

    def _run(self) -> None:
        from medlab.deep import train_segmenter

        t0 = time.perf_counter()

        def report(fraction: float, message: str) -> None:
            self.progress.value = fraction
            self.progress.description = f"{fraction:.0%}"
            if message:
                self._status(f"training: {message}", "busy")

        try:
            images, labels, classes, settings = self.cases()
            with progress_to(report, self._cancel, publish=lambda stage, values: self.live.update(values)):
                settings = {**settings, "learning_rate": float(self.learning_rate.value)}
                result = train_segmenter(images, labels, classes=classes, epochs=self.epochs.value,
                                         seed=self.seed.value, validation=0.2 if len(labels) >= 3 else 0,
                                         **settings)
            self.live.flush()
            self.result = result
            self.add_model(result.model)
            m = result.model.metrics
            dice = f", validation Dice {m['dice_mean']:.3f} (epoch {m['epoch']})" if "dice_mean" in m else ""
            self._status(f"trained in {time.perf_counter() - t0:.0f} s{dice}; the model is "
                         f"'{self._model_key}' in the session", "ok")
            self.progress.bar_style = "success"
        except Cancelled as exc:
            self.live.flush()
            kept = getattr(exc, "result", None)
            self.progress.bar_style = "warning"
            if kept is not None and kept.model is not None:
                self.result = kept
                self.add_model(kept.model)
                m = kept.model.metrics
                self._status(f"cancelled: the best weights so far (epoch {m.get('epoch')}, validation Dice "
                             f"{m.get('dice_mean', float('nan')):.3f}) are kept as '{self._model_key}'", "info")
            else:
                self._status("cancelled before the first epoch ended: no model", "info")
        except Exception as exc:  # noqa: BLE001 - shown in the status line (and raised by train(wait=True))
            self.live.flush()
            self.error = exc
            self.progress.bar_style = "danger"
            self._status(str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}", "error")
        finally:
            self.running = False
            self.start_button.disabled, self.cancel_button.disabled = False, True

    def add_model(self, model: Checkpoint, name: str = "model") -> str:
        """Put a model (e.g. trained in a script) in the widget's session under a new key, for
        :meth:`segment_image` and the deep-learning stage; returns the key."""
        if not isinstance(model, Checkpoint):
            raise ParameterError(f"model must be a medlab Checkpoint (train_segmenter(...).model or "
                                 f"medlab.deep.pretrained(...)); got {type(model).__name__}")
        from medlab.recipe import _unique

        owner = self.owner
        key = _unique(name, owner.session)
        owner.session[key] = model
        owner.recipe.name_values(**{key: model})
        self.model, self._model_key = model, key
        self.segment_button.disabled = "deep_segment" not in owner.specs
        if owner.panel is not None and "model" in owner.panel.spec.inputs:
            owner._wire_inputs(owner.panel)
        return key

    def load_shipped(self, name: str) -> Checkpoint:
        """Load a model shipped with medlab (:func:`medlab.deep.pretrained`) into the session."""
        from medlab.deep import pretrained

        model = pretrained(name)
        self.add_model(model, name)
        self._status(f"loaded the shipped model {name!r} as '{self._model_key}'", "ok")
        return model

    def segment_image(self, wait: bool = False):
        """Run the last model on the widget's image (the ``deep_segment`` stage, recorded)."""
        owner = self.owner
        if self.model is None:
            raise MedlabError("no model yet: train one or load a shipped one first")
        owner.select("deep_segment")
        owner.set_input("model", self._model_key)
        return owner.apply(wait=wait)

    def _status(self, text: str, level: str) -> None:
        colour = {"error": "#b00020", "ok": "#1b5e20", "busy": "#555", "info": "#333"}[level]
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _safely(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button never raises into the void
            self.error = exc
            self._status(str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}", "error")


def _contrast_of(image: Image) -> str:
    """The phantom contrast (t1, t2, flair) an image's ``sequence`` names; t1 when it says none."""
    sequence = str(image.metadata.get("sequence", "")).lower()
    if "flair" in sequence:
        return "flair"
    return "t2" if sequence.startswith("t2") else "t1"


def _check_pairs(pairs) -> list[tuple[Image, Image]]:
    out = []
    for i, pair in enumerate(pairs or ()):
        try:
            image, labels = pair
        except (TypeError, ValueError):
            raise ParameterError(f"training_pairs[{i}] must be an (image, label map) pair") from None
        out.append((as_image(image, f"training_pairs[{i}][0]"), as_image(labels, f"training_pairs[{i}][1]")))
    return out


def _shipped_models() -> list[str]:
    try:
        from medlab.deep import pretrained_models
    except ImportError:
        return []
    try:
        return sorted(pretrained_models())
    except (OSError, ValueError):   # a damaged model card: offer none rather than break the widget
        return []
