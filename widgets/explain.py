"""The explain widget: the workbench configured for explanations. A model and a scan go in; pick
a method, Apply, and its map appears over the scan; apply a second method and the two sit side
by side in linked viewers; then ask whether to trust them (sanity check, faithfulness,
localisation) and hand them on (NIfTI and CSV export, or a clinician review study).

What it adds to :class:`~medlab.widgets.workbench.Workbench` (and only that):

* **Pickers** for the method (the explanation stages that apply to this model: CAM methods need
  a convolutional layer, attention rollout a MONAI ViT), the **layer** (``"auto"``, named with the
  layer it resolves to, or any name from :func:`medlab.explain.candidate_layers`), the
  **target** (the predicted class, with its probability, or any class by name) and, for
  SmoothGrad, the **smoothing** (noise level and number of noisy samples, as declared by the
  stage). Region points and radius are shown only for segmentation networks.
* **The heat map over the scan** (the newest map, *A*, on the left) with **opacity** and
  **threshold** (a fraction of the map's largest value: weaker evidence is not drawn) and a
  **saliency legend**: a colour bar with the map's value range and the threshold on it, and the
  recorded method, target, layer, sign rule and normalisation (nothing is flipped or rescaled for
  display). The known finding (``mask``) is outlined.
* **Two methods side by side**: the map before the newest (*B*) is shown on the right, in a
  viewer linked by position (mm) and window/level; either side can show any map of the session.
* **Run sanity check**: cascading model-parameter randomisation (Adebayo et al. 2018) of the map
  on the left, with the exact parameters it was computed with: the original and the fully
  randomised maps in two more linked viewers, one thumbnail per cascade step, the Spearman / SSIM
  / HOG similarity per step, and a red **FLAGGED** banner when the map barely changes. With
  ``random_label_model=`` the label-randomisation test runs too.
* **Faithfulness**: deletion and insertion curves (the target logit, the default score, against the share of
  voxels removed or restored in the map's order, with a random order as the reference) and
  their areas, for each shown map; with localisation (energy in the mask, pointing game, IoU)
  they fill one **numbers** table, A beside B.
* **Hand-off**: every map as NIfTI on the scan's grid plus one CSV of every number
  (:meth:`ExplainWidget.export`), or the shown maps added as one case of a **review study**
  (:meth:`ExplainWidget.add_to_review`) that clinicians open with ``medlab review STUDY.json
  --reviewer NAME``.

Long work (Apply, sanity check, faithfulness) runs in a background thread with a progress bar and
Cancel; errors land in a status line, never in the void.

Examples
--------
>>> from medlab.data import classification_set
>>> from medlab.explain import tumour_classifier
>>> from medlab.widgets import ExplainWidget
>>> image, label, tumour = classification_set(n=2, seed=1)[0]                 # doctest: +SKIP
>>> w = ExplainWidget(image, tumour_classifier(), tumour); w                   # doctest: +SKIP
>>> w.apply(wait=True)                              # Grad-CAM, shown on the left  # doctest: +SKIP
>>> w.select("integrated_gradients"); w.apply(wait=True)   # IG left, Grad-CAM right  # doctest: +SKIP
>>> w.run_sanity_check(wait=True).verdict()                                    # doctest: +SKIP
>>> w.run_faithfulness(wait=True); w.numbers_table().to_pandas()               # doctest: +SKIP
>>> w.export("explain_out"); w.add_to_review("review_study")                   # doctest: +SKIP

CSS classes (besides those of the workbench and the panel)
-----------------------------------------------------------
``medlab-explain``                  the whole widget
``medlab-explain-hint``             what the model predicts and what to do now
``medlab-explain-left``, ``medlab-explain-right``   the map pickers above the viewers (A, B)
``medlab-explain-opacity``, ``medlab-explain-threshold``   heat-map sliders
``medlab-explain-legend``           a saliency legend (one per viewer; ``data-min``, ``data-max``,
                                    ``data-threshold``, ``data-sign``, ``data-normalisation``)
``medlab-explain-target``           the target picker (inside the panel)
``medlab-explain-sanity``           "Run sanity check"; ``medlab-explain-faithfulness``: "Faithfulness"
``medlab-explain-trust-cancel``, ``medlab-explain-trust-progress``, ``medlab-explain-trust-status``
``medlab-explain-sanity-box``       the sanity result: ``medlab-explain-sanity-verdict``
                                    (``data-flagged="true|false"``), ``medlab-explain-sanity-original``
                                    and ``medlab-explain-sanity-randomised`` (viewers),
                                    ``medlab-explain-sanity-strip`` (thumbnails), ``medlab-explain-sanity-table``
``medlab-explain-faithfulness-box`` curves and areas
``medlab-explain-numbers``          the numbers table (A beside B)
``medlab-explain-export-path``, ``medlab-explain-export-overwrite``, ``medlab-explain-export``
``medlab-explain-review-path``, ``medlab-explain-review-case``, ``medlab-explain-review``
``medlab-explain-handoff-status``   what was written, and the ``medlab review`` command
"""

from __future__ import annotations

import base64
import html
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from medlab import render
from medlab.errors import Cancelled, ImageError, MedlabError, ParameterError, WriteError
from medlab.image import Image, as_image
from medlab.outputs import Table
from medlab.stage import StageSpec, get_stage, progress_to

from .outputs import CurvePlot, table_html
from .panel import StagePanel
from .viewer import link
from .workbench import Workbench

__all__ = ["ExplainWidget", "ModelInfo", "explain_methods", "legend_html", "model_info", "numbers_rows"]

METHODS = ("grad_cam", "grad_cam_pp", "guided_grad_cam", "integrated_gradients", "smoothgrad", "occlusion",
           "attention_rollout")
"""The explanation methods, in the order the method picker lists them."""
_NEEDS_LAYER = ("grad_cam", "grad_cam_pp", "guided_grad_cam")
_NEEDS_ATTENTION = ("attention_rollout",)
_DESC = {"description_width": "initial"}
_SIMILARITY_NAMES = {"spearman": "Spearman", "spearman_abs": "Spearman of |maps|", "ssim": "SSIM", "hog": "HOG"}
"""The sanity check's similarity scores, as the numbers table names them."""
_METHOD_QUANTITIES = frozenset({"baseline"})
"""Quantities of a method's own numbers that the faithfulness numbers also name."""


def _column() -> widgets.Layout:
    """A column sharing a row's width with its neighbour: side by side, never wrapped below it, each
    viewer's toolbar wraps instead (a new Layout each: hiding one column hides only that one)."""
    return widgets.Layout(flex="0 1 540px", min_width="280px")


# ---------------------------------------------------------------------------- the model
@dataclass
class ModelInfo:
    """What the widget needs to know about a model on one scan (one forward pass).

    Attributes
    ----------
    labels : dict
        ``{class index: name}`` recorded in a checkpoint (empty for a bare module).
    n_classes : int or None
        Output channels (None when the model could not run on the scan: ``error`` says why).
    dense : bool
        A segmentation network (output ``[B, K, *spatial]``).
    predicted : int or None
        The predicted class of a classifier (0 for a one-logit model).
    probability : float or None
        Its probability (sigmoid of a single logit, softmax otherwise).
    auto_layer : str or None
        The layer ``layer="auto"`` resolves to.
    layers : list of str
        :func:`medlab.explain.candidate_layers`.
    attention : bool
        The model has transformer blocks that keep their attention (attention rollout applies).
    error : str or None
    """

    labels: dict = field(default_factory=dict)
    n_classes: int | None = None
    dense: bool = False
    predicted: int | None = None
    probability: float | None = None
    auto_layer: str | None = None
    layers: list = field(default_factory=list)
    attention: bool = False
    error: str | None = None

    def class_name(self, index: int) -> str:
        return self.labels.get(int(index), f"class {int(index)}")

    def prediction(self) -> str:
        """The prediction in words, e.g. ``"tumour (p = 0.99)"``; empty when unknown."""
        if self.predicted is None or self.probability is None:
            return ""
        name = self.class_name(self.predicted)
        if self.n_classes == 1 and self.probability < 0.5:  # one logit: its sign is the call
            return f"not {name} (p({name}) = {self.probability:.2f})"
        return f"{name} (p = {self.probability:.2f})"


def model_info(model, image: Image) -> ModelInfo:
    """Classes, prediction, layers and applicable methods of ``model`` on ``image``.

    Runs the model once on the scan as it sees it (through the checkpoint's recorded
    preprocessing). A model that cannot take the scan is not an error here: ``error`` says why,
    and the stages say it again when applied.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> from medlab.explain.network import build_classifier, classifier_config
    >>> net = build_classifier(classifier_config(spatial_dims=2, channels=[4, 8], out_channels=3)).eval()
    >>> info = model_info(net, Image(np.zeros((16, 16), np.float32)))
    >>> info.n_classes, info.dense, info.auto_layer
    (3, False, 'features.block2.1')
    """
    from medlab.explain import candidate_layers, resolve_model
    from medlab.explain._common import check_model_fits
    from medlab.explain.geometry import network_input
    from medlab.explain.target import run_model

    network = resolve_model(model)
    info = ModelInfo(labels=dict(network.labels), layers=candidate_layers(network.module),
                     attention=_has_attention(network.module))
    try:
        check_model_fits(network, image, "explain")   # the stages' own check: the clearest message
        x = network_input(image, network.input_record, source=network.source).tensor
        out, info.auto_layer = run_model(network, x, "the scan")
    except MedlabError as exc:
        info.error = str(exc)
        return info
    info.n_classes, info.dense = int(out.shape[1]), out.ndim > 2
    if not info.dense:
        prob = out.sigmoid() if info.n_classes == 1 else out.softmax(1)
        info.predicted = 0 if info.n_classes == 1 else int(out[0].argmax())
        info.probability = float(prob[0, info.predicted])
    return info


def _has_attention(module) -> bool:
    # the test medlab.explain.attention applies: blocks whose attention module can keep its matrix
    return any(hasattr(m, "attn") and hasattr(m.attn, "save_attn") for m in module.modules())


def explain_methods(info: ModelInfo) -> list[StageSpec]:
    """The explanation stages that apply to a model, in the picker's order.

    CAM methods need a convolutional layer with a spatial output; attention rollout needs
    transformer blocks; gradient methods and occlusion apply to every model.

    Examples
    --------
    >>> [s.name for s in explain_methods(ModelInfo(layers=["features"], auto_layer="features"))]
    ['grad_cam', 'grad_cam_pp', 'guided_grad_cam', 'integrated_gradients', 'smoothgrad', 'occlusion']
    """
    import medlab.explain  # noqa: F401 - registers the stages

    has_layer = bool(info.layers) and (info.auto_layer is not None or info.error is not None)
    out = []
    for name in METHODS:
        if name in _NEEDS_LAYER and not has_layer or name in _NEEDS_ATTENTION and not info.attention:
            continue
        out.append(get_stage(name))
    return out


# ---------------------------------------------------------------------------- pictures and tables
def _finite_range(saliency: Image) -> tuple[float, float]:
    arr = np.asarray(saliency.array, np.float64)
    finite = arr[np.isfinite(arr)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def threshold_value(saliency: Image, fraction: float) -> float:
    """The heat-map threshold for a fraction of the map's largest value (0 when it has none).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> threshold_value(Image(np.array([[-1.0, 0.5], [2.0, 0.0]])), 0.25)
    0.5
    """
    return float(fraction) * max(_finite_range(saliency)[1], 0.0)


def legend_html(saliency: Image | None, *, cmap: str = "inferno", threshold: float = 0.2, name: str = "") -> str:
    """A saliency legend: colour bar with the map's value range and the threshold marked, and
    what the map is (method, target, layer) with its recorded sign rule and normalisation.

    Parameters
    ----------
    saliency : Image or None
        A map from a :mod:`medlab.explain` stage (its ``metadata["saliency"]`` is read).
    cmap : str
        The colour map the viewer uses.
    threshold : float
        Fraction of the map's largest value below which nothing is drawn.
    name : str
        What the map is called here (e.g. ``"A: step1.saliency"``).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> m = Image(np.linspace(0, 1, 16).reshape(4, 4), metadata={"saliency": {"method": "Grad-CAM",
    ...     "sign": "positive", "sign_rule": "max(map, 0)", "rule": "map / max|map|", "normalisation": "max"}})
    >>> "Grad-CAM" in legend_html(m) and "data-max='1'" in legend_html(m)
    True
    """
    if saliency is None:
        return ""
    info = saliency.metadata.get("saliency", {})
    vmin, vmax = _finite_range(saliency)
    lut = render.colormap_lut(cmap)
    stops = ", ".join(f"rgb({lut[i][0]},{lut[i][1]},{lut[i][2]}) {100 * i / 255:.0f}%"
                      for i in np.linspace(0, 255, 11).round().astype(int))
    thr = threshold_value(saliency, threshold)
    span = vmax - vmin
    tiny = 1e-6 * max(abs(vmin), abs(vmax))    # 2.5e-10 beside 1 is a rounding zero: say 0

    def num(v: float) -> str:
        return "0" if abs(v) <= tiny else f"{v:.3g}"

    if vmax <= 0:
        drawn = "the map has no positive value: nothing is drawn"
        marker = ""
    else:
        pos = 100 * (thr - vmin) / span if span > 0 else 0.0
        marker = (f"<div style='position:absolute;left:calc({pos:.1f}% - 1px);top:-4px;bottom:-4px;width:2px;"
                  "background:#fff;outline:1px solid #000' title='threshold'></div>")
        drawn = (f"coloured where the value is above {thr:.3g} ({100 * threshold:.0f} % of the largest); "
                 "below it, the scan alone")
        if vmin < 0:
            drawn += "; negative values (evidence against the target) are not drawn"
    what = " · ".join(html.escape(str(x)) for x in (
        info.get("method"), info.get("target"), f"layer {info['layer']}" if info.get("layer") else None) if x)
    divisor = info.get("divided_by")
    norm = html.escape(str(info.get("rule") or info.get("normalisation") or "not recorded"))
    if isinstance(divisor, (int, float)) and info.get("normalisation") != "none":
        norm += f" (divided by {divisor:.3g})"
    sign = html.escape(f"{info.get('sign', 'not recorded')} ({info.get('sign_rule', '?')})")
    units = html.escape(str(saliency.metadata.get("units") or "a.u."))
    title = f"<b>{html.escape(name)}</b> " if name else ""
    return (f"<div class='medlab-explain-legend-body' data-min='{vmin:.6g}' data-max='{vmax:.6g}' "
            f"data-threshold='{thr:.6g}' data-sign='{html.escape(str(info.get('sign', '')))}' "
            f"data-normalisation='{html.escape(str(info.get('normalisation', '')))}' "
            f"style='font-size:12px;line-height:1.45'>"
            f"<div style='display:flex;align-items:center;gap:6px'><span>{num(vmin)}</span>"
            f"<div style='position:relative;flex:0 0 160px;height:12px;border:1px solid #888;"
            f"background:linear-gradient(to right, {stops})'>{marker}</div>"
            f"<span>{num(vmax)} {units}</span></div>"
            f"<div>{title}{what}</div><div>{html.escape(drawn)}</div>"
            f"<div>sign: {sign} · normalised: {norm}</div></div>")


def numbers_rows(tables: Mapping[str, Table | None]) -> list[dict[str, Any]]:
    """One row per quantity, one column per map: the numbers of several maps side by side.

    Parameters
    ----------
    tables : mapping of str to Table
        ``{column name: quantity/value table}``; quantities keep the order they first appear in.

    Examples
    --------
    >>> a = Table([{"quantity": "energy in mask", "value": 0.7}])
    >>> b = Table([{"quantity": "energy in mask", "value": 0.4}, {"quantity": "layer", "value": "x"}])
    >>> numbers_rows({"A": a, "B": b})
    [{'quantity': 'energy in mask', 'A': 0.7, 'B': 0.4}, {'quantity': 'layer', 'A': '', 'B': 'x'}]
    """
    order: dict[str, None] = {}
    values: dict[str, dict[str, Any]] = {}
    for column, table in tables.items():
        seen: dict[str, int] = {}
        for row in (table.rows if table is not None else ()):
            q = str(row.get("quantity"))
            seen[q] = seen.get(q, 0) + 1
            key = q if seen[q] == 1 else f"{q} ({seen[q]})"   # e.g. two 'note' rows
            order.setdefault(key, None)
            values.setdefault(column, {})[key] = row.get("value")
    return [{"quantity": q, **{c: values.get(c, {}).get(q, "") for c in tables}} for q in order]


def _thumbnail(scan: Image, saliency: Image, mask: Image | None, at, threshold: float, size: int = 150) -> str:
    """An axial slice through ``at`` with the map over it, as an <img> (the sanity strip)."""
    from medlab.report import slice_figure

    pixels = slice_figure(scan, heat=saliency, labels=mask, at=at, planes=("axial",), size=size,
                          heat_threshold=threshold)
    data = base64.b64encode(render.to_png(pixels)).decode()
    return f"<img src='data:image/png;base64,{data}' width='{pixels.shape[1]}' height='{pixels.shape[0]}'>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "map"


# ---------------------------------------------------------------------------- the panel
class _ExplainPanel(StagePanel):
    """A stage panel for an explanation method: the layer list of the model (with what ``auto``
    is), a target picker by class name, region controls only for segmentation networks, and
    outputs shown as heat maps over the scan rather than as grey pictures."""

    def __init__(self, stage, viewer=None, *, owner: ExplainWidget, **kwargs):
        self._owner = owner
        self._target_box: widgets.Dropdown | None = None
        super().__init__(stage, viewer, **kwargs)
        self.difference.layout.display = "none"      # a difference to the scan means nothing for a map
        self._insert_target_picker()
        self.update_model(owner.info)

    def _row(self, name: str) -> tuple[widgets.Box, int] | None:
        """The box holding the control row of parameter ``name``, and the row's index in it."""
        widget = self.controls[name].widget
        for child in self.children:
            if isinstance(child, widgets.VBox):
                for i, row in enumerate(child.children):
                    if row is widget or widget in getattr(row, "children", ()):
                        return child, i
        return None

    def _insert_target_picker(self) -> None:
        if "target_class" not in self.controls:
            return
        where = self._row("target_class")
        self._target_box = widgets.Dropdown(description="target", style=_DESC, layout=widgets.Layout(width="40em"),
                                            tooltip="the class whose score is explained")
        self._target_box.add_class("medlab-explain-target")
        self._target_box.observe(self._target_chosen, "value")
        self.controls["target_class"].widget.observe(self._target_shown, "value")
        if where is not None:
            box, i = where
            hint = widgets.HTML("<span>the class whose score the map explains</span>")
            box.children = (*box.children[:i], widgets.HBox([self._target_box, hint],
                                                            layout=widgets.Layout(align_items="center")),
                            *box.children[i + 1:])

    def update_model(self, info: ModelInfo, *, rebind: bool = False) -> None:
        """Layer list, target classes and region rows for the model now chosen (``rebind``: the
        viewer's point sets follow too, for a panel in use)."""
        if "layer" in self.controls:
            w = self.controls["layer"].widget
            current = w.value
            auto = f"auto (last convolutional block: {info.auto_layer})" if info.auto_layer else "auto"
            options = [(auto, "auto"), *[(n, n) for n in info.layers]]
            w.layout.width = "34em"     # 'auto (last convolutional block: features.block3.0)' in full
            w.options = options
            w.value = current if current in [v for _, v in options] else "auto"
        if self._target_box is not None:
            options = self._target_options(info)
            self._target_box.options = options
            value = self.controls["target_class"].value
            self._target_box.value = value if value in [v for _, v in options] else -1
            self._target_box.disabled = len(options) == 1
        for name in ("region", "region_radius"):
            where = self._row(name) if name in self.controls else None
            if where is not None:
                box, i = where
                box.children[i].layout.display = "none" if self._classifier else ""
        if rebind and self._active:   # a segmentation network gets its region set, a classifier none
            self.detach()
            self.attach()

    @staticmethod
    def _target_options(info: ModelInfo) -> list[tuple[str, int]]:
        if info.n_classes == 1:   # its logit is the evidence for the class, whatever it predicts
            said = info.prediction()
            return [(f"evidence for {info.class_name(0)}, the model's only output"
                     + (f" — it predicts {said}" if said else ""), -1)]   # in full in 40em
        if info.dense:
            first = "the class the network predicts most in the region"
        else:
            said = info.prediction()
            first = f"predicted class: {said}" if said else "the predicted class"
        n = info.n_classes if info.n_classes is not None else max(info.labels, default=1) + 1
        return [(first, -1), *[(f"{k}: {info.class_name(k)}", k) for k in range(n)]]

    def _target_chosen(self, change) -> None:
        if self.controls["target_class"].value != change["new"]:
            self.controls["target_class"].value = change["new"]

    def _target_shown(self, change) -> None:
        box = self._target_box
        if box is not None and box.value != change["new"] and change["new"] in [v for _, v in box.options]:
            box.value = change["new"]

    @property
    def _classifier(self) -> bool:
        """Region points mean nothing for a classifier: its panel shows none, in the viewer either."""
        info = self._owner.info
        return not info.dense and info.n_classes is not None

    def _bind_viewer(self) -> None:
        super()._bind_viewer()
        v = self.viewer
        if self._classifier and v is not None and v.has_trait("point_sets"):
            for n in self.spec.point_params():
                if self._point_set_name(n) != "points":
                    v.remove_point_set(n)

    def _on_point_sets(self, change) -> None:
        if not self._classifier:
            super()._on_point_sets(change)

    def set_input(self, name: str, value) -> None:
        super().set_input(name, value)
        if name == "model" and value is not None:
            self._owner._model_chosen(value)

    def _show_output(self, name: str, image: Image) -> None:
        key = self._owner._key_of(image)
        if key is None or key not in self._owner.maps:
            return super()._show_output(name, image)
        self._owner.show_maps(left=key)
        self._set_status(f"{key} shown over the scan (A)", "info")


# ---------------------------------------------------------------------------- the widget
class ExplainWidget(Workbench):
    """The :class:`~medlab.widgets.workbench.Workbench` with the explanation methods, heat maps
    with a legend, two maps side by side, sanity check, faithfulness, export and review hand-off.

    Parameters
    ----------
    image : Image
        The scan to explain (never modified); its own grid is where every map lands.
    model : Checkpoint or torch.nn.Module
        A classifier (``[B, K]`` logits) or a segmentation network.
    mask : Image, optional
        A label map of the known finding: outlined over the maps, and localisation numbers
        (energy in the mask, pointing game, IoU) for every map; for a segmentation network also
        the region whose score is explained.
    random_label_model : Checkpoint or torch.nn.Module, optional
        The same network trained on shuffled labels: the sanity check then also runs the
        label-randomisation test.
    stage : str
        The method selected first.
    opacity, threshold : float
        Heat-map opacity, and the share of each map's largest value below which it is not drawn.
    cmap : str
        Matplotlib colour map of the heat maps.
    height : int
        Height of each main viewer in pixels.
    debounce : float
        See :class:`~medlab.widgets.workbench.Workbench`.

    Attributes
    ----------
    info : ModelInfo
        Classes, prediction and layers of the chosen model on the scan.
    maps : dict
        Every saliency map of the session by key (``"step1.saliency"``, ...), oldest first.
    sanity : dict
        :class:`medlab.explain.sanity.SanityResult` by map key (and ``"<key> (labels)"`` for the
        label-randomisation test).
    faithfulness : dict
        ``(curves, numbers)`` of :func:`medlab.explain.deletion_insertion` by map key.

    Examples
    --------
    >>> w = ExplainWidget(image, model, tumour)            # doctest: +SKIP
    >>> w.apply(wait=True); w.select("occlusion"); w.apply(wait=True)   # doctest: +SKIP
    >>> w.set_display(opacity=0.7, threshold=0.3)         # doctest: +SKIP
    >>> result = w.run_sanity_check(wait=True); result.flagged          # doctest: +SKIP
    """

    def __init__(self, image: Image, model, mask: Image | None = None, *, random_label_model=None,
                 stage: str | None = "grad_cam", opacity: float = 0.5, threshold: float = 0.2,
                 cmap: str = "inferno", height: int = 360, debounce: float = 0.15):
        image = as_image(image, "image")
        if image.is_label or image.rgb:
            raise ImageError("ExplainWidget explains a model's output on an intensity scan; got a "
                             f"{'colour' if image.rgb else 'label'} image (pass the scan, and a label map as mask=)")
        mask = _check_mask(mask, image)
        for name, value in (("opacity", opacity), ("threshold", threshold)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                raise ParameterError(f"{name} must be a number between 0 and 1; got {value!r}")
        render.colormap_lut(cmap)   # an unknown colour map is refused before anything is built
        self._ready = False
        self.info = model_info(model, image)   # before the workbench builds its first panel
        if random_label_model is not None:
            from medlab.explain import resolve_model

            resolve_model(random_label_model, "random_label_model")
        specs = explain_methods(self.info)
        names = [s.name for s in specs]
        start = {"image": image, "model": model, **({"mask": mask} if mask is not None else {})}
        super().__init__(start, stages=specs, stage=stage if stage in names else None, height=height,
                         debounce=debounce)
        self.add_class("medlab-explain")
        self.random_label_model = random_label_model
        self.cmap = cmap
        self.sanity: dict[str, Any] = {}
        self.faithfulness: dict[str, tuple] = {}
        self.error: BaseException | None = None
        self._trust_thread: threading.Thread | None = None
        self._trust_cancel = threading.Event()
        self._shown: dict[int, tuple] = {}
        self._unlinks: list[Callable[[], None]] = []
        self._sanity_viewers: tuple | None = None
        self._sanity_legends: tuple = ()
        self._sanity_maps: tuple = ()
        self._quiet = False
        if callable(self._unlink):      # the workbench links window/level only; here position too
            self._unlink()
        self._unlink = link(self.before, self.after)
        self._build_explain(opacity, threshold)
        self._ready = True
        self._refresh_maps()

    # -------------------------------------------------------------- construction
    def _build_explain(self, opacity: float, threshold: float) -> None:
        self.picker.description = "method"
        self.hint = widgets.HTML("")
        self.hint.add_class("medlab-explain-hint")
        self.left_picker = widgets.Dropdown(options=[("(no map yet)", "")], value="", description="A (left)",
                                            style=_DESC, layout=widgets.Layout(width="24em"))
        self.right_picker = widgets.Dropdown(options=[("(none)", "")], value="", description="B (right)",
                                             style=_DESC, layout=widgets.Layout(width="24em"))
        self.opacity = widgets.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05, description="opacity",
                                           readout_format=".2f", style=_DESC, layout=widgets.Layout(width="16em"))
        self.threshold = widgets.FloatSlider(value=threshold, min=0.0, max=0.95, step=0.05, description="threshold",
                                             readout_format=".2f", style=_DESC, layout=widgets.Layout(width="16em"),
                                             tooltip="share of each map's largest value below which it is not drawn")
        for w, cls in ((self.left_picker, "medlab-explain-left"), (self.right_picker, "medlab-explain-right"),
                       (self.opacity, "medlab-explain-opacity"), (self.threshold, "medlab-explain-threshold")):
            w.add_class(cls)
        self.left_picker.observe(lambda _: self._guard(self._maps_chosen), "value")
        self.right_picker.observe(lambda _: self._guard(self._maps_chosen), "value")
        self.opacity.observe(lambda _: self._guard(self._restyle), "value")
        self.threshold.observe(lambda _: self._guard(self._restyle), "value")
        self.legend_left, self.legend_right = widgets.HTML(""), widgets.HTML("")
        for w in (self.legend_left, self.legend_right):
            w.add_class("medlab-explain-legend")
        # two columns share the width (the viewers' toolbars wrap rather than push B below A)
        self._left_column = widgets.VBox([self.before_caption, self.before, self.legend_left], layout=_column())
        self._right_column = widgets.VBox([self.after_caption, self.after, self.legend_right], layout=_column())
        viewers = widgets.HBox([self._left_column, self._right_column],
                               layout=widgets.Layout(flex_flow="row nowrap", align_items="flex-start"))
        display_bar = widgets.HBox([self.left_picker, self.right_picker, self.opacity, self.threshold],
                                   layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        trust = self._build_trust()
        self.numbers_html = widgets.HTML("")
        self.numbers_html.add_class("medlab-explain-numbers")
        handoff = self._build_handoff()
        kids = list(self.children)
        # the workbench's rows: pickers, inputs, viewers, panel, history title, history, recipe export, code
        viewers_at = next(i for i, c in enumerate(kids) if isinstance(c, widgets.HBox) and any(
            isinstance(g, widgets.VBox) and self.before in g.children for g in c.children))
        panel_at = kids.index(self._panel_box)
        self.children = [self.hint, *kids[:viewers_at], display_bar, viewers, *kids[viewers_at + 1: panel_at + 1],
                         trust, self.numbers_html, handoff, *kids[panel_at + 1:]]

    def _build_trust(self) -> widgets.Widget:
        self.sanity_button = widgets.Button(
            description="Run sanity check", icon="random", layout=widgets.Layout(width="auto"),
            tooltip="re-initialise the model's layers from the output back and recompute map A: "
                    "a map that barely changes does not explain what the model learned")
        self.faith_button = widgets.Button(
            description="Faithfulness", icon="line-chart", layout=widgets.Layout(width="auto"),
            tooltip="deletion and insertion curves of the shown maps: remove the voxels the map ranks "
                    "highest first and follow the target logit")
        self.trust_cancel = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                           layout=widgets.Layout(width="auto"))
        self.trust_progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                                    layout=widgets.Layout(width="12em", visibility="hidden"))
        self.trust_status = widgets.HTML("")
        self.sanity_box = widgets.VBox([])
        self.faith_box = widgets.VBox([])
        for w, cls in ((self.sanity_button, "medlab-explain-sanity"), (self.faith_button, "medlab-explain-faithfulness"),
                       (self.trust_cancel, "medlab-explain-trust-cancel"),
                       (self.trust_progress, "medlab-explain-trust-progress"),
                       (self.trust_status, "medlab-explain-trust-status"), (self.sanity_box, "medlab-explain-sanity-box"),
                       (self.faith_box, "medlab-explain-faithfulness-box")):
            w.add_class(cls)
        self.sanity_button.on_click(lambda _: self._guard(self.run_sanity_check, self.trust_status))
        self.faith_button.on_click(lambda _: self._guard(self.run_faithfulness, self.trust_status))
        self.trust_cancel.on_click(lambda _: self._trust_cancel.set())
        head = widgets.HTML("<b>Is the map trustworthy?</b> <span style='opacity:.8'>A map can look convincing and "
                            "mean nothing: check that it depends on the model, and that what it points at "
                            "matters to the model.</span>")
        return widgets.VBox([head, widgets.HBox([self.sanity_button, self.faith_button, self.trust_cancel,
                                                 self.trust_progress, self.trust_status],
                                                layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
                             self.sanity_box, self.faith_box])

    def _build_handoff(self) -> widgets.Widget:
        self.export_folder = widgets.Text(value="", placeholder="e.g. explain_out", description="folder",
                                          style=_DESC, layout=widgets.Layout(width="22em"))
        self.export_overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                                 layout=widgets.Layout(width="8em"))
        self.export_button = widgets.Button(description="Export maps and numbers", icon="download",
                                            layout=widgets.Layout(width="auto"),
                                            tooltip="every map as NIfTI on the scan's grid, every number in numbers.csv")
        self.review_folder = widgets.Text(value="", placeholder="e.g. review_study", description="study folder",
                                          style=_DESC, layout=widgets.Layout(width="22em"))
        self.review_case = widgets.Text(value="", placeholder="automatic (case-001 …)", description="case id",
                                        style=_DESC, layout=widgets.Layout(width="18em"))
        self.review_button = widgets.Button(description="Add to review study", icon="user-md",
                                            layout=widgets.Layout(width="auto"),
                                            tooltip="the scan and the shown maps become one case of a clinician review")
        self.handoff_status = widgets.HTML("")
        for w, cls in ((self.export_folder, "medlab-explain-export-path"),
                       (self.export_overwrite, "medlab-explain-export-overwrite"),
                       (self.export_button, "medlab-explain-export"), (self.review_folder, "medlab-explain-review-path"),
                       (self.review_case, "medlab-explain-review-case"), (self.review_button, "medlab-explain-review"),
                       (self.handoff_status, "medlab-explain-handoff-status")):
            w.add_class(cls)
        self.export_button.on_click(lambda _: self._guard(
            lambda: self.export(self.export_folder.value, overwrite=self.export_overwrite.value), self.handoff_status))
        self.review_button.on_click(lambda _: self._guard(
            lambda: self.add_to_review(self.review_folder.value, case_id=self.review_case.value.strip() or None),
            self.handoff_status))
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        return widgets.VBox([widgets.HTML("<b>Hand off</b>"),
                             widgets.HBox([self.export_folder, self.export_overwrite, self.export_button], layout=row),
                             widgets.HBox([self.review_folder, self.review_case, self.review_button], layout=row),
                             self.handoff_status])

    # -------------------------------------------------------------- stages and the model
    def select(self, name: str) -> StagePanel:
        """Show the panel of method ``name`` (see :meth:`Workbench.select`)."""
        if name in self.specs and name not in self._panels:
            if self.panel is not None:   # before the new panel adds its point sets to the shared viewer
                self.panel.detach()
            panel = _ExplainPanel(self.specs[name], self.before, after=self.after, debounce=self._debounce, owner=self)
            panel.on_apply(self._applied)
            panel.outputs_view.on_use = self._use_output
            self._panels[name] = panel
        panel = super().select(name)
        if getattr(self, "_ready", False):
            self._hint_refresh()
        return panel

    def _model_chosen(self, model) -> None:
        self.info = model_info(model, self.scan)
        for panel in self._panels.values():
            panel.update_model(self.info, rebind=True)
        self._hint_refresh()

    def _hint_refresh(self) -> None:
        said = self.info.prediction()
        model = f"The model predicts <b>{html.escape(said)}</b> on this scan. " if said else ""
        if self.info.error:
            model = f"<span style='color:#b00020'>{html.escape(self.info.error)}</span> "
        if self.info.error and not self.maps:
            todo = "Every method will refuse this model on this scan: choose another model or scan."
        elif not self.maps:
            todo = "Pick a method and press Apply: its map appears over the scan (A, left)."
        elif len(self.maps) == 1:
            todo = ("Apply a second method to compare: the newest map goes left (A), the one before it right (B), "
                    "in viewers that move together. Then check the map below.")
        else:
            todo = "Pick any two maps for A and B above the viewers; check them below; hand them off at the bottom."
        self.hint.value = f"<span style='opacity:.9'>{model}{html.escape(todo)}</span>"

    @property
    def scan(self) -> Image:
        """The scan being explained (the panel's image input)."""
        image = self.panel.inputs.get("image") if self.panel is not None else None
        return image if isinstance(image, Image) else self.image

    # -------------------------------------------------------------- maps
    @property
    def maps(self) -> dict[str, Image]:
        """Every saliency map of the session by key, oldest first."""
        return {k: v for k, v in self.session.items() if isinstance(v, Image) and "saliency" in v.metadata
                and "." in k}

    def _key_of(self, value) -> str | None:
        return next((k for k, v in self.session.items() if v is value), None)

    def _step_of(self, key: str):
        sid = key.split(".")[0]
        return next((s for s in self.recipe.steps if s.id == sid), None)

    def _inputs_of(self, key: str) -> dict[str, Any]:
        """The scan, model and mask a map was computed from (by the recipe's wiring)."""
        step = self._step_of(key)
        wiring = dict(step.inputs) if step is not None else {}
        return {n: self.session.get(src) for n, src in wiring.items()}

    def _label(self, key: str) -> str:
        info = self.maps[key].metadata.get("saliency", {})
        layer = f", {info['layer']}" if info.get("layer") else ""
        return f"{key} — {info.get('method', '?')}{layer}"

    def _refresh_maps(self, newest: str | None = None) -> None:
        """Map pickers from the session; a new map goes left and the left one moves right."""
        keys = list(self.maps)[::-1]
        left, right = self.left_picker.value, self.right_picker.value
        if newest is not None:
            left, right = newest, (left if left and left != newest else right)
        left = left if left in keys else (keys[0] if keys else "")
        right = right if right in keys and right != left else ""
        self._quiet = True
        try:
            self.left_picker.options = [(self._label(k), k) for k in keys] or [("(no map yet)", "")]
            self.right_picker.options = [("(none)", ""), *[(self._label(k), k) for k in keys]]
            self.left_picker.value, self.right_picker.value = left, right
        finally:
            self._quiet = False
        self._display()

    def show_maps(self, *, left: str | None = None, right: str | None = None) -> None:
        """Show map ``left`` (A) and ``right`` (B; ``""`` hides the right viewer) by session key."""
        for key, name in ((left, "left"), (right, "right")):
            if key and key not in self.maps:
                raise ParameterError(f"{name}: no map {key!r} in the session; maps: {list(self.maps)}")
        self._quiet = True
        try:
            if left is not None:
                self.left_picker.value = left
            if right is not None:
                self.right_picker.value = right if right != self.left_picker.value else ""
        finally:
            self._quiet = False
        self._display()

    def _maps_chosen(self) -> None:
        if not self._quiet:
            self._display()

    @property
    def left(self) -> Image | None:
        """Map A (left), or None."""
        return self.maps.get(self.left_picker.value)

    @property
    def right(self) -> Image | None:
        """Map B (right), or None."""
        return self.maps.get(self.right_picker.value)

    def set_display(self, *, opacity: float | None = None, threshold: float | None = None) -> None:
        """Heat-map opacity and threshold (a share of each map's largest value), both in [0, 1]."""
        for name, value, w in (("opacity", opacity, self.opacity), ("threshold", threshold, self.threshold)):
            if value is not None:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not w.min <= value <= w.max:
                    raise ParameterError(f"{name} must be between {w.min:g} and {w.max:g}; got {value!r}")
                w.value = float(value)

    def _display(self) -> None:
        if not self._ready:
            return
        for viewer, key, legend, tag in ((self.before, self.left_picker.value, self.legend_left, "A"),
                                         (self.after, self.right_picker.value, self.legend_right, "B")):
            saliency = self.maps.get(key)
            if saliency is None:
                if viewer is self.before:
                    self._put(viewer, self.scan, None, self._mask_for(None))
                legend.value = ""
                continue
            inputs = self._inputs_of(key)
            scan = inputs.get("image") if isinstance(inputs.get("image"), Image) else self.scan
            self._put(viewer, scan, saliency, self._mask_for(key))
            legend.value = legend_html(saliency, cmap=self.cmap, threshold=self.threshold.value, name=f"{tag}: {key}")
        self._show_after_pane()
        self._caption("maps")
        self._numbers_refresh()
        self._hint_refresh()

    def _mask_for(self, key: str | None) -> Image | None:
        mask = self._inputs_of(key).get("mask") if key else None
        if mask is None:
            mask = self.session.get("mask")
        return mask if isinstance(mask, Image) and mask.is_label else None

    def _put(self, viewer, scan: Image, saliency: Image | None, mask: Image | None) -> None:
        """Scan, heat map and mask outline in one viewer; only what changed is sent."""
        shown = self._shown.get(id(viewer), (None, None, None))
        if viewer.image is not scan:
            viewer.image = scan
            shown = (None, None, None)
        if shown[1] is not saliency or saliency is None and viewer._heat_info:
            viewer.set_heatmap(saliency, cmap=self.cmap, opacity=self.opacity.value,
                               threshold=threshold_value(saliency, self.threshold.value) if saliency is not None else 0.0)
        else:
            self._style(viewer, saliency)
        if shown[2] is not mask:
            viewer.set_labels(mask, outline=True)
        self._shown[id(viewer)] = (scan, saliency, mask)

    def _style(self, viewer, saliency: Image | None) -> None:
        """Opacity and threshold of a heat map already in the viewer, without sending it again.

        Hook wanted in the viewer: ``Viewer.set_heatmap_style(opacity=, threshold=)``; here its
        ``_heat_info`` (which the browser redraws from, and ``snapshot`` reads) gets the new values.
        """
        if saliency is None or not viewer._heat_info:
            return
        info = dict(viewer._heat_info)
        info.update(opacity=float(self.opacity.value), threshold=threshold_value(saliency, self.threshold.value))
        if info != viewer._heat_info:
            viewer._heat_info = info

    def _restyle(self) -> None:
        for viewer, legend, tag, picker in ((self.before, self.legend_left, "A", self.left_picker),
                                            (self.after, self.legend_right, "B", self.right_picker)):
            saliency = self.maps.get(picker.value)
            self._style(viewer, saliency)
            legend.value = legend_html(saliency, cmap=self.cmap, threshold=self.threshold.value,
                                       name=f"{tag}: {picker.value}") if saliency is not None else ""
        if self._sanity_viewers is not None:
            for viewer in self._sanity_viewers:
                self._style(viewer, self._shown.get(id(viewer), (None, None, None))[1])
            self._sanity_legends_refresh()

    def _sanity_legends_refresh(self) -> None:
        for legend, (saliency, name) in zip(self._sanity_legends, self._sanity_maps):
            legend.value = legend_html(saliency, cmap=self.cmap, threshold=self.threshold.value, name=name)

    # -------------------------------------------------------------- workbench hooks
    def _applied(self, panel: StagePanel) -> None:
        """After an Apply (in its thread): record it (the workbench), then the new map goes left."""
        super()._applied(panel)
        key = self._key_of(panel.result)
        if self._ready:
            self._refresh_maps(newest=key if key in self.maps else None)

    def _show_after_pane(self) -> None:
        if not getattr(self, "_ready", False):
            return super()._show_after_pane()
        shown = bool(self.right_picker.value)
        self.after.layout.display = "" if shown else "none"
        self._right_column.layout.display = "" if shown else "none"

    def _caption(self, what: str, *, overlaid: bool = False) -> None:
        if not getattr(self, "_ready", False):
            return super()._caption(what, overlaid=overlaid)
        for caption, key, tag in ((self.before_caption, self.left_picker.value, "A"),
                                  (self.after_caption, self.right_picker.value, "B")):
            if key in self.maps:
                step = self._step_of(key)
                title = self.specs[step.stage].title if step is not None and step.stage in self.specs else ""
                caption.value = (f"<b>{tag}</b> <code>{html.escape(key)}</code> {html.escape(title)} "
                                 f"<span style='opacity:.75'>over the scan</span>")
            else:
                caption.value = "<b>scan</b> <span style='opacity:.75'>(no map yet)</span>" if tag == "A" else ""
        return None

    def undo(self):
        """Undo the last step (see :meth:`Workbench.undo`); its map leaves the pickers."""
        out = super().undo()
        self._shown.clear()       # the workbench reset the left viewer
        gone = [k for k in list(self.sanity) + list(self.faithfulness) if k.split(" ")[0] not in self.maps]
        for k in gone:
            self.sanity.pop(k, None)
            self.faithfulness.pop(k, None)
        self._refresh_maps()
        return out

    # -------------------------------------------------------------- trust: sanity and faithfulness
    @property
    def trust_running(self) -> bool:
        return self._trust_thread is not None and self._trust_thread.is_alive()

    def _run_trust(self, what: str, job: Callable[[], Any], wait: bool):
        if self.trust_running:
            raise MedlabError("a check is running: wait for it or press Cancel")
        self._trust_cancel = cancel = threading.Event()
        box: dict[str, Any] = {}
        self._set_trust_busy(True, f"{what}…")
        last = [-1.0]

        def report(fraction: float, message: str) -> None:
            if fraction - last[0] >= 0.02 or fraction >= 1.0:
                last[0] = fraction
                self.trust_progress.value = fraction
                self.trust_status.value = f"<span style='color:#555'>{html.escape(what)}: {html.escape(message)}</span>"

        def run() -> None:
            t0 = time.perf_counter()
            try:
                with progress_to(report, cancel):
                    box["result"] = job()
                self._trust_message(f"{what} done in {time.perf_counter() - t0:.1f} s", "ok")
            except Cancelled as exc:
                box["error"] = exc
                self._trust_message(f"{what} cancelled: nothing was changed", "info")
            except Exception as exc:  # noqa: BLE001 - shown in the status line (and raised when waited for)
                box["error"] = exc
                self.error = exc
                self._trust_message(str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}",
                                    "error")
            finally:
                self._set_trust_busy(False)

        self._trust_thread = threading.Thread(target=run, name=f"medlab-explain-{what}", daemon=True)
        self._trust_thread.start()
        if not wait:
            return None
        self._trust_thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _set_trust_busy(self, busy: bool, message: str = "") -> None:
        self.sanity_button.disabled = self.faith_button.disabled = busy
        self.trust_cancel.disabled = not busy
        self.trust_progress.value = 0.0
        self.trust_progress.layout.visibility = "visible" if busy else "hidden"
        if busy:
            self._trust_message(message, "busy")

    def _trust_message(self, text: str, level: str) -> None:
        colour = {"error": "#b00020", "ok": "#1b5e20", "busy": "#555", "info": "#333"}[level]
        self.trust_status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        for lv in ("error", "ok", "busy", "info"):
            self.trust_status.remove_class(f"medlab-status-{lv}")
        self.trust_status.add_class(f"medlab-status-{level}")

    def _method_of(self, key: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """Stage name, parameters and inputs of a map (or of the selected method, before any)."""
        if key:
            step = self._step_of(key)
            if step is not None:
                return step.stage, dict(step.params), self._inputs_of(key)
        spec = self.panel.spec
        return spec.name, spec.validate(self.panel.params), dict(self.panel.inputs)

    def run_sanity_check(self, wait: bool = False, *, steps: int = 4, seed: int = 0, threshold: float = 0.5):
        """Cascading model randomisation of map A (Adebayo et al. 2018), with its own parameters.

        The model's layers are re-initialised in ``steps`` groups from the output back (on a copy)
        and the map recomputed after each, for the same class and layer. Shows the original and
        the fully randomised map, a thumbnail per step, the similarity numbers and whether the
        map is **flagged** (its rank correlation with the original stays at or above
        ``threshold``). With ``random_label_model`` the label-randomisation test runs too.

        Parameters
        ----------
        wait : bool
            Block and return the result (errors are raised as well as shown).
        steps, seed, threshold
            As :func:`medlab.explain.model_randomisation_test`.

        Returns
        -------
        SanityResult or None
            The model-randomisation result when ``wait`` is true.
        """
        from medlab.explain.sanity import data_randomisation, explainer, model_randomisation

        key = self.left_picker.value or None
        method, params, inputs = self._method_of(key)
        for name, value, lo, hi in (("steps", steps, 1, 50), ("seed", seed, 0, 2**31 - 1)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ParameterError(f"{name} must be an integer in [{lo}, {hi}]; got {value!r}")
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ParameterError(f"threshold must be a rank correlation in [0, 1]; got {threshold!r}")
        scan, model, mask = inputs.get("image"), inputs.get("model"), inputs.get("mask")
        if scan is None or model is None:
            raise MedlabError("choose a scan and a model first")
        options = {k: v for k, v in params.items() if k not in ("target_class", "layer")}
        target = params.get("target_class", -1)
        layer = params.get("layer", "auto")
        title = self.specs[method].title if method in self.specs else method

        def job():
            explain = explainer(method, mask, target_class=target, layer=layer, **options)
            result = model_randomisation(scan, model, explain, steps=steps, seed=seed, threshold=threshold)
            labels = None
            if self.random_label_model is not None:
                labels = data_randomisation(scan, model, self.random_label_model,
                                            explainer(method, mask, target_class=target, layer=layer, **options),
                                            threshold=threshold)
            name = key or f"{method} (not applied)"
            self.sanity[name] = result
            if labels is not None:
                self.sanity[f"{name} (labels)"] = labels
            self._show_sanity(name, title, result, labels, scan, mask)
            return result

        return self._run_trust(f"sanity check of {title}", job, wait)

    def _show_sanity(self, key: str, title: str, result, labels, scan: Image, mask: Image | None) -> None:
        from .viewer import Viewer

        flagged = result.flagged or (labels is not None and labels.flagged)
        colour = "#b00020" if flagged else "#1b5e20"
        verdicts = [result.verdict()] + ([labels.verdict()] if labels is not None else [])
        banner = widgets.HTML(
            f"<div data-flagged='{'true' if flagged else 'false'}' style='border-left:5px solid {colour};"
            f"padding:4px 10px;margin:4px 0'><b style='color:{colour}'>"
            f"{'FLAGGED: this map barely changes when the model is destroyed' if flagged else 'Passed'}</b> "
            f"<span>({html.escape(title)}, {html.escape(key)})</span><br>"
            + "<br>".join(html.escape(v) for v in verdicts) + "</div>")
        banner.add_class("medlab-explain-sanity-verdict")
        if self._sanity_viewers is None:
            viewers = (Viewer(scan, height=240), Viewer(scan, height=240))
            viewers[0].add_class("medlab-explain-sanity-original")
            viewers[1].add_class("medlab-explain-sanity-randomised")
            self._unlinks += [link(self.before, viewers[0]), link(viewers[0], viewers[1])]
            self._sanity_viewers = viewers
        original, randomised = self._sanity_viewers
        self._put(original, scan, result.original, mask)
        self._put(randomised, scan, result.randomised[-1], mask)
        # each viewer gets its own colour bar: the randomised map has its own value range
        self._sanity_maps = ((result.original, "original"),
                             (result.randomised[-1], f"randomised (step {len(result.steps)})"))
        self._sanity_legends = (widgets.HTML(), widgets.HTML())
        for legend in self._sanity_legends:
            legend.add_class("medlab-explain-sanity-legend")
        self._sanity_legends_refresh()
        at = list(self.before.position)
        t = self.threshold.value
        cells = [("the trained model", result.original)] + list(zip(result.steps, result.randomised))
        strip = "".join(
            f"<div style='margin:0 6px 6px 0;text-align:center;font-size:11px;line-height:1.25;max-width:150px'>"
            f"{_thumbnail(scan, m, mask, at, t)}<div>{'original' if i == 0 else f'step {i}'}: "
            f"{html.escape(what if i == 0 else 'randomised ' + what)}"
            + (f"<br><b>Spearman {result.scores[i - 1]['spearman']:.2f}</b>" if i and math.isfinite(
                result.scores[i - 1]["spearman"]) else "") + "</div></div>"
            for i, (what, m) in enumerate(cells))
        strip_html = widgets.HTML(f"<div style='display:flex;flex-wrap:wrap'>{strip}</div>")
        strip_html.add_class("medlab-explain-sanity-strip")
        tables = [result.table()] + ([labels.table()] if labels is not None else [])
        table = widgets.HTML("".join(table_html(tb) for tb in tables))
        table.add_class("medlab-explain-sanity-table")
        plot = CurvePlot(result.curve())
        # the plot's default title ("<y label>: last <value>") names the last point of one series only
        plot.title = f"similarity to the original, per step (flagged when Spearman stays ≥ {result.threshold:g})"
        heads = widgets.HBox([
            widgets.VBox([widgets.HTML("<b>original</b> (the trained model)"), original, self._sanity_legends[0]],
                         layout=_column()),
            widgets.VBox([widgets.HTML(f"<b>randomised</b> (after step {len(result.steps)}: every layer "
                                       "re-initialised)"), randomised, self._sanity_legends[1]], layout=_column())],
            layout=widgets.Layout(flex_flow="row nowrap", align_items="flex-start"))
        self.sanity_verdict, self.sanity_strip, self.sanity_table = banner, strip_html, table
        self.sanity_box.children = [banner, heads, strip_html, widgets.HBox([table, plot],
                                                                            layout=widgets.Layout(flex_flow="row wrap"))]
        self._numbers_refresh()

    def run_faithfulness(self, wait: bool = False, *, steps: int = 10, baseline: str = "blur"):
        """Deletion and insertion curves (and their areas) of the shown maps (A, and B if shown).

        Parameters
        ----------
        wait : bool
            Block and return ``{key: (curves, numbers)}``.
        steps : int
            Points on each curve after the start (the stage's own default is 20).
        baseline : {'blur', 'mean', 'zero'}
            What removed voxels become (see :func:`medlab.explain.deletion_insertion`).
        """
        from medlab.explain import deletion_insertion

        keys = [k for k in (self.left_picker.value, self.right_picker.value) if k]
        if not keys:
            raise MedlabError("there is no map yet: pick a method and press Apply first")

        def job():
            out = {}
            for key in keys:
                _, params, inputs = self._method_of(key)
                out[key] = deletion_insertion(
                    inputs["image"], inputs["model"], self.maps[key], inputs.get("mask"),
                    target_class=self.maps[key].metadata["saliency"].get("class_index", params.get("target_class", -1)),
                    region=params.get("region", ()), region_radius=params.get("region_radius", 10.0), steps=steps,
                    baseline=baseline)
                self.faithfulness[key] = tuple(out[key])
            self._show_faithfulness(keys)
            return out

        return self._run_trust("faithfulness", job, wait)

    def _show_faithfulness(self, keys: Sequence[str]) -> None:
        from medlab.explain import table_value

        parts = []
        for tag, key in zip("AB", keys):
            curves, numbers = self.faithfulness[key]
            plot = CurvePlot(curves, width=380, height=210)
            plot.title = f"{tag}: target logit as voxels are removed or restored"   # not "last <value>"
            d = table_value(numbers, "deletion AUC (lower is better)")
            i = table_value(numbers, "insertion AUC (higher is better)")
            r = table_value(numbers, "deletion AUC, random order")
            verdict = ("deletion falls faster than in a random order" if d < r else
                       "deletion falls no faster than in a random order: the ranking is not faithful")
            parts.append(widgets.VBox([widgets.HTML(
                f"<b>{tag}</b> <code>{html.escape(key)}</code>: deletion AUC {d:.3f} (random order {r:.3f}), "
                f"insertion AUC {i:.3f}<br><span style='opacity:.8'>{html.escape(verdict)}</span>"), plot]))
        head = widgets.HTML("<b>Faithfulness</b> <span style='opacity:.8'>target logit as the voxels the map "
                            "ranks highest are removed (deletion: should fall fast) or restored (insertion: should "
                            "rise fast)</span>")
        self.faith_box.children = [head, widgets.HBox(parts, layout=widgets.Layout(flex_flow="row wrap"))]
        self._numbers_refresh()

    # -------------------------------------------------------------- numbers
    def _numbers_of(self, key: str) -> Table:
        """Every number of one map: the method's table, then faithfulness and sanity rows."""
        numbers = self.session.get(key.rsplit(".", 1)[0] + ".numbers")
        rows = list(numbers.rows) if isinstance(numbers, Table) else []
        if key in self.faithfulness:
            # a quantity another method also names (Integrated Gradients' "baseline") is prefixed for
            # every map, so that one row never mixes the method's and the faithfulness baseline
            known = {r.get("quantity") for r in rows} | _METHOD_QUANTITIES
            rows += [{**r, "quantity": f"faithfulness: {r['quantity']}"} if r.get("quantity") in known else r
                     for r in self.faithfulness[key][1].rows if r.get("quantity") != "target"]
        for name, label in ((key, "model randomisation"), (f"{key} (labels)", "label randomisation")):
            result = self.sanity.get(name)
            if result is not None:
                last = result.scores[-1]
                rows += [{"quantity": f"{label}: verdict", "value": "FLAGGED" if result.flagged else "passed"},
                         *({"quantity": f"{label}: {name} after the last step", "value": last.get(k, math.nan)}
                           for k, name in _SIMILARITY_NAMES.items())]
                if result.flagged:   # why, and what is known about the method (Integrated Gradients)
                    rows.append({"quantity": f"{label}: verdict in words", "value": result.verdict()})
        return Table(rows, title=key)

    def numbers_table(self) -> Table:
        """The numbers of map A beside those of map B (one row per quantity)."""
        tables = {f"A: {k}" if i == 0 else f"B: {k}": self._numbers_of(k)
                  for i, k in enumerate((self.left_picker.value, self.right_picker.value)) if k}
        return Table(numbers_rows(tables), title="numbers of the shown maps")

    def _numbers_refresh(self) -> None:
        if not self.left_picker.value:
            self.numbers_html.value = ""
            return
        self.numbers_html.value = table_html(self.numbers_table(), max_rows=80)

    # -------------------------------------------------------------- hand-off
    def export(self, folder, *, overwrite: bool = False) -> list[Path]:
        """Every map as NIfTI (on its scan's grid), the fully randomised map of each sanity check,
        and ``numbers.csv`` (map, method, quantity, value: every number of every map).

        Nothing is written when any target exists and ``overwrite`` is false; each file is
        written atomically.

        Returns
        -------
        list of Path
        """
        from medlab.io import save

        if not str(folder).strip():
            raise MedlabError("type a folder name for the maps first, e.g. explain_out")
        if not self.maps:
            raise MedlabError("there is no map to export yet: pick a method and press Apply first")
        folder = Path(folder).expanduser()
        images = {}
        for key, saliency in self.maps.items():
            method = self._step_of(key).stage if self._step_of(key) is not None else "map"
            images[folder / f"{_slug(key)}_{_slug(method)}.nii.gz"] = saliency
            result = self.sanity.get(key)
            if result is not None:
                images[folder / f"{_slug(key)}_{_slug(method)}_randomised.nii.gz"] = result.last_map()
        csv_path = folder / "numbers.csv"
        targets = [*images, csv_path]
        if not overwrite:
            existing = [p.name for p in targets if p.exists()]
            if existing:
                raise WriteError(f"{folder} already holds {', '.join(existing[:4])}; tick overwrite or choose another "
                                 "folder (nothing was written)")
        rows = []
        for key in self.maps:
            method = self.maps[key].metadata["saliency"].get("method", "")
            rows += [{"map": key, "method": method, "quantity": r["quantity"], "value": r["value"]}
                     for r in self._numbers_of(key).rows]
        folder.mkdir(parents=True, exist_ok=True)
        written = [save(img, path, overwrite=overwrite) for path, img in images.items()]
        written.append(Table(rows, title="every number of every map").save(csv_path, overwrite=overwrite))
        self._handoff_message(f"{len(written) - 1} map(s) and numbers.csv written to {folder}", "ok")
        return written

    def add_to_review(self, folder, *, case_id: str | None = None, truth: str | None = None,
                      reviewer: str = "Dr Grey"):
        """Add the scan and the shown maps (A, and B if shown) as one case of a review study.

        Creates ``<folder>/study.json`` (blinded: prediction hidden, maps shown as "Map A",
        "Map B" in random order) or appends a case to it; the scan and maps are written as NIfTI
        under ``<folder>/<case id>/``. Clinicians then open it with the command the status line
        shows: ``medlab review <folder>/study.json --reviewer NAME``.

        Parameters
        ----------
        folder : str or Path
            The study folder.
        case_id : str, optional
            Default: the next free ``case-NNN``.
        truth : str, optional
            What is known about the case (e.g. ``"tumour"``), kept in the study for the summary.
        reviewer : str
            Only used in the command shown.

        Returns
        -------
        ReviewStudy
        """
        from medlab.review import ReviewStudy

        if not str(folder).strip():
            raise MedlabError("type a folder for the review study first, e.g. review_study")
        keys = [k for k in (self.left_picker.value, self.right_picker.value) if k]
        if not keys:
            raise MedlabError("there is no map to review yet: pick a method and press Apply first")
        folder = Path(folder).expanduser()
        study_file = folder / "study.json"
        maps: dict[str, Image] = {}
        for key in keys:
            step = self._step_of(key)
            name = step.stage if step is not None else _slug(key)
            maps[name if name not in maps else f"{name} ({key})"] = self.maps[key]
        scan = self._inputs_of(keys[0]).get("image")
        scan = scan if isinstance(scan, Image) else self.scan
        prediction = self.info.prediction() or None
        if study_file.exists():
            study = _append_case(study_file, case_id, scan, maps, prediction, truth)
        else:
            case_id = case_id or "case-001"
            study = ReviewStudy.create(folder, [{"id": case_id, "scan": scan, "maps": maps, "prediction": prediction,
                                                 "truth": truth}], name=f"review of {', '.join(maps)}")
        n_maps = sum(len(c.maps) for c in study.cases)
        command = f'medlab review {study_file} --reviewer "{reviewer}"'
        self._handoff_message(f"case {study.cases[-1].case_id} added to {study_file} ({len(study.cases)} case(s), "
                              f"{n_maps} map(s)). Clinicians open it with: {command}", "ok")
        self.review_study = study
        return study

    def _handoff_message(self, text: str, level: str) -> None:
        colour = {"error": "#b00020", "ok": "#1b5e20", "info": "#333", "busy": "#555"}[level]
        self.handoff_status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    # -------------------------------------------------------------- errors and closing
    def _guard(self, action: Callable[[], Any], status: widgets.HTML | None = None) -> None:
        """Run a button's action; an error goes to the status line next to it."""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button never raises into the void
            self.error = exc
            text = str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}"
            if status is self.trust_status:
                self._trust_message(text, "error")
            elif status is self.handoff_status:
                self._handoff_message(text, "error")
            elif self.panel is not None:
                self.panel._fail(exc)

    def close(self) -> None:
        if not hasattr(self, "_panels"):
            return   # refused before the workbench was built
        if hasattr(self, "_trust_cancel"):
            self._trust_cancel.set()
            if self._trust_thread is not None:
                self._trust_thread.join(5.0)
        unlinks, self._unlinks = getattr(self, "_unlinks", []), []
        for unlink in unlinks:
            unlink()
        viewers, self._sanity_viewers = getattr(self, "_sanity_viewers", None), None
        for v in viewers or ():
            v.close()
        if getattr(self, "_closed", False):
            return
        self._closed = True
        super().close()


# ---------------------------------------------------------------------------- helpers
def _check_mask(mask, image: Image) -> Image | None:
    if mask is None:
        return None
    mask = as_image(mask, "mask")
    if not mask.is_label:
        raise ImageError("mask must be a label map (e.g. medlab.load(path, kind='label')); got an intensity image")
    if mask.ndim != image.ndim or not mask.overlaps(image):
        raise ImageError(f"mask ({mask.describe()}) does not overlap the scan ({image.describe()}): "
                         "give the label map of this scan")
    return mask


def _append_case(study_file: Path, case_id: str | None, scan: Image, maps: Mapping[str, Image],
                 prediction: str | None, truth: str | None):
    """Add one case to an existing study file (images written first, then the study atomically).

    Hook wanted in :mod:`medlab.review`: ``ReviewStudy.add_case(...)``, which would keep the file
    layout of :meth:`ReviewStudy.create` in one place; this writes the same layout.
    """
    from medlab.io import save
    from medlab.review import ReviewCase, ReviewStudy

    study = ReviewStudy.load(study_file)
    taken = {c.case_id for c in study.cases}
    if case_id is None:
        case_id = next(f"case-{i:03d}" for i in range(1, len(taken) + 2) if f"case-{i:03d}" not in taken)
    elif case_id in taken:
        raise ParameterError(f"{study_file} already has a case {case_id!r}; choose another case id")
    where = study_file.parent / _slug(case_id)
    if where.exists():
        raise WriteError(f"{where} exists already; choose another case id")
    where.mkdir(parents=True)
    stored = {m: save(img, where / f"map-{_slug(m)}.nii.gz").resolve() for m, img in maps.items()}
    case = ReviewCase(case_id=case_id, scan=save(scan, where / "scan.nii.gz").resolve(), maps=stored,
                      prediction=prediction, truth=truth)
    study.cases.append(case)
    study.save(study_file, overwrite=True)
    return study
