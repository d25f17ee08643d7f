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

from .bias import n4_bias_correction
from .contrast import CT_PRESETS, clahe, histogram_equalization, normalize_intensity, window_level
from .denoise import (
    anisotropic_diffusion,
    bilateral_filter,
    gaussian_smooth,
    median_filter,
    nlm_denoise,
)
from .geometry import crop_box, crop_to_foreground, pad, reorient, resample, resample_to

__all__ = [
    "CT_PRESETS",
    "anisotropic_diffusion",
    "bilateral_filter",
    "clahe",
    "crop_box",
    "crop_to_foreground",
    "gaussian_smooth",
    "histogram_equalization",
    "median_filter",
    "n4_bias_correction",
    "nlm_denoise",
    "normalize_intensity",
    "pad",
    "reorient",
    "resample",
    "resample_to",
    "window_level",
]
