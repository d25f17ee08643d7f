"""Samples shipped inside installed packages: listing, licences, faithful loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlab.data import list_samples, load_sample
from medlab.data.samples import read_with_sitk
from medlab.errors import ReadError

EXPECTED = {"ct_small": "CT", "mr_small": "MR", "mr_small_jpeg2k": "MR", "t1_brain_small": "MR",
            "retina": "OP"}


def test_list_samples_has_licence_and_source_for_each():
    entries = {e["name"]: e for e in list_samples()}
    for name, modality in EXPECTED.items():
        e = entries[name]
        assert e["modality"] == modality
        assert e["licence"] and e["source"] and e["title"]
        assert e["available"], f"{name} ships with {e['package']}, which is installed here"
        assert Path(e["path"]).is_file()
    assert all(e["available"] for e in list_samples(available_only=True))


def test_every_available_sample_loads():
    for entry in list_samples(available_only=True):
        img = load_sample(entry["name"])
        assert img.metadata["sample"] == entry["name"]
        assert img.metadata["licence"] == entry["licence"]
        assert img.modality == entry["modality"]
        assert img.array.size > 100


def _dicom_path(name: str) -> Path:
    return Path(next(e["path"] for e in list_samples() if e["name"] == name))


@pytest.mark.parametrize("reader", ["load_sample", "fallback"])
def test_ct_small_in_hounsfield_units_with_pixel_spacing(reader):
    import pydicom

    path = _dicom_path("ct_small")
    img = load_sample("ct_small") if reader == "load_sample" else read_with_sitk(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert img.modality == "CT"
    if reader == "load_sample":
        assert img.metadata["units"] == "HU"
    assert np.array_equal(np.squeeze(img.array), expected)
    row, col = (float(v) for v in ds.PixelSpacing)      # DICOM: (between rows = y, between columns = x)
    assert img.spacing[:2] == pytest.approx((col, row))
    assert np.allclose(img.origin[:2], [float(v) for v in ds.ImagePositionPatient][:2])


def test_mr_small_jpeg2k_decodes_to_the_uncompressed_pixels():
    plain, j2k = load_sample("mr_small"), load_sample("mr_small_jpeg2k")
    assert plain.modality == "MR"
    assert np.array_equal(plain.array, j2k.array)
    assert plain.spacing == pytest.approx(j2k.spacing)


def test_nibabel_t1_keeps_voxels_and_geometry():
    import nibabel as nib

    img = load_sample("t1_brain_small")
    nii = nib.load(img.metadata["source"])
    data = np.asarray(nii.dataobj)                         # [x, y, z], big-endian on disk
    assert np.array_equal(np.squeeze(img.array), data.T)
    assert img.spacing == pytest.approx(nii.header.get_zooms()[:3])
    ijk = np.array([[0, 0, 0], [32, 40, 24], [5, 7, 11]], float)
    ras = nib.affines.apply_affine(nii.affine, ijk)
    lps = ras * [-1, -1, 1]
    assert np.allclose(img.index_to_physical(ijk), lps, atol=1e-3)


def test_photograph_stays_colour_2d_with_unknown_spacing_flagged():
    img = load_sample("retina")
    assert img.rgb and img.ndim == 2 and img.shape == (1411, 1411, 3)
    assert img.metadata["spacing_known"] is False and img.spacing == (1.0, 1.0)


def test_unknown_sample_names_the_available_ones():
    with pytest.raises(ReadError, match="ct_small") as err:
        load_sample("no_such_scan")
    assert "no_such_scan" in str(err.value)


def test_shared_copy_matches_shipped_ct(shared):
    """The CT slice pydicom ships is the one the project's shared data holds."""
    import hashlib

    shipped = hashlib.sha256(_dicom_path("ct_small").read_bytes()).hexdigest()
    assert shipped == hashlib.sha256(shared("tiny/CT_small.dcm").read_bytes()).hexdigest()
