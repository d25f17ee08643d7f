"""The :class:`Phantom` container shared by every synthetic image with ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..image import Image


@dataclass
class Phantom:
    """A synthetic study with its ground truth.

    Attributes
    ----------
    images : dict of str to Image
        The images as a scanner would give them (noise, bias field), e.g. ``{"t1": ...}``.
        Each is also an attribute: ``p.t1 is p.images["t1"]``.
    clean : dict of str to Image
        The same images without noise and bias field: the ground truth for denoising and
        bias correction.
    labels : Image
        ``kind="label"`` map of every tissue, with names and colours
        (``labels.labels[value].name``).
    bias_field : Image or None
        The multiplicative field applied before the noise (MR), or None.
    info : dict
        What generated it (function, seed, parameters) and facts used by tests and
        teaching material (e.g. the tumour centre in mm).

    Examples
    --------
    >>> from medlab.data import brain_mri
    >>> p = brain_mri(size=(64, 64, 32), seed=1)
    >>> sorted(p.images)
    ['flair', 't1', 't2']
    >>> p.t1 is p.images["t1"]
    True
    """

    images: dict[str, Image]
    clean: dict[str, Image]
    labels: Image
    bias_field: Image | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Image:
        images = self.__dict__.get("images") or {}
        if name in images:
            return images[name]
        raise AttributeError(f"Phantom has no image {name!r}; it has {sorted(images)}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("images") or {}))

    def label_value(self, name: str) -> int:
        """The label value of a tissue name, e.g. ``p.label_value("white matter")``."""
        for value, label in self.labels.labels.items():
            if label.name == name:
                return value
        names = [lab.name for lab in self.labels.labels.values()]
        raise KeyError(f"no label named {name!r}; labels are {names}")

    def mask(self, *names: str) -> np.ndarray:
        """Boolean [z, y, x] mask of the union of the named tissues."""
        values = [self.label_value(n) for n in names]
        return np.isin(self.labels.array, values)

    def __repr__(self) -> str:
        imgs = ", ".join(self.images)
        return f"<Phantom {self.info.get('phantom', '')} images=[{imgs}] {self.labels.describe()}>"


def make_image(array: np.ndarray, spacing, origin, metadata: Mapping[str, Any]) -> Image:
    """An intensity Image with identity (LPS) direction."""
    return Image(array, spacing, origin, metadata=dict(metadata))


def make_labels(array: np.ndarray, spacing, origin, names: Mapping[int, tuple[str, tuple[int, int, int]]],
                metadata: Mapping[str, Any]) -> Image:
    """A label Image carrying ``{value: (name, colour)}`` for the values listed in ``names``."""
    return Image(array, spacing, origin, kind="label", labels=dict(names), metadata=dict(metadata))
