"""Export a label map as a DICOM Segmentation (SEG) that references its source CT/MR series,
so a PACS or OHIF shows it on the original images.

Written with highdicom: a BINARY segmentation, one segment per label value present, with the
label's name, its colour as CIELab, the segmented property (category and type codes) and the
algorithm that made it. The label map may be on another grid than the series (resampled,
cropped, reoriented): it is first mapped onto each source slice by nearest neighbour in
physical space (mm, LPS), so the SEG overlays the series voxel for voxel.

RTSTRUCT export (rt-utils) was left out: contours of label maps need their own tests
(holes, slices without contours, pixel-edge conventions) and a further dependency with
OpenCV's contour finder; a SEG carries the voxels exactly.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import GeometryError, ImageError, MedlabWarning, ParameterError, ReadError, WriteError
from ..image import Image, as_image, label_color

__all__ = ["write_dicom_seg"]

ALGORITHM_TYPES = ("automatic", "semiautomatic", "manual")

# The family (DICOM CID 7162) of the medlab methods that make label maps, read from the
# ``method`` the segment stages leave in the label map's metadata.
_FAMILY = {
    "manual": "HistogramAnalysis", "otsu": "HistogramAnalysis", "li": "HistogramAnalysis",
    "triangle": "HistogramAnalysis", "multi-otsu": "HistogramAnalysis",
    "connected threshold": "NeighborhoodAnalysis", "confidence connected": "NeighborhoodAnalysis",
    "neighbourhood connected": "NeighborhoodAnalysis", "watershed": "EdgeDetection",
    "fast marching": "DeformableModels",
}


def _family_of(labels: Image, family: str | None) -> str:
    from pydicom.sr.codedict import codes

    options = [n for n in dir(codes.cid7162) if n[0].isupper()]
    if family is None:
        method = str(labels.metadata.get("method", ""))
        family = "HistogramAnalysis" if method.startswith("ct ") else _FAMILY.get(method)
        if family is None:
            raise ParameterError(
                "write_dicom_seg: cannot tell which kind of algorithm made this label map"
                + (f" (method {method!r})" if method else "") + f"; pass algorithm_family= one of {options} "
                "(DICOM CID 7162), e.g. 'ArtificialIntelligence' for a neural network, or algorithm_type='manual'")
    if family not in options:
        raise ParameterError(f"write_dicom_seg: algorithm_family must be one of {options} (DICOM CID 7162); "
                             f"got {family!r}")
    return family


def _source_datasets(folder: Path, series) -> list:
    """Headers of the source series' files, sorted along the slice normal."""
    import pydicom

    from ..io import list_series
    from ..io.dicom import select_series

    folder = Path(folder)
    if not folder.exists():
        raise ReadError(f"write_dicom_seg: source series {folder} does not exist")
    info = select_series(list_series(folder), series, folder)
    datasets = []
    for f in info.files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a broken file
            raise ReadError(f"write_dicom_seg: cannot read source file {f} ({exc})") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ReadError(f"write_dicom_seg: {f} is a multi-frame image; SEG export supports series of "
                            "single-slice files (classic CT and MR)")
        if ds.get("ImagePositionPatient") is None or ds.get("ImageOrientationPatient") is None:
            raise ReadError(f"write_dicom_seg: {f} has no ImagePositionPatient/ImageOrientationPatient; a SEG "
                            "needs the source slices' positions")
        datasets.append(ds)
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in datasets])
    if len(shapes) > 1 or np.ptp(iops, axis=0).max() > 1e-4 or np.ptp(spacings, axis=0).max() > 1e-4:
        raise ReadError(f"write_dicom_seg: the slices of {folder} differ in size, orientation or pixel spacing; "
                        "choose one consistent series with series=")
    normal = np.cross(iops[0, :3], iops[0, 3:])
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets]) @ normal
    order = np.argsort(pos, kind="stable")
    if np.any(np.diff(pos[order]) < 1e-3):
        raise ReadError(f"write_dicom_seg: {folder} holds two slices at the same position; choose one series "
                        "with series=")
    return [datasets[i] for i in order]


def _same_file(a: Path, b) -> bool:
    try:
        return Path(a).samefile(b)
    except (OSError, TypeError):
        return False


# Type 2 attributes of the Patient and General Study modules (present, possibly empty) that a
# SEG copies from its source; files from anonymisers often drop them.
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


def _complete_headers(datasets: list) -> None:
    """Give the (in-memory) headers what highdicom needs when the files leave it out.

    Missing type 2 patient and study attributes become empty, as the standard allows.
    SOP Class/Instance UIDs come from the file meta header (the same values); empty Study or
    Series Instance UIDs get UIDs derived from the Frame of Reference and the instance UIDs,
    so exporting again gives the same ones, and a warning says a PACS will not link them.
    """
    from pydicom.uid import generate_uid

    missing = []
    for ds in datasets:
        for keyword in _TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
        meta = getattr(ds, "file_meta", None)
        if not ds.get("SOPInstanceUID") and meta is not None and meta.get("MediaStorageSOPInstanceUID"):
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if not ds.get("SOPClassUID") and meta is not None and meta.get("MediaStorageSOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
            raise ReadError(f"write_dicom_seg: source file {ds.filename} has no SOP Instance/Class UID (not even in "
                            "its file meta header); a SEG cannot reference it")
    seed = "|".join([str(datasets[0].get("FrameOfReferenceUID", ""))] + [str(ds.SOPInstanceUID) for ds in datasets])
    for key in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(key, "") or "") for ds in datasets}
        if values == {""}:
            uid = generate_uid(entropy_srcs=[key, hashlib.sha256(seed.encode()).hexdigest()])
            for ds in datasets:
                setattr(ds, key, uid)
            missing.append(key)
        elif "" in values or len(values) > 1:
            raise ReadError(f"write_dicom_seg: the source slices disagree on {key}; choose one series with series=")
    if missing:
        warnings.warn(
            f"write_dicom_seg: the source series has empty {' and '.join(missing)}; the SEG references generated "
            "ones (the same at every export of this series). It still names each source slice by its SOP Instance "
            "UID and shares its Frame of Reference, but a PACS will not file it with the series",
            MedlabWarning, stacklevel=3)


def _frame_grid(datasets: list) -> tuple[Image, bool]:
    """An empty :class:`Image` on the series' grid (z = sorted slice order) and whether the slice
    step is uniform."""
    ds0 = datasets[0]
    iop = np.array([float(v) for v in ds0.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds0.PixelSpacing)
    normal = np.cross(iop[:3], iop[3:])
    ipps = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    steps = np.diff(ipps @ normal)
    step = float(steps.mean()) if steps.size else float(ds0.get("SliceThickness", 1.0) or 1.0)
    uniform = steps.size == 0 or np.allclose(steps, step, rtol=1e-3, atol=1e-3)
    direction = np.column_stack([iop[:3], iop[3:], normal])
    grid = Image(np.zeros((len(datasets), int(ds0.Rows), int(ds0.Columns)), np.uint8),
                 (col_spacing, row_spacing, step), ipps[0], direction)
    return grid, bool(uniform)


def _on_series_grid(labels: Image, datasets: list, grid: Image, uniform: bool, where: Path) -> np.ndarray:
    """The label map's values at every source pixel (nearest neighbour in mm), [frame, row, col]."""
    import SimpleITK as sitk

    if not labels.overlaps(grid):
        raise GeometryError(f"write_dicom_seg: the label map ({labels.describe()}) and the series in {where} "
                            "do not overlap in physical space; was it made from another scan?")
    if labels.same_grid(grid):
        return np.asarray(labels.array)
    moving = labels.to_sitk()
    if uniform:
        out = sitk.Resample(moving, grid.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                            moving.GetPixelID())
        return sitk.GetArrayFromImage(out)
    frames = []
    for ds in datasets:  # uneven slice steps: one reference plane per slice
        plane = Image(np.zeros((1, grid.shape[1], grid.shape[2]), np.uint8), grid.spacing,
                      [float(v) for v in ds.ImagePositionPatient], grid.direction)
        out = sitk.Resample(moving, plane.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                            moving.GetPixelID())
        frames.append(sitk.GetArrayFromImage(out)[0])
    return np.stack(frames)


_ASCII = {"≥": ">=", "≤": "<=", "±": "+/-", "×": "x", "–": "-", "—": "-", "−": "-", "³": "3", "²": "2",
          "µ": "u", "°": "deg"}


def dicom_text(text: str, limit: int = 64) -> str:
    """``text`` in the DICOM default character repertoire (ASCII), at most ``limit`` characters.

    A SEG written with the default character set cannot hold "≥" or "é"; symbols become their
    ASCII spelling and accents are dropped, so every viewer shows the same segment label.
    """
    import unicodedata

    for k, v in _ASCII.items():
        text = text.replace(k, v)
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return folded.replace("\\", "/")[:limit]


def _segment_description(number: int, value: int, labels: Image, algorithm_type: str, algorithm, codes_for):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label = labels.labels.get(value)
    name = label.name if label is not None else f"label {value}"
    rgb = label.color if label is not None else label_color(value)
    category, prop = codes_for.get(value, (codes.SCT.Tissue, codes.SCT.Tissue))
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=dicom_text(name), segmented_property_category=category,
        segmented_property_type=prop, algorithm_type=algorithm_type.upper(),
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*rgb),
        tracking_id=f"label {value}", tracking_uid=hd.UID())


def write_dicom_seg(labels, source_series_folder, path, *, series=None,
                    series_description: str = "Segmentation", series_number: int = 300,
                    algorithm_name: str = "medlab", algorithm_version: str | None = None,
                    algorithm_type: str = "semiautomatic", algorithm_family: str | None = None,
                    segment_codes: Mapping[int, tuple] | None = None, overwrite: bool = False) -> Path:
    """Write a label map as a DICOM SEG file that references its source series.

    Parameters
    ----------
    labels : Image
        A 3D label map (kind ``'label'``), on the series' grid or on any grid overlapping it
        (it is mapped onto the source slices by nearest neighbour in physical space). Each
        label value present becomes a segment, named and coloured as in ``labels.labels``.
    source_series_folder : str or Path
        The folder (or file) of the DICOM series the label map was made from.
    path : str or Path
        The ``.dcm`` file to write (atomically; an existing file is kept unless ``overwrite``).
    series : optional
        Which series of the folder, when it holds several (as :func:`medlab.load` takes it).
    series_description : str
    series_number : int
    algorithm_name, algorithm_version : str
        Who made the segmentation (the version defaults to medlab's).
    algorithm_type : {'automatic', 'semiautomatic', 'manual'}
        Seeded methods are semiautomatic, thresholds and networks automatic.
    algorithm_family : str, optional
        A keyword of DICOM CID 7162 (``'HistogramAnalysis'``, ``'NeighborhoodAnalysis'``,
        ``'EdgeDetection'``, ``'ArtificialIntelligence'`` ...). By default taken from the
        ``method`` that medlab's segment stages record in the label map's metadata.
    segment_codes : mapping, optional
        ``{label value: (category, type)}`` as ``pydicom.sr.codedict.codes`` entries, e.g.
        ``{5: (codes.SCT.AnatomicalStructure, codes.SCT.Liver)}``. Default: Tissue / Tissue.
    overwrite : bool

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ImageError
        ``labels`` is not a 3D label map, or nothing of it falls on the series.
    ReadError
        The source series cannot be read or is inconsistent (multi-frame, mixed geometry).
    ParameterError
        A bad algorithm type or family.
    WriteError
        The file exists (without ``overwrite``) or cannot be written.

    Warns
    -----
    MedlabWarning
        The source series has empty Study/Series Instance UIDs (generated ones are referenced).

    Examples
    --------
    >>> import medlab
    >>> from medlab import segment
    >>> ct = medlab.load("ct_abdomen/example_ct_dicom")                        # doctest: +SKIP
    >>> bone = segment.ct_threshold(ct, preset="bone")                         # doctest: +SKIP
    >>> segment.write_dicom_seg(bone, "ct_abdomen/example_ct_dicom", "bone_seg.dcm")  # doctest: +SKIP
    PosixPath('bone_seg.dcm')
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__
    from ..io import atomic_path

    labels = as_image(labels, "labels")
    if not labels.is_label or labels.ndim != 3:
        raise ImageError(f"write_dicom_seg needs a 3D label map; got a {labels.ndim}D {labels.kind} image "
                         "(make one with image.with_array(array, kind='label'))")
    if algorithm_type not in ALGORITHM_TYPES:
        raise ParameterError(f"write_dicom_seg: algorithm_type must be one of {ALGORITHM_TYPES}; got {algorithm_type!r}")
    if (isinstance(series_number, (bool, np.bool_)) or not isinstance(series_number, (int, np.integer))
            or not 0 <= int(series_number) < 2**31):
        raise ParameterError(f"write_dicom_seg: series_number must be a whole number ≥ 0; got {series_number!r}")
    if algorithm_type != "manual" and not dicom_text(str(algorithm_name)).strip():
        raise ParameterError("write_dicom_seg: algorithm_name must name the program that made the segmentation "
                             "(DICOM requires it for automatic and semiautomatic segmentations)")
    if segment_codes is not None and not isinstance(segment_codes, Mapping):
        raise ParameterError("write_dicom_seg: segment_codes must map a label value to (category, type) codes, e.g. "
                             "{5: (codes.SCT.AnatomicalStructure, codes.SCT.Liver)}")
    algorithm = None
    if algorithm_type != "manual":
        family = _family_of(labels, algorithm_family)
        algorithm = hd.AlgorithmIdentificationSequence(
            name=dicom_text(str(algorithm_name)), family=getattr(codes.cid7162, family),
            version=dicom_text(str(algorithm_version or __version__)))
    from ..io.paths import as_file_path

    source = as_file_path(source_series_folder, "write_dicom_seg: source_series_folder")
    path = as_file_path(path, "write_dicom_seg: path")
    if path.suffix.lower() not in ("", ".dcm", ".dicom"):
        raise WriteError(f"write_dicom_seg: {path.name} does not name a DICOM file; use the suffix .dcm (a DICOM SEG "
                         "saved as .nii or .png is read back as neither)")
    if path.exists() and not overwrite:
        raise WriteError(f"{path} exists already; pass overwrite=True to replace it, or choose another name")

    datasets = _source_datasets(source, series)
    if path.exists() and any(_same_file(path, ds.filename) for ds in datasets):
        # overwrite=True is for a SEG written before, never for a slice of the series it refers to
        raise WriteError(f"write_dicom_seg: {path} is a slice of the source series; the SEG would replace it. "
                         "Choose a file outside the series")
    _complete_headers(datasets)
    grid, uniform = _frame_grid(datasets)
    frames = _on_series_grid(labels, datasets, grid, uniform, source)
    values = [int(v) for v in np.unique(frames) if v != 0]
    if not values:
        raise ImageError(f"write_dicom_seg: no labelled voxel of the label map falls on the series in "
                         f"{source_series_folder} (do they overlap? label map: {labels.describe()})")
    segment_map = np.zeros(frames.shape, np.uint16)  # segment k (1..n) = k-th label value present
    labelled = frames != 0
    segment_map[labelled] = np.searchsorted(np.asarray(values), frames[labelled]) + 1
    try:
        descriptions = [_segment_description(n, v, labels, algorithm_type, algorithm, dict(segment_codes or {}))
                        for n, v in enumerate(values, 1)]
    except (TypeError, ValueError, AttributeError) as exc:
        raise ParameterError(f"write_dicom_seg: segment_codes must give each label value a (category, type) pair of "
                             f"pydicom codes such as codes.SCT.Liver ({type(exc).__name__}: {exc})") from None
    thickness = float(datasets[0].get("SliceThickness") or 0) or round(abs(grid.spacing[2]), 6)
    for ds in datasets:  # highdicom reads it from every source header; type 2, so often left out
        if not ds.get("SliceThickness"):
            ds.SliceThickness = thickness
    measures = hd.PixelMeasuresSequence(  # the header's thickness, and the measured slice step
        pixel_spacing=[float(v) for v in datasets[0].PixelSpacing], slice_thickness=thickness,
        spacing_between_slices=grid.spacing[2] if uniform and len(datasets) > 1 else None)
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=int(series_number),
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medlab",
            manufacturer_model_name="medlab", software_versions=str(__version__), device_serial_number="none",
            series_description=dicom_text(str(series_description)), content_label="SEGMENTATION",
            content_description=dicom_text(str(series_description)), omit_empty_frames=True,
            pixel_measures=measures)
    except (ValueError, TypeError, AttributeError) as exc:
        raise WriteError(f"write_dicom_seg: highdicom refused the segmentation for {path}: {exc}") from exc
    with atomic_path(path, overwrite=overwrite, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return path

