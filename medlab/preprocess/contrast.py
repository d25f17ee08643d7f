"""Contrast stages: window/level, histogram equalisation, CLAHE, intensity normalisation."""

from __future__ import annotations

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image
from ..render import CT_PRESETS, auto_window
from ..stage import Bool, Choice, Float, Int, report, stage
from ._common import as_float, foreground_mask

__all__ = ["CT_PRESETS", "clahe", "histogram_equalization", "normalize_intensity", "window_level"]


@stage("Window / level", group="preprocess", preview="slice",
       preset=Choice(("custom", "auto", *CT_PRESETS), "custom",
                     help="a CT preset (HU), 'auto' (0.5-99.5 percentiles), or 'custom' to use window and level"),
       window=Float(1e-6, 1e5, 400.0, step=1.0, help="width of the displayed intensity range (custom preset)"),
       level=Float(-1e5, 1e5, 40.0, step=1.0, help="centre of the displayed intensity range (custom preset)"),
       output=Choice(("display", "clip"), "display",
                     help="display: map the window to [0, 1]; clip: keep units, clip outside the window"))
def window_level(image: Image, *, preset: str = "custom", window: float = 400.0, level: float = 40.0,
                 output: str = "display") -> Image:
    """Keep the intensities of one window: ``level - window/2`` to ``level + window/2``.

    CT presets (window, level in HU) come from :data:`medlab.render.CT_PRESETS`: brain
    (80, 40), subdural, lung (1500, -600), mediastinum, abdomen (400, 50) and bone.

    Parameters
    ----------
    image : Image
    preset : str
        ``'custom'`` uses ``window`` and ``level``; ``'auto'`` uses
        :func:`medlab.render.auto_window`.
    window, level : float
        In the image's units (HU for CT).
    output : {'display', 'clip'}
        ``'display'``: float32 in [0, 1] (0 below the window, 1 above);
        ``'clip'``: the original units, clipped to the window.

    Returns
    -------
    Image
        float32, same grid.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> ct = Image(np.array([[-1000.0, 40.0, 1000.0]]))
    >>> window_level(ct, window=400, level=40).array.tolist()
    [[0.0, 0.5, 1.0]]
    """
    if preset == "auto":
        window, level = auto_window(image)
    elif preset != "custom":
        window, level = CT_PRESETS[preset]
    lo, hi = level - window / 2, level + window / 2
    arr = np.clip(as_float(image), lo, hi)
    if output == "display":
        arr = (arr - np.float32(lo)) / np.float32(window)
    meta = {**image.metadata, "window": (float(window), float(level))}
    if output == "display":
        meta.pop("units", None)
    return image.with_array(arr.astype(np.float32), metadata=meta)


def _region(image: Image, region: str) -> np.ndarray | None:
    if region == "whole":
        return None
    mask = foreground_mask(as_float(image))
    if mask.sum() < 2:
        raise ImageError("no foreground found by Otsu's threshold (is the image constant?); use region='whole'")
    return mask


@stage("Histogram equalisation", group="preprocess", preview="slice",
       bins=Int(16, 4096, 256, step=16, help="number of histogram bins"),
       region=Choice(("whole", "foreground"), "whole",
                     help="histogram of the whole image or only of the Otsu foreground (ignores dark background)"))
def histogram_equalization(image: Image, *, bins: int = 256, region: str = "whole") -> Image:
    """Global histogram equalisation: map intensities through their cumulative histogram.

    :func:`skimage.exposure.equalize_hist`. With ``region='foreground'`` the histogram is
    taken from the Otsu foreground only, so a large dark background does not use up the
    output range.

    Parameters
    ----------
    image : Image
    bins : int
    region : {'whole', 'foreground'}

    Returns
    -------
    Image
        float32 in [0, 1], same grid.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> img = Image(np.random.default_rng(0).exponential(size=(64, 64)))
    >>> out = histogram_equalization(img).array
    >>> abs(float(np.median(out)) - 0.5) < 0.02
    True
    """
    from skimage.exposure import equalize_hist

    report(0.0, "histogram equalisation")
    out = equalize_hist(as_float(image), nbins=bins, mask=_region(image, region))
    report(1.0, "histogram equalisation")
    meta = {k: v for k, v in image.metadata.items() if k != "units"}
    return image.with_array(out.astype(np.float32), metadata=meta)


@stage("CLAHE", group="preprocess", preview="slice",
       clip_limit=Float(0.001, 1.0, 0.01, step=0.001, log=True,
                        help="contrast limit (fraction of a tile's histogram): higher = stronger, noisier"),
       kernel_size=Float(0.0, 500.0, 0.0, step=1.0, unit="mm",
                         help="edge of the contextual region in mm; 0 = one eighth of the image extent"))
def clahe(image: Image, *, clip_limit: float = 0.01, kernel_size: float = 0.0) -> Image:
    """Contrast-limited adaptive histogram equalisation in 2D or 3D.

    :func:`skimage.exposure.equalize_adapthist` (Zuiderveld's CLAHE, extended to 3D). The
    contextual region is given in mm, converted to voxels per axis, so it has the same
    physical size in a slice preview and in the volume, and on anisotropic voxels. The input
    is first rescaled to [0, 1] between its minimum and maximum.

    Parameters
    ----------
    image : Image
    clip_limit : float
        skimage's ``clip_limit`` (normalised between 0 and 1).
    kernel_size : float
        mm; 0 uses one eighth of the extent along each axis (skimage's default).

    Returns
    -------
    Image
        float32 in [0, 1], same grid.

    Examples
    --------
    >>> from medlab.data import brain_mri
    >>> t1 = brain_mri(size=(64, 64, 16)).t1
    >>> out = clahe(t1, clip_limit=0.02, kernel_size=24.0)
    >>> float(out.array.min()) >= 0 and float(out.array.max()) <= 1
    True
    """
    from skimage.exposure import equalize_adapthist

    arr = as_float(image)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return image.with_array(np.zeros(arr.shape, np.float32))
    sp = np.asarray(image.spacing[::-1])
    if kernel_size > 0:
        kernel = np.maximum(np.rint(kernel_size / sp), 2).astype(int)
    else:
        kernel = np.maximum(np.asarray(arr.shape) // 8, 2)
    kernel = np.minimum(kernel, arr.shape)
    report(0.0, "CLAHE")
    out = equalize_adapthist((arr - lo) / (hi - lo), kernel_size=tuple(int(k) for k in kernel), clip_limit=clip_limit)
    report(1.0, "CLAHE")
    meta = {k: v for k, v in image.metadata.items() if k != "units"}
    return image.with_array(out.astype(np.float32), metadata=meta)


@stage("Intensity normalisation", group="preprocess", preview="slice",
       method=Choice(("zscore", "percentile"), "zscore",
                     help="zscore: (x - mean) / std; percentile: lower percentile -> 0, upper -> 1"),
       region=Choice(("foreground", "whole"), "foreground",
                     help="statistics from the Otsu foreground (recommended for MR) or the whole image"),
       lower=Float(0.0, 50.0, 1.0, step=0.5, unit="%", help="percentile mapped to 0 (percentile method)"),
       upper=Float(50.0, 100.0, 99.0, step=0.5, unit="%", help="percentile mapped to 1 (percentile method)"),
       clip=Bool(False, help="clip the result to [0, 1] (percentile method)"))
def normalize_intensity(image: Image, *, method: str = "zscore", region: str = "foreground",
                        lower: float = 1.0, upper: float = 99.0, clip: bool = False) -> Image:
    """Normalise intensities: z-score inside a mask, or a percentile rescale.

    MR intensities have no physical unit and differ between scanners; deep-learning
    pipelines normalise each image first. Statistics come from the Otsu foreground by default,
    so the amount of air around the head does not change the result.

    Parameters
    ----------
    image : Image
    method : {'zscore', 'percentile'}
    region : {'foreground', 'whole'}
    lower, upper : float
        Percentiles (0-100) for ``method='percentile'``.
    clip : bool
        Clip the percentile rescale to [0, 1].

    Returns
    -------
    Image
        float32, same grid.

    Examples
    --------
    >>> from medlab.data import brain_mri
    >>> from medlab.preprocess._common import foreground_mask
    >>> t1 = brain_mri(size=(48, 48, 12)).t1
    >>> z = normalize_intensity(t1).array[foreground_mask(t1.array)]
    >>> abs(float(z.mean())) < 1e-3, round(float(z.std()), 3)
    (True, 1.0)
    """
    arr = as_float(image)
    mask = _region(image, region)
    values = arr if mask is None else arr[mask]
    if method == "zscore":
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        if std == 0:
            raise ImageError("the image is constant in the chosen region; z-score is undefined")
        out = (arr - np.float32(mean)) / np.float32(std)
    else:
        if lower >= upper:
            raise ParameterError(f"normalize_intensity: lower ({lower}) must be below upper ({upper})")
        lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
        if hi <= lo:
            raise ImageError(f"the {lower} and {upper} percentiles are equal ({lo}); widen them")
        out = (arr - np.float32(lo)) / np.float32(hi - lo)
        if clip:
            out = np.clip(out, 0, 1)
    meta = {k: v for k, v in image.metadata.items() if k != "units"}
    return image.with_array(out.astype(np.float32), metadata=meta)

