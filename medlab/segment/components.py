"""Connected components of a label map, with a table of volume (mL), centroid (mm, LPS) and
bounding box."""

from __future__ import annotations

import numpy as np

from ..errors import ImageError
from ..image import Image, label_color
from ..outputs import Table
from ..stage import Choice, Float, ImageInput, LabelOut, TableOut, stage
from ._common import CONNECTIVITY, label_components

__all__ = ["connected_components"]

MAX_COMPONENTS = 65535


@stage("Connected components", group="segment", preview="slice",
       labels=ImageInput("label", help="a label map (0 = background)"),
       connectivity=Choice(CONNECTIVITY, "face", help="face (6 neighbours) or full (26) connectivity"),
       min_volume=Float(0.0, 1e7, 0.0, step=1.0, unit="mm³",
                        help="drop pieces smaller than this (mm³; mm² for a 2D image)"),
       outputs={"labels": LabelOut(), "table": TableOut()})
def connected_components(labels: Image, *, connectivity: str = "face", min_volume: float = 0.0):
    """Give each connected piece of each label its own label value, largest first, and a
    table describing each piece.

    Touching voxels of different label values are different pieces. Components are found
    with cc3d (2x faster than scipy, SimpleITK and scikit-image, see ``segment._common``).

    Parameters
    ----------
    labels : Image
        A label map (several label values allowed).
    connectivity : {'face', 'full'}
        ``'face'``: voxels sharing a face (6 neighbours in 3D, 4 in 2D); ``'full'``: also
        edges and corners (26 / 8).
    min_volume : float
        Pieces smaller than this (mm³, or mm² in 2D) are dropped (set to 0).

    Returns
    -------
    labels : Image
        Label map on the same grid: piece ``k`` (1 = largest) named after its source label,
        e.g. ``"liver 1"``.
    table : Table
        One row per piece: ``component``, ``label`` (source value), ``name``, ``voxels``,
        ``volume`` (mL; ``area`` in mm² for a 2D image), ``centroid_x/y/z`` (mm, LPS: the
        physical centre of the voxels, oblique directions included), ``bbox_start`` and
        ``bbox_size`` (voxel index box, x y z order, as SimpleITK's ``GetBoundingBox``).

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> arr = np.zeros((4, 10, 10), np.uint8); arr[1:3, 1:5, 1:5] = 1; arr[1:3, 7:9, 7:9] = 1
    >>> pieces, table = connected_components(Image(arr, spacing=(1, 1, 2), kind="label"))
    >>> table.column("volume"), table.column("voxels")
    ([0.064, 0.016], [32, 8])
    """
    a = labels.array
    ids = label_components(a, connectivity)
    voxel = float(np.prod(labels.spacing))
    sizes = np.bincount(ids.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes * voxel >= max(min_volume, 1e-300))
    keep = keep[keep > 0]
    if keep.size > MAX_COMPONENTS:
        raise ImageError(f"connected_components: {keep.size} pieces (more than {MAX_COMPONENTS}); is this a "
                         "noisy threshold? Raise min_volume or clean the label map first (opening)")
    order = keep[np.lexsort((keep, -sizes[keep]))]  # largest first; ties by first found
    new = np.zeros(sizes.size, np.uint16 if order.size <= 65535 else np.uint32)
    new[order] = np.arange(1, order.size + 1)
    out = new[ids]
    source = np.zeros(sizes.size, a.dtype)
    source[ids.ravel()] = a.ravel()
    names, rows = {}, []
    stats = _stats(out, order.size)
    area = labels.ndim == 2
    for k, comp in enumerate(order, 1):
        value = int(source[comp])
        base = labels.labels[value].name if value in labels.labels else f"label {value}"
        names[k] = (f"{base} {k}", label_color(k))
        centre = labels.index_to_physical(stats["centroid"][k])
        n = int(sizes[comp])
        row = {"component": k, "label": value, "name": base, "voxels": n}
        row["area" if area else "volume"] = n * voxel if area else n * voxel / 1000.0
        for axis, c in zip("xyz", centre):
            row[f"centroid_{axis}"] = float(c)
        row["bbox_start"] = tuple(int(v) for v in stats["start"][k])
        row["bbox_size"] = tuple(int(v) for v in stats["size"][k])
        rows.append(row)
    units = {"volume": "mL", "area": "mm²", "centroid_x": "mm", "centroid_y": "mm", "centroid_z": "mm",
             "bbox_start": "voxel", "bbox_size": "voxels"}
    table = Table(rows, units=units, title="connected components")
    meta = {k: v for k, v in labels.metadata.items() if k != "thresholds"}
    return labels.with_array(out, labels=names, metadata=meta), table


def _stats(ids: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Centroid (continuous index, x y z) and bounding box (start, size in x y z) of ids 1..n."""
    import cc3d

    s = cc3d.statistics(ids, no_slice_conversion=True)
    d = ids.ndim
    centroid = np.asarray(s["centroids"], float)[: n + 1, ::-1]  # cc3d: array order -> x y z
    box = np.asarray(s["bounding_boxes"], np.int64)[: n + 1].reshape(-1, d, 2) if n else np.zeros((1, d, 2), int)
    start = box[:, ::-1, 0]
    size = box[:, ::-1, 1] - start + 1
    return {"centroid": centroid, "start": start, "size": size}
