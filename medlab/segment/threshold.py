"""Threshold segmentation: manual levels, Otsu, multi-Otsu, Li, triangle, CT presets in HU.

Every stage returns a label map on the input's grid; the threshold(s) it used are in
``labels.metadata["thresholds"]`` (image units), so a widget can mark them on the histogram.
Automatic thresholds depend on the voxels they see: on a one-slice preview they come from
that slice, on Apply from the whole volume.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image, label_color
from ..stage import Choice, Float, Int, LabelOut, report, stage
from ._common import check_not_constant, intensity_units, label_map, region_label

__all__ = ["CT_HU_RANGES", "ct_threshold", "li_threshold", "multi_otsu_threshold", "otsu_threshold",
           "threshold", "triangle_threshold"]


CT_HU_RANGES: dict[str, tuple[float, float]] = {
    # Aerated lung. -400 HU separates lung from soft tissue (Hu et al., IEEE TMI 2001, find
    # optimal thresholds between -500 and -400 HU); stopping at -950 HU leaves out most of the
    # air around the body (-1000 HU), and with it emphysema, which needs its own range.
    "lung": (-950.0, -400.0),
    # Adipose tissue, the usual body-composition range (Yoshizumi et al., Radiology 1999).
    "fat": (-190.0, -30.0),
    # Muscle and other non-fat soft tissue, the body-composition range beside fat
    # (Mitsiopoulos et al., J Appl Physiol 1998); unenhanced blood and organs fall in it too.
    "soft_tissue": (-29.0, 150.0),
    # Cortical and most trabecular bone; contrast-filled vessels can exceed 250 HU.
    "bone": (250.0, np.inf),
}
"""Preset HU intervals of :func:`ct_threshold` (lower, upper; inclusive)."""


MAX_MULTI_OTSU_SEARCH = 2**32
"""Largest multi-Otsu search, ``bins ** (classes - 1)`` (about 12 s on two cores)."""


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@stage("Threshold (manual)", group="segment", preview="slice",
       mode=Choice(("above", "below", "between"), "above",
                   help="keep voxels at or above `lower`, at or below `upper`, or between the two"),
       lower=Float(-1e6, 1e6, 0.0, step=1.0, help="lower intensity level (image units: HU for CT)"),
       upper=Float(-1e6, 1e6, 1000.0, step=1.0, help="upper intensity level (image units)"),
       outputs={"labels": LabelOut()})
def threshold(image: Image, *, mode: str = "above", lower: float = 0.0, upper: float = 1000.0) -> Image:
    """Label the voxels whose intensity passes one or two levels you choose.

    Parameters
    ----------
    image : Image
    mode : {'above', 'below', 'between'}
        ``'above'``: ``value >= lower``; ``'below'``: ``value <= upper``; ``'between'``:
        ``lower <= value <= upper``.
    lower, upper : float
        Levels in the image's units (HU for CT).

    Returns
    -------
    Image
        Label map (uint8) on the input grid: 1 where the voxel passes, 0 elsewhere;
        ``metadata["thresholds"]`` holds the level(s) used.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.array([[0.0, 50.0, 100.0]]))
    >>> threshold(img, mode="between", lower=40, upper=60).array.tolist()
    [[0, 1, 0]]
    """
    if mode == "between" and lower > upper:
        raise ParameterError(f"threshold: lower ({_fmt(lower)}) must not exceed upper ({_fmt(upper)}) in mode "
                             "'between'; swap them")
    a = image.array
    units = intensity_units(image)
    if mode == "above":
        mask, name, levels = a >= lower, f"≥ {_fmt(lower)}{units}", (lower,)
    elif mode == "below":
        mask, name, levels = a <= upper, f"≤ {_fmt(upper)}{units}", (upper,)
    else:
        mask, name, levels = (a >= lower) & (a <= upper), f"{_fmt(lower)} to {_fmt(upper)}{units}", (lower, upper)
    return region_label(image, mask, name, thresholds=tuple(float(v) for v in levels), method="manual")


def _sample(image: Image) -> np.ndarray:
    """The voxels as float64 for histogram thresholds (at most ~4 million of them, evenly taken)."""
    a = np.asarray(image.array).reshape(-1)
    step = max(1, a.size // 4_000_000)
    return a[::step].astype(np.float64)


def _above(image: Image, value: float, side: str, method: str) -> Image:
    units = intensity_units(image)
    if side == "above":
        mask, name = image.array > value, f"above {_fmt(value)}{units} ({method})"
    else:
        mask, name = image.array <= value, f"at or below {_fmt(value)}{units} ({method})"
    return region_label(image, mask, name, thresholds=(float(value),), method=method.lower())


def _side() -> Choice:
    return Choice(("above", "below"), "above",
                  help="label the bright side of the threshold (above) or the dark side (below)")


def _bins() -> Int:
    return Int(16, 4096, 256, step=16, help="histogram bins")


@stage("Otsu threshold", group="segment", preview="slice", side=_side(), bins=_bins(),
       outputs={"labels": LabelOut()})
def otsu_threshold(image: Image, *, side: str = "above", bins: int = 256) -> Image:
    """Split the histogram in two classes with the least within-class variance (Otsu, 1979).

    :func:`skimage.filters.threshold_otsu`. Works when the histogram has two clear peaks
    (object and background); a large dark background pulls the threshold down.

    Parameters
    ----------
    image : Image
    side : {'above', 'below'}
        Label voxels above the threshold (bright objects) or at and below it (dark ones).
    bins : int
        Histogram bins.

    Returns
    -------
    Image
        Label map with label 1; ``metadata["thresholds"]`` holds Otsu's threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.r_[np.zeros(50), np.ones(50) * 10].reshape(10, 10))
    >>> int(otsu_threshold(img).array.sum())
    50
    """
    from skimage.filters import threshold_otsu

    check_not_constant("otsu_threshold", image)
    return _above(image, float(threshold_otsu(_sample(image), nbins=bins)), side, "Otsu")


@stage("Li threshold", group="segment", preview="slice", side=_side(), outputs={"labels": LabelOut()})
def li_threshold(image: Image, *, side: str = "above") -> Image:
    """The threshold of minimum cross-entropy between the image and its two-level version (Li
    and Lee, 1993; iterative form of Li and Tam, 1998).

    :func:`skimage.filters.threshold_li`, started from the mean. Less pulled by a large
    background than Otsu's when the object is small.

    Parameters
    ----------
    image : Image
    side : {'above', 'below'}

    Returns
    -------
    Image
        Label map with label 1; ``metadata["thresholds"]`` holds Li's threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.r_[np.zeros(80), np.ones(20) * 10].reshape(10, 10))
    >>> int(li_threshold(img).array.sum())
    20
    """
    from skimage.filters import threshold_li

    check_not_constant("li_threshold", image)
    sample = _sample(image)
    # skimage's default start (mean) is deterministic; give it explicitly so it never changes
    return _above(image, float(threshold_li(sample, initial_guess=float(sample.mean()))), side, "Li")


@stage("Triangle threshold", group="segment", preview="slice", side=_side(), bins=_bins(),
       outputs={"labels": LabelOut()})
def triangle_threshold(image: Image, *, side: str = "above", bins: int = 256) -> Image:
    """The threshold farthest from the line joining the histogram's peak to its far end
    (Zack et al., 1977).

    :func:`skimage.filters.threshold_triangle`. Suited to one dominant peak (background) with
    a long, low tail (the object), e.g. bright lesions or calcifications.

    Parameters
    ----------
    image : Image
    side : {'above', 'below'}
    bins : int

    Returns
    -------
    Image
        Label map with label 1; ``metadata["thresholds"]`` holds the triangle threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> rng = np.random.default_rng(0)
    >>> img = Image(np.r_[rng.normal(0, 1, 900), np.linspace(5, 50, 100)].reshape(10, 100))
    >>> 80 <= int(triangle_threshold(img).array.sum()) <= 110
    True
    """
    from skimage.filters import threshold_triangle

    check_not_constant("triangle_threshold", image)
    return _above(image, float(threshold_triangle(_sample(image), nbins=bins)), side, "triangle")


@stage("Multi-Otsu thresholds", group="segment", preview="slice",
       classes=Int(2, 5, 3, help="number of intensity classes (one fewer thresholds)"),
       bins=_bins(), outputs={"labels": LabelOut()})
def multi_otsu_threshold(image: Image, *, classes: int = 3, bins: int = 256) -> Image:
    """Split the histogram into several classes with the least within-class variance (Liao et
    al., 2001).

    :func:`skimage.filters.threshold_multiotsu`. The darkest class is label 0 (unlabelled,
    usually air or background); the brighter classes are labels 1, 2, ...

    Parameters
    ----------
    image : Image
    classes : int
        Number of classes, 2 to 5 (the search grows as ``bins ** (classes - 1)``).
    bins : int

    Returns
    -------
    Image
        Label map with labels ``1 .. classes - 1`` named by their intensity range;
        ``metadata["thresholds"]`` holds the ``classes - 1`` thresholds.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.repeat([0.0, 5.0, 10.0], 30).reshape(9, 10))
    >>> np.bincount(multi_otsu_threshold(img, classes=3).array.ravel()).tolist()
    [30, 30, 30]
    """
    from skimage.filters import threshold_multiotsu

    check_not_constant("multi_otsu_threshold", image)
    # skimage searches every combination of bins: bins ** (classes - 1) of them. 256 bins in
    # 5 classes (2**32) took 12 s on this machine; 4096 bins in 5 classes would take days.
    if bins ** (classes - 1) > MAX_MULTI_OTSU_SEARCH:
        most = int(MAX_MULTI_OTSU_SEARCH ** (1 / (classes - 1)) + 1e-9) // 16 * 16
        raise ParameterError(f"multi_otsu_threshold: {classes} classes in {bins} bins is a search of {bins}^"
                             f"{classes - 1} combinations (hours); use at most {most} bins for {classes} classes")
    sample = _sample(image)
    report(0.0, "multi-Otsu")
    try:
        levels = [float(t) for t in threshold_multiotsu(sample, classes=classes, nbins=bins)]
    except ValueError as exc:  # skimage: "the input image has only N different values"
        raise ImageError(f"multi_otsu_threshold: {exc}; ask for fewer classes or more bins") from None
    report(1.0, "multi-Otsu")
    out = np.digitize(image.array, levels).astype(np.uint8)  # class k: levels[k-1] <= value < levels[k]
    units = intensity_units(image)
    edges = [-np.inf, *levels, np.inf]
    names = {}
    for k in range(1, classes):
        hi = f" to {_fmt(edges[k + 1])}" if k < classes - 1 else " and above"
        names[k] = (f"class {k + 1}: {_fmt(edges[k])}{hi}{units}", label_color(k))
    return label_map(image, out, names, thresholds=tuple(levels), method="multi-otsu")


@stage("CT threshold (HU preset)", group="segment", preview="slice",
       preset=Choice(tuple(CT_HU_RANGES), "bone",
                     help="lung −950 to −400, fat −190 to −30, soft tissue −29 to 150, bone ≥ 250 HU"),
       outputs={"labels": LabelOut()})
def ct_threshold(image: Image, *, preset: str = "bone") -> Image:
    """Label the voxels of a CT in HU whose value lies in a tissue's usual range.

    ======== ==================== ==============================================
    preset   HU (inclusive)       note
    ======== ==================== ==============================================
    lung     −950 to −400         aerated lung; leaves out most outside air
    fat      −190 to −30          adipose tissue (body composition)
    soft     −29 to 150           muscle, organs, unenhanced blood
    bone     250 and above        cortical and trabecular bone; bright contrast too
    ======== ==================== ==============================================

    A threshold labels every voxel in range, connected or not: the lung preset also finds air
    in the bowel and the airways. Keep what you want with :func:`keep_seeded_component` or
    :func:`keep_largest_component`.

    Parameters
    ----------
    image : Image
        A CT in Hounsfield units. An image whose metadata says another modality or unit is
        refused.
    preset : {'lung', 'fat', 'soft_tissue', 'bone'}

    Returns
    -------
    Image
        Label map with label 1 named after the preset; ``metadata["thresholds"]``.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> ct = Image(np.array([[-1000.0, -700.0, -100.0, 40.0, 700.0]]), metadata={"units": "HU"})
    >>> [ct_threshold(ct, preset=p).array.ravel().tolist() for p in ("lung", "bone")]
    [[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]]
    """
    modality, units = image.metadata.get("modality"), image.metadata.get("units")
    if (modality not in (None, "", "CT")) or (units not in (None, "", "HU")):
        raise ImageError(f"ct_threshold: the presets are in Hounsfield units and this image is "
                         f"{modality or 'an image'} in {units or 'unknown units'}; use threshold() with your own "
                         "levels")
    lower, upper = CT_HU_RANGES[preset]
    a = image.array
    mask = (a >= lower) & (a <= upper)
    rng = f"{_fmt(lower)} to {_fmt(upper)} HU" if np.isfinite(upper) else f"≥ {_fmt(lower)} HU"
    levels = (lower, upper) if np.isfinite(upper) else (lower,)
    return region_label(image, mask, f"{preset.replace('_', ' ')} ({rng})", thresholds=levels,
                        method=f"ct {preset}")
