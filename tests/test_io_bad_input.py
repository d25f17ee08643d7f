"""Bad input fails loudly and early, with a medlab error that names the file and what to do."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import dicom_factory as df

import medlab
from medlab import ImageError, MedlabError, ParameterError, ReadError


def _raises(exc_type, path, *, match: str, **kwargs):
    with pytest.raises(exc_type) as err:
        medlab.load(path, **kwargs)
    msg = str(err.value)
    assert isinstance(err.value, MedlabError)
    assert Path(path).name in msg, msg
    assert match.lower() in msg.lower(), msg
    return msg


def _write_sitk(array, path, **geometry):
    img = sitk.GetImageFromArray(array, isVector=False)
    for key, value in geometry.items():
        getattr(img, f"Set{key}")(value)
    sitk.WriteImage(img, str(path))
    return path


# ---------------------------------------------------------------------------- paths and formats
def test_nonexistent_path(tmp_path):
    _raises(ReadError, tmp_path / "nope.nii.gz", match="does not exist")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_text("x")
    msg = _raises(ReadError, path, match="unsupported file type")
    assert ".nii.gz" in msg and "DICOM" in msg


def test_text_file_renamed_dcm(tmp_path):
    path = df.write_corrupt(tmp_path / "slice.dcm", kind="text")
    _raises(ReadError, path, match="not a DICOM file")


@pytest.mark.parametrize("suffix, fmt", [(".nii", "NIfTI"), (".nii.gz", "NIfTI"), (".nrrd", "NRRD"), (".png", "PNG"), (".mha", "MetaImage")])
def test_text_file_renamed_image(tmp_path, suffix, fmt):
    path = tmp_path / f"brain{suffix}"
    text = b"hello, this is a text file\n" * 20
    path.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    msg = _raises(ReadError, path, match=f"not a {fmt} file")
    assert "extension" in msg


def test_truncated_nifti(tmp_path):
    path = _write_sitk(np.zeros((8, 16, 16), np.float32), tmp_path / "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises(ReadError, path, match="corrupt or truncated")


def test_corrupt_dicom_file(tmp_path):
    path = df.write_corrupt(tmp_path / "bad.dcm", kind="garbage")
    _raises(ReadError, path, match="corrupt")


def test_truncated_dicom_file(tmp_path):
    path = df.write_corrupt(tmp_path / "cut.dcm", kind="truncated")
    _raises(ReadError, path, match="truncated")


def test_truncated_file_inside_a_series_is_named(tmp_path):
    df.write_series(tmp_path, df.phantom_volume((4, 64, 64)))
    victim = sorted(tmp_path.iterdir())[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 3000])
    with pytest.raises(ReadError) as err:
        medlab.load(tmp_path)
    assert victim.name in str(err.value) and "truncated" in str(err.value)


def test_text_file_named_dcm_inside_a_series_is_named(tmp_path):
    df.write_series(tmp_path, df.phantom_volume((3, 8, 8)))
    bad = df.write_corrupt(tmp_path / "zz_notes.dcm", kind="text")
    with pytest.raises(ReadError) as err:
        medlab.load(tmp_path)
    assert bad.name in str(err.value)


def test_other_files_beside_a_series_are_ignored(tmp_path):
    vol = df.phantom_volume((3, 8, 8))
    df.write_series(tmp_path, vol)
    (tmp_path / "README.txt").write_text("scan exported by ...")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    np.testing.assert_array_equal(medlab.load(tmp_path).array, vol)


def test_empty_folder(tmp_path):
    _raises(ReadError, tmp_path, match="empty folder")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    (tmp_path / "labels.json").write_text("{}")
    msg = _raises(ReadError, tmp_path, match="no DICOM images")
    assert "notes.txt" in msg or "labels.json" in msg


def test_dicom_without_image(tmp_path):
    ds = df.slice_dataset(np.zeros((4, 4), np.uint16), position=(0, 0, 0))
    del ds.PixelData, ds.Rows, ds.Columns
    path = df.save(ds, tmp_path / "report.dcm")
    _raises(ReadError, path, match="without an image")


# ---------------------------------------------------------------------------- inconsistent series
def test_missing_slice(tmp_path):
    df.write_series(tmp_path, df.phantom_volume((6, 8, 8)), spacing=(1, 1, 2.5), skip={3})
    msg = _raises(ReadError, tmp_path, match="1 slice(s) missing")
    assert "gap of 5.00 mm" in msg and "2.50 mm apart" in msg


def test_mixed_orientations(tmp_path):
    tilted = (1, 0, 0, 0, 0, -1)  # a coronal slice inside an axial series
    df.write_series(tmp_path, df.phantom_volume((5, 8, 8)), orientations={1: tilted})
    msg = _raises(ReadError, tmp_path, match="different orientations")
    assert "4 file(s)" in msg and "1 file(s)" in msg


def test_different_image_sizes(tmp_path):
    uid = df.pydicom_uid = __import__("pydicom").uid.generate_uid()
    for k, shape in enumerate([(8, 8), (8, 8), (10, 8)]):
        df.save(df.slice_dataset(np.zeros(shape, np.uint16), position=(0, 0, k), series_uid=uid), tmp_path / f"{k}.dcm")
    msg = _raises(ReadError, tmp_path, match="different image sizes")
    assert "8×8" in msg and "10×8" in msg


def test_duplicate_positions(tmp_path):
    uid = __import__("pydicom").uid.generate_uid()
    for k, z in enumerate([0.0, 1.0, 1.0, 2.0]):
        df.save(df.slice_dataset(np.zeros((4, 4), np.uint16), position=(0, 0, z), series_uid=uid), tmp_path / f"{k}.dcm")
    _raises(ReadError, tmp_path, match="same position")


def test_uneven_steps(tmp_path):
    uid = __import__("pydicom").uid.generate_uid()
    for k, z in enumerate([0.0, 1.0, 2.6, 3.6, 5.0]):
        df.save(df.slice_dataset(np.zeros((4, 4), np.uint16), position=(0, 0, z), series_uid=uid), tmp_path / f"{k}.dcm")
    _raises(ReadError, tmp_path, match="uneven slice steps")


def test_gantry_tilt_refused(tmp_path):
    uid = __import__("pydicom").uid.generate_uid()
    for k in range(4):
        df.save(df.slice_dataset(np.zeros((4, 4), np.uint16), position=(0, 0.5 * k, k), series_uid=uid), tmp_path / f"{k}.dcm")
    _raises(ReadError, tmp_path, match="gantry tilt")


# ---------------------------------------------------------------------------- voxel content
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_voxels(tmp_path, bad):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = bad
    path = _write_sitk(arr, tmp_path / "nan.nii.gz")
    _raises(ImageError, path, match="allow_nonfinite=True")
    img = medlab.load(path, allow_nonfinite=True)
    assert np.isnan(img.array[1, 2, 3]) or np.isinf(img.array[1, 2, 3])


def test_single_voxel_image(tmp_path):
    path = _write_sitk(np.ones((1, 1, 1), np.int16), tmp_path / "dot.nrrd")
    _raises(ImageError, path, match="single voxel")


def test_single_voxel_dicom(tmp_path):
    path = df.save(df.slice_dataset(np.ones((1, 1), np.uint16), position=(0, 0, 0)), tmp_path / "dot.dcm")
    _raises(ImageError, path, match="single voxel")


def test_label_map_with_fractions(tmp_path):
    path = _write_sitk(np.full((3, 4, 4), 0.5, np.float32), tmp_path / "prob.nii.gz")
    _raises(ImageError, path, match="kind='intensity'", kind="label")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_four_d_file_says_how_to_pick_a_volume(tmp_path, suffix):
    arr = np.stack([np.full((3, 4, 5), t, np.int16) for t in range(6)])  # [t, z, y, x]
    path = _write_sitk(arr, tmp_path / f"fmri{suffix}")
    msg = _raises(ReadError, path, match="volume=i")
    assert "6 volumes" in msg
    vol = medlab.load(path, volume=4)
    assert vol.size == (5, 4, 3) and np.all(vol.array == 4)
    _raises(ReadError, path, match="out of range", volume=6)


def test_bad_label_names_file(tmp_path):
    image = _write_sitk(np.zeros((3, 4, 4), np.uint8), tmp_path / "seg.nii.gz")
    names = tmp_path / "names.json"
    names.write_text("{\"liver\": 5}")
    with pytest.raises(ReadError, match="names.json"):
        medlab.load(image, labels=names)
    names.write_text("not json")
    with pytest.raises(ReadError, match="names.json"):
        medlab.load(image, labels=names)


def test_bad_arguments(tmp_path):
    path = _write_sitk(np.zeros((3, 4, 4), np.uint8), tmp_path / "a.nii.gz")
    with pytest.raises(ParameterError, match="kind"):
        medlab.load(path, kind="mask")
    with pytest.raises(ParameterError, match="series"):
        medlab.load(path, series=2)


def test_non_image_dicom_beside_a_series_is_ignored(tmp_path):
    vol = df.phantom_volume((3, 8, 8))
    df.write_series(tmp_path, vol)
    ds = df.slice_dataset(np.zeros((4, 4), np.uint16), position=(0, 0, 0), modality="RTSTRUCT")
    del ds.PixelData, ds.Rows, ds.Columns
    df.save(ds, tmp_path / "structures.dcm")
    np.testing.assert_array_equal(medlab.load(tmp_path).array, vol)


def test_multiframe_without_positions_is_refused(tmp_path):
    ds = df.slice_dataset(np.zeros((3, 8, 8), np.uint16), position=(0, 0, 0), modality="XA")
    ds.NumberOfFrames = 3
    path = df.save(ds, tmp_path / "cine.dcm")
    _raises(ReadError, path, match="without slice positions")
