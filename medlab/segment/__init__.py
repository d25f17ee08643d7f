"""Classic segmentation stages: thresholds, region growing from seeds in mm, watershed and fast
marching, post-processing with sizes in mm, connected components; DICOM SEG export.

Every method is a declared stage (:func:`medlab.stage.stage`, group ``"segment"``) that
returns a label :class:`~medlab.Image` on the input's grid with label names and colours:
call it like a function, find it in ``medlab.stages("segment")``, build a widget from
``func.stage``, record it in a recipe. Seeds and background points are physical points
(mm, LPS) with their own roles, so they land on the same anatomy on any grid.

========================  ===============================================================
family                    stages
========================  ===============================================================
thresholds                :func:`threshold`, :func:`otsu_threshold`,
                          :func:`multi_otsu_threshold`, :func:`li_threshold`,
                          :func:`triangle_threshold`, :func:`ct_threshold`
region growing            :func:`connected_threshold`, :func:`confidence_connected`,
                          :func:`neighbourhood_connected`
boundaries                :func:`watershed`, :func:`fast_marching`
post-processing           :func:`opening`, :func:`closing`, :func:`fill_holes`,
                          :func:`keep_largest_component`, :func:`keep_seeded_component`
components                :func:`connected_components` (label map + table)
export                    :func:`write_dicom_seg`
========================  ===============================================================

Examples
--------
Region growing from one seed in the oedema of the brain phantom's FLAIR, then hole filling,
scored against the phantom's whole tumour (oedema, enhancing rim, necrotic core):

>>> import numpy as np
>>> from scipy import ndimage
>>> from medlab import metrics, segment
>>> from medlab.data import brain_mri
>>> p = brain_mri(size=(96, 96, 48), seed=0)
>>> depth = ndimage.distance_transform_edt(p.labels.array == 7, sampling=p.flair.spacing[::-1])
>>> seed = p.flair.index_to_physical(np.unravel_index(depth.argmax(), depth.shape)[::-1])  # mm, LPS
>>> grown = segment.connected_threshold(p.flair, seeds=[seed], tolerance=0.25)
>>> tumour = segment.fill_holes(grown, mode="slices")
>>> truth = p.labels.with_array(np.isin(p.labels.array, [7, 8, 9]), kind="label")
>>> round(metrics.dice(grown, truth), 2), round(metrics.dice(tumour, truth), 2)
(0.82, 0.94)
"""

# imported in the order a method picker lists them: thresholds, seeds, boundaries, clean-up
from .threshold import (  # isort: skip
    CT_HU_RANGES,
    ct_threshold,
    li_threshold,
    multi_otsu_threshold,
    otsu_threshold,
    threshold,
    triangle_threshold,
)
from .region import confidence_connected, connected_threshold, neighbourhood_connected  # isort: skip
from .boundary import fast_marching, gradient_magnitude, watershed  # isort: skip
from .postprocess import closing, fill_holes, keep_largest_component, keep_seeded_component, opening  # isort: skip
from .components import connected_components  # isort: skip
from .edit import paint_labels, remove_components  # isort: skip
from .dicom_seg import write_dicom_seg  # isort: skip

__all__ = [
    "CT_HU_RANGES",
    "closing",
    "confidence_connected",
    "connected_components",
    "connected_threshold",
    "ct_threshold",
    "fast_marching",
    "fill_holes",
    "gradient_magnitude",
    "keep_largest_component",
    "keep_seeded_component",
    "li_threshold",
    "multi_otsu_threshold",
    "neighbourhood_connected",
    "opening",
    "otsu_threshold",
    "paint_labels",
    "remove_components",
    "threshold",
    "triangle_threshold",
    "watershed",
    "write_dicom_seg",
]
