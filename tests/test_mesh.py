"""medlab.mesh: label surfaces in mm LPS (any spacing and direction), volume, export, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

import medlab
from medlab import Image
from medlab.errors import ImageError, MedlabError, ParameterError, WriteError
from medlab.mesh import Mesh, label_surface, label_surfaces, save_mesh


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def off_centre_box(direction=None, spacing=(0.7, 1.2, 2.5), origin=(-20.0, 35.0, 110.0)) -> Image:
    """An asymmetric L-shaped label (value 3) away from the grid centre: catches axis swaps and flips."""
    arr = np.zeros((14, 25, 30), np.uint8)      # z, y, x
    arr[3:9, 4:11, 17:27] = 3
    arr[3:12, 4:7, 17:20] = 3                  # a leg towards high z
    return Image(arr, spacing, origin, direction, kind="label", labels={3: ("lesion", (200, 30, 40))})


def voxel_extent(labels: Image, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical box of the label's voxel centres and half a voxel along each physical axis."""
    zyx = np.argwhere(labels.array == value)
    centres = labels.index_to_physical(zyx[:, ::-1])
    half = 0.5 * np.abs(labels.direction) @ np.asarray(labels.spacing)
    return centres.min(axis=0), centres.max(axis=0), half


# ---------------------------------------------------------------------------- geometry
def test_axis_aligned_box_lands_on_its_voxels_exactly():
    labels = off_centre_box()
    mesh = label_surface(labels, 3, smoothing=0)
    lo, hi = mesh.bounds()
    clo, chi, half = voxel_extent(labels, 3)
    # marching cubes at 0.5 on a mask puts the surface half a voxel outside the outer centres
    np.testing.assert_allclose(lo, clo - half, atol=1e-6)
    np.testing.assert_allclose(hi, chi + half, atol=1e-6)
    assert mesh.is_watertight and mesh.to_trimesh().volume > 0
    # the enclosed volume of an unsmoothed box-shaped label is its voxel volume, minus the cut
    # edges of marching cubes: within a few % here
    voxels = np.count_nonzero(labels.array == 3) * np.prod(labels.spacing) / 1000
    assert mesh.volume_ml == pytest.approx(voxels, rel=0.12)
    assert mesh.name == "lesion" and mesh.color == (200, 30, 40) and mesh.label == 3


@pytest.mark.parametrize("direction", [
    rotation((1, 2, 3), 27),                              # oblique
    rotation((0, 0, 1), 90) @ np.diag([1, -1, 1]),        # axes swapped, left-handed
    np.diag([-1.0, -1.0, 1.0]),                           # RAS storage
])
def test_oblique_anisotropic_label_map_extent_within_half_a_voxel(direction):
    labels = off_centre_box(direction)
    for smoothing in (0, 10):
        mesh = label_surface(labels, 3, smoothing=smoothing)
        lo, hi = mesh.bounds()
        clo, chi, half = voxel_extent(labels, 3)
        # the physical extent of the label: voxel centres padded by half a voxel
        np.testing.assert_array_less(np.abs(lo - (clo - half)), half + 1e-6)
        np.testing.assert_array_less(np.abs(hi - (chi + half)), half + 1e-6)
        assert mesh.is_watertight
        assert mesh.to_trimesh().volume > 0, "faces must wind outward, also for a left-handed direction"
        # every vertex lies inside the label's voxels (dilated by half a voxel): maps through
        # the direction, not just a box that happens to match
        idx = labels.physical_to_index(mesh.vertices)
        zyx = np.clip(np.rint(idx[:, ::-1]).astype(int), 0, np.array(labels.shape) - 1)
        from scipy import ndimage
        near = ndimage.binary_dilation(labels.array == 3, np.ones((3, 3, 3), bool))
        assert near[tuple(zyx.T)].mean() > 0.99


def test_same_surface_whatever_the_storage_orientation():
    """The label stored LPS and reoriented to PIR by SimpleITK gives the same physical surface."""
    labels = off_centre_box(rotation((1, 0, 1), 15))
    other = labels.reorient("PIR")
    assert not np.allclose(other.direction, labels.direction)
    a = label_surface(labels, 3, smoothing=0)
    b = label_surface(other, 3, smoothing=0)
    np.testing.assert_allclose(a.bounds()[0], b.bounds()[0], atol=1e-6)
    np.testing.assert_allclose(a.bounds()[1], b.bounds()[1], atol=1e-6)
    assert a.volume_ml == pytest.approx(b.volume_ml, rel=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.6, 0.8, 1.7)])
def test_sphere_phantom_volume_close_to_analytic(spacing):
    r = 12.0
    sp = np.asarray(spacing)
    n = (np.ceil(2 * r / sp) + 6).astype(int)
    x, y, z = [(np.arange(k) - (k - 1) / 2) * s for k, s in zip(n, sp)]
    ball = (x[None, None, :] ** 2 + y[None, :, None] ** 2 + z[:, None, None] ** 2) <= r * r
    labels = Image(ball.astype(np.uint8), spacing, origin=(5, -7, 30), direction=rotation((2, 1, 0), 40),
                   kind="label")
    analytic = 4 / 3 * math.pi * r ** 3 / 1000
    for smoothing in (0, 10, 30):
        mesh = label_surface(labels, smoothing=smoothing)
        assert mesh.is_watertight
        assert mesh.volume_ml == pytest.approx(analytic, rel=0.03), smoothing
    # the centre stays where the phantom put it
    centre = labels.index_to_physical((n - 1) / 2)
    np.testing.assert_allclose(mesh.vertices.mean(axis=0), centre, atol=0.2)
    # and smoothing does what it is for: the radius varies less than on the staircase
    raw = label_surface(labels, smoothing=0)
    spread = [np.std(np.linalg.norm(m.vertices - centre, axis=1)) for m in (raw, mesh)]
    assert spread[1] < 0.7 * spread[0]


def test_decimation_keeps_shape_and_volume():
    labels = off_centre_box(rotation((1, 1, 0), 20))
    full = label_surface(labels, 3)
    half = label_surface(labels, 3, reduction=0.5)
    assert len(half.faces) <= 0.55 * len(full.faces)
    assert half.volume_ml == pytest.approx(full.volume_ml, rel=0.03)
    np.testing.assert_allclose(half.bounds()[0], full.bounds()[0], atol=0.5)


def test_every_label_of_the_brain_phantom():
    brain = medlab.data.brain_mri(size=(48, 48, 24))
    meshes = label_surfaces(brain.labels)
    assert [m.label for m in meshes] == sorted(brain.labels.labels)
    assert all(m.is_watertight for m in meshes)
    tumour = next(m for m in meshes if m.name == "enhancing tumour")
    centre = np.asarray(brain.info["tumour_centre_mm"])
    lo, hi = tumour.bounds()
    assert np.all(lo < centre) and np.all(centre < hi)
    assert brain.info["tumour_side"] == ("left" if centre[0] > 0 else "right")  # LPS: +x is left
    text = tumour.describe()
    assert text.startswith("enhancing tumour (label 8): ")
    assert f"{len(tumour.vertices)} vertices, {len(tumour.faces)} faces" in text
    assert "mL" in text and "watertight" in text and f"{lo[0]:.1f}" in text


def test_inputs_are_not_modified():
    labels = off_centre_box()
    before = labels.array.copy()
    label_surface(labels, 3, smoothing=5, reduction=0.3)
    np.testing.assert_array_equal(labels.array, before)


# ---------------------------------------------------------------------------- export
@pytest.mark.parametrize("suffix", [".stl", ".obj", ".ply"])
def test_export_round_trip_through_trimesh(tmp_path, suffix):
    mesh = label_surface(off_centre_box(rotation((0, 1, 1), 33)), 3)
    path = save_mesh(mesh, tmp_path / f"lesion{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"lesion{suffix}"]     # no temp file, no .mtl
    assert b"SPACE=LPS" in path.read_bytes()[:400]         # the frame, where 3D Slicer reads it
    back = trimesh.load(path, force="mesh", process=True)
    assert len(back.faces) == len(mesh.faces)
    np.testing.assert_allclose(back.bounds, np.array(mesh.bounds()), atol=1e-4)  # STL holds float32
    assert back.is_watertight
    assert abs(back.volume) / 1000 == pytest.approx(mesh.volume_ml, rel=1e-4)
    if suffix != ".stl":
        colours = np.asarray(back.visual.vertex_colors)[:, :3]
        assert np.all(colours == mesh.color)


def test_export_is_atomic_and_does_not_clobber(tmp_path):
    mesh = label_surface(off_centre_box(), 3, smoothing=0)
    path = tmp_path / "m.stl"
    path.write_bytes(b"keep me")
    with pytest.raises(WriteError, match="exists"):
        mesh.save(path)
    assert path.read_bytes() == b"keep me"
    mesh.save(path, overwrite=True)
    assert trimesh.load(path).faces.shape == mesh.faces.shape
    with pytest.raises(WriteError, match="stl"):
        mesh.save(tmp_path / "m.vtk")
    with pytest.raises(WriteError, match="does not exist"):
        mesh.save(tmp_path / "missing" / "m.stl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.stl"]


# ---------------------------------------------------------------------------- bad input
def test_bad_input_gives_medlab_errors():
    labels = off_centre_box()
    with pytest.raises(ImageError, match="no voxel"):
        label_surface(labels, 5)
    empty = labels.with_array(np.zeros(labels.shape, np.uint8))
    with pytest.raises(ImageError, match="empty"):
        label_surface(empty)
    with pytest.raises(ImageError, match="empty"):
        label_surfaces(empty)
    with pytest.raises(ImageError, match="intensity"):
        label_surface(labels.with_array(labels.array.astype(np.float32), kind="intensity"))
    with pytest.raises(ImageError, match="label Image"):
        label_surface(labels.array)
    with pytest.raises(ImageError, match="3D"):
        label_surface(Image(np.ones((5, 5), np.uint8), kind="label"))
    for smoothing in (-1, 10_000, 2.5, True, "10"):
        with pytest.raises(ParameterError, match="smoothing"):
            label_surface(labels, 3, smoothing=smoothing)
    for reduction in (-0.1, 1.0, 5, float("nan"), "half"):
        with pytest.raises(ParameterError, match="reduction"):
            label_surface(labels, 3, reduction=reduction)
    with pytest.raises(ParameterError, match="positive"):
        label_surface(labels, 0)
    two = labels.with_array(np.where(labels.array > 0, labels.array, 0) + (np.arange(30) == 0)[None, None, :])
    with pytest.raises(ParameterError, match="several labels"):
        label_surface(two)
    with pytest.raises(ImageError, match=r"\[7\]"):
        label_surfaces(labels, [3, 7])
    with pytest.raises(ParameterError):
        Mesh([[0, 0, 0], [1, 0, 0]], [[0, 1, 2]])
    with pytest.raises(ParameterError):
        Mesh([[0, 0, np.nan]] * 3, [[0, 1, 2]])
    with pytest.raises(ParameterError, match="save_mesh"):
        save_mesh("not a mesh", "x.stl")
    assert issubclass(ImageError, MedlabError) and issubclass(WriteError, MedlabError)


# ---------------------------------------------------------------------------- real data
def test_real_label_map_stored_las_lands_on_the_ct(shared):
    """TotalSegmentator's liver on the shared CT series: the label map is stored y-flipped (LAS),
    so only a surface that honours its direction lands inside the LPS-stored DICOM series."""
    seg = medlab.load(shared("ct_abdomen/example_seg_dicom.nii.gz"), kind="label",
                      labels=shared("ct_abdomen/labels_total.json"))
    ct = medlab.load(shared("ct_abdomen/example_ct_dicom"))
    assert seg.orientation == "LAS" and ct.orientation == "LPS"
    liver = label_surface(seg, 5, smoothing=0)
    again = label_surface(seg.reorient("LPS"), 5, smoothing=0)
    np.testing.assert_allclose(liver.bounds()[0], again.bounds()[0], atol=1e-4)
    np.testing.assert_allclose(liver.bounds()[1], again.bounds()[1], atol=1e-4)
    clo, chi, half = voxel_extent(seg, 5)
    np.testing.assert_allclose(liver.bounds()[0], clo - half, atol=1e-4)
    np.testing.assert_allclose(liver.bounds()[1], chi + half, atol=1e-4)
    lo, hi = ct.bounds()
    assert np.all(liver.bounds()[0] >= lo - 1) and np.all(liver.bounds()[1] <= hi + 1)
    assert liver.vertices[:, 0].mean() < 0, "the liver is on the patient's right (LPS x < 0)"
    assert liver.name == "liver" and liver.is_watertight
    voxels = np.count_nonzero(seg.array == 5) * np.prod(seg.spacing) / 1000
    assert liver.volume_ml == pytest.approx(voxels, rel=0.03)
