"""Registration stages: align a moving image to a fixed one, from intensities (rigid to
deformable), landmarks or surfaces, and measure the result in millimetres.

Every transform follows SimpleITK's convention: it maps **fixed** points (mm, LPS) to
**moving** points, so resampling the moving image onto the fixed grid uses it directly.

=========================  ==========================================================
stage / function           what it does
=========================  ==========================================================
``linear_register``        translation, rigid, similarity or affine, by MI, correlation
                           or mean squares, multi-resolution, live curve, Cancel keeps best
``bspline_register``       free-form B-spline deformation (+ Jacobian, folded voxels)
``demons_register``        dense demons deformation for one contrast (+ Jacobian)
``landmark_register``      rigid/similarity/affine from clicked landmarks, FRE and TRE
``surface_register``       rigid ICP on label surfaces, RMS distance per iteration
``resample_labels``        carry a label map through a transform (nearest, label-Gaussian)
``resample_image``         carry an image through a transform
``target_registration_error``, ``jacobian_determinant``, ``mutual_information``,
``fit_landmark_transform``, ``predicted_tre``, ``fle_to_tre``, ``icp``: plain functions
=========================  ==========================================================

Examples
--------
>>> from medlab.data import registration_pair
>>> from medlab.register import linear_register, resample_labels
>>> pair = registration_pair(size=(64, 64, 32), spacing=(3, 3, 4))
>>> transform, registered, history, report = linear_register(pair.fixed, pair.moving)
>>> labels = resample_labels(pair.moving_labels, transform, pair.fixed)
"""

from .demons import DEMONS_VARIANTS, demons_register
from .evaluation import (
    folded_voxels,
    jacobian_determinant,
    mutual_information,
    sample_points,
    target_registration_error,
    transform_points,
)
from .icp import icp, surface_points, surface_register
from .intensity import LINEAR_TRANSFORMS, bspline_register, linear_register
from .landmarks import (
    LANDMARK_TRANSFORMS,
    fit_landmark_transform,
    fle_to_tre,
    landmark_register,
    predicted_tre,
)
from .resample import resample_image, resample_labels

__all__ = [
    "DEMONS_VARIANTS",
    "LANDMARK_TRANSFORMS",
    "LINEAR_TRANSFORMS",
    "bspline_register",
    "demons_register",
    "fit_landmark_transform",
    "fle_to_tre",
    "folded_voxels",
    "icp",
    "jacobian_determinant",
    "landmark_register",
    "linear_register",
    "mutual_information",
    "predicted_tre",
    "resample_image",
    "resample_labels",
    "sample_points",
    "surface_points",
    "surface_register",
    "target_registration_error",
    "transform_points",
]
