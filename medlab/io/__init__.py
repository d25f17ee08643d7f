"""Reading and writing clinical image formats: :func:`load`, :func:`save`, :func:`list_series`.

=====================  ===================================================================
format                 read / write
=====================  ===================================================================
DICOM file or folder   read: one or several series, multi-frame, compressed (JPEG-2000,
                       JPEG lossless, RLE), rescaled (CT in HU), MONOCHROME1 made bright-bone
DICOM SEG              read as a label map (segment numbers and names) on its source grid
NIfTI .nii / .nii.gz   read (big-endian too) / write (label maps keep NIFTI_INTENT_LABEL)
NRRD .nrrd / .nhdr     read / write .nrrd
MetaImage .mha / .mhd  read / write .mha
PNG, JPEG, TIFF, BMP   read 2D (an RGB photograph stays a colour 2D image) / write PNG
=====================  ===================================================================

Every write is atomic (temporary file, then rename) and never replaces an existing file
unless ``overwrite=True``; a failed write (full disk, file-size limit) raises
:class:`~medlab.errors.WriteError` and leaves nothing. Reading never modifies a file, and
checks a header's claimed size against the file and the memory before allocating. Where
readers interpret a header differently (NIfTI qform/sform, pixdim 0, DICOM PixelSpacing 0),
medlab follows a stated rule, records it in ``metadata["notes"]`` and warns
(:class:`~medlab.errors.MedlabWarning`); see :mod:`medlab.io.nifti`.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, ParameterError, ReadError, WriteError
from ..image import Image, as_image
from .atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text
from .deidentify import deidentify  # noqa: F401  (public: medlab.io.deidentify)
from .dicom import SeriesInfo, list_series
from .paths import check_readable

__all__ = [
    "SeriesInfo",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "list_series",
    "load",
    "read_labels",
    "save",
]


def load(
    path,
    *,
    series=None,
    kind: str | None = None,
    labels: Mapping[int, Any] | str | Path | None = None,
    allow_nonfinite: bool = False,
    volume: int | None = None,
) -> Image:
    """Read a medical image (DICOM, NIfTI, NRRD, MetaImage, PNG/JPEG/TIFF) as an :class:`Image`.

    Parameters
    ----------
    path : str or Path
        A DICOM file, a folder of DICOM files (searched recursively; any file names), or a
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, ``.png``, ``.jpg``,
        ``.tif`` or ``.bmp`` file.
    series : int, str or SeriesInfo, optional
        For a folder holding several series: a SeriesNumber, a SeriesInstanceUID, part of the
        SeriesDescription (case-insensitive), or an item of :func:`list_series`. Without it, a
        folder with several series raises a :class:`ReadError` listing them.
    kind : {'intensity', 'label'}, optional
        ``'label'`` for a label map (integer classes, nearest-neighbour, overlay). By default
        the kind saved in the file by :func:`save` (or ``'label'`` when ``labels`` is given).
    labels : mapping or path, optional
        Label names, ``{value: name}``, or the path of a JSON file holding ``{"1": "spleen", ...}``.
    allow_nonfinite : bool
        Accept NaN or infinite voxels (refused by default, as most processing breaks on them).
    volume : int, optional
        For a 4D file (time series, diffusion): which 3D volume to load (a whole number,
        from 0).

    Returns
    -------
    Image
        Voxels ``[z, y, x]`` with spacing, origin and direction in LPS, and metadata:
        ``source`` (the path), ``format``, ``modality`` ('CT', 'MR', ... for DICOM), ``units``
        ('HU' for CT), ``dicom`` (a safe subset of tags: no patient identity), and for DICOM
        series ``slice_step`` (the measured z spacing), ``slice_thickness`` and ``notes``.

    Raises
    ------
    ReadError
        The path does not exist (or is a broken or looping link), may not be read by this
        user, is not a readable image, is corrupt, claims more voxels than the file or the
        memory can hold, or is an inconsistent DICOM series (mixed orientations, missing
        slices, different sizes); the message says which file and what to do.
    ParameterError
        ``kind``, ``labels``, ``series`` or ``volume`` is not a valid value.

    Warns
    -----
    MedlabWarning
        A header read by a stated rule where readers differ (NIfTI qform/sform, pixdim 0,
        DICOM PixelSpacing 0); the rule is also recorded in ``metadata["notes"]``.
    ImageError
        NaN/infinite voxels (unless ``allow_nonfinite``), a single-voxel image, or a label map
        that does not hold integers.

    Examples
    --------
    >>> import medlab
    >>> ct = medlab.load("ct_abdomen/example_ct_dicom")            # doctest: +SKIP
    >>> ct.size, ct.spacing, ct.metadata["units"]                  # doctest: +SKIP
    ((512, 512, 20), (0.977, 0.977, 2.0), 'HU')
    >>> seg = medlab.load("example_seg.nii.gz", kind="label", labels="labels_total.json")  # doctest: +SKIP
    >>> seg.labels[5].name                                         # doctest: +SKIP
    'liver'
    """
    path = _as_path(path, "load")
    if kind not in (None, "intensity", "label"):
        raise ParameterError(f"kind must be 'intensity' or 'label'; got {kind!r}")
    volume = _volume_index(volume)
    names = read_labels(labels) if isinstance(labels, (str, Path)) else labels
    if names is not None and not isinstance(names, Mapping):
        raise ParameterError(f"labels must be a mapping {{value: name}} or the path of a JSON file; got {type(labels).__name__}")
    image = _read(path, series=series, kind=kind, labels=names, volume=volume)
    _check_loaded(image, path, allow_nonfinite)
    return image


def _as_path(path, what: str) -> Path:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        example = "'scan.nii.gz' or a DICOM folder" if what == "load" else "'out.nii.gz'"
        raise ParameterError(f"{what}: path must be a file name such as {example}; got {path!r}")
    return Path(path)


def _volume_index(volume) -> int | None:
    """``volume`` as a whole number >= 0 (1.7 is refused, not rounded)."""
    if volume is None:
        return None
    if isinstance(volume, (bool, np.bool_)) or not isinstance(volume, (numbers.Integral, np.integer)):
        raise ParameterError(f"volume must be a whole number (0 for the first volume of a 4D file); got {volume!r}")
    if volume < 0:
        raise ParameterError(f"volume must be 0 or more (0 is the first volume of a 4D file); got {volume}")
    return int(volume)


def _read(path: Path, *, series, kind, labels, volume) -> Image:
    from . import dicom, formats

    st = check_readable(path)
    suffix = formats.suffix_of(path)
    if stat.S_ISDIR(st.st_mode) and suffix in formats.READ_SUFFIXES:
        raise ReadError(f"{path} is a folder, not a {formats.READ_SUFFIXES[suffix]} file; give the path of the "
                        "image file itself (or rename the folder if it holds DICOM files)")
    if stat.S_ISDIR(st.st_mode):
        image = dicom.read_dicom(path, series=series)
    else:
        fmt = formats.READ_SUFFIXES.get(suffix)
        if fmt is None:
            if suffix in dicom.DICOM_SUFFIXES or suffix == "" or dicom.is_dicom_file(path) or suffix[1:].isdigit():
                image = dicom.read_dicom(path, series=series)
            else:
                raise ReadError(
                    f"{path}: unsupported file type {suffix!r}. medlab reads DICOM (a file or a folder), "
                    f"{', '.join(sorted(formats.READ_SUFFIXES))}; convert the file to one of these"
                )
        else:
            if series is not None:
                raise ParameterError(f"series= applies to DICOM folders; {path} is a {fmt} file")
            if fmt == "NIfTI":
                return formats.read_nifti(path, volume=volume, kind=kind, labels=labels)
            sitk_image = formats.split_volume(formats.read_sitk(path, fmt), path, volume)
            return formats.image_from_sitk(sitk_image, path, fmt, kind=kind, labels=labels)
    if volume is not None:
        raise ParameterError(f"volume= applies to 4D NIfTI/NRRD/MetaImage files; {path} is DICOM")
    if kind == "label" or labels is not None:
        try:
            image = image.with_array(image.array, kind="label", labels=labels or {})
        except ImageError as exc:
            raise ImageError(f"{path}: {exc} (load it with kind='intensity')") from exc
    return image


def read_labels(path) -> dict[int, str]:
    """Label names from a JSON file holding ``{"1": "spleen", "5": "liver", ...}``.

    Values may also be ``{"name": ..., "color": [r, g, b]}``.

    Examples
    --------
    >>> from medlab.io import read_labels
    >>> read_labels("labels_total.json")[5]        # doctest: +SKIP
    'liver'
    """
    from .paths import read_small_file

    path = _as_path(path, "labels")
    raw = read_small_file(path, "label names file")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReadError(f"{path} is not a JSON file of label names ({type(exc).__name__}: {str(exc)[:120]}); "
                        "it should hold {\"1\": \"name\", ...}") from None
    if not isinstance(data, dict):
        raise ReadError(f"{path} should hold a JSON object {{\"1\": \"name\", ...}}; it holds a {type(data).__name__}")
    out = {}
    for key, value in data.items():
        try:
            out[int(key)] = value
        except ValueError as exc:
            raise ReadError(f"{path}: label values must be integers; found key {key!r}") from exc
    return out


def _check_loaded(image: Image, path: Path, allow_nonfinite: bool) -> None:
    if math.prod(image.size) == 1:
        raise ImageError(
            f"{path} holds a single voxel; there is nothing to show or process. Check that it is the image you meant"
        )
    a = image.array
    if not allow_nonfinite and a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ImageError(
                f"{path} holds {bad} NaN/infinite voxel(s); most processing fails on them. Load it with "
                "allow_nonfinite=True and replace them, e.g. image.with_array(np.nan_to_num(image.array))"
            )


def save(image, path, *, overwrite: bool = False) -> Path:
    """Write an image to NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``), MetaImage (``.mha``), or PNG (2D).

    The file is written to a temporary name in the same folder and renamed when complete,
    so a failure never leaves a half-written file. Geometry (spacing, origin, direction) is
    kept; so is the kind (label maps), with label names in NRRD/MHA, and modality/units.

    Parameters
    ----------
    image : Image
        What to write (a SimpleITK image or a numpy array are accepted too). It is not modified.
    path : str or Path
        Target file; its extension picks the format. PNG takes 2D uint8/uint16 grey or uint8 RGB.
    overwrite : bool
        Replace an existing file. Without it, an existing ``path`` raises :class:`WriteError`.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    WriteError
        ``path`` exists (without ``overwrite``), has an unsupported extension, or cannot be
        written (full disk, file-size limit, read-only folder); nothing is left behind, and
        the message names ``path`` and its folder.
    ParameterError
        ``path`` is not a file name (e.g. None), or ``image`` is not an image.

    Warns
    -----
    MedlabWarning
        PNG: the origin or direction cannot be stored and is lost.

    Examples
    --------
    >>> import medlab, numpy as np
    >>> img = medlab.Image(np.zeros((4, 8, 8), np.int16), spacing=(0.5, 0.5, 2.0))
    >>> medlab.save(img, "out.nii.gz")                 # doctest: +SKIP
    PosixPath('out.nii.gz')
    """
    from . import formats

    image = as_image(image)
    if not image.array.dtype.isnative:  # e.g. np.frombuffer(..., ">f4"): ITK takes native order only
        image = image.with_array(image.array.astype(image.array.dtype.newbyteorder("=")))
    path = _as_path(path, "save")
    fmt = formats.write_format(path)
    if path.exists() and not overwrite:
        raise WriteError(f"{path} exists already; pass overwrite=True to replace it, or choose another name")
    if path.is_dir():
        raise WriteError(f"{path} is a folder; give a file name such as {path / 'image.nii.gz'}")
    return formats.write_image(image, path, fmt, overwrite=overwrite)
