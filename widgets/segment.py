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
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np

from medlab.errors import ImageError, MedlabError, ParameterError
from medlab.image import Image, as_image
from medlab.stage import StageSpec
from medlab.stage import stages as registered_stages

from .panel import StagePanel
from .segment_export import LabelExport
from .segment_histogram import HistogramPlot
from .segment_panel import EDIT_ROLES, _is_label_input, _SegmentPanel
from .segment_scores import _check_truth, score_rows, scores_html
from .segment_training import TrainingPanel
from .workbench import Workbench

__all__ = ["HistogramPlot", "SegmentWidget", "TrainingPanel"]

#: Parameters that are intensity levels (slider re-ranged to the image) and intensity spans
#: (started at a tenth of the image's range). The hook this stands for: a declared
#: ``unit="intensity"`` on such parameters, read by every widget.
INTENSITY_LEVELS = {"threshold": ("lower", "upper")}
INTENSITY_SPANS = ("tolerance",)
#: Label-value sliders shown up to this value (a slider to 65535 cannot pick 3; typing a
#: larger value in Python still works).
LABEL_SLIDER_MAX = 255


def _segment_stages() -> list[StageSpec]:
    """The segment group in a method picker's order: thresholds, seeds, boundaries, clean-up,
    editing, then deep learning (imported here so that its stage is registered)."""
    try:
        import medlab.deep  # noqa: F401 - registers deep_segment
    except ImportError:  # torch/monai missing: the classic methods still work
        pass
    specs = list(registered_stages("segment"))
    return [s for s in specs if s.name != "deep_segment"] + [s for s in specs if s.name == "deep_segment"]


def _round2(x: float) -> float:
    """``x`` to two significant digits (a slider start a person can read)."""
    if not x or not math.isfinite(x):
        return x
    return float(f"{x:.2g}")


def _sample(image: Image) -> np.ndarray:
    """Finite voxels of ``image`` (an even sample of ~1 million) for the sliders' starting values."""
    a = np.asarray(image.array).reshape(-1)
    a = a[:: max(1, a.size // 1_000_000)].astype(np.float64)
    return a[np.isfinite(a)] if a.size else np.zeros(1)


class SegmentWidget(LabelExport, Workbench):
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

    # -------------------------------------------------------------- stages
    def select(self, name: str) -> StagePanel:
        """Show the panel of stage ``name`` (see :meth:`Workbench.select`), with seeds armed."""
        if name in self.specs and name not in self._panels:
            if self.panel is not None:
                # before the new panel binds the viewer: the old one takes its point sets away, and
                # a 'seeds' set of the same name leaving must not reach the new panel (it failed with
                # "no point set 'seeds'" when a seed was clicked before switching method)
                self.panel.detach()
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
        if not hasattr(self, "_panels") or getattr(self, "_closed", False):
            return   # refused before the workbench was built, or closed already (ipywidgets closes again on exit)
        self._closed = True
        self.close_3d()
        if hasattr(self, "training"):
            self.training.cancel()
        super().close()
