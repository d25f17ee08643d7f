"""Spot detection in millimetres: candidates, their features, matching to ground truth, FROC
curves and clusters.

Small bright spots (micro-calcifications on a mammogram, nodules on a CT slab, cells under a
microscope) are found in two steps, as in the computer-aided detection (CAD) literature: a
sensitive **candidate** detector that misses few spots and finds many false ones, then a
**classifier** on features of each candidate (an SVM, a small CNN) that removes most of the
false ones. Detectors are scored by **FROC** (free-response ROC): the fraction of true spots
found against the mean number of false detections per image, one point per threshold of the
classifier's score.

=========================  ===============================================================
stage / function           what it does
=========================  ===============================================================
``spot_candidates``        difference-of-Gaussians peaks (σ in mm), with a feature table
``cluster_findings``       groups detections into clusters; a findings table in mm
``spot_features``          the feature table of given points (what ``spot_candidates`` gives)
``match_points``           which true spot (if any) each detection hits, within a radius in mm
``froc_curve``             sensitivity against false positives per image; ``Froc`` reads it
``group_clusters``         cluster index of each point (single linkage, a distance in mm)
``extract_patches``        fixed-size patches around points (for a CNN), in the image's voxels
=========================  ===============================================================

Everything is in the image's physical space: σ, distances and sizes in mm, points in mm (LPS),
so the same settings work at any pixel size and on oblique or anisotropic grids.

Examples
--------
>>> import numpy as np, medlab
>>> from medlab.detect import spot_candidates, match_points, froc_curve
>>> p = medlab.data.mammogram(size=(256, 256), spacing=0.1, seed=1)
>>> candidates, features = spot_candidates(p.mammo, sigma_mm=0.1, threshold=4.0)
>>> truth = [c["centre_mm"] for c in p.info["calcifications"]]
>>> hits = match_points(candidates.points, truth, radius_mm=0.5)
>>> froc = froc_curve(features.column("dog_snr"), hits, n_lesions=len(truth), n_images=1)
>>> 0.0 <= froc.sensitivity_at(10.0) <= 1.0
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ImageError, ParameterError
from .image import Image
from .outputs import Curve, Table
from .stage import (
    Float,
    ImageInput,
    Int,
    Points,
    PointsOut,
    TableOut,
    progress,
    register_group,
    report,
    stage,
)

__all__ = ["FEATURES", "Froc", "cluster_findings", "extract_patches", "froc_curve", "group_clusters",
           "match_points", "spot_candidates", "spot_features"]

register_group("detect", __name__)

FEATURES = ("dog_snr", "dog_coarse", "contrast", "cnr", "size_mm", "background")
"""The feature columns of :func:`spot_features` a classifier reads (the table also has the
position and the candidate number):

* ``dog_snr`` - difference-of-Gaussians response at the spot scale, in robust standard
  deviations of that response over the image (or mask);
* ``dog_coarse`` - the same at 1.6× the scale: larger structures (a vessel, a texture blob)
  answer there as much as at the spot scale, a small spot less;
* ``contrast`` - smoothed peak value minus the median of a ring around it (image units);
* ``cnr`` - ``contrast`` over the robust standard deviation in that ring;
* ``size_mm`` - equivalent diameter (mm) of the connected region above half the contrast;
* ``background`` - the ring's median (dense tissue is brighter than fat).
"""

_MAD_TO_SD = 1.4826          # robust standard deviation = 1.4826 × median absolute deviation (Gaussian noise)
_SCALE_STEP = 1.6            # σ2/σ1 of the difference of Gaussians: Marr-Hildreth's ratio for a Laplacian of Gaussian


# ---------------------------------------------------------------------------- helpers
def _sigma_voxels(image: Image, sigma_mm: float) -> np.ndarray:
    """σ per array axis (z, y, x order) in voxels."""
    return sigma_mm / np.asarray(image.spacing, float)[::-1]


def _dog(array: np.ndarray, image: Image, sigma_mm: float) -> np.ndarray:
    from scipy import ndimage

    s = _sigma_voxels(image, sigma_mm)
    return ndimage.gaussian_filter(array, s) - ndimage.gaussian_filter(array, _SCALE_STEP * s)


def _robust_sd(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return _MAD_TO_SD * mad if mad > 0 else float(np.std(values))


def _ellipsoid(image: Image, radius_mm: float) -> np.ndarray:
    """Boolean footprint (array axis order) of a ball of ``radius_mm``, at least 3 voxels across."""
    r = np.maximum(radius_mm / np.asarray(image.spacing, float)[::-1], 1.0)
    half = np.floor(r).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij")
    return sum((g / ri) ** 2 for g, ri in zip(grids, r)) <= 1.0 + 1e-9


def _as_points(points, d: int, name: str) -> np.ndarray:
    if hasattr(points, "points") and hasattr(points, "role"):       # a PointSet
        points = points.points
    try:
        arr = np.asarray(points, float)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an (n, {d}) array of points in mm; got {points!r:.60}") from None
    if arr.size == 0:
        return np.zeros((0, d))
    if arr.ndim != 2 or arr.shape[1] != d or not np.all(np.isfinite(arr)):
        raise ParameterError(f"{name} must be an (n, {d}) array of finite points in mm; got shape {arr.shape}")
    return arr


def _voxel_index(image: Image, points: np.ndarray) -> np.ndarray:
    """Nearest voxel (array order z, y, x) of each physical point, clipped into the image."""
    idx = np.rint(image.physical_to_index(points)).astype(int)[:, ::-1]
    return np.clip(idx, 0, np.asarray(image.shape[: image.ndim]) - 1)


# ---------------------------------------------------------------------------- features
def spot_features(image: Image, points, *, sigma_mm: float = 0.1, ring_mm: float = 0.6,
                  scale: float | None = None) -> Table:
    """The feature table of spots at given points (mm): one row per point, the columns of
    :data:`FEATURES` plus the position (``x``, ``y``[, ``z``] in mm).

    Parameters
    ----------
    image : Image
        2D or 3D intensity image.
    points : (n, d) array or PointSet
        Spot centres in mm (LPS).
    sigma_mm : float
        The spot scale (as in :func:`spot_candidates`).
    ring_mm : float
        Inner radius (mm) of the background ring; the ring reaches 1.5× further.
    scale : float, optional
        The robust standard deviation of the DoG response used for ``dog_snr``; default: that
        of the whole image.

    Returns
    -------
    Table
        Units: positions, ``size_mm`` in mm; the rest in image units or standard deviations.

    Examples
    --------
    >>> import numpy as np, medlab
    >>> a = np.zeros((41, 41), np.float32); a[20, 20] = 1.0
    >>> img = medlab.Image(a, spacing=(0.1, 0.1))
    >>> row = spot_features(img, [img.index_to_physical([20, 20])], sigma_mm=0.1).rows[0]
    >>> row["contrast"] > 0, row["size_mm"] < 0.5
    (True, True)
    """
    from scipy import ndimage

    if sigma_mm <= 0 or ring_mm <= 0:
        raise ParameterError(f"spot_features: sigma_mm and ring_mm must be positive; got {sigma_mm}, {ring_mm}")
    d = image.ndim
    pts = _as_points(points, d, "points")
    a = np.asarray(image.array, np.float32)
    smooth = ndimage.gaussian_filter(a, _sigma_voxels(image, sigma_mm) / _SCALE_STEP)
    fine, coarse = _dog(a, image, sigma_mm), _dog(a, image, _SCALE_STEP * sigma_mm)
    if scale is None:
        scale = _robust_sd(fine)
    scale = scale if scale > 0 else 1.0
    idx = _voxel_index(image, pts)
    outer = _ellipsoid(image, 1.5 * ring_mm)
    half = np.array(outer.shape) // 2
    inner = np.zeros_like(outer)
    core = _ellipsoid(image, ring_mm)
    cut = tuple(slice(h - c // 2, h + c // 2 + 1) for h, c in zip(half, core.shape))
    inner[cut] = core
    ring = outer & ~inner
    voxel = float(np.prod(image.spacing))
    axes = "xyz"[:d]
    rows = []
    for i, (p, v) in enumerate(zip(pts, idx)):
        lo = v - half
        window = tuple(slice(max(0, l), min(n, l + s)) for l, n, s in zip(lo, a.shape, outer.shape))
        mask_cut = tuple(slice(w.start - l, w.stop - l) for w, l in zip(window, lo))
        patch, ring_here = smooth[window], ring[mask_cut]
        values = patch[ring_here] if ring_here.any() else patch.ravel()
        background = float(np.median(values))
        noise = _robust_sd(values)
        peak = float(smooth[tuple(v)])
        contrast = peak - background
        # size: the connected region above half the contrast that holds the peak (within the window)
        above = patch > background + 0.5 * contrast if contrast > 0 else np.zeros(patch.shape, bool)
        centre = tuple(int(c - w.start) for c, w in zip(v, window))
        labelled, _ = ndimage.label(above)
        n_vox = int(np.count_nonzero(labelled == labelled[centre])) if above[centre] else 0
        amount = n_vox * voxel
        size = 2 * np.sqrt(amount / np.pi) if d == 2 else (6 * amount / np.pi) ** (1 / 3)
        rows.append({"candidate": i + 1, **{a_: float(c) for a_, c in zip(axes, p)},
                     "dog_snr": float(fine[tuple(v)] / scale), "dog_coarse": float(coarse[tuple(v)] / scale),
                     "contrast": contrast, "cnr": contrast / noise if noise > 0 else 0.0,
                     "size_mm": float(size), "background": background})
    units = {**dict.fromkeys(axes, "mm"), "size_mm": "mm", "dog_snr": "SD", "dog_coarse": "SD"}
    return Table(rows, units=units, title="spot features")


# ---------------------------------------------------------------------------- candidates
@stage("Spot candidates (difference of Gaussians)", group="detect", preview=None, dims=(2, 3),
       image=ImageInput("intensity", help="the image to search (bright spots on a darker background)"),
       mask=ImageInput("label", optional=True, same_grid="image",
                       help="search only inside this label map (e.g. the breast); also where the noise is measured"),
       sigma_mm=Float(0.01, 50.0, 0.1, step=0.01, unit="mm", label="spot σ",
                      help="Gaussian scale matched to the spots, about their radius / √2: 0.1 mm for 0.1-0.5 mm "
                           "micro-calcifications (on mammogram phantoms it found more of them than 0.12 or 0.15 mm)"),
       threshold=Float(0.0, 100.0, 3.5, step=0.1, label="threshold (SD)",
                       help="keep peaks whose DoG response exceeds this many robust standard deviations of the "
                            "response: lower finds more spots, and many more false ones"),
       min_distance_mm=Float(0.0, 50.0, 0.3, step=0.05, unit="mm", label="min distance",
                             help="two peaks closer than this are one candidate (the stronger one)"),
       ring_mm=Float(0.05, 50.0, 0.6, step=0.05, unit="mm", label="background ring",
                     help="inner radius of the ring where each candidate's background and noise are measured"),
       outputs={"candidates": PointsOut(role="candidates", help="candidate centres (mm, LPS), strongest first"),
                "features": TableOut(help="one row per candidate: position (mm) and the features of "
                                          "medlab.detect.FEATURES")})
def spot_candidates(image, mask=None, *, sigma_mm=0.1, threshold=3.5, min_distance_mm=0.3, ring_mm=0.6):
    """Find bright spots: local maxima of a difference of Gaussians, scored in noise units.

    The image is filtered with two Gaussians (σ and 1.6σ, in mm per axis, so anisotropic voxels
    are handled) and their difference kept: a band-pass that answers most to spots about
    σ√2 in radius. Its local maxima (``skimage.feature.peak_local_max``, at least
    ``min_distance_mm`` apart) whose response exceeds ``threshold`` robust standard
    deviations (1.4826 × median absolute deviation of the response, over the mask) are the
    candidates; their features are measured by :func:`spot_features`.

    ``skimage.feature.blob_dog`` was not used: it returns no response value to rank or
    threshold candidates by, and sweeps scales that micro-calcifications (0.1-0.5 mm) do not need.

    Parameters
    ----------
    image : Image
        2D or 3D intensity image, any spacing and direction.
    mask : Image, optional
        Label map on the image's grid: candidates only where it is non-zero.
    sigma_mm, threshold, min_distance_mm, ring_mm : float
        See the declaration above (units: mm, and robust standard deviations).

    Returns
    -------
    candidates : PointSet
        Candidate centres in mm (LPS), strongest response first.
    features : Table
        One row per candidate, same order.

    Examples
    --------
    >>> import medlab
    >>> p = medlab.data.mammogram(size=(256, 256), spacing=0.1, seed=3)
    >>> candidates, features = spot_candidates(p.mammo, threshold=5.0)
    >>> len(candidates) == len(features), features.units["size_mm"]
    (True, 'mm')
    """
    from skimage.feature import peak_local_max

    a = np.asarray(image.array, np.float32)
    inside = None if mask is None else np.asarray(mask.array) != 0
    if inside is not None and not inside.any():
        raise ImageError("spot_candidates: the mask is empty; give a label map that covers the region to search")
    report(0.05, "difference of Gaussians")
    response = _dog(a, image, sigma_mm)
    scale = _robust_sd(response[inside] if inside is not None else response)
    if scale <= 0:                                   # a constant image: nothing stands out
        peaks = np.zeros((0, image.ndim), int)
    else:
        report(0.4, "peaks")
        footprint = _ellipsoid(image, min_distance_mm) if min_distance_mm > 0 else np.ones((3,) * image.ndim, bool)
        peaks = peak_local_max(response, footprint=footprint, threshold_abs=threshold * scale, exclude_border=False,
                               labels=None if inside is None else inside.astype(np.uint8))
        order = np.argsort(-response[tuple(peaks.T)], kind="stable") if len(peaks) else []
        peaks = peaks[order]
    points = image.index_to_physical(peaks[:, ::-1].astype(float)) if len(peaks) else np.zeros((0, image.ndim))
    report(0.7, "features")
    features = spot_features(image, points, sigma_mm=sigma_mm, ring_mm=ring_mm, scale=scale)
    features.title = f"spot candidates (σ {sigma_mm:g} mm, threshold {threshold:g} SD)"
    report(1.0, f"{len(points)} candidates")
    return points, features


# ---------------------------------------------------------------------------- matching and FROC
def match_points(points, truth, *, radius_mm: float | Sequence[float] = 0.5) -> np.ndarray:
    """Which true spot each detection hits: the index of the nearest true point within
    ``radius_mm`` (mm), or -1 (a false positive).

    Several detections may hit one true spot (:func:`froc_curve` counts it found once and
    does not count the others as false).

    Parameters
    ----------
    points, truth : (n, d) and (m, d) arrays, or PointSets
        Detections and true centres, in mm.
    radius_mm : float or sequence of m floats
        Hit distance: one for all, or one per true spot (e.g. a cluster's own radius).

    Examples
    --------
    >>> match_points([[0, 0], [5, 0], [0.3, 0.1]], [[0, 0], [10, 10]], radius_mm=0.5).tolist()
    [0, -1, 0]
    """
    p = np.asarray(getattr(points, "points", points), float)
    if p.size == 0:
        return np.zeros(0, int)
    p = _as_points(p, p.shape[-1], "points")
    t = _as_points(getattr(truth, "points", truth), p.shape[1], "truth")
    radii = np.asarray(radius_mm, float)
    radii = np.full(len(t), float(radii)) if radii.ndim == 0 else radii.reshape(-1)
    if len(radii) != len(t) or not np.all(np.isfinite(radii)) or np.any(radii <= 0):
        raise ParameterError(f"radius_mm must be a positive number or one per true point ({len(t)}); got {radius_mm!r:.60}")
    if len(t) == 0:
        return np.full(len(p), -1)
    dist = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=2) / radii[None, :]
    nearest = np.argmin(dist, axis=1)
    return np.where(dist[np.arange(len(p)), nearest] <= 1.0, nearest, -1)


@dataclass(frozen=True)
class Froc:
    """A FROC curve: at each score threshold (descending), the fraction of true spots found
    and the mean number of false positives per image.

    Attributes
    ----------
    thresholds, sensitivity, fp_per_image : ndarray
        One entry per distinct score, plus a first point (threshold +inf, nothing detected).
    n_lesions, n_images : int
    """

    thresholds: np.ndarray
    sensitivity: np.ndarray
    fp_per_image: np.ndarray
    n_lesions: int
    n_images: int

    def sensitivity_at(self, fp_rate: float) -> float:
        """The highest sensitivity reached with at most ``fp_rate`` false positives per image
        (no interpolation between thresholds: an operating point that exists)."""
        ok = self.fp_per_image <= fp_rate + 1e-12
        return float(self.sensitivity[ok].max()) if ok.any() else 0.0

    def threshold_at(self, fp_rate: float) -> float:
        """The lowest score threshold with at most ``fp_rate`` false positives per image."""
        ok = np.flatnonzero(self.fp_per_image <= fp_rate + 1e-12)
        return float(self.thresholds[ok[-1]])

    def cpm(self, rates: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)) -> float:
        """Mean sensitivity at several false-positive rates (the competition performance metric
        of ANODE09 and LUNA16, on their rates by default)."""
        return float(np.mean([self.sensitivity_at(r) for r in rates]))

    def to_curve(self, series: str = "detector", curve: Curve | None = None) -> Curve:
        """The curve as a :class:`~medlab.outputs.Curve` (x: FP per image, y: sensitivity), for
        plots and reports; several detectors go in one curve as several series."""
        curve = curve or Curve("FROC", x_label="false positives per image", y_label="sensitivity")
        for x, y in zip(self.fp_per_image, self.sensitivity):
            curve.append(series, float(x), float(y))
        return curve

    def table(self, rates: Sequence[float] = (0.125, 0.25, 0.5, 1, 2, 4, 8)) -> Table:
        """Sensitivity and threshold at each false-positive rate."""
        rows = [{"FP per image": float(r), "sensitivity": self.sensitivity_at(r),
                 "threshold": self.threshold_at(r)} for r in rates]
        return Table(rows, title=f"FROC ({self.n_lesions} lesions, {self.n_images} images)")


def froc_curve(scores, hits, *, n_lesions: int, n_images: int) -> Froc:
    """The FROC curve of scored detections pooled over ``n_images`` images.

    A true spot counts as found at a threshold when at least one detection with a score at
    or above it hits it; a detection that hits no true spot is a false positive; further
    detections of an already found spot count neither way (as in the LUNA16 evaluation).

    Parameters
    ----------
    scores : sequence of float
        One score per detection (higher: more likely true), over all images.
    hits : sequence of int
        For each detection, the true spot it hits (from :func:`match_points`, with indices made
        unique across images), or -1.
    n_lesions : int
        True spots over all images, found or not: the sensitivity's denominator.
    n_images : int
        Images the detections come from.

    Returns
    -------
    Froc

    Examples
    --------
    >>> f = froc_curve([0.9, 0.8, 0.6], [0, -1, 1], n_lesions=4, n_images=2)
    >>> f.sensitivity.tolist(), f.fp_per_image.tolist()
    ([0.0, 0.25, 0.25, 0.5], [0.0, 0.0, 0.5, 0.5])
    >>> f.sensitivity_at(0.25)
    0.25
    """
    s = np.asarray(scores, float).reshape(-1)
    h = np.asarray(hits).reshape(-1)
    if len(s) != len(h):
        raise ParameterError(f"froc_curve: {len(s)} scores but {len(h)} hits; give one of each per detection")
    if not np.all(np.isfinite(s)):
        raise ParameterError("froc_curve: scores must be finite numbers (a NaN score cannot be ranked)")
    if h.size and (h.dtype.kind not in "iu" and not np.array_equal(h, np.round(h))):
        raise ParameterError("froc_curve: hits must be integers (a true spot index, or -1)")
    h = h.astype(int)
    for name, v, lo in (("n_lesions", n_lesions, 1), ("n_images", n_images, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ParameterError(f"froc_curve: {name} must be an integer >= {lo}; got {v!r}")
    if h.size and (h.min() < -1 or h.max() >= n_lesions):
        raise ParameterError(f"froc_curve: hits must be -1 or a true spot index below n_lesions={n_lesions}; "
                             f"got values from {h.min()} to {h.max()}")
    order = np.argsort(-s, kind="stable")
    s, h = s[order], h[order]
    seen = np.zeros(n_lesions, bool)
    first = np.zeros(len(h), bool)
    for i, lesion in enumerate(h):
        if lesion >= 0 and not seen[lesion]:
            seen[lesion] = first[i] = True
    found, false = np.cumsum(first), np.cumsum(h < 0)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.zeros(0, int)   # last of each tie
    return Froc(thresholds=np.r_[np.inf, s[ends]], sensitivity=np.r_[0.0, found[ends] / n_lesions],
                fp_per_image=np.r_[0.0, false[ends] / n_images], n_lesions=int(n_lesions), n_images=int(n_images))


# ---------------------------------------------------------------------------- clusters
def group_clusters(points, *, max_distance_mm: float = 5.0, min_count: int = 3) -> np.ndarray:
    """Cluster index of each point (0, 1 ...), or -1 for points in no cluster.

    Points closer than ``max_distance_mm`` are linked, and linked chains are clusters
    (single linkage, :func:`scipy.cluster.hierarchy.fcluster`); a cluster needs at least
    ``min_count`` points. The CAD literature on micro-calcifications commonly calls three or
    more within about 1 cm a cluster. Clusters are numbered by size, largest first.

    Examples
    --------
    >>> group_clusters([[0, 0], [1, 0], [2, 0], [20, 0], [40, 0]], max_distance_mm=1.5).tolist()
    [0, 0, 0, -1, -1]
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    if not (np.isfinite(max_distance_mm) and max_distance_mm > 0):
        raise ParameterError(f"max_distance_mm must be a positive distance in mm; got {max_distance_mm!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ParameterError(f"min_count must be an integer >= 1; got {min_count!r}")
    p = np.asarray(getattr(points, "points", points), float)
    if p.size == 0:
        return np.zeros(0, int)
    p = _as_points(p, p.shape[1] if p.ndim == 2 else 2, "points")
    raw = np.zeros(1, int) if len(p) == 1 else fcluster(linkage(p, "single"), t=max_distance_mm, criterion="distance")
    ids, counts = np.unique(raw, return_counts=True)
    keep = [(c, i) for i, c in zip(ids, counts) if c >= min_count]
    keep.sort(key=lambda ci: (-ci[0], ci[1]))
    out = np.full(len(p), -1)
    for new, (_, old) in enumerate(keep):
        out[raw == old] = new
    return out


def _hull_measure(points: np.ndarray) -> float:
    """Area (2D) or volume (3D) of the convex hull, 0 for degenerate (collinear) point sets."""
    from scipy.spatial import ConvexHull, QhullError

    if len(points) <= points.shape[1]:
        return 0.0
    try:
        return float(ConvexHull(points).volume)
    except QhullError:
        return 0.0


@stage("Cluster findings", group="detect", preview=None, dims=(2, 3),
       image=ImageInput("intensity", help="the image the detections were found in"),
       detections=Points(role="detections", image="image", help="detected spots (mm), e.g. the candidates a "
                                                                  "classifier kept"),
       max_distance_mm=Float(0.1, 100.0, 5.0, step=0.5, unit="mm", label="link distance",
                             help="spots closer than this belong to one cluster (single linkage)"),
       min_count=Int(1, 100, 3, label="spots per cluster", help="fewest spots that make a cluster"),
       outputs={"clusters": PointsOut(role="clusters", help="cluster centres (mm, LPS), largest cluster first"),
                "findings": TableOut(help="one row per cluster: spots, centre, extent and hull size in mm")})
def cluster_findings(image, *, detections=(), max_distance_mm=5.0, min_count=3):
    """Group detected spots into clusters, and describe each in mm: a structured findings table.

    Parameters
    ----------
    image : Image
        The image the spots were detected in (2D or 3D): the points must lie inside it.
    detections : sequence of points
        Spot centres in mm (LPS).
    max_distance_mm : float
        Link distance of :func:`group_clusters`.
    min_count : int
        Fewest spots per cluster.

    Returns
    -------
    clusters : PointSet
        Cluster centres (mean of their spots), largest first.
    findings : Table
        Per cluster: ``spots``, centre (``x``, ``y``[, ``z``] mm), ``extent_mm`` (largest distance
        between the centres of two of its spots), ``hull_area_mm2`` (2D) or ``hull_volume_mm3``
        (3D) of the spots' convex hull, and ``spots_per_cm2`` / ``spots_per_cm3`` in that hull
        (None when the spots are on a line: no area).

    Examples
    --------
    >>> import numpy as np, medlab
    >>> img = medlab.Image(np.zeros((100, 100), np.float32), spacing=(0.1, 0.1))
    >>> clusters, findings = cluster_findings(img, detections=[(1, 1), (1.5, 1), (1, 1.5), (8, 8)])
    >>> len(clusters), findings.rows[0]["spots"]
    (1, 3)
    """
    d = image.ndim
    pts = np.array([p[:d] for p in detections], float).reshape(-1, d)
    ids = group_clusters(pts, max_distance_mm=max_distance_mm, min_count=min_count)
    axes = "xyz"[:d]
    size_key, density_key = ("hull_area_mm2", "spots_per_cm2") if d == 2 else ("hull_volume_mm3", "spots_per_cm3")
    per_cm = 100.0 if d == 2 else 1000.0
    centres, rows = [], []
    for k in progress(range(int(ids.max()) + 1 if ids.size else 0), desc="clusters"):
        members = pts[ids == k]
        centre = members.mean(axis=0)
        spread = np.linalg.norm(members[:, None] - members[None], axis=2).max() if len(members) > 1 else 0.0
        hull = _hull_measure(members)
        centres.append(centre)
        rows.append({"cluster": k + 1, "spots": len(members), **{a: float(c) for a, c in zip(axes, centre)},
                     "extent_mm": float(spread), size_key: hull,
                     density_key: float(len(members) / hull * per_cm) if hull > 0 else None})
    units = {**dict.fromkeys(axes, "mm"), "extent_mm": "mm", size_key: "mm²" if d == 2 else "mm³",
             density_key: "per cm²" if d == 2 else "per cm³"}
    table = Table(rows, units=units, title=f"clusters (≥ {min_count} spots within {max_distance_mm:g} mm links)")
    return (np.array(centres) if centres else np.zeros((0, d))), table


# ---------------------------------------------------------------------------- patches
def extract_patches(image: Image, points, *, size: int | Sequence[int] = 16) -> np.ndarray:
    """Patches of the image's voxels centred on points (mm), for a CNN: ``(n, *size)`` float32
    in array order, borders repeated (edge padding) where a patch leaves the image.

    ``size`` is in voxels (per array axis, or one number for all): a network sees voxels, so
    use images of one pixel size for training and use.

    Examples
    --------
    >>> import numpy as np, medlab
    >>> img = medlab.Image(np.arange(100, dtype=np.float32).reshape(10, 10))
    >>> extract_patches(img, [(0.0, 0.0), (5.0, 5.0)], size=4).shape
    (2, 4, 4)
    """
    d = image.ndim
    shape = np.broadcast_to(np.asarray(size, int), (d,))
    if np.any(shape < 1):
        raise ParameterError(f"patch size must be at least one voxel per axis; got {size!r}")
    pts = _as_points(points, d, "points")
    half = shape // 2
    a = np.asarray(image.array, np.float32)
    padded = np.pad(a, [(int(h), int(s - h)) for h, s in zip(half, shape)], mode="edge")
    idx = _voxel_index(image, pts)
    out = np.empty((len(pts), *shape), np.float32)
    for i, v in enumerate(idx):                  # v - half + half (the padding): the start in the padded array
        out[i] = padded[tuple(slice(int(c), int(c + s)) for c, s in zip(v, shape))]
    return out
