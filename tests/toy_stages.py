"""Toy stages for testing the stage contract (two image inputs, a transform input, typed
outputs, live curves, cancel keeping the best). Imported by tests and by exported recipe
scripts run in a subprocess (with this folder on PYTHONPATH)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medlab.image import Image
from medlab.outputs import Curve, Table, Transform
from medlab.stage import (
    CurveOut,
    Float,
    ImageInput,
    ImageOut,
    Int,
    LabelOut,
    Points,
    TableOut,
    TransformInput,
    TransformOut,
    publish,
    register_group,
    stage,
)

register_group("toy")


def _warp(image: Image, transform: sitk.Transform, reference: Image, label: bool = False) -> Image:
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(image.to_sitk(), reference.to_sitk(), transform, interp, 0.0,
                        image.to_sitk().GetPixelID())
    return Image.from_sitk(out, kind=image.kind, labels=image.labels)


@stage("Toy translation registration", group="toy", preview=None, keeps_best=True,
       fixed=ImageInput("intensity", dims=(3,)), moving=ImageInput("intensity", dims=(3,), overlaps="fixed"),
       iterations=Int(1, 500, 40, help="gradient steps"),
       learning_rate=Float(0.01, 10.0, 1.0, unit="mm", help="step length"),
       outputs={"transform": TransformOut(), "difference": ImageOut(grid="fixed"), "history": CurveOut()})
def toy_register(fixed, moving, *, iterations=40, learning_rate=1.0):
    """Find the translation that best aligns ``moving`` to ``fixed`` (mean squares, gradient
    descent on the translation), then subtract the moved image from the fixed one.

    Examples
    --------
    >>> r = toy_register(fixed, moving)   # doctest: +SKIP
    """
    f = fixed.to_sitk()
    m = moving.to_sitk()
    f, m = sitk.Cast(f, sitk.sitkFloat32), sitk.Cast(m, sitk.sitkFloat32)
    t = sitk.TranslationTransform(3)
    curve = Curve("metric", x_label="iteration", y_label="mean squares", lower_is_better=True)
    best = (np.inf, None)
    for i in range(iterations):
        moved = sitk.GetArrayFromImage(sitk.Resample(m, f, t, sitk.sitkLinear, 0.0))
        diff = sitk.GetArrayFromImage(f) - moved
        metric = float(np.mean(diff ** 2))
        curve.append("level 1", i, metric)
        if metric < best[0]:
            best = (metric, Transform(t, name="translation"))
        # gradient of the metric w.r.t. the translation: -2 mean(diff * grad(moved)) in mm
        grad = np.gradient(moved, *fixed.spacing[::-1])
        g = np.array([-2 * np.mean(diff * grad[2 - a]) for a in range(3)])
        norm = np.linalg.norm(g)
        if norm > 0:
            t.SetOffset(tuple(np.array(t.GetOffset()) - learning_rate * g / norm * (0.97 ** i)))
        publish(history=curve, transform=best[1], metric=metric)
    transform = best[1]
    moved = _warp(moving, transform.sitk, fixed)
    difference = fixed.with_array(fixed.array.astype(np.float32) - moved.array.astype(np.float32))
    return transform, difference, curve


@stage("Toy label warp", group="toy", preview=None,
       labels=ImageInput("label", dims=(3,)), transform=TransformInput(), reference=ImageInput("any", dims=(3,)),
       outputs={"labels": LabelOut(grid="reference")})
def toy_warp_labels(labels, transform, reference):
    """Carry a label map through ``transform`` onto the grid of ``reference`` (nearest neighbour)."""
    return _warp(labels, transform.sitk, reference, label=True)


@stage("Toy seed statistics", group="toy", preview="slice",
       seeds=Points(role="seeds", image="image", min_count=1),
       background=Points(role="background", image="image"),
       outputs={"mask": LabelOut(), "stats": TableOut()})
def toy_seed_threshold(image, *, seeds=(), background=()):
    """Label voxels brighter than the mean of the background points and at least as bright as
    the darkest seed; a table gives the values at the seeds."""
    at = [float(image.array[tuple(np.rint(image.physical_to_index(p[: image.ndim]))[::-1].astype(int))])
          for p in seeds]
    bg = [float(image.array[tuple(np.rint(image.physical_to_index(p[: image.ndim]))[::-1].astype(int))])
          for p in background]
    low = min(at) if not bg else max(min(at), float(np.mean(bg)) + 1e-6)
    mask = image.with_array((image.array >= low).astype(np.uint8), kind="label", labels={1: "bright"})
    return mask, Table([{"seed": i + 1, "value": v} for i, v in enumerate(at)], units={"value": "a.u."})
