"""The clinician review form: a scan with one explanation map over it and a structured verdict.

Clinicians use it through Voila, with no code visible, started by one command::

    medlab review STUDY.json --reviewer "Dr Grey" [--port 8866]

(see :mod:`medlab.cli`); in a notebook, ``ReviewApp("study.json", "Dr Grey")`` shows the same
form. Every verdict is stored by :class:`medlab.review.ReviewStore` the moment "Save" is pressed
(one SQLite transaction), so a refresh or a kernel restart loses nothing; the app opens at the
first map this reviewer has not rated. Going back to a rated map shows its verdict; saving it again
records a new version and keeps the earlier one.

The viewer opens each case at the centre of the scan, not at the map's peak, so that "where I
would look" is not steered towards the map.

DOM (stable CSS classes, for tests and styling)
-----------------------------------------------
``.medlab-review`` (root) holds ``.medlab-review-header`` (``.medlab-review-title``,
``.medlab-review-reviewer``, ``.medlab-review-progress``: "Case 2 of 3 · Map B (1 of 2) · 3 of 6
rated"), ``.medlab-review-viewer`` (the :class:`~medlab.widgets.Viewer`) or
``.medlab-review-error`` (why a case or map cannot be shown), ``.medlab-review-map-key`` (the map's colour
key under the image, or why nothing is coloured), and the form:
``.medlab-review-item`` (case and map), ``.medlab-review-prediction``, ``.medlab-review-showmap``,
``.medlab-review-opacity``, ``.medlab-review-verdict`` (radio buttons), ``.medlab-review-confidence``
(toggle buttons 1-5), ``.medlab-review-look`` (toggle: the next click on the scan marks where the
reviewer would look), ``.medlab-review-click`` (the point, mm), ``.medlab-review-clear``,
``.medlab-review-comment`` (textarea), ``.medlab-review-earlier`` (the stored verdict being edited),
``.medlab-review-prev``, ``.medlab-review-next``, ``.medlab-review-save``, ``.medlab-review-status``
(with ``.medlab-review-status-ok|error|info``). When every map is rated ``.medlab-review-done``
replaces the form, with ``.medlab-review-summary`` (the reviewer's own verdicts counted). A study
or database that cannot be used shows ``.medlab-review-fatal`` only.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Callable
from pathlib import Path

import ipywidgets as W

from medlab.errors import MedlabError, ParameterError
from medlab.review import (
    CONFIDENCE_LEVELS,
    VERDICT_LABELS,
    VERDICTS,
    LoadedCase,
    ReviewItem,
    ReviewStore,
    ReviewStudy,
    Verdict,
    VerdictConflict,
    map_is_flat,
)

from .viewer import Viewer

ENV_STUDY = "MEDLAB_REVIEW_STUDY"
ENV_REVIEWER = "MEDLAB_REVIEW_REVIEWER"
ENV_DATABASE = "MEDLAB_REVIEW_DATABASE"

_CSS = """
<style>
.medlab-review { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #e6e9ef;
  background: #14171c; border-radius: 6px; padding: 0 0 10px 0; }
.medlab-review-header { background: #0b0d10; border-bottom: 1px solid #2a2f38; padding: 8px 14px;
  align-items: center; gap: 18px; }
.medlab-review-title { font-weight: 600; font-size: 15px; color: #fff; }
.medlab-review-reviewer, .medlab-review-progress { color: #aeb6c4; }
.medlab-review-body { padding: 10px 14px; gap: 16px; align-items: flex-start; }
.medlab-review-image { background: #000; border-radius: 4px; padding: 8px; }
.medlab-review-image .medlab-viewer { color: #d8dce4; }
/* for a reader: "Mark where I would look" is the point tool and the form names the mark (no
   "points (1)" chip), and the grid caption (voxels, LPS, float32, a.u.) is not for them; viewer
   errors (data-kind="error") stay visible */
.medlab-review-form { background: #1c2027; border: 1px solid #2a2f38; border-radius: 6px; padding: 12px 14px; }
.medlab-review-form .widget-label, .medlab-review-form .widget-radio-box label,
.medlab-review-form .widget-checkbox label { color: #e6e9ef; }
.medlab-review-section { margin-top: 10px; font-size: 12px; letter-spacing: .04em; text-transform: uppercase;
  color: #8f98a8; }
.medlab-review-item { font-size: 17px; font-weight: 600; color: #fff; }
.medlab-review-prediction { color: #cfd5df; }
.medlab-review-verdict .widget-radio-box label { font-size: 14px; padding: 3px 0; }
.medlab-review-form textarea { background: #0f1216; color: #e6e9ef; border: 1px solid #394050; }
.medlab-review-form button.jupyter-button { border-radius: 4px; }
.medlab-review-save button, button.medlab-review-save { font-weight: 600; }
.medlab-review-click { color: #ffd400; font-family: ui-monospace, monospace; font-size: 12px; }
.medlab-review-earlier { color: #9fb3ff; font-size: 12px; }
.medlab-review-status { min-height: 1.5em; font-size: 13px; }
.medlab-review-status-ok { color: #7bd88f; }
.medlab-review-status-error { color: #ff7b72; font-weight: 600; }
.medlab-review-status-info { color: #aeb6c4; }
.medlab-review-error, .medlab-review-fatal { background: #3a1518; border: 1px solid #a4373d; color: #ffd7d5;
  border-radius: 6px; padding: 12px 16px; max-width: 640px; }
.medlab-review-image button.medlab-pointmode, .medlab-review-image .medlab-pointsets { display: none; }
.medlab-review-image .medlab-status[data-kind="info"] { display: none; }
.medlab-review-key { color: #cfd5df; font-size: 12px; margin-top: 6px; display: flex; align-items: center;
  gap: 6px; flex-wrap: wrap; }
.medlab-review-key-bar { width: 120px; height: 10px; border: 1px solid #555; display: inline-block; }
.medlab-review-key-empty { color: #ffd400; }
.medlab-review-key-note { color: #8f98a8; font-size: 12px; }
.medlab-review-summary { margin: 8px 0 12px 0; }
.medlab-review-summary td { padding: 1px 12px 1px 0; }
.medlab-review-done { background: #15301f; border: 1px solid #2f7a47; color: #d5f5de; border-radius: 6px;
  padding: 16px; }
</style>
"""


MAP_CMAP = "inferno"
"""Colour map of the explanation map (the key under the image is drawn from it)."""
MAP_FLOOR = 0.2
"""Share of each map's range, from its weakest value, left uncoloured (the faint tail)."""


def map_key_html(saliency, cmap: str = MAP_CMAP) -> str:
    """The colour key under the image, in a reviewer's words: which colour is weak and which strong.

    Maps are scaled to their own range, so the key has no numbers; a map with one value
    everywhere (e.g. Grad-CAM finding no evidence) is said to be empty, not shown as a blank scan.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> "weaker" in map_key_html(Image(np.linspace(0, 1, 8).reshape(2, 2, 2)))
    True
    >>> "empty" in map_key_html(Image(np.zeros((2, 2, 2))))
    True
    """
    import numpy as np

    from medlab import render

    if map_is_flat(saliency):
        return ("<div class='medlab-review-key medlab-review-key-empty'>This map is empty: it marks no region of "
                "this scan, so nothing is coloured. Rate it as it is.</div>")
    lut = render.colormap_lut(cmap)
    stops = ", ".join(f"rgb({lut[i][0]},{lut[i][1]},{lut[i][2]})" for i in np.linspace(0, 255, 9).round().astype(int))
    return (f"<div class='medlab-review-key'><span>Map colour:</span><span>weaker</span>"
            f"<span class='medlab-review-key-bar' style='background:linear-gradient(to right, {stops})'></span>"
            f"<span>stronger</span></div><div class='medlab-review-key-note'>stronger: more influence on the "
            f"model's result; the weakest {100 * MAP_FLOOR:.0f} % is not coloured</div>")




def _html(text: str, cls: str, *, tag: str = "div") -> W.HTML:
    w = W.HTML(f"<{tag}>{html.escape(text)}</{tag}>")
    w.add_class(cls)
    return w


def _when(utc_iso: str) -> str:
    """'2025-03-01T09:30:12.345Z' -> '2025-03-01 09:30:12 UTC' (the stored time stays ISO 8601)."""
    return utc_iso.replace("T", " ")[:19] + " UTC"


def _guarded(method: Callable) -> Callable:
    """A widget callback never leaves a traceback in the log only: the reviewer sees the message."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except MedlabError as exc:
            self._status(str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - shown to the reviewer instead of a silent log line
            self._status(f"Unexpected error ({type(exc).__name__}): {exc}. Your saved verdicts are safe.", "error")
    return wrapper


class ReviewApp(W.VBox):
    """The review form of one reviewer on one study.

    Parameters
    ----------
    study : ReviewStudy, str or Path
        The study or its JSON file.
    reviewer : str
        Recorded with every verdict.
    database : str or Path, optional
        The verdict database (default: the study's).
    viewer_height : int
        Height of the image in screen pixels.

    Bad input never raises here: a study or database that cannot be used shows its message
    (``app.error``) in place of the form, and a case or map that cannot be shown says why while
    the reviewer can go on with the others.

    Examples
    --------
    >>> from medlab.widgets.review import ReviewApp
    >>> app = ReviewApp("pilot/study.json", "Dr Grey")        # doctest: +SKIP
    >>> app.item.shown_as, app.index                           # doctest: +SKIP
    ('Map A', 0)
    """

    def __init__(self, study: ReviewStudy | str | Path | None, reviewer: str | None, *,
                 database: str | Path | None = None, viewer_height: int = 520):
        super().__init__()
        self.add_class("medlab-review")
        self.error: str | None = None
        self.study: ReviewStudy | None = None
        self.store: ReviewStore | None = None
        self.reviewer = (reviewer or "").strip()
        self.items: list[ReviewItem] = []
        self.index = 0
        self.loaded: LoadedCase | None = None
        self.earlier: Verdict | None = None
        self.click: tuple[float, float, float] | None = None
        self._syncing = False
        try:
            self._open(study, database)
        except MedlabError as exc:
            self._fatal(str(exc))
            return
        self._build(viewer_height)
        self.go(self.store.resume_index(self.study, self.reviewer))

    # ------------------------------------------------------------------ opening
    def _open(self, study, database) -> None:
        if not self.reviewer:
            raise ParameterError(f"no reviewer name: start the app with  medlab review STUDY --reviewer \"Your Name\"  "
                                 f"(or set {ENV_REVIEWER})")
        if study is None or study == "":
            raise ParameterError(f"no review study given: start the app with  medlab review STUDY --reviewer NAME  "
                                 f"(or set {ENV_STUDY})")
        self.study = study if isinstance(study, ReviewStudy) else ReviewStudy.load(study)
        self.items = self.study.items(self.reviewer)
        self.store = self.study.open_store(database)

    def _fatal(self, message: str) -> None:
        self.error = message
        box = W.HTML(f"<b>The review cannot start.</b><br>{html.escape(message[:1].upper() + message[1:])}<br><br>"
                     "No verdict has been changed. Please tell the person who set up this review.")
        box.add_class("medlab-review-fatal")
        self.children = [W.HTML(_CSS), box]

    def _build(self, viewer_height: int) -> None:
        self.title = _html(f"medlab review · {self.study.name}", "medlab-review-title")
        self.reviewer_label = _html(f"Reviewer: {self.reviewer}", "medlab-review-reviewer")
        self.progress = _html("", "medlab-review-progress")
        self.progress_bar = W.IntProgress(min=0, max=len(self.items), layout=W.Layout(width="160px"))
        header = W.HBox([self.title, self.reviewer_label, self.progress_bar, self.progress])
        header.add_class("medlab-review-header")

        self.viewer = Viewer(height=viewer_height)
        self.viewer.add_class("medlab-review-viewer")
        self.viewer.observe(self._on_points, names="points")
        self.viewer.observe(self._on_point_mode, names="point_mode")
        self.case_error = _html("", "medlab-review-error")
        self.map_key = W.HTML("", layout=W.Layout(max_width="520px"))   # wraps under the viewer, never widens it
        self.map_key.add_class("medlab-review-map-key")
        self.image_area = W.VBox([self.viewer, self.map_key])
        self.image_area.add_class("medlab-review-image")

        self.item_label = _html("", "medlab-review-item")
        self.prediction = _html("", "medlab-review-prediction")
        self.show_map = W.Checkbox(value=True, description="Show map", indent=False, layout=W.Layout(width="110px"))
        self.show_map.add_class("medlab-review-showmap")
        self.opacity = W.FloatSlider(value=0.5, min=0.1, max=1.0, step=0.05, description="Opacity",
                                     continuous_update=False, readout_format=".2f", layout=W.Layout(width="220px"),
                                     style={"description_width": "56px"})
        self.opacity.add_class("medlab-review-opacity")
        self.show_map.observe(self._on_map_display, names="value")
        self.opacity.observe(self._on_map_display, names="value")

        self.verdict = W.RadioButtons(options=[(VERDICT_LABELS[k], k) for k in VERDICTS], value=None,
                                      layout=W.Layout(width="auto"))
        self.verdict.add_class("medlab-review-verdict")
        self.confidence = W.ToggleButtons(options=[(str(c), c) for c in CONFIDENCE_LEVELS], value=None,
                                          tooltips=["a guess", "unsure", "fairly sure", "sure", "certain"],
                                          style={"button_width": "42px"})
        self.confidence.add_class("medlab-review-confidence")
        self.look = W.ToggleButton(value=False, description="Mark where I would look", button_style="",
                                   tooltip="then click on the image", layout=W.Layout(width="200px"))
        self.look.add_class("medlab-review-look")
        self.look.observe(self._on_look, names="value")
        self.click_label = _html("", "medlab-review-click")
        self.clear = W.Button(description="Clear mark", layout=W.Layout(width="100px"))
        self.clear.add_class("medlab-review-clear")
        self.clear.on_click(self._on_clear)
        self.comment = W.Textarea(placeholder="Comment (optional)", layout=W.Layout(width="100%", height="70px"))
        self.comment.add_class("medlab-review-comment")
        self.earlier_label = _html("", "medlab-review-earlier")

        self.prev_button = W.Button(description="◀ Previous", layout=W.Layout(width="105px"))
        self.prev_button.add_class("medlab-review-prev")
        self.next_button = W.Button(description="Skip ▶", tooltip="go to the next map without saving",
                                    layout=W.Layout(width="90px"))
        self.next_button.add_class("medlab-review-next")
        self.save_button = W.Button(description="Save and next", button_style="primary", layout=W.Layout(width="130px"))
        self.save_button.add_class("medlab-review-save")
        self.prev_button.on_click(lambda _: self.go(self.index - 1))
        self.next_button.on_click(lambda _: self.go(self.index + 1))
        self.save_button.on_click(self._on_save)
        self.status_line = _html("", "medlab-review-status")

        def section(text: str) -> W.HTML:
            return _html(text, "medlab-review-section")

        self.form = W.VBox([
            self.item_label, self.prediction,
            W.HBox([self.show_map, self.opacity]),
            section("Verdict on this map"), self.verdict,
            section("Confidence (1 = a guess, 5 = certain)"), self.confidence,
            section("Where would you look? (optional)"), W.HBox([self.look, self.clear]), self.click_label,
            section("Comment"), self.comment, self.earlier_label,
            W.HBox([self.prev_button, self.next_button, self.save_button], layout=W.Layout(margin="10px 0 0 0")),
            self.status_line,
        ], layout=W.Layout(width="380px", min_width="380px"))
        self.form.add_class("medlab-review-form")

        self.done = W.VBox([])
        self.done.add_class("medlab-review-done")
        self.body = W.HBox([self.image_area, self.form])
        self.body.add_class("medlab-review-body")
        self.children = [W.HTML(_CSS), header, self.body]

    # ------------------------------------------------------------------ navigation
    @property
    def item(self) -> ReviewItem | None:
        """The map being rated (None on the final screen)."""
        return self.items[self.index] if 0 <= self.index < len(self.items) else None

    @_guarded
    def go(self, index: int) -> None:
        """Show item ``index`` of this reviewer's sequence (``len(items)``: the final screen)."""
        if self.error:
            return
        self.index = max(0, min(int(index), len(self.items)))
        self._update_progress()
        if self.item is None:
            self._show_done()
            return
        self.body.children = [self.image_area, self.form]
        item = self.item
        self.item_label.value = (f"<div>Case {item.case_number} of {item.n_cases} · {html.escape(item.shown_as)}"
                                 f" ({item.map_number} of {item.n_maps})</div>")
        self.prev_button.disabled = self.index == 0
        self._show_prediction(item)
        self._load_case(item.case_id)
        self._reset_form()
        problem = self._problem(item)
        self._set_form_enabled(problem is None)
        if problem:
            self.case_error.value = f"<b>This map cannot be shown.</b><br>{html.escape(problem)}"
            self.image_area.children = [self.case_error]
            self._status("Skip to the next map, and please tell the person who set up this review.", "info")
            return
        self.image_area.children = [self.viewer, self.map_key]
        if self.viewer.image is not self.loaded.scan:
            self.viewer.image = self.loaded.scan
        self._on_map_display()
        self.earlier = self.store.latest(self.reviewer, item.case_id, item.method)
        if self.earlier is not None:
            self._fill(self.earlier)
        self._status("", "info")

    def _problem(self, item: ReviewItem) -> str | None:
        if isinstance(self.loaded, str):
            return self.loaded
        return self.loaded.errors.get(item.method)

    def _load_case(self, case_id: str) -> None:
        current = self.loaded.case.case_id if isinstance(self.loaded, LoadedCase) else getattr(self, "_failed_case", None)
        if current == case_id:
            return
        self._failed_case = None
        try:
            self.loaded = self.study.load_case(case_id)
        except MedlabError as exc:
            self.loaded, self._failed_case = str(exc), case_id

    def _show_prediction(self, item: ReviewItem) -> None:
        case = self.study.case(item.case_id)
        if self.study.hide_prediction:
            text = "Model prediction: hidden (blinded review)"
        else:
            text = f"Model prediction: {case.prediction or 'not given'}"
            if case.truth:
                text += f" · Reference: {case.truth}"
        self.prediction.value = f"<div>{html.escape(text)}</div>"

    def _update_progress(self) -> None:
        rated = {(v.case_id, v.method) for v in self.store.current(self.reviewer)}
        n_rated = sum((i.case_id, i.method) in rated for i in self.items)
        self.progress_bar.value = n_rated
        where = (f"Case {self.item.case_number} of {self.item.n_cases} · {self.item.shown_as} "
                 f"({self.item.map_number} of {self.item.n_maps})") if self.item else "Finished"
        self.progress.value = f"<div>{html.escape(where)} · {n_rated} of {len(self.items)} rated</div>"
        self.n_rated = n_rated

    def _show_done(self) -> None:
        again = W.Button(description="Look over my verdicts", layout=W.Layout(width="200px"))
        again.add_class("medlab-review-again")
        again.on_click(lambda _: self.go(0))
        unrated = len(self.items) - self.n_rated
        text = (f"All {len(self.items)} maps are rated. Thank you: your verdicts are saved."
                if unrated == 0 else
                f"End of the study: {self.n_rated} of {len(self.items)} maps rated; {unrated} skipped. "
                "Go back to rate them.")
        self.done.children = [_html(text, "medlab-review-done-text"), self._own_summary(), again]
        self.body.children = [self.done]

    def _own_summary(self) -> W.HTML:
        """This reviewer's verdicts counted by verdict, under the names they saw (no method is
        named, so a blinded review stays blinded)."""
        current = [v for v in self.store.current(self.reviewer)
                   if any((i.case_id, i.method) == (v.case_id, v.method) for i in self.items)]
        rows = "".join(f"<tr><td>{html.escape(VERDICT_LABELS[k])}</td><td>{n}</td></tr>"
                       for k in VERDICTS if (n := sum(v.verdict == k for v in current)))
        body = (f"<div>Your verdicts:</div><table>{rows}</table>" if rows else "")
        box = W.HTML(body)
        box.add_class("medlab-review-summary")
        return box

    # ------------------------------------------------------------------ the form
    def _reset_form(self) -> None:
        self._syncing = True
        try:
            self.verdict.value = None
            self.confidence.value = None
            self.comment.value = ""
            self.look.value = False
            self.viewer.point_mode = "off"
            self.viewer.points = []
        finally:
            self._syncing = False
        self.click = None
        self.earlier = None
        self.earlier_label.value = ""
        self._show_click()

    def _fill(self, v: Verdict) -> None:
        self._syncing = True
        try:
            self.verdict.value = v.verdict
            self.confidence.value = v.confidence
            self.comment.value = v.comment
            self.viewer.points = [list(v.click)] if v.click else []
        finally:
            self._syncing = False
        self.click = v.click
        self._show_click()
        self.earlier_label.value = (f"<div>You rated this map on {html.escape(_when(v.recorded_at))} (version {v.version}). "
                                    "Saving records a new version; the earlier one is kept.</div>")

    def _set_form_enabled(self, enabled: bool) -> None:
        for w in (self.verdict, self.confidence, self.comment, self.look, self.clear, self.save_button,
                  self.show_map, self.opacity):
            w.disabled = not enabled

    def _show_click(self) -> None:
        if self.click is None:
            self.click_label.value = "<div>No mark</div>" if not self.look.value else "<div>Click on the image…</div>"
        else:
            x, y, z = self.click
            self.click_label.value = f"<div>Marked at ({x:.1f}, {y:.1f}, {z:.1f}) mm</div>"

    @_guarded
    def _on_map_display(self, change=None) -> None:
        item = self.item
        if item is None or not isinstance(self.loaded, LoadedCase) or item.method not in self.loaded.maps:
            return
        if self.show_map.value:
            saliency = self.loaded.maps[item.method]
            lo, hi = float(saliency.array.min()), float(saliency.array.max())
            # hide the faint tail of the map (below a fifth of its range), as saliency displays do
            self.viewer.set_heatmap(saliency, cmap=MAP_CMAP, opacity=self.opacity.value,
                                    threshold=lo + MAP_FLOOR * (hi - lo))
            self.map_key.value = map_key_html(saliency)
        else:
            self.viewer.set_heatmap(None)
            self.map_key.value = ""

    @_guarded
    def _on_look(self, change) -> None:
        if self._syncing:
            return
        self.viewer.point_mode = "edit" if change["new"] else "off"
        self._show_click()

    @_guarded
    def _on_point_mode(self, change) -> None:
        if not self._syncing:
            self._syncing = True
            try:
                self.look.value = change["new"] == "edit"
            finally:
                self._syncing = False

    @_guarded
    def _on_points(self, change) -> None:
        if self._syncing:
            return
        points = change["new"]
        if len(points) > 1:  # one mark per map: the latest click wins
            self._syncing = True
            try:
                self.viewer.points = [points[-1]]
            finally:
                self._syncing = False
        self.click = tuple(float(v) for v in points[-1]) if points else None
        if points:
            self.look.value = False  # one click marks; press again to move it
        self._show_click()

    @_guarded
    def _on_clear(self, _=None) -> None:
        self.viewer.points = []

    @_guarded
    def _on_save(self, _=None) -> None:
        item = self.item
        if item is None:
            return
        if self.verdict.value is None:
            self._status("Choose a verdict before saving.", "error")
            return
        if self.confidence.value is None:
            self._status("Choose a confidence (1 to 5) before saving.", "error")
            return
        try:
            stored = self.store.record(
                self.reviewer, item.case_id, item.method, verdict=self.verdict.value,
                confidence=int(self.confidence.value), comment=self.comment.value.strip(), click=self.click,
                peak=self.loaded.peaks.get(item.method),   # None for an empty map (it has no peak)
                shown_as=item.shown_as,
                prediction_shown=not self.study.hide_prediction,
                supersedes=self.earlier.version if self.earlier else None)
        except VerdictConflict as exc:
            self.go(self.index)  # show what is stored now
            self._status(f"Not saved: {exc}", "error")
            return
        saved = (f"Saved: case {item.case_number}, {item.shown_as} (version {stored.version}, "
                 f"{_when(stored.recorded_at)}).")
        self.go(self._next_unrated())
        self._status(saved, "ok")

    def _next_unrated(self) -> int:
        """The first unrated map after this one, else the end (maps skipped earlier, e.g. one
        that cannot be shown, are listed on the final screen rather than coming back)."""
        rated = {(v.case_id, v.method) for v in self.store.current(self.reviewer)}
        later = range(self.index + 1, len(self.items))
        return next((i for i in later if (self.items[i].case_id, self.items[i].method) not in rated), len(self.items))

    def _status(self, message: str, kind: str) -> None:
        if not hasattr(self, "status_line"):
            self._fatal(message)
            return
        for k in ("ok", "error", "info"):
            self.status_line.remove_class(f"medlab-review-status-{k}")
        self.status_line.add_class(f"medlab-review-status-{kind}")
        self.status_line.value = f"<div>{html.escape(message)}</div>"


def review_app(environ=None, **kwargs) -> ReviewApp:
    """The review app configured by environment variables (what ``medlab review`` sets):
    ``MEDLAB_REVIEW_STUDY`` (the study file), ``MEDLAB_REVIEW_REVIEWER`` and, optionally,
    ``MEDLAB_REVIEW_DATABASE``.

    Examples
    --------
    >>> review_app({"MEDLAB_REVIEW_STUDY": "pilot/study.json", "MEDLAB_REVIEW_REVIEWER": "Dr Grey"})  # doctest: +SKIP
    """
    env = os.environ if environ is None else environ
    return ReviewApp(env.get(ENV_STUDY), env.get(ENV_REVIEWER), database=env.get(ENV_DATABASE) or None, **kwargs)


__all__ = ["ReviewApp", "map_key_html", "review_app"]
