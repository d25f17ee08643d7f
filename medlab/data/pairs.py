"""Data sets built from the brain phantom: registration pairs and a classification set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..image import Image
from ._fields import check_fraction, rician
from .brain import ENHANCING, NECROSIS, OEDEMA, VENTRICLES, _check_contrasts, _check_seed, brain_mri

TRANSFORMS = ("rigid", "affine")


@dataclass
class RegistrationPair:
    """Two images of one anatomy and the exact transform between them.

    Attributes
    ----------
    fixed, moving : Image
        E.g. a T1 (fixed) and a T2 (moving) of the same head, the moving one displaced.
    transform : SimpleITK.Transform
        SimpleITK's convention: it maps a physical point of the **fixed** image to the
        corresponding physical point of the **moving** image, so
        ``SimpleITK.Resample(moving.to_sitk(), fixed.to_sitk(), transform)`` aligns moving
        onto fixed. A registration of this pair should recover it.
    fixed_labels, moving_labels : Image
        Tissue labels in each image's space.
    landmarks : ndarray (n, 3)
        Points in the fixed image (mm, LPS): tumour and ventricle centroids, then points
        spread through the brain. ``moving_landmarks`` are the same points mapped by
        ``transform``: target registration error is the distance between
        ``estimate.TransformPoint(p)`` and the matching moving landmark.
    info : dict
        Seed, transform kind and parameters.
    """

    fixed: Image
    moving: Image
    transform: Any
    fixed_labels: Image
    moving_labels: Image
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    moving_landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    info: dict = field(default_factory=dict)

    def tre(self, estimate) -> np.ndarray:
        """Target registration error (mm) at each landmark of an estimated fixed->moving transform."""
        mapped = np.array([estimate.TransformPoint(tuple(float(c) for c in p)) for p in self.landmarks])
        return np.linalg.norm(mapped - self.moving_landmarks, axis=1)


def _random_transform(kind: str, rng: np.random.Generator, max_rotation_deg: float, max_translation_mm: float):
    import SimpleITK as sitk

    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    translation = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    rigid = sitk.Euler3DTransform((0.0, 0.0, 0.0), *map(float, angles), tuple(map(float, translation)))
    if kind == "rigid":
        return rigid
    scale = np.diag(rng.uniform(0.92, 1.08, 3))
    shear = np.eye(3) + np.triu(rng.uniform(-0.05, 0.05, (3, 3)), 1)
    matrix = np.array(rigid.GetMatrix()).reshape(3, 3) @ shear @ scale
    return sitk.AffineTransform(tuple(matrix.ravel()), tuple(map(float, translation)), (0.0, 0.0, 0.0))


def _warp(image: Image, to_source, *, label: bool) -> Image:
    """Resample ``image`` on its own grid through ``to_source`` (output point -> source point)."""
    import SimpleITK as sitk

    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(image.to_sitk(), image.to_sitk(), to_source, interp, 0.0)
    return Image.from_sitk(out, kind=image.kind, labels=image.labels, metadata=image.metadata)


def _landmarks(labels: Image, rng: np.random.Generator, n_random: int) -> np.ndarray:
    arr = labels.array
    points = []
    for values in ((ENHANCING, NECROSIS), (VENTRICLES,)):
        idx = np.argwhere(np.isin(arr, values))
        if len(idx):
            points.append(labels.index_to_physical(idx.mean(axis=0)[::-1]))
    brain = np.argwhere((arr >= 4) & (arr != OEDEMA))
    pick = brain[rng.choice(len(brain), size=min(n_random, len(brain)), replace=False)]
    points.extend(labels.index_to_physical(pick[:, ::-1].astype(float)))
    return np.array(points)


def registration_pair(*, transform: str = "rigid", seed: int = 0, size: Sequence[int] = (96, 96, 48),
                      spacing: Sequence[float] = (2.0, 2.0, 2.5), fixed_contrast: str = "t1",
                      moving_contrast: str = "t2", noise: float = 0.02, max_rotation_deg: float = 10.0,
                      max_translation_mm: float = 10.0, n_landmarks: int = 50) -> RegistrationPair:
    """A multimodal brain pair (T1 fixed, T2 moving) with a known rigid or affine transform.

    The anatomy of :func:`brain_mri` is rendered in two contrasts; the moving image is the
    second contrast resampled through the inverse of a random transform, so that
    ``transform`` maps each fixed point to where the same tissue lies in the moving image
    (SimpleITK's fixed-to-moving convention). Noise is added after resampling, independently
    in each image.

    Parameters
    ----------
    transform : {'rigid', 'affine'}
        Rigid: rotations up to ``max_rotation_deg`` about each axis and translations up to
        ``max_translation_mm``, about the image centre (0, 0, 0). Affine adds scaling
        (±8 %) and shear (±0.05).
    seed : int
        Fixes anatomy, transform and noise.
    size, spacing
        Grid of both images (x, y, z).
    fixed_contrast, moving_contrast : {'t1', 't2', 'flair'}
    noise : float
        Rician noise, fraction of the largest intensity.

    Returns
    -------
    RegistrationPair

    Examples
    --------
    >>> from medlab.data import registration_pair
    >>> pair = registration_pair(size=(48, 48, 24), spacing=(4, 4, 5), seed=1)
    >>> p = pair.landmarks[0]                       # tumour centroid in the fixed image
    >>> q = pair.transform.TransformPoint(tuple(p))  # the same tissue in the moving image
    >>> float(pair.tre(pair.transform).max()) < 1e-6
    True
    """
    if transform not in TRANSFORMS:
        raise ParameterError(f"transform must be one of {TRANSFORMS}; got {transform!r}")
    seed = _check_seed(seed)
    _check_contrasts((fixed_contrast, moving_contrast))
    noise = check_fraction(noise, "noise")
    for name, v, hi in (("max_rotation_deg", max_rotation_deg, 45), ("max_translation_mm", max_translation_mm, 100)):
        if not isinstance(v, (int, float, np.number)) or not 0 <= v <= hi:
            raise ParameterError(f"{name} must be a number in [0, {hi}]; got {v!r}")
    contrasts = tuple(dict.fromkeys((fixed_contrast, moving_contrast)))
    base = brain_mri(size=size, spacing=spacing, noise=0.0, seed=seed, contrasts=contrasts)
    rng = np.random.default_rng([seed, 2])
    tx = _random_transform(transform, rng, float(max_rotation_deg), float(max_translation_mm))
    inverse = tx.GetInverse()

    fixed_clean = base.clean[fixed_contrast]
    moving_clean = _warp(base.clean[moving_contrast], inverse, label=False)
    moving_labels = _warp(base.labels, inverse, label=True)
    fixed = _noisy(fixed_clean, rng, noise)
    moving = _noisy(moving_clean, rng, noise)
    landmarks = _landmarks(base.labels, rng, int(n_landmarks))
    moved = np.array([tx.TransformPoint(tuple(float(c) for c in p)) for p in landmarks])
    info = {"phantom": "registration_pair", "seed": seed, "transform": transform,
            "parameters": list(tx.GetParameters()), "fixed_contrast": fixed_contrast,
            "moving_contrast": moving_contrast, "noise": noise, **{k: v for k, v in base.info.items()
                                                                  if k.startswith("tumour")}}
    return RegistrationPair(fixed, moving, tx, base.labels, moving_labels, landmarks, moved, info)


def _noisy(clean: Image, rng: np.random.Generator, noise: float) -> Image:
    arr = np.asarray(clean.array, np.float32)
    sigma = noise * float(arr.max())
    return clean.with_array(rician(rng, arr, sigma), metadata={**clean.metadata, "noise_sigma": sigma})


@dataclass
class ClassificationSet:
    """Small volumes labelled tumour present (1) or absent (0), with the tumour masks.

    ``images[i]`` is a brain volume, ``targets[i]`` its class, ``masks[i]`` a label map of
    the whole tumour (core and oedema), empty when ``targets[i] == 0``: the ground truth
    against which an explanation's localisation is scored.
    """

    images: list[Image]
    targets: np.ndarray
    masks: list[Image]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Image, int, Image]:
        return self.images[i], int(self.targets[i]), self.masks[i]


def classification_set(*, n: int = 16, size: Sequence[int] = (64, 64, 32),
                       spacing: Sequence[float] = (3.0, 3.0, 4.0), contrast: str = "flair",
                       noise: float = 0.03, seed: int = 0) -> ClassificationSet:
    """``n`` brain volumes, half with a tumour (target 1) and half without (target 0).

    Each volume has its own anatomy (folding, shape, tumour place and size) from a seed
    derived from ``seed``, so the set is deterministic and the classes differ only by
    the tumour.

    Parameters
    ----------
    n : int
        Number of volumes (>= 2); ``n // 2`` have a tumour, in shuffled order.
    size, spacing
        Grid of each volume (x, y, z).
    contrast : {'flair', 't1', 't2'}
    noise : float
        Rician noise, fraction of the largest intensity.
    seed : int

    Returns
    -------
    ClassificationSet

    Examples
    --------
    >>> from medlab.data import classification_set
    >>> ds = classification_set(n=4, size=(32, 32, 16), spacing=(6, 6, 8))
    >>> int(ds.targets.sum()), len(ds)
    (2, 4)
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ParameterError(f"n must be an integer >= 2; got {n!r}")
    seed = _check_seed(seed)
    _check_contrasts((contrast,))
    rng = np.random.default_rng([seed, 3])
    targets = rng.permutation(np.array([1] * (n // 2) + [0] * (n - n // 2), dtype=np.int64))
    seeds = np.random.SeedSequence([seed, 4]).generate_state(n)
    images, masks = [], []
    for target, s in zip(targets, seeds):
        p = brain_mri(size=size, spacing=spacing, noise=noise, tumour=bool(target), seed=int(s),
                      contrasts=(contrast,))
        whole = np.isin(p.labels.array, (OEDEMA, ENHANCING, NECROSIS)).astype(np.uint8)
        images.append(p.images[contrast])
        masks.append(p.labels.with_array(whole, kind="label", labels={1: ("tumour", (213, 94, 0))}))
    info = {"phantom": "classification_set", "seed": seed, "contrast": contrast, "noise": noise,
            "mask": "whole tumour: necrotic core, enhancing rim and oedema"}
    return ClassificationSet(images, targets, masks, info)
