"""medlab.widgets.view3d without a browser: what travels to niivue (NIfTI and PLY in RAS), the
patched niivue module, the crosshair link and bad input. The browser half is in
tests/browser/test_view3d_browser.py."""

from __future__ import annotations

import io
import math
import shutil
import subprocess

import numpy as np
import pytest
import traitlets
import trimesh
from medlab.widgets.view3d import View3D, _nifti_bytes, _ply_bytes_ras, niivue_module

import medlab
from medlab import Image
from medlab.errors import GeometryError, ImageError, MedlabError, ParameterError
from medlab.mesh import label_surface

pytest.importorskip("ipyniivue")


def oblique_direction(degrees: float = 25) -> np.ndarray:
    a = math.radians(degrees)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    return rz @ rx


def scan_and_lesion() -> tuple[Image, Image]:
    arr = np.zeros((12, 20, 24), np.float32)
    arr[2:9, 5:12, 14:20] = 100.0
    scan = Image(arr, (0.8, 1.1, 2.4), (30.0, -12.0, 55.0), oblique_direction(), metadata={"modality": "MR"})
    return scan, scan.with_array(arr > 50, kind="label", labels={1: ("lesion", (250, 80, 10))})


class FakeViewer(traitlets.HasTraits):
    position = traitlets.List(traitlets.Float(), default_value=[0.0, 0.0, 0.0])


# ---------------------------------------------------------------------------- the JS module
def test_niivue_module_is_patched_and_valid_javascript(tmp_path):
    src, patched = niivue_module()
    assert patched, "ipyniivue's widget.js changed shape: update niivue_module"
    assert src.count("=5*1024*1024,") == 1
    i = src.index("sendChunkedData")
    assert "){return;" in src[max(0, i - 800): i]
    assert "export{medlabView3D as default}" in src
    node = shutil.which("node")
    if node:
        path = tmp_path / "widget.mjs"
        path.write_text(src, encoding="utf-8")
        done = subprocess.run([node, "--check", str(path)], check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]


# ---------------------------------------------------------------------------- what travels
def test_volume_bytes_are_nifti_with_the_ras_affine():
    nib = pytest.importorskip("nibabel")
    scan, _ = scan_and_lesion()
    nii = nib.Nifti1Image.from_bytes(_nifti_bytes(scan))
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ scan.affine          # LPS -> RAS
    np.testing.assert_allclose(nii.affine, expected, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), scan.array)
    assert nii.header.get_sform(coded=True)[1] > 0 or nii.header.get_qform(coded=True)[1] > 0


def test_mesh_bytes_are_ply_in_ras_with_outward_faces():
    _, lesion = scan_and_lesion()
    mesh = label_surface(lesion)
    back = trimesh.load(io.BytesIO(_ply_bytes_ras(mesh)), file_type="ply", process=False)
    np.testing.assert_allclose(back.vertices, mesh.vertices * [-1, -1, 1], atol=1e-5)
    assert back.is_watertight and back.volume > 0          # still wound outward after the flip
    assert back.volume / 1000 == pytest.approx(mesh.volume_ml, rel=1e-5)


def test_view_holds_volume_meshes_and_legend():
    scan, lesion = scan_and_lesion()
    view = View3D(scan, lesion)
    nv = view.niivue
    assert len(nv.volumes) == 1 and len(nv.meshes) == 1
    assert nv.meshes[0].rgba255 == [250, 80, 10, 255]
    assert nv.meshes[0].name.endswith(".ply") and nv.volumes[0].name == "volume.nii"
    assert "lesion (label 1)" in view._legend.value and "watertight" in view._legend.value
    lo, hi = scan.bounds()
    np.testing.assert_allclose(view.position, (lo + hi) / 2)
    # voxels sent back by the browser are dropped, not kept in the kernel
    vol = nv.volumes[0]
    vol.set_state({"chunk_img_0": {"chunk_index": 0, "total_chunks": 1, "data_type": "float32",
                                   "chunk": np.zeros(4, np.float32).tobytes()}})
    assert vol.img is None


# ---------------------------------------------------------------------------- crosshair
def test_crosshair_waits_for_niivue_then_follows_the_viewer():
    scan, lesion = scan_and_lesion()
    view = View3D(scan, lesion)
    viewer = FakeViewer()
    unlink = view.link(viewer)
    target = lesion.index_to_physical((16.0, 8.0, 5.0))
    viewer.position = target.tolist()
    np.testing.assert_allclose(view.position, target)
    assert view.crosshair_fraction() is None            # niivue has not loaded the volume yet
    before = list(view.niivue.scene.crosshair_pos)

    # what niivue sends back once loaded: its de-obliqued box (RAS), frac -> mm
    vol = view.niivue.volumes[0]
    ras_lo, ras_hi = np.array([-60.0, -40.0, 20.0]), np.array([10.0, 30.0, 110.0])
    frac2mm = np.eye(4)
    frac2mm[:3, :3] = np.diag(ras_hi - ras_lo)
    frac2mm[:3, 3] = ras_lo
    vol.frac2mm_ortho = frac2mm.T                        # ipyniivue keeps niivue's column-major matrix
    frac = np.array(view.niivue.scene.crosshair_pos)
    assert not np.allclose(frac, before)
    np.testing.assert_allclose(ras_lo + frac * (ras_hi - ras_lo), target * [-1, -1, 1], atol=1e-9)

    # a click in a niivue plane (RAS mm) moves the 2D viewer (LPS mm)
    view._location_changed({"mm": [-20.0, 5.0, 60.0, 1.0]})
    np.testing.assert_allclose(viewer.position, [20.0, -5.0, 60.0])
    unlink()
    viewer.position = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(view.position, [20.0, -5.0, 60.0])


def test_meshes_only_crosshair_fraction_of_the_mesh_box():
    _, lesion = scan_and_lesion()
    mesh = label_surface(lesion)
    view = View3D(meshes=[mesh])
    view.position = mesh.bounds()[0].tolist()          # LPS low corner: RAS (high x, high y, low z)
    np.testing.assert_allclose(view.niivue.scene.crosshair_pos, [1.0, 1.0, 0.0], atol=1e-9)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_gives_medlab_errors():
    scan, lesion = scan_and_lesion()
    far = Image(lesion.array, lesion.spacing, (900.0, 900.0, 900.0), kind="label")
    cases = [
        (lambda: View3D(), ParameterError, "needs an image"),
        (lambda: View3D(Image(np.zeros((8, 8)))), ImageError, "3D"),
        (lambda: View3D(scan, scan), ImageError, "label map"),
        (lambda: View3D(scan, far), GeometryError, "overlap"),
        (lambda: View3D(scan, mode="vr"), ParameterError, "mode"),
        (lambda: View3D(scan, xray=2), ParameterError, "xray"),
        (lambda: View3D(scan, height=5), ParameterError, "height"),
        (lambda: View3D(scan, meshes=["x"]), ParameterError, "Mesh"),
        (lambda: View3D(scan, lesion, smoothing=-3), ParameterError, "smoothing"),
        (lambda: View3D(scan).link(object()), ParameterError, "position"),
    ]
    for make, error, words in cases:
        with pytest.raises(error, match=words):
            make()
    view = View3D(scan)
    with pytest.raises(ParameterError, match="finite"):
        view.position = [0.0, float("nan"), 1.0]
    assert issubclass(GeometryError, MedlabError)


def test_brain_phantom_tumour_surface_on_the_left():
    brain = medlab.data.brain_mri(size=(48, 48, 24))
    view = View3D(brain.t1, brain.labels, values=[8])
    (mesh,) = view.meshes
    assert mesh.name == "enhancing tumour"
    ras_centre = mesh.to_ras().mean(axis=0)
    assert (ras_centre[0] < 0) == (brain.info["tumour_side"] == "left")
