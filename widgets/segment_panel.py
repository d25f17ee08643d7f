"""The segment widget's stage panel: a label-map input (post-processing, editing) shown over the
scan it belongs to, and clicks that are a step of the work (too few seeds is a note, not an error)."""

from __future__ import annotations

import html

from medlab.errors import ParameterError
from medlab.image import Image
from medlab.render import extract_slice, slice_count
from medlab.stage import ImageInput, StageSpec

from .panel import StagePanel, _middle_slice, _slab

#: Colour (RGB) and marker of the point sets of the editing roles (the viewer's own table has
#: none for them): a white brush, red crosses on pieces to remove.
EDIT_ROLES = {"paint": ((240, 240, 240), "circle", "brush"), "remove": ((230, 50, 50), "cross", "remove")}


def _unnumbered(image: Image | None) -> Image | None:
    """``image`` without the slice number a cut records (``metadata["slice_index"]``), which the
    viewer shows as the pane's caption; the plane stays (its edge letters)."""
    if image is None or "slice_index" not in image.metadata:
        return image
    metadata = {k: v for k, v in image.metadata.items() if k != "slice_index"}
    return image.with_array(image.array, metadata=metadata)


def _is_label_input(spec: StageSpec, name: str | None) -> bool:
    inp = spec.inputs.get(name) if name else None
    return isinstance(inp, ImageInput) and tuple(inp.kinds) == ("label",)


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
        if self.after is not None and self.after.image is not None and getattr(self.after, "_labels_info", None):
            self.after.set_labels(None)       # no stale region once its seeds are gone (or another method's)
        self.preview = None
        return 0

    def _preview_source(self):
        shown, inputs, cut = self._slice_source()
        if not self._flat_scan():
            return shown, inputs, cut
        # a picture with one slice (a radiograph, one DICOM slice): the preview pane names no
        # slice ("axial 1" beside a 2D picture reads as if there were others)
        primary = self.spec.primary
        if inputs.get(primary) is shown:
            inputs[primary] = _unnumbered(shown)
        shown = _unnumbered(shown)
        self._scan_cut = _unnumbered(self._scan_cut)
        return shown, inputs, lambda out: _unnumbered(out if cut is None else cut(out))

    def _flat_scan(self) -> bool:
        """Whether the left viewer shows a picture with a single slice in its plane (2D, or a
        volume one slice thick there)."""
        v = self.viewer
        image = getattr(v, "image", None)
        if not isinstance(image, Image):
            return False
        return image.ndim == 2 or slice_count(image, v.plane) == 1

    def _slice_source(self):
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
