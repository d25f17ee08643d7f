"""Light editing of a label map as declared stages: paint or erase with a brush whose radius
is in mm, and remove the connected pieces you click.

Each edit is a stage like any other, so an edit made by clicking in a widget is a recipe step
(the brush positions are physical points in mm, LPS) and replays bit-identically on the same
label map: a corrected segmentation can be reproduced, reviewed and audited. Clicks are
points with their own roles (``"paint"``, ``"remove"``), so a widget gives them their own
colour and marker, apart from seeds.

The brush is a ball in millimetres: a voxel is painted when its centre lies within
``radius`` mm of a brush position, measured in physical space (so on 0.8 × 0.8 × 6.5 mm
voxels a 3 mm brush paints a disc in one slice, and on an oblique grid it stays round). The
voxel under each position is always painted, so a brush smaller than a voxel still marks the
voxel clicked.
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..image import Image, label_color
from ..stage import Bool, Choice, Float, ImageInput, Int, LabelOut, Points, stage
from ._common import CONNECTIVITY, label_components, point_index, point_indices, where

__all__ = ["paint_labels", "remove_components"]

MAX_LABEL = 65535


def _labels_input() -> ImageInput:
    return ImageInput("label", help="the label map to edit (0 = background)")


def _edited(labels: Image, array: np.ndarray) -> Image:
    """``array`` on the input's grid with the input's names (plus ``"label N"`` for new values);
    marked as edited. The method stays (it still says how the map was made, e.g. for DICOM SEG);
    the thresholds go, as the edited map is no longer what they produced."""
    names = {v: (f"label {v}", label_color(v)) for v in np.unique(array).tolist() if v and v not in labels.labels}
    meta = {k: v for k, v in labels.metadata.items() if k != "thresholds"}
    meta["edited"] = True
    return labels.with_array(array, labels={**labels.labels, **names}, metadata=meta)


def brush_mask(labels: Image, centre, radius: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels whose centres lie within ``radius`` mm of ``centre`` (mm, LPS), plus the voxel
    nearest ``centre``: ``(box, mask)`` with ``mask`` boolean over ``labels.array[box]``.

    Distances are physical (spacing and direction), so the ball stays round on anisotropic and
    oblique grids. Only a box around the ball is visited.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> lab = Image(np.zeros((5, 9, 9), np.uint8), spacing=(1, 1, 4), kind="label")
    >>> box, mask = brush_mask(lab, (4.0, 4.0, 8.0), 2.0)
    >>> int(mask.sum())          # a disc of radius 2 in one slice: the slices are 4 mm apart
    13
    """
    p = np.asarray(centre, float)[: labels.ndim]
    centre_idx = labels.physical_to_index(p)                                  # x, y(, z)
    # half-width of the box in voxels along each index axis: radius / spacing, plus one
    reach = np.ceil(radius / np.asarray(labels.spacing, float)).astype(int) + 1
    size = np.asarray(labels.size)
    lo = np.clip(np.floor(centre_idx).astype(int) - reach, 0, size - 1)
    hi = np.clip(np.ceil(centre_idx).astype(int) + reach, 0, size - 1)
    # The direction matrix is orthonormal, so the physical distance is the index offset scaled by
    # the spacing, axis by axis: a sum of per-axis squares broadcast over the box (not a list of
    # every voxel's coordinates: 5 GB for a 50 mm brush on 0.01 mm voxels).
    spacing = np.asarray(labels.spacing, float)
    squares = [((np.arange(a, b + 1) - c) * s) ** 2 for a, b, c, s in zip(lo, hi, centre_idx, spacing)]
    d2 = 0.0
    for k, sq in enumerate(squares[::-1]):                                   # array order [z, y, x]
        d2 = d2 + sq.reshape([-1 if j == k else 1 for j in range(labels.ndim)])
    mask = d2 <= radius**2
    nearest = np.asarray(point_index(labels, p)) - lo[::-1]
    mask[tuple(nearest)] = True
    box = tuple(slice(a, b + 1) for a, b in zip(lo[::-1], hi[::-1]))
    return box, mask


@stage("Paint or erase (brush in mm)", group="segment", preview="slice", labels=_labels_input(),
       strokes=Points(role="paint", image="labels", min_count=1,
                      help="brush positions in mm (LPS): click where to paint; each paints a ball of `radius`"),
       radius=Float(0.5, 50.0, 3.0, step=0.5, unit="mm", help="brush radius, in mm"),
       value=Int(1, MAX_LABEL, 1, help="the label value painted (ignored when erasing)"),
       erase=Bool(False, help="erase instead: every label under the brush becomes background (0)"),
       outputs={"labels": LabelOut()})
def paint_labels(labels: Image, *, strokes=(), radius: float = 3.0, value: int = 1, erase: bool = False) -> Image:
    """Paint label ``value`` (or erase) in a ball of ``radius`` mm around each brush position.

    Parameters
    ----------
    labels : Image
        The label map to edit (not modified).
    strokes : sequence of points
        Brush positions (x, y[, z]) in mm, LPS; at least one.
    radius : float
        Brush radius in mm, measured in physical space.
    value : int
        The label painted; it overwrites other labels under the brush. A value the map has no
        name for is named ``"label N"``.
    erase : bool
        Set every voxel under the brush to background (0) instead.

    Returns
    -------
    Image
        The edited label map on the same grid (a wider integer type when ``value`` does not fit
        the input's); ``metadata["edited"]`` is True.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> lab = Image(np.zeros((9, 9), np.uint8), spacing=(0.5, 0.5), kind="label")
    >>> painted = paint_labels(lab, strokes=[(2.0, 2.0)], radius=1.0, value=3)
    >>> int((painted.array == 3).sum()), painted.labels[3].name
    (13, 'label 3')
    >>> int(paint_labels(painted, strokes=[(2.0, 2.0)], radius=0.5, erase=True).array.astype(bool).sum())
    8
    """
    a = labels.array
    dtype = a.dtype
    if dtype.kind not in "iu" or (not erase and value > np.iinfo(dtype).max):
        dtype = np.promote_types(dtype, np.uint16)
    out = a.astype(dtype, copy=True)
    for p in strokes:
        box, mask = brush_mask(labels, p, radius)
        out[box][mask] = 0 if erase else value
    return _edited(labels, out)


@stage("Remove pieces (click on them)", group="segment", preview="slice", labels=_labels_input(),
       pieces=Points(role="remove", image="labels", min_count=1,
                     help="a point on each connected piece to remove, in mm (LPS): click on them"),
       connectivity=Choice(CONNECTIVITY, "face",
                           help="voxels belong to one piece through a shared face (6 neighbours) or also "
                                "edges and corners (26)"),
       outputs={"labels": LabelOut()})
def remove_components(labels: Image, *, pieces=(), connectivity: str = "face") -> Image:
    """Remove the connected pieces under the given points (each becomes background).

    A piece is a connected set of voxels of one label value (cc3d, as
    :func:`~medlab.segment.connected_components`). A point on background (label 0) is refused:
    it marks no piece.

    Parameters
    ----------
    labels : Image
    pieces : sequence of points
        A point (mm, LPS) on each piece to remove; at least one.
    connectivity : {'face', 'full'}

    Returns
    -------
    Image
        The label map without those pieces, on the same grid, same names;
        ``metadata["edited"]`` is True.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> arr = np.zeros((10, 10), np.uint8); arr[1:5, 1:5] = 1; arr[7:9, 7:9] = 1
    >>> int(remove_components(Image(arr, kind="label"), pieces=[(8, 8)]).array.sum())
    16
    """
    a = labels.array
    idx = point_indices(labels, pieces)
    for i, (p, j) in enumerate(zip(pieces, idx), 1):
        if a[j] == 0:
            raise ParameterError(f"remove_components: point {i} at {where(p)} lies on background (label 0), so it "
                                 "marks no piece to remove; click inside the piece")
    ids = label_components(a, connectivity)
    gone = np.isin(ids, [ids[j] for j in idx])
    return _edited(labels, np.where(gone, 0, a).astype(a.dtype))
