"""Synthetic DICOM files built with pydicom, for the traps real data rarely offers on demand:
MONOCHROME1, several series in a folder, missing slices, shuffled names and InstanceNumbers,
multi-frame (enhanced) files, compressed transfer syntaxes, corrupt files.

Every file carries a fake patient identity (name, ID, birth date) so tests can check that
it never reaches ``Image.metadata``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "EnhancedCT": "1.2.840.10008.5.1.4.1.1.2.1",
}
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "SECRET-ID-123", "PatientBirthDate": "19700101"}


def _base(modality: str, sop_class: str, *, series_uid: str, study_uid: str, series_number: int | None,
          description: str, instance_number: int | None) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.StudyDescription = "synthetic study"
    ds.Manufacturer = "medlab tests"
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    return ds


def _pixels(ds: Dataset, plane: np.ndarray, *, photometric: str, bits_stored: int | None) -> None:
    plane = np.asarray(plane)
    signed = plane.dtype.kind == "i"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = plane.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored or 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = plane.astype(np.int16 if signed else np.uint16).tobytes()


def slice_dataset(plane, *, position=None, orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(1.0, 1.0),
                  slice_thickness=None, modality="CT", series_uid=None, study_uid=None, series_number=1,
                  description="synthetic", instance_number=1, slope=None, intercept=None,
                  photometric="MONOCHROME2", bits_stored=None, window=None) -> Dataset:
    """One single-frame image. ``plane`` holds *stored* values ``[rows, columns]``.

    ``pixel_spacing`` is DICOM's (row spacing, column spacing) = (dy, dx).
    Without ``position`` the file has no ImagePositionPatient/Orientation (a radiograph).
    """
    ds = _base(modality, SOP_CLASS.get(modality, SOP_CLASS["CT"]), series_uid=generate_uid() if series_uid is None else series_uid,
               study_uid=generate_uid() if study_uid is None else study_uid, series_number=series_number,
               description=description, instance_number=instance_number)
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.FrameOfReferenceUID = ds.StudyInstanceUID + ".1" if len(ds.StudyInstanceUID) < 60 else ds.StudyInstanceUID
    else:
        ds.ImagerPixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    if slope is not None or intercept is not None:
        ds.RescaleSlope = 1.0 if slope is None else slope
        ds.RescaleIntercept = 0.0 if intercept is None else intercept
        ds.RescaleType = "HU" if modality == "CT" else "US"
    if window is not None:
        ds.WindowWidth, ds.WindowCenter = window
    _pixels(ds, plane, photometric=photometric, bits_stored=bits_stored)
    return ds


def save(ds: Dataset, path, transfer_syntax=None) -> Path:
    """Write ``ds`` (optionally compressed: RLE, JPEG-2000 or JPEG lossless) to ``path``."""
    path = Path(path)
    if transfer_syntax == JPEGLosslessSV1:
        _compress_jpeg_lossless(ds, path.parent)
    elif transfer_syntax is not None:
        ds.compress(transfer_syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def _compress_jpeg_lossless(ds: Dataset, workdir: Path) -> None:
    """pydicom cannot encode JPEG lossless: let GDCM (through SimpleITK) do it, keep our header."""
    import pydicom
    import SimpleITK as sitk

    plane = ds.pixel_array
    tmp = workdir / f".jpegll_{ds.SOPInstanceUID[-12:]}.dcm"
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(tmp))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.KeepOriginalImageUIDOn()
    writer.Execute(sitk.GetImageFromArray(plane[None]))
    src = pydicom.dcmread(tmp)
    tmp.unlink()
    assert src.file_meta.TransferSyntaxUID == JPEGLosslessSV1, src.file_meta.TransferSyntaxUID
    for key in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        setattr(ds, key, src.get(key))
    ds.PixelData = src.PixelData
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1


def write_series(folder, volume, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
                 slice_thickness=None, shuffle=False, seed=0, prefix="IM", skip=(), transfer_syntax=None,
                 orientations=None, **kwargs) -> list[Path]:
    """Write ``volume`` (stored values ``[z, y, x]``) as one file per slice in ``folder``.

    Geometry follows medlab's conventions: ``spacing`` (x, y, z), ``direction`` columns are the
    x, y, z index axes in LPS. ``shuffle`` gives random file names and InstanceNumbers that do
    not follow the slice order; ``skip`` leaves out slice indices (a missing slice);
    ``orientations`` overrides ImageOrientationPatient per slice index (mixed orientations).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume = np.asarray(volume)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    n = volume.shape[0]
    rng = np.random.default_rng(seed)
    instance = rng.permutation(n) + 1 if shuffle else np.arange(n) + 1
    names = [f"{prefix}{rng.integers(10**8):08d}" for _ in range(n)] if shuffle else [f"{prefix}{k:04d}.dcm" for k in range(n)]
    kwargs.setdefault("series_uid", generate_uid())
    kwargs.setdefault("study_uid", generate_uid())
    paths = []
    for k in range(n):
        if k in skip:
            continue
        position = np.asarray(origin, float) + direction[:, 2] * spacing[2] * k
        orientation = tuple(direction[:, 0]) + tuple(direction[:, 1])
        if orientations and k in orientations:
            orientation = orientations[k]
        ds = slice_dataset(volume[k], position=position, orientation=orientation,
                           pixel_spacing=(spacing[1], spacing[0]), slice_thickness=slice_thickness,
                           instance_number=int(instance[k]), **kwargs)
        paths.append(save(ds, folder / names[k], transfer_syntax))
    return paths


def write_radiograph(path, plane, *, photometric="MONOCHROME1", bits_stored=12, pixel_spacing=(0.2, 0.2),
                     modality="CR", transfer_syntax=None, window=None, **kwargs) -> Path:
    """A projection radiograph (no patient-space geometry) holding stored values ``plane``."""
    ds = slice_dataset(plane, position=None, pixel_spacing=pixel_spacing, modality=modality,
                       photometric=photometric, bits_stored=bits_stored, window=window, **kwargs)
    return save(ds, path, transfer_syntax)


def write_multiframe(path, volume, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
                     frame_order: Sequence[int] | None = None, slope=1.0, intercept=0.0,
                     slice_thickness=None, transfer_syntax=None, **kwargs) -> Path:
    """An Enhanced CT multi-frame file; ``frame_order`` stores slices in another order than space."""
    volume = np.asarray(volume)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    n = volume.shape[0]
    order = list(range(n)) if frame_order is None else list(frame_order)
    ds = _base("CT", SOP_CLASS["EnhancedCT"], series_uid=generate_uid(), study_uid=generate_uid(),
               series_number=kwargs.pop("series_number", 7), description=kwargs.pop("description", "enhanced"),
               instance_number=1)
    ds.NumberOfFrames = n
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [float(spacing[1]), float(spacing[0])]
    measures.SliceThickness = float(slice_thickness or spacing[2])
    orient = Dataset()
    orient.ImageOrientationPatient = [float(v) for v in tuple(direction[:, 0]) + tuple(direction[:, 1])]
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orient])
    shared.PixelValueTransformationSequence = DicomSequence([pvt])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + direction[:, 2] * spacing[2] * k]
        item.PlanePositionSequence = DicomSequence([pos])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    _pixels(ds, volume[order], photometric="MONOCHROME2", bits_stored=kwargs.pop("bits_stored", None))
    return save(ds, path, transfer_syntax)


def write_corrupt(path, *, kind="garbage") -> Path:
    """A broken file: 'garbage' (DICOM preamble then noise), 'truncated' (pixel data cut short)
    or 'text' (a text file with a DICOM name)."""
    path = Path(path)
    if kind == "text":
        path.write_text("this is not an image\n" * 10)
    elif kind == "garbage":
        path.write_bytes(b"\x00" * 128 + b"DICM" + bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8)))
    elif kind == "truncated":
        ds = slice_dataset(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), position=(0, 0, 0))
        save(ds, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 3000])
    else:
        raise ValueError(kind)
    return path


def phantom_volume(shape=(6, 24, 32), seed=0, low=0, high=3000, dtype=np.uint16) -> np.ndarray:
    """A small volume whose every slice is different (so wrong ordering shows)."""
    rng = np.random.default_rng(seed)
    vol = rng.integers(low, high, size=shape).astype(dtype)
    vol[:, 0, 0] = np.arange(shape[0]) * 10 + low  # a slice index stamp
    return vol


__all__ = [
    "PATIENT",
    "ExplicitVRLittleEndian",
    "JPEG2000Lossless",
    "JPEGLosslessSV1",
    "RLELossless",
    "phantom_volume",
    "save",
    "slice_dataset",
    "write_corrupt",
    "write_multiframe",
    "write_radiograph",
    "write_series",
]
