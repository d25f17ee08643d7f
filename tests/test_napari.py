"""open_in_napari under a private Xvfb: layers carry spacing, origin and direction, and a
screenshot shows the bright structure where the patient geometry puts it.

napari renders only with an OpenGL context (``QT_QPA_PLATFORM=offscreen`` gives black
screenshots), so the test starts its own ``Xvfb`` and runs napari in a child process with
``QT_QPA_PLATFORM=xcb`` (keeping Qt out of the pytest process). It skips when napari or Xvfb
is missing, unless ``MEDLAB_REQUIRE_SHARED=1`` (CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.napari


def _skip_or_fail(message: str):
    if os.environ.get("MEDLAB_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (MEDLAB_REQUIRE_SHARED=1)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def xvfb_display():
    """A private X display (``:N``), stopped after the module's tests."""
    if shutil.which("Xvfb") is None:
        _skip_or_fail("Xvfb is not installed (apt-get install xvfb)")
    if importlib.util.find_spec("napari") is None:
        _skip_or_fail("napari is not installed (pip install 'medlab[napari]')")
    for _ in range(20):
        n = random.randint(100, 900)
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    socket = Path(f"/tmp/.X11-unix/X{n}")
    deadline = time.time() + 20
    while not socket.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"Xvfb :{n} did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")
        time.sleep(0.1)
    yield f":{n}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from medlab import Image
    from medlab.widgets import open_in_napari

    out = sys.argv[1]
    # 40 x 30 x 12 voxels (x, y, z), 0.8 x 1.6 x 3 mm, stored y-flipped (LAS): index y runs anterior
    arr = np.full((12, 30, 40), 100, np.int16)
    arr[5:8, 20:26, 28:36] = 1000          # bright block
    direction = np.diag([1.0, -1.0, 1.0])
    img = Image(arr, (0.8, 1.6, 3.0), origin=(-20.0, 30.0, -10.0), direction=direction, metadata={"modality": "CT"})
    mask = img.with_array((arr >= 1000).astype(np.uint8), kind="label", labels={1: "block"})

    viewer = open_in_napari(img, labels=mask)
    viewer.window._qt_window.resize(900, 800)
    viewer.show()
    layer, labels = viewer.layers[0], viewer.layers[1]
    layer.contrast_limits = (0, 1000)
    centre = img.index_to_physical(np.argwhere(arr >= 1000).mean(axis=0)[::-1])
    viewer.dims.set_point(0, float(centre[2]))          # world axis 0 is S (z)
    labels.visible = False
    viewer.reset_view()
    plain = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = True
    labels.opacity = 1.0
    with_labels = viewer.screenshot(canvas_only=True, flash=False)
    lo, hi = img.bounds()
    np.save(out + "/plain.npy", plain)
    np.save(out + "/labels.npy", with_labels)
    json.dump({
        "scale": list(map(float, layer.scale)), "translate": list(map(float, layer.translate)),
        "rotate": np.asarray(layer.rotate).tolist(),
        "label_scale": list(map(float, labels.scale)), "label_translate": list(map(float, labels.translate)),
        "centre": centre.tolist(), "low": lo.tolist(), "high": hi.tolist(),
        "spacing": list(img.spacing), "origin": list(img.origin), "size": list(img.size),
    }, open(out + "/result.json", "w"))
    viewer.close()
    """
)


def test_open_in_napari_places_layers_in_physical_space(xvfb_display, tmp_path):
    env = dict(os.environ, DISPLAY=xvfb_display, QT_QPA_PLATFORM="xcb", NAPARI_CONFIG=str(tmp_path / "napari.yaml"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg"), XDG_RUNTIME_DIR=str(tmp_path))
    env.pop("WAYLAND_DISPLAY", None)
    script = tmp_path / "show.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, check=False,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())

    # geometry carried into napari's [z, y, x] axes
    assert res["scale"] == pytest.approx(res["spacing"][::-1])
    assert res["translate"] == pytest.approx(res["origin"][::-1])
    assert np.allclose(res["rotate"], np.diag([1.0, -1.0, 1.0]))
    assert res["label_scale"] == pytest.approx(res["scale"])
    assert res["label_translate"] == pytest.approx(res["translate"])

    shot = np.load(tmp_path / "plain.npy")[..., :3].astype(int)
    grey = shot.mean(axis=-1)
    image_px = np.argwhere(grey > 10)          # the image (background value 100 -> dim grey)
    bright_px = np.argwhere(grey > 200)        # the block
    assert len(image_px) > 1000 and len(bright_px) > 50, "napari rendered nothing (black screenshot?)"
    (r0, c0), (r1, c1) = image_px.min(axis=0), image_px.max(axis=0)
    # proportions: width = L extent, height = P extent (mm), anisotropic pixels honoured
    extent = np.array(res["high"]) - np.array(res["low"]) + np.array([0.8, 1.6, 3.0])
    assert (c1 - c0 + 1) / (r1 - r0 + 1) == pytest.approx(extent[0] / extent[1], rel=0.06)
    # the block's centre lands at its physical fraction of the image (L to the right, P down)
    br, bc = bright_px.mean(axis=0)
    low = np.array(res["low"]) - np.array([0.4, 0.8, 1.5])
    expect_x = (res["centre"][0] - low[0]) / extent[0]
    expect_y = (res["centre"][1] - low[1]) / extent[1]
    assert (bc - c0) / (c1 - c0 + 1) == pytest.approx(expect_x, abs=0.05)
    assert (br - r0) / (r1 - r0 + 1) == pytest.approx(expect_y, abs=0.05)
    assert abs(expect_y - 0.5) > 0.2, "the block must sit off-centre so a lost flip would show"

    # the label layer overlays the block (coloured, not grey, where the block is)
    lab = np.load(tmp_path / "labels.npy")[..., :3].astype(int)
    rows, cols = bright_px[:, 0], bright_px[:, 1]
    colourful = (lab[rows, cols].max(axis=-1) - lab[rows, cols].min(axis=-1)) > 60
    assert colourful.mean() > 0.8


def test_napari_transform_reverses_axes():
    from medlab.widgets.bridges import napari_transform

    from medlab import Image

    d = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # a sagittal-like storage
    img = Image(np.zeros((2, 3, 4)), (0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0), direction=d)
    t = napari_transform(img)
    # napari: world = rotate @ (scale * [z, y, x]) + translate, world in (S, P, L) order
    idx = np.array([1.0, 2.0, 3.0])  # (x, y, z)
    world = t["rotate"] @ (np.array(t["scale"]) * idx[::-1]) + np.array(t["translate"])
    assert np.allclose(world[::-1], img.index_to_physical(idx))


def test_view_itk_without_itkwidgets_is_a_clear_error(monkeypatch):
    from medlab.widgets import view_itk

    from medlab import Image, MedlabError

    monkeypatch.setitem(sys.modules, "itkwidgets", None)  # import fails as if not installed
    with pytest.raises(MedlabError, match="internet"):
        view_itk(Image(np.zeros((2, 3, 4))))


def test_view_itk_passes_geometry_to_itkwidgets():
    """Runs where the ``itk`` extra is installed (its pydantic pin conflicts with napari's, so
    not in the default test environment); itkwidgets' viewer itself needs internet to display."""
    pytest.importorskip("itkwidgets")
    from medlab.widgets import view_itk
    from medlab.widgets.bridges import to_itkwasm
    from ngff_zarr import itk_image_to_ngff_image

    from medlab import Image

    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    img = Image(np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4), spacing=(0.5, 0.7, 2.0),
                origin=(1, 2, 3), direction=direction)
    ngff = itk_image_to_ngff_image(to_itkwasm(img))
    assert ngff.scale == {"z": 2.0, "y": 0.7, "x": 0.5}
    assert ngff.translation == {"z": 3.0, "y": 2.0, "x": 1.0}
    np.testing.assert_array_equal(np.asarray(ngff.data), img.array)
    assert callable(view_itk)  # the display itself needs a notebook front end and internet
