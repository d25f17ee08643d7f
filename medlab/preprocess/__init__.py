"""Preprocessing stages: denoising, contrast, geometry and bias-field correction.

Each function is a declared stage (:func:`medlab.stage.stage`): call it like any function,
find it in ``medlab.stages("preprocess")``, build a widget from ``func.stage``, record it in
a recipe. Every stage keeps the image's geometry (spacing, origin, direction) or, for the
geometry stages (``resamples=True``), keeps every structure at the same physical point.

Examples
--------
>>> from medlab.data import brain_mri
>>> from medlab import preprocess, metrics
>>> p = brain_mri(size=(64, 64, 16), noise=0.05)
>>> smooth = preprocess.nlm_denoise(p.t1)
>>> smooth.same_grid(p.t1)
True
"""

from .denoise import anisotropic_diffusion, bilateral_filter, gaussian_smooth, median_filter, nlm_denoise
from .contrast import CT_PRESETS, clahe, histogram_equalization, normalize_intensity, window_level
from .geometry import crop_box, crop_to_foreground, pad, reorient, resample, resample_to
from .bias import n4_bias_correction

__all__ = [
    "nlm_denoise", "anisotropic_diffusion", "gaussian_smooth", "median_filter", "bilateral_filter",
    "window_level", "histogram_equalization", "clahe", "normalize_intensity", "CT_PRESETS",
    "resample", "resample_to", "crop_to_foreground", "crop_box", "pad", "reorient",
    "n4_bias_correction",
]
