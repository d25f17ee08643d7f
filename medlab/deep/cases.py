"""Training cases from medlab's phantoms: brain tumours on MRI, lung nodules on CT.

These are the data the shipped models were trained on (:mod:`medlab.deep.train_models`) and
what the tutorial trains on, so a student can reproduce a shipped model from its seed.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError
from ..image import Image

BRAIN_TUMOUR_CLASSES = {8: "enhancing tumour", 9: "necrotic core", 7: "oedema"}
"""Label values of :func:`medlab.data.brain_mri` learnt by the brain tumour model, with names."""

LUNG_NODULE_CLASSES = {9: "solid nodule", 10: "ground-glass nodule"}
"""Label values of :func:`medlab.data.chest_ct` learnt by the lung nodule model, with names."""


@dataclass
class Cases:
    """Image/label pairs ready for :func:`medlab.deep.train_segmenter`.

    ``images[i]`` is one Image, or a tuple of Images (one per contrast); ``labels[i]`` the full
    tissue label map; ``classes`` the values to learn; ``seeds`` what generated each case.
    """

    images: list
    labels: list[Image]
    classes: dict[int, str]
    seeds: list[int] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


MAX_CASES = 10_000
"""Most phantoms one call makes (each is a volume in memory)."""


def _seeds(seeds: Iterable[int]) -> list[int]:
    if isinstance(seeds, (str, bytes)):   # "12" would be the seeds 1 and 2
        raise ParameterError(f"seeds must be integers, e.g. range(12); got {seeds!r}")
    try:
        # at most one more than allowed is read: range(10**9) or itertools.count() must not hang
        out = list(itertools.islice(iter(seeds), MAX_CASES + 1))
    except TypeError:
        raise ParameterError(f"seeds must be integers, e.g. range(12); got {seeds!r}") from None
    if len(out) > MAX_CASES:
        raise ParameterError(f"seeds: at most {MAX_CASES} phantoms at a time; got more")
    if not out or any(isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 0
                      for s in out):
        raise ParameterError(f"seeds must be a non-empty list of non-negative integers, e.g. range(12); "
                             f"got {out[:5]!r}")
    return [int(s) for s in out]


def brain_tumour_cases(seeds: Iterable[int], *, contrasts: Sequence[str] = ("t1",),
                       size: Sequence[int] | None = None, spacing: Sequence[float] | None = None,
                       noise: float = 0.03, bias: float = 0.0) -> Cases:
    """Brain MRI phantoms with tumours (enhancing rim, necrotic core, oedema), one per seed.

    Parameters
    ----------
    seeds : iterable of int
        One phantom per seed (anatomy, tumour position and noise all follow the seed).
    contrasts : sequence of str
        ``"t1"`` (post-contrast), ``"t2"``, ``"flair"``: one channel each.
    size, spacing : sequence, optional
        Passed to :func:`medlab.data.brain_mri` (default: its default size and spacing).
    noise, bias : float
        Rician noise and bias-field strength (see :func:`medlab.data.brain_mri`).

    Examples
    --------
    >>> cases = brain_tumour_cases([0, 1], size=(32, 32, 16), spacing=(6, 6, 8))
    >>> len(cases), cases.classes[8]
    (2, 'enhancing tumour')
    """
    from ..data import brain_mri

    kw = {k: v for k, v in (("size", size), ("spacing", spacing)) if v is not None}
    images, labels = [], []
    seeds = _seeds(seeds)
    for s in seeds:
        p = brain_mri(seed=s, contrasts=tuple(contrasts), noise=noise, bias=bias, **kw)
        chans = tuple(p.images[c] for c in contrasts)
        images.append(chans[0] if len(chans) == 1 else chans)
        labels.append(p.labels)
    return Cases(images, labels, dict(BRAIN_TUMOUR_CLASSES), seeds, list(contrasts))


def lung_nodule_cases(seeds: Iterable[int], *, size: Sequence[int] | None = None,
                      spacing: Sequence[float] | None = None, noise: float = 20.0,
                      n_solid: int = 3, n_ground_glass: int = 2) -> Cases:
    """Chest CT phantoms (HU) with solid and ground-glass nodules, one per seed.

    Examples
    --------
    >>> cases = lung_nodule_cases([0], size=(48, 48, 16), spacing=(4, 4, 10))
    >>> cases.classes
    {9: 'solid nodule', 10: 'ground-glass nodule'}
    """
    from ..data import chest_ct

    kw = {k: v for k, v in (("size", size), ("spacing", spacing)) if v is not None}
    images, labels = [], []
    seeds = _seeds(seeds)
    for s in seeds:
        p = chest_ct(seed=s, noise=noise, n_solid=n_solid, n_ground_glass=n_ground_glass, **kw)
        images.append(p.ct)
        labels.append(p.labels)
    return Cases(images, labels, dict(LUNG_NODULE_CLASSES), seeds, ["ct"])
