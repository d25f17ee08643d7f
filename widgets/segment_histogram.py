"""The segment widget's histogram: the image's voxel counts (log) with the threshold(s) of the shown
result marked."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medlab.image import Image

from .outputs import CurvePlot

__all__ = ["HistogramPlot"]

_MARKER_COLOURS = ("#e69f00", "#56b4e9", "#009e73", "#cc79a7")


class HistogramPlot(CurvePlot):
    """The image's histogram (log counts) with threshold markers.

    Examples
    --------
    >>> import numpy as np
    >>> from medlab import Image
    >>> h = HistogramPlot()
    >>> h.show_image(Image(np.linspace(0, 1, 1000).reshape(10, 100)))
    >>> h.set_thresholds([0.25, 0.75], "preview")
    >>> [m["x"] for m in h.markers], len(h.series["voxels"]["x"])
    ([0.25, 0.75], 128)
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("width", 460)
        kwargs.setdefault("height", 190)
        super().__init__(**kwargs)
        self.add_class("medlab-segment-histogram")
        self._key = None

    def show_image(self, image: Image, bins: int = 128) -> None:
        """Histogram of ``image`` (every voxel, or an even sample of ~2 million), once per image."""
        if self._key == id(image):
            return
        a = np.asarray(image.array).reshape(-1)
        a = a[:: max(1, a.size // 2_000_000)]
        a = a[np.isfinite(a)] if a.dtype.kind == "f" else a
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        counts, edges = np.histogram(a, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
        units = str(image.metadata.get("units") or "")
        with self.hold_sync():
            self.series = {"voxels": {"x": ((edges[:-1] + edges[1:]) / 2).tolist(),
                                      "y": np.log10(counts + 1.0).tolist()}}
            self.x_label = f"intensity ({units})" if units else "intensity"
            self.y_label = "log10(voxels + 1)"
            self.best = []
        self._key = id(image)

    def set_thresholds(self, levels: Sequence[float] | None, where: str) -> None:
        """Mark ``levels`` (image units); ``where`` says whose they are (preview or Apply)."""
        levels = [float(v) for v in (levels or ()) if v is not None and math.isfinite(float(v))]
        self.markers = [{"x": v, "label": f"{v:.4g}", "color": _MARKER_COLOURS[i % len(_MARKER_COLOURS)]}
                        for i, v in enumerate(levels)]
        if not levels:
            self.title = "histogram of the image (this method marks no threshold yet)"
        else:
            what = "threshold" if len(levels) == 1 else "thresholds"
            self.title = f"{what} {', '.join(f'{v:.4g}' for v in levels)} ({where})"
