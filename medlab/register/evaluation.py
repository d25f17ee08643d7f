"""How good is a registration: target registration error in mm, the Jacobian determinant of a
deformation (and its folded voxels), and the mutual information of two images on one grid.

Every function takes transforms in medlab's (SimpleITK's) convention: they map **fixed**
points (mm, LPS) to **moving** points.

Examples
--------
>>> import SimpleITK as sitk
>>> truth = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
>>> estimate = sitk.TranslationTransform(3, (2.0, 0.5, 0.0))
>>> target_registration_error(estimate, [(0, 0, 0), (10, 5, 2)], truth=truth).tolist()
[0.5, 0.5]
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..image import Image, as_image

__all__ = ["folded_voxels", "jacobian_determinant", "mutual_information", "sample_points",
           "target_registration_error", "transform_points"]


def _sitk_transform(t, name: str):
    import SimpleITK as sitk

    from ..outputs import Transform

    if isinstance(t, Transform):
        return t.sitk
    if isinstance(t, sitk.Transform):
        return t
    raise ParameterError(f"{name} must be a medlab Transform or a SimpleITK transform; got {type(t).__name__}")


def _points(points, name: str) -> np.ndarray:
    if hasattr(points, "points") and hasattr(points, "role"):  # a PointSet
        points = points.points
    try:
        arr = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an (n, 2 or 3) array of points in mm") from None
    if arr.ndim == 1 and arr.size in (2, 3):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or len(arr) == 0 or not np.all(np.isfinite(arr)):
        raise ParameterError(f"{name} must be a non-empty (n, 2 or 3) array of finite points in mm; "
                             f"got shape {arr.shape}")
    return arr


def transform_points(transform, points) -> np.ndarray:
    """Map an ``(n, d)`` array of fixed-image points (mm) to the moving image."""
    t = _sitk_transform(transform, "transform")
    pts = _points(points, "points")
    if pts.shape[1] != t.GetDimension():
        raise ParameterError(f"points are {pts.shape[1]}D but the transform is {t.GetDimension()}D")
    return np.array([t.TransformPoint(tuple(p)) for p in pts.tolist()])


def target_registration_error(estimate, points, *, truth=None, moving_points=None) -> np.ndarray:
    """Target registration error (mm) at each point: the distance between where the estimated
    transform puts a fixed-image point and where it truly lies in the moving image.

    Parameters
    ----------
    estimate : Transform or SimpleITK.Transform
        The registration result (fixed → moving).
    points : (n, d) array
        Target points in the fixed image, mm (LPS). Targets should not be the fiducials the
        transform was fitted to (that error is the FRE).
    truth : Transform or SimpleITK.Transform, optional
        The true fixed → moving transform (a synthetic displacement, a phantom).
    moving_points : (n, d) array, optional
        Or the true positions of the same points in the moving image (clicked landmarks).

    Returns
    -------
    ndarray (n,)
        Errors in mm.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> est = sitk.Euler3DTransform()
    >>> target_registration_error(est, [(0, 0, 0)], moving_points=[(3, 4, 0)]).tolist()
    [5.0]
    """
    if (truth is None) == (moving_points is None):
        raise ParameterError("give either truth (the true transform) or moving_points (the true positions)")
    pts = _points(points, "points")
    mapped = transform_points(estimate, pts)
    if truth is not None:
        target = transform_points(truth, pts)
    else:
        target = _points(moving_points, "moving_points")
        if target.shape != pts.shape:
            raise ParameterError(f"moving_points has shape {target.shape}; points has {pts.shape}: "
                                 "give one true position per target")
    return np.linalg.norm(mapped - target, axis=1)


def sample_points(mask, n: int = 1000, *, seed: int = 0) -> np.ndarray:
    """``n`` random voxel centres (mm, LPS) inside a mask or label map: targets for TRE over
    a region (e.g. the brain).

    Examples
    --------
    >>> import numpy as np, medlab
    >>> m = medlab.Image(np.pad(np.ones((4, 4, 4), np.uint8), 2), kind="label")
    >>> sample_points(m, 5).shape
    (5, 3)
    """
    img = as_image(mask, "mask")
    idx = np.argwhere(np.asarray(img.array) > 0)
    if len(idx) == 0:
        raise ParameterError("the mask is empty: no point to sample")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"n must be a positive integer; got {n!r}")
    rng = np.random.default_rng(seed)
    pick = idx[rng.choice(len(idx), size=min(int(n), len(idx)), replace=False)]
    return img.index_to_physical(pick[:, ::-1].astype(float))


def jacobian_determinant(transform, reference: Image) -> Image:
    """The Jacobian determinant of a transform on the voxel grid of ``reference``.

    1 means the volume is kept, above 1 expanded, below 1 compressed; at or below 0 the
    deformation folds (the voxel is turned inside out), which no physical motion does.
    Derivatives are taken along the physical axes, so oblique grids are handled.

    Examples
    --------
    >>> import SimpleITK as sitk, numpy as np, medlab
    >>> grid = medlab.Image(np.zeros((8, 8, 8), np.float32), spacing=(2, 2, 2))
    >>> t = sitk.AffineTransform(3); t.SetMatrix((1.1, 0, 0, 0, 1, 0, 0, 0, 1))
    >>> round(float(jacobian_determinant(t, grid).array.mean()), 6)
    1.1
    """
    import SimpleITK as sitk

    t = _sitk_transform(transform, "transform")
    ref = as_image(reference, "reference")
    if ref.ndim != t.GetDimension():
        raise ParameterError(f"a {t.GetDimension()}D transform on a {ref.ndim}D grid")
    field = sitk.TransformToDisplacementField(t, sitk.sitkVectorFloat64, [int(s) for s in ref.size],
                                              [float(v) for v in ref.origin], [float(v) for v in ref.spacing],
                                              [float(v) for v in ref.direction.ravel()])
    u = sitk.GetArrayViewFromImage(field)  # [z, y, x, component (x, y, z)]
    d = ref.ndim
    # grad[..., c, k]: derivative of component c along index axis k, per mm
    grad = np.empty(u.shape[:-1] + (d, d), np.float32)
    for k in range(d):
        axis = d - 1 - k
        if u.shape[axis] < 2:
            grad[..., :, k] = 0.0
            continue
        grad[..., :, k] = np.gradient(u, axis=axis)[..., :] / ref.spacing[k]
    # physical Jacobian of p + u(p): I + G D^T (the index axes point along the columns of D)
    jac = np.eye(d, dtype=np.float32) + grad @ ref.direction.T.astype(np.float32)
    det = np.linalg.det(jac).astype(np.float32)
    return ref.with_array(det, kind="intensity", labels=None, metadata={"quantity": "Jacobian determinant"})


def folded_voxels(jacobian: Image) -> int:
    """Number of voxels where the deformation folds (Jacobian determinant ≤ 0)."""
    return int(np.count_nonzero(np.asarray(as_image(jacobian, "jacobian").array) <= 0))


def mutual_information(a, b, *, bins: int = 32, mask=None) -> float:
    """Mutual information (nats) of two images on the same grid, from their joint histogram.

    Used to say how much a registration improved the alignment of two modalities: the MI of
    the fixed image and the registered moving image, before and after.

    Examples
    --------
    >>> import numpy as np, medlab
    >>> x = medlab.Image(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    >>> mutual_information(x, x) > mutual_information(x, x.with_array(x.array[::-1]))
    True
    """
    ia, ib = as_image(a, "a"), as_image(b, "b")
    if not ia.same_grid(ib):
        raise ParameterError("mutual_information needs two images on the same grid (resample one first)")
    if not isinstance(bins, (int, np.integer)) or not 2 <= bins <= 1024:
        raise ParameterError(f"bins must be an integer in [2, 1024]; got {bins!r}")
    sel = np.ones(ia.array.shape, bool) if mask is None else np.asarray(as_image(mask, "mask").array) > 0
    x, y = np.asarray(ia.array, float)[sel], np.asarray(ib.array, float)[sel]
    if x.size == 0:
        raise ParameterError("the mask is empty")
    h, _, _ = np.histogram2d(x, y, bins=int(bins))
    p = h / h.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / (px @ py)[nz])))
