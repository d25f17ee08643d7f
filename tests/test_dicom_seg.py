"""DICOM SEG export (medlab.segment.write_dicom_seg): round trip on the shared CT series and on
a synthetic oblique series, read back with highdicom and medlab.load, checked with pydicom's
strict reading and highdicom's parser; label maps on other grids; refusals."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

import medlab
from medlab import Image, segment
from medlab.errors import GeometryError, ImageError, MedlabWarning, ParameterError, WriteError

sys.path.insert(0, str(Path(__file__).parent))
# shared_file: the module-scoped fixture below cannot use the function-scoped `shared` fixture
import dicom_factory as df
from conftest import shared_file

CT_DICOM = "ct_abdomen/example_ct_dicom"
# the shared CT has empty Study/Series UIDs: every export warns (checked once, in ct_case)
pytestmark = pytest.mark.filterwarnings("ignore:write_dicom_seg. the source series has empty")
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture(scope="module")
def ct_case(tmp_path_factory):
    """The shared CT series, a bone segmentation split into its largest pieces, and its SEG."""
    folder = shared_file(CT_DICOM)
    ct = medlab.load(folder)
    bone = segment.ct_threshold(ct, preset="bone")
    pieces, table = segment.connected_components(bone, min_volume=5000.0)   # pieces ≥ 5 mL
    path = tmp_path_factory.mktemp("seg") / "bone_seg.dcm"
    with pytest.warns(MedlabWarning, match="empty StudyInstanceUID and SeriesInstanceUID"):
        segment.write_dicom_seg(pieces, folder, path, series_description="bone pieces ≥ 5 mL")
    return {"folder": folder, "ct": ct, "pieces": pieces, "table": table, "path": path}


def _source_uids_by_slice(folder: Path, image: Image) -> list[str]:
    """SOP Instance UID of each z slice of ``image`` (matched by position, not by file order)."""
    uids = {}
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        k = int(np.rint(image.physical_to_index([float(v) for v in ds.ImagePositionPatient])[2]))
        uids[k] = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
    return [uids[k] for k in range(image.size[2])]


def test_seg_overlays_the_series_voxel_for_voxel_read_by_highdicom(ct_case):
    ct, pieces = ct_case["ct"], ct_case["pieces"]
    seg = hd.seg.segread(ct_case["path"])
    numbers = list(seg.get_segment_numbers())
    assert numbers == list(range(1, len(ct_case["table"]) + 1))
    uids = _source_uids_by_slice(ct_case["folder"], ct)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True, relabel=False)
    assert got.shape == pieces.shape
    assert np.array_equal(got, pieces.array)          # segment k = component k, on every source pixel
    assert int((got > 0).sum()) == sum(ct_case["table"].column("voxels"))


def test_segments_carry_names_colours_and_the_algorithm(ct_case):
    seg = hd.seg.segread(ct_case["path"])
    pieces = ct_case["pieces"]
    for n in seg.get_segment_numbers():
        desc = seg.get_segment_description(n)
        assert desc.segment_label == f"bone (>= 250 HU) {n}"      # "≥" spelled in ASCII for DICOM
        rgb = hd.color.CIELabColor.from_dicom_value(tuple(desc.RecommendedDisplayCIELabValue)).to_rgb()
        assert np.allclose(rgb, pieces.labels[n].color, atol=1)
        assert desc.algorithm_type.value == "SEMIAUTOMATIC"
        algo = desc.algorithm_identification[0]
        assert algo.AlgorithmName == "medlab" and algo.AlgorithmVersion == medlab.__version__
        assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Histogram Analysis"


def test_seg_passes_pydicom_strict_reading_and_references_the_series(ct_case):
    from pydicom import config

    path, folder = ct_case["path"], ct_case["folder"]
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():  # strict mode raises on any value its VR does not allow
            _ = elem.value
    finally:
        config.settings.reading_validation_mode = old
    assert ds.file_meta.MediaStorageSOPClassUID == SEG_STORAGE == ds.SOPClassUID
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.SeriesDescription == "bone pieces >= 5 mL"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                    "ContentDate", "ContentTime", "NumberOfFrames", "Rows", "Columns",
                    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "SegmentSequence",
                    "DimensionIndexSequence", "ReferencedSeriesSequence"):
        assert keyword in ds and ds.data_element(keyword).value not in (None, ""), keyword
    source = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(Path(folder).iterdir())]
    assert ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.file_meta.MediaStorageSOPInstanceUID for s in source}
    assert ds.Rows == 512 and ds.Columns == 512
    # highdicom's own parser and volume geometry agree with the CT's
    seg = hd.seg.Segmentation.from_dataset(ds)
    geometry = seg.get_volume_geometry()
    assert geometry.spatial_shape == (20, 512, 512)
    assert np.allclose(np.abs(np.diag(geometry.affine[:3, :3])[[1]]), 0.9765625)


def test_the_same_series_gives_the_same_generated_study_uid(ct_case, tmp_path):
    with pytest.warns(MedlabWarning):
        again = segment.write_dicom_seg(ct_case["pieces"], ct_case["folder"], tmp_path / "again.dcm")
    first, second = pydicom.dcmread(ct_case["path"]), pydicom.dcmread(again)
    assert first.StudyInstanceUID == second.StudyInstanceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID


def test_medlab_load_reads_the_seg_back_on_the_ct_grid(ct_case):
    back = medlab.load(ct_case["path"])
    assert back.is_label and back.same_grid(ct_case["ct"])
    assert np.array_equal(back.array, ct_case["pieces"].array)
    assert back.labels[1].name == "bone (>= 250 HU) 1"


def test_label_map_on_another_grid_is_mapped_by_nearest_neighbour(ct_case, tmp_path):
    pieces = ct_case["pieces"]
    flipped = pieces.reorient("RAI")            # same voxels, other index axes: an exact remapping
    assert not flipped.same_grid(pieces)
    path = segment.write_dicom_seg(flipped, ct_case["folder"], tmp_path / "flipped.dcm", algorithm_type="manual")
    assert np.array_equal(medlab.load(path).array, pieces.array)
    coarse = medlab.preprocess.resample(pieces, spacing=(2.0, 2.0, 2.0))   # nearest neighbour for labels
    path = segment.write_dicom_seg(coarse, ct_case["folder"], tmp_path / "coarse.dcm")
    back = medlab.load(path)
    expected = medlab.preprocess.resample_to(coarse, reference=ct_case["ct"], interpolator="nearest")
    assert back.same_grid(ct_case["ct"]) and np.array_equal(back.array, expected.array)
    overlap = 2 * ((back.array > 0) & (pieces.array > 0)).sum() / ((back.array > 0).sum() + (pieces.array > 0).sum())
    assert overlap > 0.75  # thin ribs lose voxels at 2 mm


def test_synthetic_oblique_series_with_shuffled_files(tmp_path):
    direction = np.array([[np.cos(0.3), 0, np.sin(0.3)], [0, 1, 0], [-np.sin(0.3), 0, np.cos(0.3)]])
    volume = df.phantom_volume((6, 24, 32))
    folder = tmp_path / "series"
    df.write_series(folder, volume, spacing=(0.7, 0.8, 2.5), origin=(5.0, -3.0, 20.0), direction=direction,
                    shuffle=True, modality="MR")
    mr = medlab.load(folder)
    arr = np.zeros(mr.shape, np.uint8)
    arr[1:5, 4:20, 6:14] = 3
    arr[2:4, 8:16, 20:28] = 7          # label values 3 and 7 become segments 1 and 2
    labels = mr.with_array(arr, kind="label", labels={3: "left", 7: ("right", (10, 200, 30))})
    value_of = np.array([0, 3, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedlabWarning)   # UIDs present: nothing to warn about
        path = segment.write_dicom_seg(labels, folder, tmp_path / "seg.dcm", algorithm_family="ManualProcessing")
    seg = hd.seg.segread(path)
    uids = _source_uids_by_slice(folder, mr)
    got = seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False)
    assert np.array_equal(value_of[got], arr)
    # medlab.load builds the SEG's grid from the frames it holds (slices 1-4 here): same physical place
    back = medlab.load(path)
    on_mr = medlab.preprocess.resample_to(back, reference=mr, interpolator="nearest")
    assert np.array_equal(value_of[on_mr.array], arr)
    ds = pydicom.dcmread(path)
    src = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["left", "right"]
    assert [s.TrackingID for s in ds.SegmentSequence] == ["label 3", "label 7"]
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(ds.SegmentSequence[1].RecommendedDisplayCIELabValue)).to_rgb()
    assert np.allclose(rgb, (10, 200, 30), atol=1)


def test_refusals_leave_no_file(ct_case, tmp_path):
    folder, pieces = ct_case["folder"], ct_case["pieces"]
    with pytest.raises(ImageError, match="3D label map"):
        segment.write_dicom_seg(ct_case["ct"], folder, tmp_path / "a.dcm")
    with pytest.raises(ImageError, match="3D label map"):
        segment.write_dicom_seg(Image(np.ones((4, 4), np.uint8), kind="label"), folder, tmp_path / "a.dcm")
    far = Image(pieces.array, pieces.spacing, np.asarray(pieces.origin) + 5000.0, pieces.direction, kind="label")
    with pytest.raises(GeometryError, match="do not overlap"):
        segment.write_dicom_seg(far, folder, tmp_path / "a.dcm", algorithm_type="manual")
    empty = pieces.with_array(np.zeros(pieces.shape, np.uint8))
    with pytest.raises(ImageError, match="no labelled voxel"):
        segment.write_dicom_seg(empty, folder, tmp_path / "a.dcm", algorithm_type="manual")
    plain = Image(pieces.array, pieces.spacing, pieces.origin, pieces.direction, kind="label")  # no method recorded
    with pytest.raises(ParameterError, match="algorithm_family"):
        segment.write_dicom_seg(plain, folder, tmp_path / "a.dcm")
    with pytest.raises(ParameterError, match="algorithm_type"):
        segment.write_dicom_seg(pieces, folder, tmp_path / "a.dcm", algorithm_type="robot")
    with pytest.raises(ParameterError, match="CID 7162"):
        segment.write_dicom_seg(pieces, folder, tmp_path / "a.dcm", algorithm_family="Guessing")
    with pytest.raises(medlab.ReadError, match="does not exist"):
        segment.write_dicom_seg(pieces, tmp_path / "nowhere", tmp_path / "a.dcm")
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing.dcm"
    existing.write_bytes(b"keep me")
    with pytest.raises(WriteError, match="exists"):
        segment.write_dicom_seg(pieces, folder, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.warns(MedlabWarning):
        segment.write_dicom_seg(pieces, folder, existing, overwrite=True)
    assert hd.seg.segread(existing).NumberOfFrames > 0 and [p.name for p in tmp_path.iterdir()] == ["existing.dcm"]
