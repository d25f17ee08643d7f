"""medlab.Image: geometry survives every conversion; bad construction fails clearly."""

import numpy as np
import pytest
import SimpleITK as sitk

import medlab
from medlab import Image, ImageError, ParameterError


def oblique_direction():
    """A proper rotation (not axis aligned) about an oblique axis."""
    t = sitk.VersorTransform((0.3, -0.5, 0.8), 0.4)
    return np.array(t.GetMatrix()).reshape(3, 3)


@pytest.fixture
def oblique():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(7, 9, 11)).astype(np.float32)  # z, y, x
    return Image(arr, spacing=(0.7, 1.1, 3.3), origin=(-12.5, 40.0, 7.25), direction=oblique_direction(),
                 metadata={"modality": "MR"})


def assert_same_geometry(a: Image, b: Image):
    assert a.size == b.size
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def test_axis_order_matches_simpleitk(oblique):
    s = oblique.to_sitk()
    assert s.GetSize() == oblique.size == (11, 9, 7)
    # the same voxel, addressed both ways
    assert s.GetPixel(3, 2, 1) == pytest.approx(float(oblique.array[1, 2, 3]))
    np.testing.assert_allclose(s.TransformContinuousIndexToPhysicalPoint((3.0, 2.0, 1.0)),
                               oblique.index_to_physical((3, 2, 1)), atol=1e-9)


def test_sitk_round_trip_keeps_geometry_and_voxels(oblique):
    back = Image.from_sitk(oblique.to_sitk())
    assert_same_geometry(oblique, back)
    np.testing.assert_array_equal(oblique.array, back.array)


def test_physical_index_round_trip(oblique):
    idx = np.array([[0, 0, 0], [10, 8, 6], [2.5, 3.25, 1.5]])
    pts = oblique.index_to_physical(idx)
    np.testing.assert_allclose(oblique.physical_to_index(pts), idx, atol=1e-9)
    # distances between neighbouring voxel centres equal the spacing along each axis
    for axis, sp in enumerate(oblique.spacing):
        step = np.zeros(3)
        step[axis] = 1
        assert np.linalg.norm(oblique.index_to_physical(step) - oblique.index_to_physical([0, 0, 0])) == pytest.approx(sp)


def test_metatensor_matches_monai_loader(tmp_path, oblique):
    """Our MetaTensor must equal what MONAI's own LoadImage gives for the same file."""
    from monai.transforms import LoadImage

    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(oblique.to_sitk(), str(path))
    ref = LoadImage(image_only=True, ensure_channel_first=True, reader="NibabelReader")(str(path))
    mine = oblique.to_metatensor()
    assert tuple(mine.shape) == tuple(ref.shape)
    np.testing.assert_allclose(np.asarray(mine.affine), np.asarray(ref.affine), atol=1e-4)
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=1e-6)
    back = Image.from_metatensor(ref)
    assert_same_geometry(oblique, back)


def test_torch_keeps_axis_order(oblique):
    t = oblique.to_torch()
    assert tuple(t.shape) == oblique.shape
    assert float(t[1, 2, 3]) == pytest.approx(float(oblique.array[1, 2, 3]))


def test_array_is_read_only_and_input_untouched():
    arr = np.zeros((4, 5, 6), np.int16)
    img = Image(arr)
    with pytest.raises(ValueError):
        img.array[0, 0, 0] = 1
    arr[0, 0, 0] = 5  # the caller's own array stays theirs
    assert arr.flags.writeable


def test_orientation_codes():
    assert Image(np.zeros((2, 2, 2))).orientation == "LPS"
    assert Image(np.zeros((2, 2, 2)), direction=np.diag([-1, -1, 1])).orientation == "RAS"
    assert Image(np.zeros((2, 2, 2)), direction=np.diag([1, -1, 1])).orientation == "LAS"


def test_reorient_keeps_physical_positions(oblique):
    img = Image(np.arange(60).reshape(3, 4, 5), spacing=(1, 2, 3), origin=(5, 6, 7), direction=np.diag([-1, 1, -1]))
    ras = img.reorient("RAS")
    assert ras.orientation == "RAS"
    # every voxel value is at the same physical point in both images
    for idx in [(0, 0, 0), (4, 3, 2), (1, 2, 1)]:
        p = img.index_to_physical(idx)
        j = np.rint(ras.physical_to_index(p)).astype(int)
        assert ras.array[j[2], j[1], j[0]] == img.array[idx[2], idx[1], idx[0]]
    with pytest.raises(ParameterError, match="orientation code"):
        img.reorient("LLS")


def test_rgb_image_is_2d_colour():
    rgb = Image(np.zeros((10, 12, 3), np.uint8), rgb=True, spacing=(0.5, 0.5))
    assert rgb.ndim == 2 and rgb.size == (12, 10)
    back = Image.from_sitk(rgb.to_sitk())
    assert back.rgb and back.shape == (10, 12, 3)


def test_label_kind_and_names():
    lab = Image(np.array([[0, 1], [2, 2]], np.uint8), kind="label", labels={1: "liver", 2: ("spleen", (1, 2, 3))})
    assert lab.labels[1].name == "liver" and lab.labels[2].color == (1, 2, 3)
    with pytest.raises(ImageError, match="integers"):
        Image(np.array([[0.5, 1.0]]), kind="label")


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"array": np.zeros((2, 2, 2, 2))}, ImageError, "4D"),
        ({"array": np.zeros((5,))}, ImageError, "2D or 3D"),
        ({"array": np.zeros((0, 4))}, ImageError, "empty"),
        ({"array": np.array([["a"]])}, ImageError, "numeric"),
        ({"array": np.zeros((2, 2)), "spacing": (1, -1)}, ParameterError, "positive"),
        ({"array": np.zeros((2, 2)), "spacing": (1, 2, 3)}, ParameterError, "spacing"),
        ({"array": np.zeros((2, 2)), "direction": [[1, 0], [1, 0]]}, ParameterError, "singular"),
        ({"array": np.zeros((2, 2)), "kind": "mask"}, ParameterError, "kind"),
    ],
)
def test_bad_construction(kwargs, err, match):
    with pytest.raises(err, match=match):
        Image(**kwargs)


def test_check_finite_names_the_problem():
    from medlab.image import check_finite

    img = Image(np.array([[1.0, np.nan]]), metadata={"source": "scan.nii"})
    with pytest.raises(ImageError, match=r"1 NaN.*scan\.nii"):
        check_finite(img)


def test_with_array_checks_shape(oblique):
    with pytest.raises(medlab.GeometryError):
        oblique.with_array(np.zeros((3, 3, 3)))
    mask = oblique.with_array(oblique.array > 0, kind="label")
    assert mask.kind == "label" and mask.dtype == np.uint8
    assert_same_geometry(oblique, mask)


def test_overlap(oblique):
    far = Image(np.zeros((3, 3, 3)), origin=(1000, 1000, 1000))
    assert oblique.overlaps(oblique) and not oblique.overlaps(far)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, medlab; print(any(m in sys.modules for m in ('torch', 'monai', 'captum', 'ipywidgets')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overlap_uses_physical_axes_with_a_rotated_direction():
    swap = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    a = Image(np.ones((3, 4, 2), np.float32), spacing=(10, 1, 1), direction=swap)  # spans y -5..15 mm
    b = Image(np.ones((3, 4, 4), np.float32), origin=(0, 14, 0))                   # spans y 13.5..17.5 mm
    assert a.overlaps(b) and b.overlaps(a)


def test_non_orthonormal_direction_is_refused():
    with pytest.raises(ParameterError, match="orthonormal"):
        Image(np.zeros((4, 5, 6)), direction=np.diag([2.0, 1.0, 1.0]))


def test_float_label_values_too_large_for_int32_are_refused():
    with pytest.raises(ImageError, match="integers"):
        Image(np.array([[3e9, 1.0]]), kind="label")


def test_contains_is_symmetric_at_the_borders():
    for n in (4, 5):
        img = Image(np.zeros((1, 1, n)))
        assert img.contains((-0.49, 0, 0)) and img.contains((n - 0.51, 0, 0))
        assert not img.contains((-0.51, 0, 0)) and not img.contains((n - 0.49, 0, 0))


def test_2d_metatensor_with_monai_default_affine():
    import torch
    from monai.data import MetaTensor

    img = Image.from_metatensor(MetaTensor(torch.zeros(1, 5, 4)))
    assert img.size == (5, 4) and img.spacing == (1.0, 1.0)


@pytest.mark.parametrize("kwargs", [{"spacing": "abc"}, {"direction": [[1, 0], [0]]},
                                    {"labels": {1: 5}, "kind": "label"}, {"labels": {"one": "x"}, "kind": "label"},
                                    {"labels": {1: ("a", (1, 2))}, "kind": "label"}])
def test_bad_geometry_or_labels_are_parameter_errors(kwargs):
    with pytest.raises(ParameterError):
        Image(np.zeros((2, 2), np.uint8), **kwargs)


def test_half_floats_become_float32():
    assert Image(np.zeros((2, 2), np.float16)).dtype == np.float32
