"""Region growing from seeds given in mm: connected threshold, confidence connected,
neighbourhood connected.

Each method keeps the voxels whose intensity lies in an interval **and** that are connected
to a seed (through voxels that also qualify). Seeds are physical points (mm, LPS), so they
land on the same anatomy on any grid, a one-slice preview slab included.

Background points (a separate role, clicked in another colour) are what the region must
not reach. In every method here they do two things:

* they **cap the interval**: on each side, the interval stops halfway between the seeds'
  intensity and the nearest background intensity on that side (the decision boundary
  between two equally noisy classes), and
* their voxels are **excluded** from the region.

A foreground seed on the same voxel as a background point, a background point whose
intensity lies within the seeds' range, or a seed that the capped interval leaves out (the
seed lies in what counts as background) is refused with a :class:`~medlab.errors.ParameterError`
naming the point. So is any point outside the image (checked by the stage wrapper).

Why not SimpleITK's ``ConnectedThreshold`` / ``ConfidenceConnected`` /
``NeighborhoodConnected`` filters directly: they take no background points, and
``ConfidenceConnected`` takes one neighbourhood radius in voxels for all axes (13 mm
through-plane on a 6.5 mm-slice MRI for a 2-voxel radius). The algorithms are the same
(ITK's definitions): an interval, then the components that hold a seed, done with a mask and
cc3d (8x faster than ``ConnectedThreshold`` on large regions, see ``_common``).
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..image import Image
from ..stage import Choice, Float, Int, LabelOut, Points, report, stage
from ._common import (
    CONNECTIVITY,
    capped_interval,
    check_seeds_apart,
    check_seeds_inside,
    components_at,
    intensity_units,
    neighbourhood,
    point_indices,
    radius_voxels,
    region_label,
    where,
)

__all__ = ["confidence_connected", "connected_threshold", "neighbourhood_connected"]


def _seeds() -> Points:
    return Points(role="seeds", image="image", min_count=1,
                  help="foreground seeds inside the structure, in mm (LPS)")


def _background() -> Points:
    return Points(role="background", image="image",
                  help="points the region must not reach: they cap the interval halfway to their intensity")


def _tolerance() -> Float:
    return Float(1e-3, 1e5, 100.0, step=0.01, log=True,
                 help="how far (image units: HU for CT, ~0.1 for phantoms in [0, 1]) an intensity may lie "
                      "below the darkest seed or above the brightest one")


def _connectivity() -> Choice:
    return Choice(CONNECTIVITY, "face",
                  help="voxels join the region through a shared face (6 neighbours in 3D) or also "
                       "through edges and corners (26)")


def _values(image: Image, points) -> list[float]:
    return [float(image.array[i]) for i in point_indices(image, points)]


def _grow(image: Image, lower: float, upper: float, seeds, background, connectivity: str,
          qualifies: np.ndarray | None = None) -> np.ndarray:
    """Voxels in ``[lower, upper]`` (or ``qualifies``), minus background points, connected to a seed."""
    a = image.array
    mask = (a >= lower) & (a <= upper) if qualifies is None else qualifies.copy()
    for i in point_indices(image, background):
        mask[i] = False
    return components_at(mask, point_indices(image, seeds), connectivity)


def _erode(inside: np.ndarray, radius: tuple[int, ...]) -> np.ndarray:
    """Voxels whose whole ellipsoid of ``radius`` (voxels, array order) lies in ``inside``, the
    image's edge repeated beyond it: the same voxels as ``minimum_filter(inside, footprint=ball(radius),
    mode="nearest")``, but by one distance transform. The filter visits the whole footprint at
    every voxel (a 10 mm radius on 0.5 mm voxels: 10⁵ visits per voxel, hours on a CT; a fine grid
    ran out of memory).

    An outside voxel at offset g is in the ellipsoid when sum((g_i / r_i)²) <= 1, i.e. at
    distance <= 1 with sampling 1 / r_i: a voxel qualifies when its nearest outside voxel is
    farther. Repeating the edge adds no outside voxel nearer than one in the image (clamping a
    position into the image brings each coordinate closer), so only voxels in the image count.
    """
    from scipy import ndimage

    if inside.all():
        return inside.copy()
    if not inside.any():
        return inside.copy()
    # axes of radius 0 admit no offset along them: a sampling so large that any step leaves the ball
    sampling = [1.0 / v if v else 1e6 for v in radius]
    distance = ndimage.distance_transform_edt(inside, sampling=sampling)
    return distance > 1.0 + 1e-9


def _name(image: Image, lower: float, upper: float) -> str:
    return f"region ({lower:.4g} to {upper:.4g}{intensity_units(image)})"


@stage("Region growing: connected threshold", group="segment", preview="slice",
       seeds=_seeds(), background=_background(), tolerance=_tolerance(), connectivity=_connectivity(),
       outputs={"labels": LabelOut()})
def connected_threshold(image: Image, *, seeds=(), background=(), tolerance: float = 100.0,
                        connectivity: str = "face") -> Image:
    """Grow a region from seeds through voxels within ``tolerance`` of the seeds' intensities.

    The interval is ``[min(seed values) - tolerance, max(seed values) + tolerance]``, the
    seed values being the intensities of the seeds' voxels, capped by the background points
    (see the module's notes), and the region is every voxel in the interval connected to a
    seed. Moving the tolerance slider grows or shrinks it.

    Parameters
    ----------
    image : Image
    seeds : sequence of points
        At least one point (x, y, z) in mm (LPS) inside the structure.
    background : sequence of points
        Points the region must not reach.
    tolerance : float
        In the image's units (HU for CT; phantoms are in [0, 1], try 0.1).
    connectivity : {'face', 'full'}

    Returns
    -------
    Image
        Label map with label 1 (the region); ``metadata["thresholds"]`` holds the interval.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.pad(np.full((3, 3), 10.0), 2), spacing=(0.5, 0.5))
    >>> out = connected_threshold(img, seeds=[(1.5, 1.5)], tolerance=2.0)
    >>> int(out.array.sum()), out.labels[1].name
    (9, 'region (8 to 12)')
    """
    check_seeds_apart("connected_threshold", image, seeds, background)
    v = _values(image, seeds)
    lower, upper = capped_interval("connected_threshold", image, min(v) - tolerance, max(v) + tolerance, v,
                                   _values(image, background))
    region = _grow(image, lower, upper, seeds, background, connectivity)
    return region_label(image, region, _name(image, lower, upper), thresholds=(lower, upper),
                        method="connected threshold")


def _statistics(image: Image, points, radius_mm: float) -> tuple[float, float]:
    """Mean and standard deviation of the voxels within ``radius_mm`` of the points."""
    r = radius_voxels(image, radius_mm)
    values = np.concatenate([neighbourhood(image, i, r) for i in point_indices(image, points)])
    return float(values.mean()), float(values.std())


@stage("Region growing: confidence connected", group="segment", preview="slice",
       seeds=_seeds(), background=_background(),
       multiplier=Float(0.1, 10.0, 2.5, step=0.1,
                        help="the interval is the mean ± multiplier × standard deviation"),
       iterations=Int(0, 20, 4, help="times the statistics are re-estimated from the grown region"),
       radius=Float(0.0, 20.0, 2.0, step=0.5, unit="mm",
                    help="neighbourhood of each seed whose intensities give the first statistics"),
       connectivity=_connectivity(), outputs={"labels": LabelOut()})
def confidence_connected(image: Image, *, seeds=(), background=(), multiplier: float = 2.5,
                         iterations: int = 4, radius: float = 2.0, connectivity: str = "face") -> Image:
    """Grow a region whose interval comes from intensity statistics, first of the seeds'
    neighbourhoods, then of the region itself (ITK's confidence connected).

    1. Mean ``m`` and standard deviation ``s`` of the voxels within ``radius`` mm of the
       seeds (an ellipsoid in voxels, so anisotropic voxels are handled).
    2. Interval ``m ± multiplier × s``, widened to hold every seed's own intensity and capped
       by the background points (halfway between ``m`` and the mean around each background
       point, ``radius`` mm too); the region is what is in the interval and connected to a seed.
    3. ``iterations`` times: ``m`` and ``s`` again from the region, and step 2 again.

    Parameters
    ----------
    image : Image
    seeds, background : sequence of points
        In mm (LPS).
    multiplier : float
    iterations : int
    radius : float
        In mm; 0 takes only the seed voxels.
    connectivity : {'face', 'full'}

    Returns
    -------
    Image
        Label map with label 1; ``metadata["thresholds"]`` holds the last interval.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> rng = np.random.default_rng(0)
    >>> arr = rng.normal(0, 1, (40, 40)); arr[10:30, 10:30] += 20
    >>> out = confidence_connected(Image(arr), seeds=[(20, 20)], radius=3)
    >>> int(out.array.sum())  # a few noisy voxels beyond 2.5 σ stay out: fill_holes takes them in
    386
    """
    stage_name = "confidence_connected"
    check_seeds_apart(stage_name, image, seeds, background)
    v = _values(image, seeds)
    mean, std = _statistics(image, seeds, radius)
    bg = [_statistics(image, [b], radius)[0] for b in background]
    lower = upper = 0.0
    region = None
    for it in range(iterations + 1):
        report(it / (iterations + 1), "confidence connected")
        lower = min(mean - multiplier * std, min(v))
        upper = max(mean + multiplier * std, max(v))
        for i, b in enumerate(bg, 1):
            if abs(b - mean) < 1e-12 * max(1.0, abs(mean)):
                raise ParameterError(
                    f"{stage_name}: background point {i} at {where(background[i - 1])} has the same mean intensity "
                    f"({b:.4g}{intensity_units(image)}) as the region; it cannot be told apart. Move it")
            if b < mean:
                lower = max(lower, (b + mean) / 2)
            else:
                upper = min(upper, (b + mean) / 2)
        mask = (image.array >= lower) & (image.array <= upper)
        check_seeds_inside(stage_name, image, seeds, mask, lower, upper, background)
        region = _grow(image, lower, upper, seeds, background, connectivity)
        values = np.asarray(image.array[region], dtype=np.float64)
        new = (float(values.mean()), float(values.std()))
        if it and new == (mean, std):
            break  # converged: the next interval would be the same
        mean, std = new
    report(1.0, "confidence connected")
    return region_label(image, region, _name(image, lower, upper), thresholds=(lower, upper),
                        method="confidence connected")


@stage("Region growing: neighbourhood connected", group="segment", preview="slice",
       seeds=_seeds(), background=_background(), tolerance=_tolerance(),
       radius=Float(0.0, 10.0, 1.0, step=0.25, unit="mm",
                    help="a voxel joins only if every voxel within this radius is in the interval"),
       connectivity=_connectivity(), outputs={"labels": LabelOut()})
def neighbourhood_connected(image: Image, *, seeds=(), background=(), tolerance: float = 100.0,
                            radius: float = 1.0, connectivity: str = "face") -> Image:
    """Like :func:`connected_threshold`, but a voxel joins only when its whole neighbourhood
    is in the interval, so the region does not leak through thin bridges or noisy voxels.

    The interval is that of :func:`connected_threshold` (seed intensities ± ``tolerance``,
    capped by the background points). The neighbourhood is an ellipsoid of ``radius`` mm in
    voxels along each axis (so 1 mm reaches no neighbour across 6 mm slices); at the image's
    border the edge voxels are repeated (ITK's boundary rule).

    Parameters
    ----------
    image : Image
    seeds, background : sequence of points
        In mm (LPS).
    tolerance : float
        In the image's units.
    radius : float
        In mm.
    connectivity : {'face', 'full'}

    Returns
    -------
    Image
        Label map with label 1.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> arr = np.zeros((20, 40)); arr[5:15, 2:12] = arr[5:15, 28:38] = 10; arr[10, 12:28] = 10  # two blobs, a bridge
    >>> img = Image(arr)
    >>> int(connected_threshold(img, seeds=[(6, 10)], tolerance=1).array.sum())
    216
    >>> int(neighbourhood_connected(img, seeds=[(6, 10)], tolerance=1, radius=1).array.sum())
    65
    """
    stage_name = "neighbourhood_connected"
    check_seeds_apart(stage_name, image, seeds, background)
    v = _values(image, seeds)
    lower, upper = capped_interval(stage_name, image, min(v) - tolerance, max(v) + tolerance, v,
                                   _values(image, background))
    inside = (image.array >= lower) & (image.array <= upper)
    r = radius_voxels(image, radius)
    qualifies = _erode(inside, r) if any(r) else inside
    for i, (s, idx) in enumerate(zip(seeds, point_indices(image, seeds)), 1):
        if not qualifies[idx]:
            raise ParameterError(
                f"{stage_name}: seed {i} at {where(s)} has intensities outside {lower:.4g} to {upper:.4g}"
                f"{intensity_units(image)} within {radius:g} mm, so the region cannot start there. Move the seed "
                "into the structure, raise the tolerance or reduce the radius")
    region = _grow(image, lower, upper, seeds, background, connectivity, qualifies=qualifies)
    return region_label(image, region, _name(image, lower, upper), thresholds=(lower, upper),
                        method="neighbourhood connected")
