"""Bridges to other viewers: napari (desktop, Qt) and itkwidgets (browser, needs internet).

Both are optional extras: ``pip install "medlab[napari]"`` or ``pip install "medlab[itk]"``.
"""

from __future__ import annotations

import numpy as np

from medlab.errors import MedlabError
from medlab.image import Image, as_image


class MissingDependency(MedlabError, ImportError):
    """An optional package needed by a bridge is not installed."""


def napari_transform(image: Image) -> dict:
    """Keyword arguments that place ``image`` in napari's world at its physical position.

    napari orders axes like the array, ``[z, y, x]``, so spacing and origin are reversed
    and the direction matrix is conjugated by the axis reversal: napari's world
    coordinates are then the LPS point in ``(S, P, L)`` order, in mm.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> t = napari_transform(Image(np.zeros((2, 3, 4)), spacing=(0.5, 0.5, 3), origin=(1, 2, 3)))
    >>> t["scale"], t["translate"]
    ([3.0, 0.5, 0.5], [3.0, 2.0, 1.0])
    """
    d = image.ndim
    reverse = np.eye(d)[::-1]
    return {
        "scale": [float(s) for s in image.spacing[::-1]],
        "translate": [float(o) for o in image.origin[::-1]],
        "rotate": reverse @ np.asarray(image.direction) @ reverse,
    }


def open_in_napari(image, labels=None, viewer=None, *, name: str | None = None):
    """Show an image (and a label map) in napari, in physical space (mm, LPS).

    Spacing becomes the layers' ``scale``, origin their ``translate`` and direction their
    ``rotate``, each reversed to napari's ``[z, y, x]`` axis order, so a label map with a
    different grid or direction still overlays correctly.

    Parameters
    ----------
    image : Image
    labels : Image, optional
        A label map (its names are kept as the layer's ``features``).
    viewer : napari.Viewer, optional
        Add to this viewer instead of opening a new one.
    name : str, optional
        Layer name (default: the image's modality or "image").

    Returns
    -------
    napari.Viewer

    Examples
    --------
    >>> from medlab.widgets import open_in_napari        # doctest: +SKIP
    >>> v = open_in_napari(ct, labels=seg)                 # doctest: +SKIP
    """
    try:
        import napari
    except ImportError as exc:
        raise MissingDependency(
            f"open_in_napari needs napari and a Qt binding ({exc}); install them with "
            "pip install 'medlab[napari]'"
        ) from None
    image = as_image(image, "image")
    if viewer is None:
        viewer = napari.Viewer()
    layer_name = name or image.modality or "image"
    if image.rgb:
        viewer.add_image(image.array, rgb=True, name=layer_name, **_without_rotate(image))
    else:
        viewer.add_image(image.array, name=layer_name, **napari_transform(image))
    if labels is not None:
        labels = as_image(labels, "labels")
        array = np.asarray(labels.array)
        if array.dtype.kind not in "iu":
            array = array.astype(np.int32)
        layer = viewer.add_labels(array, name="labels", **napari_transform(labels))
        if labels.labels:
            layer.metadata["names"] = {v: lab.name for v, lab in labels.labels.items()}
    viewer.dims.axis_labels = ("S", "P", "L")[-image.ndim:] if image.ndim == 3 else ("P", "L")
    return viewer


def _without_rotate(image: Image) -> dict:
    t = napari_transform(image)
    t.pop("rotate")
    return t


def view_itk(image, **kwargs):
    """Show an image with itkwidgets (``itkwidgets.view``), with its spacing, origin and direction.

    itkwidgets 1.0 loads its viewer at display time from an IPFS gateway and a CDN: it
    **needs internet access** and shows nothing offline. Use :class:`medlab.widgets.Viewer`
    (works offline) when in doubt. Install with ``pip install "medlab[itk]"``, in an environment
    without the ``napari`` extra (itkwidgets pins pydantic 1, napari needs pydantic 2).

    Examples
    --------
    >>> from medlab.widgets import view_itk    # doctest: +SKIP
    >>> view_itk(ct)                             # doctest: +SKIP
    """
    try:
        import itkwidgets
    except ImportError as exc:
        raise MissingDependency(
            f"view_itk needs itkwidgets ({exc}): pip install 'medlab[itk]'. Its viewer also needs "
            "internet access; medlab.widgets.Viewer works offline."
        ) from None
    return itkwidgets.view(to_itkwasm(as_image(image, "image")), **kwargs)


def to_itkwasm(image: Image):
    """An ``itkwasm.Image`` (what itkwidgets 1.0 takes) with the image's spacing, origin and
    direction; itkwasm stores the direction row-major with the index axes as columns, as medlab."""
    from itkwasm import Image as WasmImage
    from itkwasm import ImageType

    components = image.shape[-1] if image.rgb else 1
    image_type = ImageType(dimension=image.ndim, componentType=str(image.dtype),
                           pixelType="RGB" if image.rgb else "Scalar", components=components)
    return WasmImage(imageType=image_type, origin=list(image.origin), spacing=list(image.spacing),
                     direction=np.array(image.direction, dtype=np.float64), size=list(image.size),
                     data=np.ascontiguousarray(image.array))
