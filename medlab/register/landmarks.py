"""Point-based registration from paired landmarks: rigid, similarity or affine; fiducial and
target registration errors; and the teaching experiment of how fiducial localisation error
(FLE) becomes target registration error (TRE), against Fitzpatrick and West's prediction.

Vocabulary (Fitzpatrick, West and Maurer, IEEE TMI 1998):

* **FLE**: how far a clicked fiducial is from where it truly is.
* **FRE**: the residual distance between the fixed fiducials and the mapped moving ones after
  the fit. A small FRE does **not** mean a good registration.
* **TRE**: the error at a *target* (a point not used in the fit), which is what matters.

The closed-form fit is SimpleITK's ``LandmarkBasedTransformInitializer`` (Horn's quaternion
method for rigid and similarity, least squares for affine).

Examples
--------
>>> import numpy as np
>>> from medlab.register import fit_landmark_transform
>>> fixed = np.array([[0, 0, 0], [50, 0, 0], [0, 40, 0], [0, 0, 30]], float)
>>> moving = fixed + (5.0, -2.0, 1.0)
>>> t = fit_landmark_transform(fixed, moving)
>>> np.round(t.TransformPoint((10.0, 10.0, 10.0)), 6).tolist()
[15.0, 8.0, 11.0]
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..outputs import Table, Transform
from ..stage import Choice, ImageInput, ImageOut, Points, TableOut, TransformOut, stage
from ._common import check_pair, grids, registered_image
from .evaluation import target_registration_error

__all__ = ["LANDMARK_TRANSFORMS", "fit_landmark_transform", "fle_to_tre", "landmark_register", "predicted_tre"]

LANDMARK_TRANSFORMS = ("rigid", "similarity", "affine")


def _as_points(points, name: str, dim: int | None = None) -> np.ndarray:
    if hasattr(points, "points") and hasattr(points, "role"):
        points = points.points
    try:
        arr = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an (n, 2 or 3) array of points in mm") from None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3) or not np.all(np.isfinite(arr)):
        raise ParameterError(f"{name} must be an (n, 2 or 3) array of finite points in mm; got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        if arr.shape[1] == 3 and dim == 2 and np.allclose(arr[:, 2], 0):
            return arr[:, :2]
        raise ParameterError(f"{name} are {arr.shape[1]}D points; the images are {dim}D")
    return arr


def _check_configuration(fixed: np.ndarray, moving: np.ndarray, kind: str) -> None:
    """Refuse landmark sets that cannot determine the transform (too few, collinear, coplanar)."""
    n, d = fixed.shape
    if moving.shape != fixed.shape:
        raise ParameterError(f"fixed and moving landmarks must pair up: got {len(fixed)} fixed and "
                             f"{len(moving)} moving points ({fixed.shape[1]}D vs {moving.shape[1]}D)")
    need = d + 1 if kind == "affine" else d
    if n < need:
        raise ParameterError(f"a {kind} landmark registration in {d}D needs at least {need} point pairs; got {n}")
    scale = max(float(np.abs(fixed - fixed.mean(0)).max()), 1e-9)
    for name, pts in (("fixed", fixed), ("moving", moving)):
        s = np.linalg.svd(pts - pts.mean(0), compute_uv=False)
        rank = int(np.sum(s > 1e-6 * max(scale, float(s[0]) if s.size else 1.0)))
        if rank < 1:
            raise ParameterError(f"the {name} landmarks all lie at one point: click distinct points")
        if d == 3 and rank < 2:
            raise ParameterError(f"the {name} landmarks are collinear (on one line): a rotation about that "
                                 "line is undetermined; add a landmark off the line")
        if kind == "affine" and rank < d:
            what = "coplanar (in one plane)" if d == 3 else "collinear (on one line)"
            raise ParameterError(f"the {name} landmarks are {what}: an affine transform is undetermined; "
                                 "add a landmark out of that " + ("plane" if d == 3 else "line"))


def fit_landmark_transform(fixed_points, moving_points, kind: str = "rigid"):
    """The transform that best maps fixed landmarks onto moving landmarks (least squares).

    Parameters
    ----------
    fixed_points, moving_points : (n, d) arrays
        Paired points in mm (row i of one matches row i of the other).
    kind : {'rigid', 'similarity', 'affine'}

    Returns
    -------
    SimpleITK.Transform
        Fixed → moving (a versor rigid, similarity or affine transform in 3D; Euler,
        similarity or affine in 2D), centred at the fixed landmarks' centroid.

    Raises
    ------
    ParameterError
        Unpaired, too few, coincident, collinear or (affine) coplanar landmarks.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.array([[0, 0], [10, 0], [0, 10]], float)
    >>> t = fit_landmark_transform(f, f * 2.0, "similarity")
    >>> round(t.GetScale(), 6)
    2.0
    """
    import SimpleITK as sitk

    if kind not in LANDMARK_TRANSFORMS:
        raise ParameterError(f"kind must be one of {LANDMARK_TRANSFORMS}; got {kind!r}")
    f = _as_points(fixed_points, "fixed_points")
    m = _as_points(moving_points, "moving_points", f.shape[1])
    _check_configuration(f, m, kind)
    d = f.shape[1]
    if kind == "affine":
        t = sitk.AffineTransform(d)
    elif d == 3:
        t = sitk.VersorRigid3DTransform() if kind == "rigid" else sitk.Similarity3DTransform()
    else:
        t = sitk.Euler2DTransform() if kind == "rigid" else sitk.Similarity2DTransform()
    t.SetCenter(tuple(map(float, f.mean(0))))
    if kind == "similarity" and d == 2:
        # ITK's initializer fits a 2D similarity as a rigid transform (scale stays 1): Umeyama here
        return _similarity_2d(f, m)
    try:
        out = sitk.LandmarkBasedTransformInitializer(t, f.ravel().tolist(), m.ravel().tolist())
    except RuntimeError as exc:
        raise ParameterError(f"the landmarks do not determine a {kind} transform "
                             f"({str(exc).strip().splitlines()[-1]})") from None
    return out.Downcast()


def _similarity_2d(fixed: np.ndarray, moving: np.ndarray):
    """Least-squares 2D similarity (Umeyama 1991), centred at the fixed landmarks' centroid."""
    import SimpleITK as sitk

    fc, mc = fixed.mean(0), moving.mean(0)
    x, y = fixed - fc, moving - mc
    u, sv, vt = np.linalg.svd(y.T @ x)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sv) @ sign) / np.sum(x ** 2))
    t = sitk.Similarity2DTransform()
    t.SetCenter(tuple(map(float, fc)))
    t.SetScale(scale)
    t.SetAngle(float(np.arctan2(rotation[1, 0], rotation[0, 0])))
    t.SetTranslation(tuple(map(float, mc - fc)))
    return t


def predicted_tre(fiducials, targets, fle_rms: float) -> np.ndarray:
    """Fitzpatrick and West's expected RMS TRE (mm) of a rigid fit at each target.

    ``TRE²(r) ≈ FLE²/N · (1 + 1/3 Σₖ dₖ²/fₖ²)``, where ``dₖ`` is the target's distance from
    the k-th principal axis of the fiducial configuration and ``fₖ`` the RMS distance of the
    fiducials from that axis (IEEE TMI 17:694, 1998). FLE is the RMS length of the
    localisation error vector (isotropic, independent, the same for every fiducial).

    Examples
    --------
    >>> import numpy as np
    >>> fid = np.array([[50, 0, 0], [-50, 0, 0], [0, 50, 0], [0, -50, 0], [0, 0, 50], [0, 0, -50]], float)
    >>> centre, far = predicted_tre(fid, [[0, 0, 0], [100, 0, 0]], 1.0)
    >>> bool(centre < far), round(float(centre), 3)
    (True, 0.408)
    """
    fid = _as_points(fiducials, "fiducials")
    tgt = _as_points(targets, "targets", fid.shape[1])
    if not np.isfinite(fle_rms) or fle_rms < 0:
        raise ParameterError(f"fle_rms must be a non-negative number of mm; got {fle_rms!r}")
    c = fid.mean(0)
    x, q = fid - c, tgt - c
    _, vecs = np.linalg.eigh(x.T @ x)
    ratio = np.zeros(len(q))
    for k in range(fid.shape[1]):
        e = vecs[:, k]
        f2 = np.mean(np.sum(x ** 2, 1) - (x @ e) ** 2)
        d2 = np.sum(q ** 2, 1) - (q @ e) ** 2
        ratio += d2 / f2
    return np.sqrt(fle_rms ** 2 / len(fid) * (1 + ratio / 3.0))


def fle_to_tre(fiducials, targets, *, fle_rms: float = 1.0, trials: int = 500, seed: int = 0) -> Table:
    """Simulate how fiducial localisation error becomes target registration error.

    Each trial displaces the fiducials by random isotropic errors of RMS length ``fle_rms``
    (mm), fits a rigid transform from the true to the displaced fiducials, and measures FRE
    and the TRE at each target. The table compares the simulated RMS TRE with
    :func:`predicted_tre` and the RMS FRE with its expected value ``FLE·√(1 − 2/N)``.

    Returns
    -------
    Table
        One row per target (``target``, ``distance from centroid``, ``simulated TRE``,
        ``predicted TRE``), then a row for the FRE (``simulated FRE``, ``predicted FRE``).

    Examples
    --------
    >>> import numpy as np
    >>> fid = np.array([[40, 0, 0], [-40, 0, 0], [0, 40, 0], [0, -40, 0], [0, 0, 40]], float)
    >>> t = fle_to_tre(fid, [[0, 0, 0], [80, 80, 0]], fle_rms=1.0, trials=300)
    >>> sim, pred = t.column("simulated TRE")[1], t.column("predicted TRE")[1]
    >>> abs(sim - pred) / pred < 0.2
    True
    """
    fid = _as_points(fiducials, "fiducials")
    tgt = _as_points(targets, "targets", fid.shape[1])
    if not isinstance(trials, (int, np.integer)) or not 1 <= trials <= 100_000:
        raise ParameterError(f"trials must be an integer in [1, 100000]; got {trials!r}")
    n, d = fid.shape
    rng = np.random.default_rng(seed)
    sigma = fle_rms / np.sqrt(d)  # per axis, so the error vector has RMS length fle_rms
    tre2 = np.zeros(len(tgt))
    fre2 = 0.0
    for _ in range(int(trials)):
        noisy = fid + rng.normal(0.0, sigma, fid.shape)
        t = fit_landmark_transform(fid, noisy, "rigid")
        fre2 += float(np.mean(target_registration_error(t, fid, moving_points=noisy) ** 2))
        tre2 += target_registration_error(t, tgt, moving_points=tgt) ** 2
    predicted = predicted_tre(fid, tgt, fle_rms)
    dist = np.linalg.norm(tgt - fid.mean(0), axis=1)
    rows = [{"target": i + 1, "distance from centroid": float(dist[i]),
             "simulated TRE": float(np.sqrt(tre2[i] / trials)), "predicted TRE": float(predicted[i])}
            for i in range(len(tgt))]
    rows.append({"target": "FRE", "simulated FRE": float(np.sqrt(fre2 / trials)),
                 "predicted FRE": float(fle_rms * np.sqrt(max(0.0, 1 - 2 / n)))})
    units = {k: "mm" for k in ("distance from centroid", "simulated TRE", "predicted TRE", "simulated FRE",
                               "predicted FRE")}
    return Table(rows, units=units, title=f"FLE {fle_rms:g} mm → TRE, {n} fiducials, {trials} trials")


@stage("Landmark registration", group="register", preview=None,
       fixed=ImageInput("intensity", help="the reference image"),
       moving=ImageInput("intensity", help="the image whose landmarks are matched to the fixed ones"),
       fixed_landmarks=Points(role="fixed_landmarks", image="fixed", min_count=2,
                              help="landmarks clicked in the fixed image, in order"),
       moving_landmarks=Points(role="moving_landmarks", image="moving", min_count=2,
                               help="the same landmarks in the moving image, in the same order"),
       fixed_targets=Points(role="fixed_targets", image="fixed",
                            help="held-out targets in the fixed image (not used in the fit), for TRE"),
       moving_targets=Points(role="moving_targets", image="moving",
                             help="the same targets in the moving image"),
       transform=Choice(LANDMARK_TRANSFORMS, "rigid", help="rigid (6), similarity (7) or affine (12 degrees of freedom)"),
       outputs={"transform": TransformOut(help="fixed → moving transform"),
                "registered": ImageOut(grid="fixed", help="the moving image resampled on the fixed grid"),
                "errors": TableOut(help="FRE per landmark and TRE per held-out target, in mm")})
def landmark_register(fixed, moving, *, fixed_landmarks=(), moving_landmarks=(), fixed_targets=(),
                      moving_targets=(), transform="rigid"):
    """Register two images from paired landmarks, and report FRE per landmark and TRE at
    held-out targets.

    Parameters
    ----------
    fixed, moving : Image
        Images of the same dimension.
    fixed_landmarks, moving_landmarks : sequence of points
        Paired physical points (mm, LPS), in the same order: at least 3 non-collinear ones in
        3D (4 non-coplanar for affine).
    fixed_targets, moving_targets : sequence of points, optional
        Paired targets not used in the fit: their errors are the TRE.
    transform : {'rigid', 'similarity', 'affine'}

    Returns
    -------
    transform : Transform
    registered : Image
        The moving image on the fixed grid.
    errors : Table
        One row per landmark (``use`` = fiducial, ``error`` = FRE) and per target (``use`` =
        target, ``error`` = TRE); the last rows give the RMS of each.

    Examples
    --------
    >>> from medlab.data import registration_pair
    >>> pair = registration_pair(size=(48, 48, 24), spacing=(4, 4, 5))
    >>> r = landmark_register(pair.fixed, pair.moving, fixed_landmarks=pair.landmarks[:6],
    ...                       moving_landmarks=pair.moving_landmarks[:6])
    >>> max(r.errors.column("error")) < 1e-3
    True
    """
    check_pair(fixed, moving, "landmark_register")
    d = fixed.ndim
    f = _as_points(fixed_landmarks, "fixed_landmarks", d)
    m = _as_points(moving_landmarks, "moving_landmarks", d)
    t = fit_landmark_transform(f, m, transform)
    fre = target_registration_error(t, f, moving_points=m)
    rows = [{"point": f"landmark {i + 1}", "use": "fiducial", **_xyz(f[i]), "error": float(e)}
            for i, e in enumerate(fre)]
    ft, mt = (np.asarray(p, float).reshape(-1, d) if len(p) else np.zeros((0, d))
              for p in (_trim(fixed_targets, d), _trim(moving_targets, d)))
    if len(ft) != len(mt):
        raise ParameterError(f"landmark_register: {len(ft)} fixed targets but {len(mt)} moving targets; "
                             "give each target in both images")
    tre = target_registration_error(t, ft, moving_points=mt) if len(ft) else np.zeros(0)
    rows += [{"point": f"target {i + 1}", "use": "target", **_xyz(ft[i]), "error": float(e)} for i, e in enumerate(tre)]
    rows.append({"point": "RMS", "use": "fiducial", "error": float(np.sqrt(np.mean(fre ** 2)))})
    if len(tre):
        rows.append({"point": "RMS", "use": "target", "error": float(np.sqrt(np.mean(tre ** 2)))})
    f_grid, m_grid = grids(fixed, moving)
    out = Transform(t, fixed=f_grid, moving=m_grid, name=f"landmark {transform}")
    units = {"x": "mm", "y": "mm", "z": "mm", "error": "mm"}
    return out, registered_image(moving, fixed, t), Table(rows, units=units, title="landmark errors (FRE, TRE)")


def _trim(points, d: int):
    return [tuple(p)[:d] for p in points]


def _xyz(p) -> dict:
    return {a: float(v) for a, v in zip("xyz", p)}
