"""Faithfulness of a map: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

The network-input voxels are ranked by the map (highest first; in 3D, voxels, not pixels).
**Deletion** replaces the top fraction of voxels by a baseline and follows the target
as the fraction grows from 0 to 1: a faithful map makes it fall fast (small area under the
curve). **Insertion** starts from the baseline and puts the top voxels back: it should rise fast
(large area). The same deletion in a random order is the reference a map must beat. The
change of the target when the top ``fraction`` of voxels is deleted is reported too: in logit
units for the logit (a logit has no scale to be relative to: near 0 a ratio explodes, at 0 it is
undefined, and its sign flips with the class), relative for a probability.

The target followed is the class **logit** by default (``score="logit"``; for a segmentation
network the class's logits summed over the region), so the areas are in logit units × fraction;
``score="probability"`` follows its softmax (sigmoid for one output), as Petsiuk et al. did, but
a confident model's probability is 1.0 in float32 until the evidence is nearly gone, and the
curves then measure rounding rather than the map. The choice is in the table.

The map is resampled from the scan's grid onto the network input (linear); only network voxels
inside the scan's footprint are ranked and changed. Ties (e.g. zeros of a Grad-CAM map) are
broken in a random order fixed by ``seed``, never by position.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..errors import ImageError
from ..stage import (
    Choice,
    CurveOut,
    Float,
    ImageInput,
    Int,
    ModelInput,
    Points,
    TableOut,
    progress,
    stage,
)
from ._common import prepare, score_param


def _baseline(ctx, kind: str, blur_mm: float):
    import torch

    x = ctx.x
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return torch.full_like(x, float(x.mean()))
    from scipy import ndimage

    sigma = [blur_mm / s for s in ctx.net_in.spacing_array_order]
    arr = np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest") for c in x[0].numpy()])
    return torch.from_numpy(arr.astype(np.float32))[None]


def _curve(ctx, start, end, order: np.ndarray, fractions: np.ndarray, batch: int, desc: str,
           score: str = "logit") -> np.ndarray:
    """The target (``score``) of ``start`` with the first ``f * len(order)`` voxels taken from ``end``."""
    import torch

    flat_start = start.reshape(start.shape[0], start.shape[1], -1)
    flat_end = end.reshape(end.shape[0], end.shape[1], -1)
    counts = np.round(fractions * len(order)).astype(int)
    out = []
    chunks = [counts[i:i + batch] for i in range(0, len(counts), batch)]
    for chunk in progress(chunks, total=len(chunks), desc=desc):
        xb = flat_start.repeat(len(chunk), 1, 1).clone()
        for i, k in enumerate(chunk):
            idx = torch.from_numpy(order[:k])
            xb[i, :, idx] = flat_end[0, :, idx]
        with torch.inference_mode():
            out.append(ctx.target.value(xb.reshape(len(chunk), *start.shape[1:]), score).double().numpy())
    return np.concatenate(out)


def _top_change(what: str, fraction: float, f_top: float, f0: float) -> dict:
    """The table row of the change when the top ``fraction`` is deleted: absolute for a logit
    (a ratio of logits explodes near 0 and is NaN at 0), relative for a probability (> 0)."""
    if what == "target logit" or f0 <= 0:
        return {"quantity": f"change of the {what}, top {100 * fraction:g} % deleted", "value": f_top - f0}
    return {"quantity": f"relative change of the {what}, top {100 * fraction:g} % deleted",
            "value": (f_top - f0) / f0}


def _auc(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.trapezoid(y, x)) if hasattr(np, "trapezoid") else float(np.trapz(y, x))


@stage("Deletion and insertion curves", group="explain", preview=None,
       image=ImageInput("intensity", help="the scan"), model=ModelInput(help="the model the map explains"),
       saliency=ImageInput("intensity", overlaps="image", help="the map (any explanation stage's output)"),
       mask=ImageInput("label", optional=True, overlaps="image", help="segmentation networks: the target region"),
       target_class=Int(-1, 999, -1, help="class whose score is followed; -1: the predicted class"),
       region=Points(role="target", image="image", help="segmentation networks: the target region's points"),
       region_radius=Float(0.0, 200.0, 10.0, unit="mm", help="radius of the balls around the region points"),
       steps=Int(4, 200, 20, help="points on each curve (plus the start)"),
       baseline=Choice(["blur", "mean", "zero"], "blur", help="what deleted voxels become (and insertion starts from)"),
       blur_mm=Float(0.5, 100.0, 10.0, unit="mm", help="Gaussian sigma of the blurred baseline"),
       fraction=Float(0.001, 0.9, 0.05, help="share of top voxels deleted for the relative score change"),
       batch=Int(1, 256, 8, help="images per forward pass"),
       seed=Int(0, 2**31 - 1, 0, help="order of tied voxels and of the random reference"),
       **score_param("each curve"),
       outputs={"curves": CurveOut(), "numbers": TableOut()})
def deletion_insertion(image, model, saliency, mask=None, *, target_class=-1, region=(), region_radius=10.0,
                       steps=20, baseline="blur", blur_mm=10.0, fraction=0.05, batch=8, seed=0, score="logit"):
    """Deletion and insertion curves of a map, their areas, and a random-order reference.

    Parameters
    ----------
    image, model
        The scan and the model the map explains.
    saliency : Image
        The map to test (on any grid overlapping the scan; resampled onto the network input).
    mask, target_class, region, region_radius
        The target, as for the explanation stages.
    steps : int
        Curve points after the start.
    baseline : {'blur', 'mean', 'zero'}
        Deleted voxels take the value of a blurred copy (``blur_mm``), the mean, or 0.
    fraction : float
        The change of the target when this share of top voxels is deleted is reported:
        ``f(top fraction deleted) - f(image)`` for the logit, relative to ``p(image)`` for the
        probability.
    batch, seed
    score : {'logit', 'probability'}
        What the curves follow (see the module docstring); recorded in the table.

    Returns
    -------
    curves : Curve
        Series ``deletion``, ``insertion`` and ``deletion (random order)``: the target (logit or
        probability) against the fraction of voxels changed.
    numbers : Table
        The score followed, areas under the curves, the target at both ends, the relative change.

    Examples
    --------
    >>> curves, numbers = deletion_insertion(image, model, grad_cam(image, model)[0])   # doctest: +SKIP
    """
    import torch

    from ..outputs import Curve, Table
    from .network import evaluating, uses_batch_statistics

    ctx = prepare("deletion_insertion", image, model, mask, target_class=target_class, region=region,
                  region_radius=region_radius, sign="signed")
    s = ctx.net_in.scan_to_network(np.asarray(saliency.array, np.float32), nearest=False, fill=np.nan, source=saliency)
    inside = ctx.net_in.footprint() & np.isfinite(s)
    if not inside.any():
        raise ImageError("deletion_insertion: the map does not cover the network's input")
    rng = np.random.default_rng(seed)
    flat = np.flatnonzero(inside.ravel())
    ties = rng.random(len(flat))
    order = flat[np.lexsort((ties, -s.ravel()[flat]))]
    random_order = flat[rng.permutation(len(flat))]
    fractions = np.linspace(0.0, 1.0, steps + 1)
    base = _baseline(ctx, baseline, blur_mm)
    x = ctx.x
    curve = partial(_curve, score=score)
    # in evaluation mode, as the image's own score (a model left in training mode gave curves of
    # batch statistics and random dropout); a model normalising by its batch scores each copy alone
    with evaluating(ctx.network.module):
        if uses_batch_statistics(ctx.network.module):
            batch = 1
        deletion = curve(ctx, x, base, order, fractions, batch, "deletion")
        insertion = curve(ctx, base, x, order, fractions, batch, "insertion")
        reference = curve(ctx, x, base, random_order, fractions, batch, "deletion (random order)")
        f_top = float(curve(ctx, x, base, order, np.array([fraction]), 1, "relative change")[0])
        with torch.inference_mode():
            f_base = float(ctx.target.value(base, score)[0])
    what = "target logit" if score == "logit" else "target probability"
    curves = Curve("deletion and insertion", x_label="fraction of voxels", y_label=what)
    for name, ys in (("deletion", deletion), ("insertion", insertion), ("deletion (random order)", reference)):
        for f, p in zip(fractions, ys):
            curves.append(name, f, p)
    f0 = float(deletion[0])
    if not all(np.isfinite(v).all() for v in (deletion, insertion, reference, f_top, f_base)):
        raise ImageError(f"deletion_insertion: {ctx.network.source} gives NaN or infinite {what}s once voxels take "
                         f"the {baseline!r} baseline (areas would be NaN or infinite); choose another baseline "
                         "('blur', 'mean' or 'zero') whose values the model accepts")
    rows = [{"quantity": "target", "value": ctx.target.description},
            {"quantity": "score followed", "value": what},
            {"quantity": "deletion AUC (lower is better)", "value": _auc(fractions, deletion)},
            {"quantity": "insertion AUC (higher is better)", "value": _auc(fractions, insertion)},
            {"quantity": "deletion AUC, random order", "value": _auc(fractions, reference)},
            {"quantity": f"{what}, image", "value": f0},
            {"quantity": f"{what}, baseline", "value": f_base},
            _top_change(what, fraction, f_top, f0),
            {"quantity": "voxels ranked", "value": len(order)},
            {"quantity": "baseline", "value": baseline + (f" (Gaussian sigma {blur_mm:g} mm)" if baseline == "blur" else "")}]
    return curves, Table(rows, title="faithfulness: deletion and insertion")
