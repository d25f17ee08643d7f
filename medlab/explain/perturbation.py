"""Occlusion sensitivity, batched, with the mask size in mm and a coarse-to-fine pass.

A box of the network input is replaced by a fill value, the target probability is measured,
and each voxel gets the drop ``p(image) - mean p(occluded)`` over every box that covers it.
The boxes are placed exactly as MONAI's ``OcclusionSensitivity`` places them (its
sliding-window positions for the same box size and ``overlap``), so with ``refine=0`` the
map is ``p(image)`` minus MONAI's map (MONAI reports the occluded probability itself, where
*lower* means important; here higher means important, and nothing is flipped silently).

Why not call MONAI: its map is computed through ``sliding_window_inference`` on every box,
with one Python-level copy per box, and it only explains a class of a classifier. Here the
occluded copies of a batch are filled in one tensor, and a **coarse-to-fine** pass first
occludes non-overlapping boxes, then recomputes only the overlapping boxes that touch a place
where the coarse drop is at least ``refine`` times the largest one. Voxels covered only by
recomputed boxes are exact (equal to the full computation); the others keep the coarse value,
which is below ``refine`` of the peak by construction. The table reports both shares.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..stage import Choice, Float, Int, progress, stage
from ._common import Context, inputs, output_params, outputs, run_method, target_params


def window_starts(shape, box, overlap: float) -> np.ndarray:
    """Box corners ``[n, d]`` as MONAI's sliding window places them (``dense_patch_slices`` with
    the interval ``int(box * (1 - overlap))``, at least 1; the last box flush with the end)."""
    axes = []
    for size, m in zip(shape, box):
        interval = m if m == size else max(int(m * (1 - overlap)), 1)
        n = 1
        while (n - 1) * interval + m < size:
            n += 1
        axes.append([min(i * interval, size - m) for i in range(n)])
    grids = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=1)


def _probabilities(ctx: Context, starts: np.ndarray, box, fill: float, batch: int, desc: str) -> np.ndarray:
    import torch

    x = ctx.x
    out = np.empty(len(starts), np.float64)
    chunks = [starts[i:i + batch] for i in range(0, len(starts), batch)]
    done = 0
    for chunk in progress(chunks, total=len(chunks), desc=desc):
        xb = x.repeat(len(chunk), *[1] * (x.ndim - 1))
        for i, s in enumerate(chunk):
            xb[(i, slice(None), *[slice(int(a), int(a) + m) for a, m in zip(s, box)])] = fill
        with torch.inference_mode():
            out[done:done + len(chunk)] = ctx.target.probability(xb).double().numpy()
        done += len(chunk)
    return out


def _accumulate(shape, starts, box, values):
    total = np.zeros(shape, np.float64)
    count = np.zeros(shape, np.int32)
    for s, v in zip(starts, values):
        sl = tuple(slice(int(a), int(a) + m) for a, m in zip(s, box))
        total[sl] += v
        count[sl] += 1
    return total, count


def occlusion_drop(ctx: Context, box, overlap: float, fill: str, batch: int, refine: float):
    """The occlusion map (probability drop) on the network input, and what was computed."""
    x = ctx.x
    shape = tuple(int(s) for s in x.shape[2:])
    value = {"mean": float(x.mean()), "zero": 0.0, "minimum": float(x.min())}[fill]
    p0 = ctx.target.base()[1]
    fine = window_starts(shape, box, overlap)
    if refine <= 0:
        probs = _probabilities(ctx, fine, box, value, batch, "occlusion")
        total, count = _accumulate(shape, fine, box, probs)
        return p0 - total / count, {"boxes computed": len(fine), "boxes in the full computation": len(fine),
                                    "share of voxels computed exactly": 1.0}, p0
    coarse = window_starts(shape, box, 0.0)
    known = dict(zip(map(tuple, coarse), _probabilities(ctx, coarse, box, value, batch, "occlusion (coarse)")))
    total, count = _accumulate(shape, coarse, box, [known[tuple(s)] for s in coarse])
    coarse_map = p0 - total / count
    peak = float(np.abs(coarse_map).max())
    keep = []
    for s in fine:
        sl = tuple(slice(int(a), int(a) + m) for a, m in zip(s, box))
        if peak > 0 and float(np.abs(coarse_map[sl]).max()) >= refine * peak:
            keep.append(s)
    todo = np.array([s for s in keep if tuple(s) not in known], dtype=int).reshape(-1, len(shape))
    if len(todo):
        known.update(zip(map(tuple, todo), _probabilities(ctx, todo, box, value, batch, "occlusion (fine)")))
    keep = np.array(keep, dtype=int).reshape(-1, len(shape))
    total, done = _accumulate(shape, keep, box, [known[tuple(s)] for s in keep])
    _, needed = _accumulate(shape, fine, box, np.zeros(len(fine)))
    exact = (done == needed) & (done > 0)
    out = np.where(exact, p0 - total / np.maximum(done, 1), coarse_map)
    return out, {"boxes computed": len(known), "boxes in the full computation": len(fine),
                 "share of voxels computed exactly": float(exact.mean())}, p0


def box_voxels(mask_size: float, spacing, shape) -> tuple[int, ...]:
    """The box in network voxels along each tensor axis for a size in mm (at least 1 voxel)."""
    return tuple(int(min(max(round(mask_size / s), 1), n)) for s, n in zip(spacing, shape))


def _occlusion(ctx: Context, mask_size: float, overlap: float, fill: str, batch: int, refine: float):
    import torch

    shape = tuple(ctx.x.shape[2:])
    box = box_voxels(mask_size, ctx.net_in.spacing_array_order, shape)
    if all(b == n for b, n in zip(box, shape)):
        raise ParameterError(f"{ctx.stage}: a {mask_size:g} mm box covers the whole network input "
                             f"({' x '.join(map(str, shape))} voxels); choose a smaller mask_size")
    drop, info, p0 = occlusion_drop(ctx, box, overlap, fill, batch, refine)
    ctx.rows += [{"quantity": "box (network voxels, tensor axes)", "value": " x ".join(map(str, box))},
                 {"quantity": "target probability without occlusion", "value": p0},
                 *({"quantity": k, "value": v} for k, v in info.items()),
                 {"quantity": "map", "value": "p(image) - mean p(occluded) over the boxes covering each voxel; "
                                              "MONAI's OcclusionSensitivity reports p(image) minus this"}]
    return torch.from_numpy(drop.astype(np.float32))


@stage("Occlusion sensitivity", group="explain", preview=None, **inputs(), **target_params(),
       mask_size=Float(1.0, 500.0, 30.0, unit="mm", help="edge of the occluding box"),
       overlap=Float(0.0, 0.95, 0.5, help="overlap of neighbouring boxes (MONAI's meaning): the stride is "
                                          "int(box x (1 - overlap)) voxels"),
       fill=Choice(["mean", "zero", "minimum"], "mean", help="what an occluded box holds: the image's mean "
                                                            "(MONAI's mean_img), 0, or its minimum"),
       refine=Float(0.0, 1.0, 0.1, help="coarse-to-fine: recompute overlapping boxes only where the coarse drop is "
                                       "at least this share of the largest; 0: every box (exact everywhere)"),
       batch=Int(1, 512, 32, help="occluded images per forward pass"),
       **output_params("signed"), outputs=outputs())
def occlusion(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0, mask_size=30.0,
              overlap=0.5, fill="mean", refine=0.1, batch=32, sign="signed", normalise="max"):
    """Occlusion sensitivity (Zeiler & Fergus 2014): how much the target probability drops when a
    box of the image is hidden, on the scan's grid.

    Positive values: hiding the place lowers the probability (evidence for the target); negative:
    hiding it raises it. The box is ``mask_size`` mm along each axis of the network grid.

    Parameters
    ----------
    mask_size : float
        Box edge in mm (rounded to whole network voxels, at least one).
    overlap : float
        As MONAI's: the stride is ``int(box * (1 - overlap))`` voxels.
    fill : {'mean', 'zero', 'minimum'}
        The occluded box's value, on the network input.
    refine : float
        Coarse-to-fine threshold (0: compute every box).
    batch : int
        Occluded copies per forward pass.

    Other parameters, returns and geometry as :func:`medlab.explain.grad_cam`.

    Examples
    --------
    >>> saliency, numbers = occlusion(image, model, mask_size=20, refine=0)   # doctest: +SKIP
    """
    return run_method("occlusion", "Occlusion sensitivity",
                      lambda ctx: _occlusion(ctx, mask_size, overlap, fill, batch, refine), image, model, mask,
                      target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise)
