"""DICOM reading: real series from ../shared/data and synthetic traps built with pydicom."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import dicom_factory as df

import medlab
from medlab import ReadError
from medlab.io import list_series

CT_DICOM = "ct_abdomen/example_ct_dicom"

# An oblique, right-handed direction (columns = x, y, z index axes in LPS).
_a = np.deg2rad(20.0)
OBLIQUE = np.array([[np.cos(_a), 0, np.sin(_a)], [0, 1, 0], [-np.sin(_a), 0, np.cos(_a)]]) @ np.array(
    [[1, 0, 0], [0, np.cos(_a), -np.sin(_a)], [0, np.sin(_a), np.cos(_a)]])


@functools.cache
def _load(path: Path):
    """The shared series is loaded once per test session (Image arrays are read-only)."""
    return medlab.load(path)


def _sitk_reference(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


# ---------------------------------------------------------------------------- shared real series
def test_shared_ct_series_matches_simpleitk(shared):
    folder = shared(CT_DICOM)
    ct = _load(folder)
    ref = _sitk_reference(folder)
    assert ct.size == ref.GetSize() == (512, 512, 20)
    np.testing.assert_array_equal(ct.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(ct.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(ct.direction.ravel(), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(ct.spacing, ref.GetSpacing(), atol=1e-4)


def test_shared_ct_uses_measured_slice_step_not_thickness(shared):
    folder = shared(CT_DICOM)
    ct = _load(folder)
    positions = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in folder.iterdir())
    measured = (positions[-1] - positions[0]) / (len(positions) - 1)
    assert measured == pytest.approx(2.0)
    assert ct.spacing[2] == pytest.approx(measured)
    assert ct.metadata["slice_step"] == pytest.approx(2.0)
    assert ct.metadata["slice_thickness"] == pytest.approx(3.0)
    assert ct.metadata["dicom"]["SliceThickness"] == pytest.approx(3.0)
    assert any("SliceThickness" in note for note in ct.metadata["notes"])


def test_shared_ct_is_in_hounsfield_units(shared):
    folder = shared(CT_DICOM)
    ct = _load(folder)
    first = min(folder.iterdir())
    ds = pydicom.dcmread(first)  # JPEG-2000: needs pylibjpeg-openjpeg
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless
    hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    index = np.rint(ct.physical_to_index([float(v) for v in ds.ImagePositionPatient])).astype(int)
    np.testing.assert_array_equal(ct.array[index[2]], hu)
    assert ct.metadata["units"] == "HU" and ct.modality == "CT"
    assert ct.array.min() == -1024  # air outside the scanner field, after the -1024 intercept


def test_shared_ct_empty_uids_grouped_by_geometry(shared):
    folder = shared(CT_DICOM)
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).get("SeriesInstanceUID", "")) for p in folder.iterdir()}
    assert uids == {""}
    series = list_series(folder)
    assert len(series) == 1
    s = series[0]
    assert (s.n_slices, s.size, s.modality, s.uid) == (20, (512, 512, 20), "CT", "")
    assert s.spacing[2] == pytest.approx(2.0)


def test_shared_ct_metadata_is_safe(shared):
    ct = _load(shared(CT_DICOM))
    tags = ct.metadata["dicom"]
    assert {"Modality", "SeriesDescription", "Manufacturer", "KVP", "RescaleIntercept", "WindowCenter"} <= set(tags)
    for forbidden in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID"):
        assert forbidden not in tags


def test_shared_label_map_overlays_ct_only_through_geometry(shared):
    """example_seg_dicom.nii.gz is stored y-flipped (LAS): voxel-by-voxel it does not match."""
    ct = _load(shared(CT_DICOM))
    seg = medlab.load(shared("ct_abdomen/example_seg_dicom.nii.gz"), kind="label",
                      labels=shared("ct_abdomen/labels_total.json"))
    assert seg.kind == "label" and seg.labels[5].name == "liver" and seg.labels[1].name == "spleen"
    assert seg.orientation != ct.orientation  # the trap: another direction
    on_ct = sitk.GetArrayFromImage(sitk.Resample(seg.to_sitk(), ct.to_sitk(), sitk.Transform(),
                                                 sitk.sitkNearestNeighbor, 0))
    for value in (1, 5):  # spleen, liver: soft tissue, enhanced, 20-200 HU
        hu = ct.array[on_ct == value]
        assert hu.size > 1000
        assert 20 < np.median(hu) < 200
        assert np.mean((hu > -50) & (hu < 250)) > 0.9
    naive_spleen = ct.array[seg.array == 1]  # ignoring geometry lands in fat/air
    assert not 20 < np.median(naive_spleen) < 200


def test_single_real_ct_slice_keeps_its_position(shared):
    path = shared("tiny/CT_small.dcm")
    img = medlab.load(path)
    ds = pydicom.dcmread(path)
    assert img.size == (128, 128, 1)
    np.testing.assert_allclose(img.origin, [float(v) for v in ds.ImagePositionPatient])
    expected = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.array[0], expected)
    assert img.metadata["units"] == "HU"


# ---------------------------------------------------------------------------- synthetic series
def test_sorted_by_position_not_names_or_instance_numbers(tmp_path):
    vol = df.phantom_volume((7, 20, 24))
    paths = df.write_series(tmp_path, vol, spacing=(0.7, 0.8, 2.5), origin=(-10, 20, 30), direction=OBLIQUE,
                            shuffle=True, seed=3)
    by_name = [pydicom.dcmread(p).InstanceNumber for p in sorted(paths)]
    assert by_name != sorted(by_name)  # names and numbers really are shuffled
    img = medlab.load(tmp_path)
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.spacing, (0.7, 0.8, 2.5))
    np.testing.assert_allclose(img.origin, (-10, 20, 30), atol=1e-6)
    np.testing.assert_allclose(img.direction, OBLIQUE, atol=1e-6)
    assert img.is_oblique


def test_descending_positions_flip_to_ascending_normal(tmp_path):
    vol = df.phantom_volume((5, 8, 10))
    # files step down in z while the normal of (row, col) points up: the volume comes out reversed
    df.write_series(tmp_path, vol, spacing=(1, 1, 3), origin=(0, 0, 100),
                    direction=np.column_stack([[1, 0, 0], [0, 1, 0], [0, 0, -1]]))
    img = medlab.load(tmp_path)
    np.testing.assert_array_equal(img.array, vol[::-1])
    np.testing.assert_allclose(img.origin, (0, 0, 100 - 3 * 4))
    np.testing.assert_allclose(img.direction, np.eye(3))


def test_slice_step_differs_from_thickness(tmp_path):
    df.write_series(tmp_path, df.phantom_volume((4, 8, 8)), spacing=(1, 1, 2.0), slice_thickness=3.0)
    img = medlab.load(tmp_path)
    assert img.spacing[2] == pytest.approx(2.0)
    assert img.metadata["slice_thickness"] == pytest.approx(3.0)


def test_several_series_error_lists_them_and_selection_works(tmp_path):
    a, b = df.phantom_volume((3, 8, 8), seed=1), df.phantom_volume((5, 8, 10), seed=2)
    df.write_series(tmp_path / "a", a, series_number=2, description="T1 axial", modality="MR")
    uid_b = pydicom.uid.generate_uid()
    df.write_series(tmp_path / "b", b, series_number=5, description="Bone kernel", series_uid=uid_b)
    with pytest.raises(ReadError) as err:
        medlab.load(tmp_path)
    msg = str(err.value)
    for expected in (str(tmp_path), "2 image series", "T1 axial", "Bone kernel", "MR", "CT", "3 slice", "5 slice", "series="):
        assert expected in msg
    np.testing.assert_array_equal(medlab.load(tmp_path, series=2).array, a)
    np.testing.assert_array_equal(medlab.load(tmp_path, series=uid_b).array, b)
    np.testing.assert_array_equal(medlab.load(tmp_path, series="bone").array, b)
    infos = list_series(tmp_path)
    assert [s.number for s in infos] == [2, 5] and [s.n_slices for s in infos] == [3, 5]
    assert infos[1].size == (10, 8, 5)
    np.testing.assert_array_equal(medlab.load(tmp_path, series=infos[0]).array, a)
    with pytest.raises(ReadError, match="matches none"):
        medlab.load(tmp_path, series=99)


def test_empty_uids_group_by_geometry(tmp_path):
    a, b = df.phantom_volume((3, 8, 8), seed=1), df.phantom_volume((4, 12, 8), seed=2)
    df.write_series(tmp_path, a, series_uid="", series_number=None, prefix="A")
    df.write_series(tmp_path, b, series_uid="", series_number=None, prefix="B", spacing=(0.5, 0.5, 1))
    infos = list_series(tmp_path)
    assert sorted(s.n_slices for s in infos) == [3, 4]
    chosen = next(s for s in infos if s.n_slices == 4)
    np.testing.assert_array_equal(medlab.load(tmp_path, series=chosen).array, b)


def test_rescale_slope_intercept(tmp_path):
    raw = df.phantom_volume((3, 8, 8), high=4000)
    df.write_series(tmp_path / "int", raw, intercept=-1024.0, slope=1.0)
    img = medlab.load(tmp_path / "int")
    np.testing.assert_array_equal(img.array, raw.astype(np.int32) - 1024)
    assert img.array.dtype.kind == "i" and img.metadata["units"] == "HU"
    df.write_series(tmp_path / "float", raw, intercept=-10.0, slope=0.5, modality="MR")
    img = medlab.load(tmp_path / "float")
    np.testing.assert_allclose(img.array, raw * 0.5 - 10.0)
    assert img.array.dtype == np.float32


def test_rescale_varying_per_slice(tmp_path):
    raw = df.phantom_volume((3, 8, 8), high=1000)
    uid = pydicom.uid.generate_uid()
    for k, slope in enumerate((1.0, 2.0, 0.25)):
        ds = df.slice_dataset(raw[k], position=(0, 0, k), series_uid=uid, slope=slope, intercept=5.0, modality="PT")
        df.save(ds, tmp_path / f"s{k}.dcm")
    img = medlab.load(tmp_path)
    expected = raw * np.array([1.0, 2.0, 0.25])[:, None, None] + 5.0
    np.testing.assert_allclose(img.array, expected)


@pytest.mark.parametrize("syntax", [df.RLELossless, df.JPEG2000Lossless, df.JPEGLosslessSV1], ids=lambda s: s.name.split()[0])
def test_compressed_series_decode(tmp_path, syntax):
    vol = df.phantom_volume((3, 40, 36), high=3000).astype(np.int16)
    df.write_series(tmp_path, vol, transfer_syntax=syntax, intercept=-1000.0)
    assert pydicom.dcmread(next(tmp_path.iterdir()), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    img = medlab.load(tmp_path)
    np.testing.assert_array_equal(img.array, vol.astype(np.int32) - 1000)
    assert img.metadata["dicom"]["TransferSyntax"] == str(syntax)


# ---------------------------------------------------------------------------- MONOCHROME1
def _radiograph_plane():
    plane = np.full((40, 30), 3500, np.uint16)  # MONOCHROME1: high stored value = dark (soft tissue/air)
    plane[10:30, 12:18] = 300                   # a bone: low stored value = displayed white
    return plane


def test_monochrome1_bone_is_bright(tmp_path):
    path = df.write_radiograph(tmp_path / "cr.dcm", _radiograph_plane(), bits_stored=12, window=(1000, 3000))
    raw = pydicom.dcmread(path).pixel_array  # pydicom returns raw stored values
    assert raw[20, 15] < raw[0, 0]
    img = medlab.load(path)
    assert img.ndim == 2 and img.size == (30, 40)
    assert img.array[20, 15] > img.array[0, 0]  # bone bright
    np.testing.assert_array_equal(img.array, 4095 - raw.astype(np.int32))
    np.testing.assert_allclose(img.spacing, (0.2, 0.2))
    width, level = img.metadata["window"]
    assert (width, level) == (1000.0, 4095 - 3000)  # window mirrored with the values
    assert img.metadata["dicom"]["PhotometricInterpretation"] == "MONOCHROME1"


def test_monochrome1_gdcm_fallback_uses_the_same_polarity(tmp_path, monkeypatch):
    """When pydicom lacks a decoder medlab falls back to GDCM: it must invert the same way."""
    from medlab.io import dicom

    path = df.write_radiograph(tmp_path / "cr.dcm", _radiograph_plane(), bits_stored=12)
    ours = medlab.load(path).array
    real = dicom.decode_pydicom
    monkeypatch.setattr(dicom, "decode_pydicom", lambda p: (real(p)[0], None))
    np.testing.assert_array_equal(medlab.load(path).array, ours)


def test_monochrome1_jpeg_lossless_radiograph(tmp_path):
    plane = _radiograph_plane()
    path = df.write_radiograph(tmp_path / "cr.dcm", plane, bits_stored=16, transfer_syntax=df.JPEGLosslessSV1)
    img = medlab.load(path)
    assert img.array[20, 15] > img.array[0, 0]
    np.testing.assert_array_equal(img.array, 65535 - plane.astype(np.int32))


def test_monochrome1_series(tmp_path):
    vol = np.stack([_radiograph_plane()] * 3)
    df.write_series(tmp_path, vol, photometric="MONOCHROME1", bits_stored=12, modality="MR")
    img = medlab.load(tmp_path)
    np.testing.assert_array_equal(img.array, 4095 - vol.astype(np.int32))


def test_monochrome2_radiograph_unchanged(tmp_path):
    plane = 4095 - _radiograph_plane()
    path = df.write_radiograph(tmp_path / "dx.dcm", plane, photometric="MONOCHROME2", modality="DX")
    img = medlab.load(path)
    np.testing.assert_array_equal(img.array, plane)
    assert img.modality == "DX"


# ---------------------------------------------------------------------------- multi-frame
def test_enhanced_multiframe_sorted_and_rescaled(tmp_path):
    vol = df.phantom_volume((5, 12, 10), high=2000)
    path = df.write_multiframe(tmp_path / "enh.dcm", vol, spacing=(0.6, 0.9, 1.5), origin=(5, -5, 40),
                               direction=OBLIQUE, frame_order=[3, 0, 4, 1, 2], intercept=-1024.0)
    img = medlab.load(path)
    np.testing.assert_array_equal(img.array, vol.astype(np.int32) - 1024)
    np.testing.assert_allclose(img.spacing, (0.6, 0.9, 1.5), atol=1e-6)
    np.testing.assert_allclose(img.origin, (5, -5, 40), atol=1e-6)
    np.testing.assert_allclose(img.direction, OBLIQUE, atol=1e-6)
    assert img.metadata["n_frames"] == 5 and img.metadata["units"] == "HU"
    info = list_series(path)
    assert len(info) == 1 and info[0].n_slices == 5


def test_multiframe_in_folder_beside_a_series(tmp_path):
    df.write_multiframe(tmp_path / "enh.dcm", df.phantom_volume((4, 8, 8)), series_number=7)
    df.write_series(tmp_path / "s", df.phantom_volume((3, 8, 8)), series_number=3)
    assert [s.number for s in list_series(tmp_path)] == [3, 7]
    assert medlab.load(tmp_path, series=7).size == (8, 8, 4)


# ---------------------------------------------------------------------------- identity never leaks
def test_patient_identity_never_in_metadata(tmp_path):
    df.write_series(tmp_path, df.phantom_volume((3, 8, 8)))
    img = medlab.load(tmp_path)
    text = repr(img.metadata)
    for value in df.PATIENT.values():
        assert value not in text
    assert img.metadata["dicom"]["StudyDescription"] == "synthetic study"


# ---------------------------------------------------------------------------- other objects pydicom ships
def test_rt_dose_grid_frame_offsets_and_scaling():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    dose = medlab.load(path)
    offsets = np.asarray(ds.GridFrameOffsetVector, float)
    assert dose.size == (ds.Columns, ds.Rows, len(offsets))
    assert dose.spacing[2] == pytest.approx(abs(offsets[1] - offsets[0]))
    order = np.argsort(offsets)  # frames sorted along +z
    expected = ds.pixel_array[order] * float(ds.DoseGridScaling)
    np.testing.assert_allclose(dose.array, expected, rtol=1e-6)
    assert dose.metadata["units"] == str(ds.DoseUnits).upper()


def test_palette_colour_becomes_rgb():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_color_lut

    path = get_testdata_file("examples_palette.dcm")
    img = medlab.load(path)
    ds = pydicom.dcmread(path)
    assert img.rgb and img.ndim == 2
    np.testing.assert_array_equal(img.array, apply_color_lut(ds.pixel_array, ds))


def test_legacy_multiframe_with_spacing_between_slices(tmp_path):
    vol = df.phantom_volume((4, 8, 6))
    ds = df.slice_dataset(vol, position=(1, 2, 3), modality="NM", pixel_spacing=(2.0, 1.5))
    ds.NumberOfFrames, ds.SpacingBetweenSlices = 4, 2.5
    img = medlab.load(df.save(ds, tmp_path / "nm.dcm"))
    np.testing.assert_array_equal(img.array, vol)
    np.testing.assert_allclose(img.spacing, (1.5, 2.0, 2.5))
    np.testing.assert_allclose(img.origin, (1, 2, 3))


def test_list_series_of_one_file_and_series_check(tmp_path):
    path = df.write_series(tmp_path, df.phantom_volume((2, 8, 6)), series_number=4, description="axial")[0]
    (info,) = list_series(path)
    assert (info.number, info.description, info.n_slices, info.size) == (4, "axial", 1, (6, 8, 1))
    assert medlab.load(path, series=4).size == (6, 8, 1)
    with pytest.raises(ReadError, match="matches none"):
        medlab.load(path, series=5)
