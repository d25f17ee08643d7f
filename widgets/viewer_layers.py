"""The layers a :class:`~medlab.widgets.viewer.Viewer` draws over its base image: a label map, a
heat map and a second image.

Each layer is resampled once into the base image's grid (:func:`medlab.render.resample_like`)
and put in display orientation, so a layer with another direction or spacing lands where it
belongs; how it is drawn travels to the browser as a small dict (the viewer's ``_labels_info``,
``_heat_info``, ``_second_info``). :func:`compose_plane` draws a plane with its layers in Python
exactly as the browser does (for snapshots and tests).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from medlab import render
from medlab.errors import ParameterError
from medlab.image import Image, as_image, label_color

__all__ = ["compose_plane", "heat_layer", "label_layer", "second_layer"]


def layer_volume(layer, base: Image | None, name: str) -> tuple[Image, np.ndarray]:
    """``layer`` resampled into ``base``'s grid, and its voxels in display orientation."""
    if base is None:
        raise ParameterError(f"show an image before adding a {name}")
    layer = as_image(layer, name)
    resampled = render.resample_like(layer, base)
    volume, _ = render.display_array(resampled)
    return resampled, volume


def label_layer(labels, base: Image | None, *, opacity: float, outline: bool) -> tuple[np.ndarray, dict]:
    """The voxels of a label map over ``base`` (the smallest unsigned type holding them) and how
    to draw it: opacity, outline, and a legend entry (value, name, colour) per label present.

    Examples
    --------
    >>> from medlab import Image
    >>> base = Image(np.zeros((4, 8, 8)))
    >>> volume, info = label_layer(base.with_array(np.ones((4, 8, 8), np.int64), kind="label",
    ...                                            labels={1: "organ"}), base, opacity=0.5, outline=False)
    >>> volume.dtype, [d["name"] for d in info["legend"]]
    (dtype('uint8'), ['organ'])
    """
    layer = as_image(labels, "labels")
    if not layer.is_label:
        layer = layer.with_array(layer.array, kind="label")
    resampled, volume = layer_volume(layer, base, "labels")
    volume = _label_dtype(volume)
    values = [int(v) for v in np.unique(volume) if v != 0]
    legend = []
    for value in values:
        spec = resampled.labels.get(value)
        legend.append({"value": value, "name": spec.name if spec else f"label {value}",
                       "color": list(spec.color if spec else label_color(value))})
    return volume, {"opacity": float(opacity), "outline": bool(outline), "legend": legend}


def heat_layer(image, base: Image | None, *, cmap: str, opacity: float, threshold: float) -> tuple[np.ndarray, dict]:
    """The voxels of a heat map over ``base`` (float32) and how to draw it: the colour map as a
    lookup table, the map's own finite range, threshold and opacity."""
    lut = render.colormap_lut(cmap)  # everything is checked before anything changes
    if not np.isfinite(float(threshold)):
        raise ParameterError(f"heat-map threshold must be a finite number; got {threshold}")
    _, volume = layer_volume(image, base, "heat map")
    volume = volume.astype(np.float32, copy=False)
    finite = volume[np.isfinite(volume)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return volume, {"lut": lut.ravel().tolist(), "cmap": cmap,
                    "range": [vmin, vmax], "threshold": float(threshold), "opacity": float(opacity)}


def second_layer(image, base: Image | None, *, mode: str, alpha: float, checker: int) -> tuple[np.ndarray, dict]:
    """The voxels of a second image over ``base`` (float32) and how to draw it: mode, alpha,
    checker tile, and the image's own automatic window."""
    _, volume = layer_volume(image, base, "second image")
    window, level = render.auto_window(as_image(image))
    return volume.astype(np.float32, copy=False), {"mode": mode, "alpha": float(alpha), "window": float(window),
                                                   "level": float(level), "checker": int(checker)}


def compose_plane(volume: np.ndarray, plane: str, index: int, window: float, level: float, *,
                  layers: Mapping[str, np.ndarray], infos: Mapping[str, dict]) -> np.ndarray:
    """The RGB picture of slice ``index`` of ``plane`` with its layers, one pixel per voxel, as
    the browser draws it (``volume`` and ``layers`` in display orientation; ``infos`` maps a
    layer's name, ``labels``, ``heat`` or ``second``, to how it is drawn)."""
    raw = render.plane_array(volume, plane, index)
    grey = render.window_level(raw, window, level)
    kwargs = {}
    if "second" in layers:
        info = infos["second"]
        kwargs.update(second=render.window_level(render.plane_array(layers["second"], plane, index),
                                                 info["window"], info["level"]),
                      second_mode=info["mode"], second_alpha=info["alpha"], checker=info["checker"])
    if "heat" in layers:
        info = infos["heat"]
        kwargs.update(heat=render.plane_array(layers["heat"], plane, index),
                      heat_lut=np.asarray(info["lut"], np.uint8).reshape(256, 3),
                      heat_range=tuple(info["range"]), heat_threshold=info["threshold"],
                      heat_opacity=info["opacity"])
    if "labels" in layers:
        info = infos["labels"]
        kwargs.update(labels=render.plane_array(layers["labels"], plane, index),
                      label_colors={d["value"]: tuple(d["color"]) for d in info["legend"]},
                      label_opacity=info["opacity"], label_outline_only=info["outline"])
    return render.compose(grey, **kwargs)


def _label_dtype(array: np.ndarray) -> np.ndarray:
    hi = int(array.max()) if array.size else 0
    if int(array.min()) < 0:
        raise ParameterError("a label map shown as a layer must hold non-negative values")
    if hi > 2**32 - 1:
        raise ParameterError(f"label values above {2**32 - 1} cannot be shown (got {hi}); renumber the labels, "
                             "e.g. with skimage.segmentation.relabel_sequential")
    return array.astype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.uint32, copy=False)
