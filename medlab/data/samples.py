"""Real images that installed dependencies already ship (no download needed).

pydicom, nibabel, scikit-image and dipy include small test images in their wheels;
:func:`list_samples` says which are present here, with their licence and source, and
:func:`load_sample` reads one as an :class:`~medlab.Image`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReadError
from ..image import Image


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.is_file() else None


def _pydicom_file(name: str) -> Path | None:
    # Only files inside the installed package: get_testdata_file could download others.
    return _package_file("pydicom", "data", "test_files", name)


@dataclass(frozen=True)
class _Sample:
    name: str
    title: str
    modality: str
    licence: str
    source: str
    package: str
    locate: Callable[[], Path | None]
    spacing_known: bool = True

    def as_dict(self) -> dict:
        path = self.locate()
        return {"name": self.name, "title": self.title, "modality": self.modality, "licence": self.licence,
                "source": self.source, "package": self.package, "available": path is not None,
                "path": str(path) if path else None}


_SAMPLES = [
    _Sample("ct_small", "CT slice 128×128, 0.66 mm pixels, int16 (downsized from NEMA WG04 CT1_UNC)",
            "CT", "MIT (pydicom test data)", "pydicom: pydicom/data/test_files/CT_small.dcm", "pydicom",
            lambda: _pydicom_file("CT_small.dcm")),
    _Sample("mr_small", "MR slice 64×64, 0.31 mm pixels, int16 (downsized from NEMA WG04 MR1_UNC)",
            "MR", "MIT (pydicom test data)", "pydicom: pydicom/data/test_files/MR_small.dcm", "pydicom",
            lambda: _pydicom_file("MR_small.dcm")),
    _Sample("mr_small_jpeg2k", "The same MR slice stored as JPEG 2000 lossless (a decoder check)",
            "MR", "MIT (pydicom test data)", "pydicom: pydicom/data/test_files/MR_small_jp2klossless.dcm",
            "pydicom", lambda: _pydicom_file("MR_small_jp2klossless.dcm")),
    _Sample("t1_brain_small", "Low-resolution T1 brain, 33×41×25, 2 mm, big-endian int16, LAS",
            "MR", "MIT (nibabel test data)", "nibabel: nibabel/tests/data/anatomical.nii", "nibabel",
            lambda: _package_file("nibabel", "tests", "data", "anatomical.nii")),
    _Sample("dwi_b0_aniso", "Diffusion MRI b=0 volume of a brain, 58×58×24, 4×4×5 mm (anisotropic voxels); "
            "provenance not documented", "MR", "BSD-3-Clause (dipy package data)",
            "dipy: dipy/data/files/aniso_vox.nii.gz", "dipy",
            lambda: _package_file("dipy", "data", "files", "aniso_vox.nii.gz")),
    _Sample("retina", "Colour fundus photograph of a normal left eye, 1411×1411 RGB (pixel size unknown)",
            "OP", "CC0 1.0 (Häggström, via Wikimedia Commons)", "scikit-image: skimage/data/retina.jpg",
            "skimage", lambda: _package_file("skimage", "data", "retina.jpg"), spacing_known=False),
    _Sample("microaneurysms", "Retina green channel with microaneurysms, 102×102 grey (HRF database crop)",
            "OP", "CC0 (Andreas Maier, HRF database)", "scikit-image: skimage/data/microaneurysms.png",
            "skimage", lambda: _package_file("skimage", "data", "microaneurysms.png"), spacing_known=False),
    _Sample("shepp_logan", "Shepp-Logan head phantom, 400×400 grey (the classic CT test object)",
            "OT", "BSD-3-Clause (scikit-image)", "scikit-image: skimage/data/phantom.png", "skimage",
            lambda: _package_file("skimage", "data", "phantom.png"), spacing_known=False),
]
_BY_NAME = {s.name: s for s in _SAMPLES}


def list_samples(*, available_only: bool = False) -> list[dict]:
    """Samples shipped inside installed packages, with licence and source.

    Each entry: ``name``, ``title``, ``modality``, ``licence``, ``source``, ``package``,
    ``available`` (the package and file are installed here) and ``path``.

    Examples
    --------
    >>> from medlab.data import list_samples
    >>> [s["name"] for s in list_samples()][:2]
    ['ct_small', 'mr_small']
    """
    entries = [s.as_dict() for s in _SAMPLES]
    return [e for e in entries if e["available"]] if available_only else entries


def load_sample(name: str) -> Image:
    """Read a shipped sample as an :class:`~medlab.Image` (geometry from the file).

    ``metadata`` carries ``modality``, ``units`` ("HU" for CT), ``source`` (the path),
    ``sample`` (the name) and ``licence``. Photographs without a known pixel size get
    1 mm pixels and ``metadata["spacing_known"] = False``.

    Examples
    --------
    >>> from medlab.data import load_sample
    >>> ct = load_sample("ct_small")
    >>> ct.modality, ct.metadata["units"]
    ('CT', 'HU')
    """
    if name not in _BY_NAME:
        raise ReadError(f"no shipped sample named {name!r}; available: {', '.join(_BY_NAME)} "
                        f"(larger public images: medlab.data.fetch, see medlab.data.remote_entries())")
    sample = _BY_NAME[name]
    path = sample.locate()
    if path is None:
        raise ReadError(f"sample {name!r} ships with the {sample.package!r} package, which is not installed "
                        f"(or lacks the file): pip install {sample.package.replace('skimage', 'scikit-image')}")
    image = _read(path)
    meta = dict(image.metadata)
    if path.suffix.lower() != ".dcm" or not meta.get("modality"):    # only DICOM files name theirs
        meta["modality"] = sample.modality
    if meta["modality"] == "CT":
        meta.setdefault("units", "HU")
    meta.update({"source": str(path), "sample": name, "licence": sample.licence, "title": sample.title})
    spacing, origin = image.spacing, image.origin
    if not sample.spacing_known:      # e.g. a JPEG's DPI says nothing about the eye
        meta["spacing_known"] = False
        spacing, origin = (1.0,) * image.ndim, (0.0,) * image.ndim
    return Image(image.array, spacing, origin, image.direction, kind=image.kind,
                 labels=image.labels, metadata=meta, rgb=image.rgb)


def _read(path: Path) -> Image:
    """Read with :func:`medlab.load` when the IO layer provides it, else with SimpleITK."""
    from .. import io as medlab_io

    load = getattr(medlab_io, "load", None)
    if load is not None:
        return load(path)
    return read_with_sitk(path)


def read_with_sitk(path: Path) -> Image:
    """Minimal reader (SimpleITK; modality from the DICOM header) used before medlab.load exists."""
    import SimpleITK as sitk

    try:
        image = Image.from_sitk(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise ReadError(f"could not read sample file {path}: {exc}") from exc
    meta = {"source": str(path)}
    if path.suffix.lower() == ".dcm":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        meta["modality"] = str(ds.get("Modality", "")) or None
    return Image(image.array, image.spacing, image.origin, image.direction, metadata=meta, rgb=image.rgb)
