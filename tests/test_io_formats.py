"""NIfTI, NRRD, MetaImage and 2D picture formats: reading real files, and save() round trips."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import medlab
from medlab import Image, WriteError

_a, _b = np.deg2rad(15.0), np.deg2rad(-25.0)
OBLIQUE = np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]]) @ np.array(
    [[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]])


def _fingerprint(path: Path):
    st = os.stat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


# ---------------------------------------------------------------------------- reading real files
@pytest.mark.parametrize("relpath", ["tiny/anatomical.nii", "noncommercial/chris_PD.nii.gz",
                                     "ct_abdomen/example_seg_dicom.nii.gz", "ct_abdomen/example_ct_sm.nii.gz"])
def test_nifti_matches_nibabel_and_simpleitk(shared, relpath):
    path = shared(relpath)
    img = medlab.load(path)
    nii = nib.load(path)
    lps = np.diag([-1, -1, 1, 1]) @ nii.affine
    np.testing.assert_allclose(img.affine, lps, atol=1e-4)
    np.testing.assert_array_equal(img.array, np.asarray(nii.dataobj).T)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(img.origin, ref.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(img.spacing, ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=1e-6)
    assert img.metadata["source"] == str(path) and img.metadata["format"] == "NIfTI"


def test_big_endian_nifti(shared):
    path = shared("tiny/anatomical.nii")
    assert nib.load(path).header.endianness == ">"
    img = medlab.load(path)
    assert img.dtype.isnative and img.dtype == np.int16
    assert img.size == (33, 41, 25) and img.orientation == "LAS"
    assert img.array.max() > 1000  # byte-swapped data would look like noise of another range
    np.testing.assert_array_equal(img.array, np.asarray(nib.load(path).dataobj).T)


def test_oblique_nifti(shared):
    img = medlab.load(shared("noncommercial/chris_PD.nii.gz"))
    assert img.is_oblique
    np.testing.assert_allclose(img.spacing, (0.86, 0.86, 2.4), atol=0.01)


def test_nrrd_label_map_with_names(shared):
    img = medlab.load(shared("labels/brain1_image.nrrd"))
    mask = medlab.load(shared("labels/brain1_label.nrrd"), kind="label", labels={1: "tumour"})
    assert mask.kind == "label" and mask.labels[1].name == "tumour"
    assert mask.same_grid(img)
    assert set(np.unique(mask.array)) == {0, 1}
    ref = sitk.ReadImage(str(shared("labels/brain1_image.nrrd")))
    np.testing.assert_allclose(img.spacing, ref.GetSpacing())
    np.testing.assert_allclose(img.origin, ref.GetOrigin())


def test_labels_from_json(shared):
    seg = medlab.load(shared("ct_abdomen/example_seg.nii.gz"), labels=shared("ct_abdomen/labels_total.json"))
    names = json.loads(shared("ct_abdomen/labels_total.json").read_text())
    assert seg.kind == "label"
    assert seg.labels[5].name == names["5"] == "liver"
    assert len(seg.labels) == len(names)


def test_rgb_photograph_stays_2d_colour(shared):
    img = medlab.load(shared("extra/retina.jpg"))
    assert img.ndim == 2 and img.rgb
    assert img.shape == (1411, 1411, 3) and img.size == (1411, 1411)
    assert not np.array_equal(img.array[..., 0], img.array[..., 1])


def test_grey_radiograph_png(shared):
    img = medlab.load(shared("radiograph/00000001_000.png"))
    assert img.ndim == 2 and not img.rgb and img.dtype == np.uint8 and img.size == (512, 512)


def test_grey_picture_saved_as_rgb_loads_grey(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(tmp_path / "g.png"))
    img = medlab.load(tmp_path / "g.png")
    assert not img.rgb
    np.testing.assert_array_equal(img.array, grey)


def test_tiff_and_mhd(tmp_path):
    arr = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "a.tif"))
    np.testing.assert_array_equal(medlab.load(tmp_path / "a.tif").array, arr)
    vol = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    vol.SetSpacing((0.5, 0.6, 2.0))
    sitk.WriteImage(vol, str(tmp_path / "v.mhd"))
    img = medlab.load(tmp_path / "v.mhd")
    assert img.spacing == (0.5, 0.6, 2.0)
    np.testing.assert_array_equal(img.array, np.arange(60).reshape(3, 4, 5))


def test_nan_survives_in_every_format(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / f"n{suffix}"))
        img = medlab.load(tmp_path / f"n{suffix}", allow_nonfinite=True)
        assert np.isnan(img.array[1, 2, 3]), suffix  # SimpleITK's own NIfTI reader turns it into 0


# ---------------------------------------------------------------------------- save round trips
def _oblique_image(kind="intensity"):
    rng = np.random.default_rng(1)
    if kind == "label":
        arr = rng.integers(0, 4, (6, 7, 9)).astype(np.uint8)
        return Image(arr, (0.7, 1.1, 2.9), (-12.5, 30.0, 4.25), OBLIQUE, kind="label",
                     labels={1: "liver", 2: ("spleen", (10, 20, 30)), 3: "aorta"})
    arr = rng.normal(0, 100, (6, 7, 9)).astype(np.int16)
    return Image(arr, (0.7, 1.1, 2.9), (-12.5, 30.0, 4.25), OBLIQUE, metadata={"modality": "CT", "units": "HU"})


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("kind", ["intensity", "label"])
def test_save_round_trip_keeps_geometry_and_kind(tmp_path, suffix, kind):
    img = _oblique_image(kind)
    before = img.array.copy()
    out = medlab.save(img, tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(img.array, before)  # input untouched
    back = medlab.load(out)
    np.testing.assert_array_equal(back.array, img.array)
    assert back.dtype == img.dtype
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)
    assert back.kind == kind
    if kind == "label" and suffix in (".nrrd", ".mha"):
        assert back.labels == img.labels
    if kind == "intensity":
        assert back.modality == "CT" and back.metadata["units"] == "HU"
    ref = sitk.ReadImage(str(out))  # other tools see the same geometry
    np.testing.assert_allclose(ref.GetDirection(), img.direction.ravel(), atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary files left


def test_saved_label_nifti_has_label_intent(tmp_path):
    out = medlab.save(_oblique_image("label"), tmp_path / "seg.nii.gz")
    assert nib.load(out).header.get_intent()[0] == "label"


@pytest.mark.parametrize("arr, rgb", [
    (np.arange(200, dtype=np.uint8).reshape(10, 20), False),
    (np.arange(200, dtype=np.uint16).reshape(10, 20) * 300, False),
    (np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8), True),
])
def test_png_round_trip(tmp_path, arr, rgb):
    img = Image(arr, rgb=rgb)
    back = medlab.load(medlab.save(img, tmp_path / "a.png"))
    np.testing.assert_array_equal(back.array, arr)
    assert back.rgb == rgb


def test_png_refuses_what_it_cannot_hold(tmp_path):
    with pytest.raises(WriteError, match="3D"):
        medlab.save(_oblique_image(), tmp_path / "a.png")
    with pytest.raises(WriteError, match="window_level"):
        medlab.save(Image(np.zeros((4, 4), np.float32)), tmp_path / "a.png")
    assert not list(tmp_path.iterdir())


def test_save_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "x.nrrd"
    target.write_bytes(b"precious")
    with pytest.raises(WriteError, match="overwrite=True"):
        medlab.save(_oblique_image(), target)
    assert target.read_bytes() == b"precious"
    medlab.save(_oblique_image(), target, overwrite=True)
    assert medlab.load(target).size == (9, 7, 6)


def test_save_unsupported_suffixes(tmp_path):
    for name, match in [("x.mhd", "one-file"), ("x.jpg", "unsupported"), ("x.dcm", "unsupported")]:
        with pytest.raises(WriteError, match=match):
            medlab.save(_oblique_image(), tmp_path / name)
    with pytest.raises(WriteError, match="does not exist"):
        medlab.save(_oblique_image(), tmp_path / "missing" / "x.nii.gz")
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(WriteError, match="disk full"):
        medlab.save(_oblique_image(), tmp_path / "x.mha")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("relpath", ["tiny/anatomical.nii", "ct_abdomen/example_ct_dicom", "tiny/CT_small.dcm",
                                     "labels/brain1_label.nrrd", "extra/retina.jpg"])
def test_load_never_modifies_inputs(shared, relpath):
    path = shared(relpath)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    before = [_fingerprint(p) for p in files]
    img = medlab.load(path)
    assert [_fingerprint(p) for p in files] == before
    assert not img.array.flags.writeable


def test_shared_dicom_saved_and_reloaded(shared, tmp_path):
    ct = medlab.load(shared("ct_abdomen/example_ct_dicom"))
    back = medlab.load(medlab.save(ct, tmp_path / "ct.nii.gz"))
    assert back.same_grid(ct)
    np.testing.assert_array_equal(back.array, ct.array)
    assert back.modality == "CT" and back.metadata["units"] == "HU"


def test_saved_files_get_the_usual_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result must not stay private."""
    import os
    import stat

    import numpy as np

    import medlab

    old = os.umask(0o022)
    try:
        path = medlab.save(medlab.Image(np.zeros((3, 4, 5), np.int16)), tmp_path / "a.nii.gz")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o664)
        medlab.save(medlab.Image(np.ones((3, 4, 5), np.int16)), path, overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_dangling_link_is_not_silently_replaced(tmp_path):
    import numpy as np

    import medlab

    link = tmp_path / "b.nii.gz"
    link.symlink_to(tmp_path / "missing.nii.gz")
    with pytest.raises(medlab.WriteError, match="exists"):
        medlab.save(medlab.Image(np.zeros((3, 4, 5), np.int16)), link)
