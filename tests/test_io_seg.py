"""DICOM SEG (1-bit, multi-frame) loads as a label map with segment numbers and names, and
overlays its source series voxel for voxel (issue 7, §1).

The SEG files are made here with highdicom from a source series: a small synthetic oblique
series (tests/dicom_factory.py) and the shared real CT (JPEG-2000, empty UIDs).
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import dicom_factory as df

import medlab
from medlab import ReadError
from medlab.errors import MedlabWarning
from medlab.io import list_series
from medlab.preprocess import resample_to

hd = pytest.importorskip("highdicom")
from pydicom.sr.codedict import codes

_a = np.deg2rad(20.0)
OBLIQUE = np.array([[np.cos(_a), 0, np.sin(_a)], [0, 1, 0], [-np.sin(_a), 0, np.cos(_a)]])


def _source_datasets(paths) -> list:
    """Headers of the source slices, completed with the type-2 attributes highdicom copies
    into a SEG (the files themselves are not changed)."""
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    study, series, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for ds in datasets:
        for key in ("PatientSex", "PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber",
                    "ReferringPhysicianName", "StudyID", "PatientName", "PatientID"):
            if key not in ds:
                setattr(ds, key, "")
        if not str(ds.get("SOPClassUID", "")):         # the shared CT leaves its UIDs empty
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        if not str(ds.get("SOPInstanceUID", "")):
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if not str(ds.get("StudyInstanceUID", "")):
            ds.StudyInstanceUID = study
        if not str(ds.get("SeriesInstanceUID", "")):
            ds.SeriesInstanceUID = series
        if not str(ds.get("FrameOfReferenceUID", "")):
            ds.FrameOfReferenceUID = frame
        if "SliceThickness" not in ds:
            ds.SliceThickness = 1.0
    return datasets


def _write_seg(path: Path, sources, mask: np.ndarray, names: dict[int, str], *, fractional=False) -> Path:
    """A SEG of ``mask`` ([slice, row, column] in the order of ``sources``; value = segment)."""
    numbers = sorted(names)
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=names[n], segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n in numbers
    ]
    pixels = np.stack([mask == n for n in numbers], axis=-1).astype(np.float32 if fractional else np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medlab tests", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    seg.save_as(path)
    return path


def _synthetic(tmp_path: Path):
    """An oblique 6-slice series, its medlab image, and a SEG of two segments."""
    vol = df.phantom_volume((6, 24, 32))
    paths = df.write_series(tmp_path / "ct", vol, spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0),
                            direction=OBLIQUE, slice_thickness=2.5, shuffle=True)
    sources = _source_datasets(paths)
    ct = medlab.load(tmp_path / "ct")
    mask = np.zeros((6, 24, 32), np.uint8)
    mask[1:4, 5:15, 8:20] = 1
    mask[2:5, 16:20, 22:30] = 2
    seg = _write_seg(tmp_path / "seg.dcm", sources, mask[_slice_of(ct, sources)], {1: "liver", 2: "spleen"})
    return ct, mask, seg


def _slice_of(ct, sources) -> np.ndarray:
    """The volume slice of each source file (files are shuffled; their position tells)."""
    z = ct.physical_to_index([[float(v) for v in ds.ImagePositionPatient] for ds in sources])[:, 2]
    return np.rint(z).astype(int)


def test_seg_loads_as_a_label_map_with_segment_names(tmp_path):
    _, _, seg_path = _synthetic(tmp_path)
    assert pydicom.dcmread(seg_path).BitsAllocated == 1
    seg = medlab.load(seg_path)
    assert seg.kind == "label"
    assert {v: lab.name for v, lab in seg.labels.items()} == {1: "liver", 2: "spleen"}
    assert set(np.unique(seg.array)) == {0, 1, 2}
    assert seg.modality == "SEG" and seg.metadata["segments"] == {1: "liver", 2: "spleen"}


def test_seg_overlays_its_source_series_voxel_for_voxel(tmp_path):
    ct, mask, seg_path = _synthetic(tmp_path)
    seg = medlab.load(seg_path)
    # the SEG's grid is a sub-grid of the series: same spacing and direction, origin on a voxel
    np.testing.assert_allclose(seg.spacing, ct.spacing, atol=1e-4)
    np.testing.assert_allclose(seg.direction, ct.direction, atol=1e-5)
    first = ct.physical_to_index(seg.origin)
    np.testing.assert_allclose(first, np.round(first), atol=1e-3)
    on_ct = resample_to(seg, reference=ct)
    assert on_ct.same_grid(ct) and on_ct.kind == "label"
    np.testing.assert_array_equal(on_ct.array, mask)


def test_seg_beside_its_series_is_a_series_of_its_own(tmp_path):
    _, _, seg_path = _synthetic(tmp_path)
    seg_path.rename(tmp_path / "ct" / "seg.dcm")
    infos = list_series(tmp_path / "ct")
    assert sorted(s.modality for s in infos) == ["CT", "SEG"]
    seg = medlab.load(tmp_path / "ct", series=99)
    assert seg.kind == "label" and set(np.unique(seg.array)) == {0, 1, 2}


def test_overlapping_segments_keep_the_highest_number_with_a_warning(tmp_path):
    vol = df.phantom_volume((3, 8, 8))
    paths = df.write_series(tmp_path / "ct", vol, slice_thickness=1.0)
    sources = _source_datasets(paths)
    one = np.zeros((3, 8, 8), bool)
    one[:, 2:6, 2:6] = True
    two = np.zeros((3, 8, 8), bool)
    two[:, 4:8, 4:8] = True
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Organ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, name in ((1, "a"), (2, "b"))]
    hd.seg.Segmentation(
        source_images=sources, pixel_array=np.stack([one, two], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medlab tests", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    ).save_as(tmp_path / "overlap.dcm")
    with pytest.warns(MedlabWarning, match=r"overlap\.dcm.*overlap"):
        seg = medlab.load(tmp_path / "overlap.dcm")
    assert seg.array[1, 5, 5] == 2 and seg.array[1, 3, 3] == 1
    assert any("highest segment number" in n for n in seg.metadata["notes"])


def test_fractional_seg_is_refused_with_a_way_out(tmp_path):
    paths = df.write_series(tmp_path / "ct", df.phantom_volume((3, 8, 8)), slice_thickness=1.0)
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[:, 2:5, 2:5] = 1
    path = _write_seg(tmp_path / "prob.dcm", _source_datasets(paths), mask, {1: "tumour"}, fractional=True)
    with pytest.raises(ReadError, match=r"prob\.dcm is a FRACTIONAL segmentation.*highdicom"):
        medlab.load(path)


# ---------------------------------------------------------------------------- the shared real CT
@functools.cache
def _shared_ct(folder: Path):
    return medlab.load(folder)


def test_seg_of_the_shared_ct_overlays_it(shared, tmp_path):
    folder = shared("ct_abdomen/example_ct_dicom")
    ct = _shared_ct(folder)
    sources = _source_datasets(sorted(folder.iterdir()))
    z = _slice_of(ct, sources)
    bone = ct.array > 300                                   # HU: bone, as a real structure to segment
    bone[:5] = bone[15:] = False                            # frames of empty slices are left out
    body = (ct.array > -300) & ~bone
    body[:8] = body[12:] = False
    mask = np.where(bone, 1, np.where(body, 2, 0)).astype(np.uint8)
    path = _write_seg(tmp_path / "ct_seg.dcm", sources, mask[z], {1: "bone", 2: "soft tissue"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedlabWarning)
        seg = medlab.load(path)
    assert seg.kind == "label" and seg.labels[1].name == "bone" and seg.labels[2].name == "soft tissue"
    assert seg.size[2] < ct.size[2]                        # only the slices that hold frames
    on_ct = resample_to(seg, reference=ct)
    np.testing.assert_array_equal(on_ct.array, mask)
