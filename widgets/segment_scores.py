"""Scores of the segment widget's newest label map against a ground truth: the truth checked, the
rows (:func:`medlab.metrics.segmentation_scores`) and their HTML table."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlab.errors import ImageError, ParameterError
from medlab.image import Image, as_image


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
