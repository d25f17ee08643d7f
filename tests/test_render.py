"""medlab.render: display orientation, slices, window/level, overlays, resampling, thumbnails."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage

from medlab import Image, render
from medlab.errors import GeometryError, ImageError, ParameterError

# A patient-space phantom: LPS grid, x towards Left, y Posterior, z Superior.
SIZE = (30, 20, 10)  # (x, y, z)
SPACING = (0.8, 0.6, 3.0)


def phantom_lps() -> Image:
    """A bright cube in the patient's left, anterior, superior corner, plus a dim ramp."""
    arr = np.zeros(SIZE[::-1], np.int16)
    arr += np.arange(SIZE[0], dtype=np.int16)[None, None, :]  # ramp along x
    arr[7:9, 2:5, 22:27] = 1000  # z high (S), y low (A), x high (L)
    return Image(arr, SPACING, origin=(-10.0, 5.0, 40.0), metadata={"modality": "CT"})


def reoriented(image: Image, code: str) -> Image:
    """The same physical image stored in another orientation (by SimpleITK, independently)."""
    out = sitk.DICOMOrient(image.to_sitk(), code)
    return Image.from_sitk(out, kind=image.kind, labels=image.labels, metadata=image.metadata)


def png_size(b64: str) -> tuple[int, int]:
    return PILImage.open(io.BytesIO(base64.b64decode(b64))).size


# ---------------------------------------------------------------------------- orientation
def test_radiological_convention_places_left_anterior_superior_cube():
    img = phantom_lps()
    ax = render.extract_slice(img, "axial", 7).array  # rows A->P, cols R->L
    rows, cols = np.nonzero(ax >= 1000)
    assert cols.min() > ax.shape[1] / 2, "patient left must be on screen right"
    assert rows.max() < ax.shape[0] / 2, "anterior must be up"
    cor = render.extract_slice(img, "coronal", 3).array  # rows S->I, cols R->L
    rows, cols = np.nonzero(cor >= 1000)
    assert cols.min() > cor.shape[1] / 2 and rows.max() < cor.shape[0] / 2, "coronal: left on the right, superior up"
    sag = render.extract_slice(img, "sagittal", 24).array  # rows S->I, cols A->P
    rows, cols = np.nonzero(sag >= 1000)
    assert cols.max() < sag.shape[1] / 2 and rows.max() < sag.shape[0] / 2, "sagittal: anterior left, superior up"


@pytest.mark.parametrize("code", ["RAS", "LAS", "RPI", "PIR", "SAL", "ILP"])
def test_same_picture_for_any_storage_orientation(code):
    ref = phantom_lps()
    img = reoriented(ref, code)
    assert img.orientation == code
    for plane in render.PLANES:
        n = render.slice_count(ref, plane)
        assert render.slice_count(img, plane) == n
        for index in (0, n // 2, n - 1):
            a = render.extract_slice(ref, plane, index)
            b = render.extract_slice(img, plane, index)
            np.testing.assert_array_equal(a.array, b.array, err_msg=f"{code} {plane} {index}")
            assert a.spacing == pytest.approx(b.spacing)
            assert b.metadata["slice_corner_mm"] == pytest.approx(a.metadata["slice_corner_mm"])


def test_display_image_keeps_physical_positions():
    img = reoriented(phantom_lps(), "PIR")
    disp = render.display_image(img)
    assert disp.orientation == "LPS"
    assert np.shares_memory(disp.array, img.array), "display orientation must not copy voxels"
    m = render.display_to_index(img)
    rng = np.random.default_rng(0)
    for _ in range(20):
        d = rng.integers(0, np.array(disp.size))
        idx = (m @ [*d, 1])[:3]
        assert np.allclose(img.index_to_physical(idx), disp.index_to_physical(d))
        assert disp.array[d[2], d[1], d[0]] == img.array[tuple(np.rint(idx).astype(int)[::-1])]


def test_oblique_image_uses_nearest_axes_and_says_so():
    t = np.deg2rad(12)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    flip = np.diag([-1.0, 1.0, 1.0])
    img = Image(np.zeros((4, 5, 6)), direction=rot @ flip)
    disp = render.display_image(img)
    assert disp.orientation == "LPS"
    assert disp.is_oblique
    assert "oblique" in render.orientation_note(img)
    assert render.orientation_note(phantom_lps()) == ""
    assert "oblique" in render.thumbnail_html(img)


def test_extract_slice_spacing_and_errors():
    img = phantom_lps()
    assert render.extract_slice(img, "axial", 0).spacing == pytest.approx((0.8, 0.6))
    assert render.extract_slice(img, "coronal", 0).spacing == pytest.approx((0.8, 3.0))
    assert render.extract_slice(img, "sagittal", 0).spacing == pytest.approx((0.6, 3.0))
    assert render.extract_slice(img, "axial", 0).metadata["modality"] == "CT"
    with pytest.raises(ParameterError, match="outside"):
        render.extract_slice(img, "axial", 10)
    with pytest.raises(ParameterError, match="plane"):
        render.extract_slice(img, "oblique", 0)


def test_two_d_image_is_one_axial_slice():
    img = Image(np.arange(12, dtype=np.uint8).reshape(3, 4), spacing=(0.5, 0.25))
    assert render.slice_count(img, "axial") == 1
    s = render.extract_slice(img, "axial", 0)
    np.testing.assert_array_equal(s.array, img.array)
    assert s.spacing == (0.5, 0.25)


# ---------------------------------------------------------------------------- intensities
def test_window_level_mapping():
    out = render.window_level(np.array([-1000.0, -160.0, 240.0, 1000.0]), 400, 40)
    assert out.tolist() == [0, 0, 255, 255]
    ramp = render.window_level(np.linspace(-200, 300, 101), 400, 40)
    assert np.all(np.diff(ramp.astype(int)) >= 0) and ramp.dtype == np.uint8
    assert abs(int(render.window_level(np.array([40]), 400, 40)[0]) - 128) <= 1
    with pytest.raises(ParameterError, match="window"):
        render.window_level(np.zeros(3), 0, 0)


def test_auto_window_by_modality():
    ct = phantom_lps()
    assert render.auto_window(ct) == render.CT_PRESETS["abdomen"]
    assert set(render.CT_PRESETS) == {"brain", "subdural", "lung", "mediastinum", "abdomen", "bone"}
    rng = np.random.default_rng(1)
    mr = Image(rng.normal(100, 10, (8, 16, 16)).astype(np.float32), metadata={"modality": "MR"})
    w, l = render.auto_window(mr)
    lo, hi = np.percentile(mr.array, [0.5, 99.5])
    assert w == pytest.approx(hi - lo) and l == pytest.approx((hi + lo) / 2)
    assert render.auto_window(Image(np.full((3, 3), 7.0)))[0] > 0


def test_compose_layers():
    grey = np.full((4, 4), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[1:4, 1:4] = 2
    fill = render.compose(grey, labels=labels, label_colors={2: (200, 0, 0)}, label_opacity=0.5)
    assert fill[0, 0].tolist() == [100, 100, 100]
    assert fill[2, 2].tolist() == [150, 50, 50]
    outline = render.compose(grey, labels=labels, label_colors={2: (200, 0, 0)}, label_outline_only=True)
    assert outline[2, 2].tolist() == [100, 100, 100], "inside pixel is not outline"
    assert outline[1, 1].tolist() == [200, 0, 0] and outline[3, 3].tolist() == [200, 0, 0]

    heat = np.array([[0.0, 0.5], [1.0, 0.2]])
    lut = np.stack([np.arange(256)] * 3, axis=1).astype(np.uint8)
    out = render.compose(np.zeros((2, 2), np.uint8), heat=heat, heat_lut=lut, heat_range=(0, 1),
                         heat_threshold=0.3, heat_opacity=1.0)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 0, "below threshold stays grey"
    assert out[0, 1, 0] == 128 and out[1, 0, 0] == 255

    a, b = np.full((4, 4), 200, np.uint8), np.full((4, 4), 50, np.uint8)
    assert render.compose(a, second=b, second_mode="blend", second_alpha=0.5)[0, 0, 0] == 125
    assert render.compose(a, second=b, second_mode="difference")[0, 0, 0] == 150
    board = render.compose(a, second=b, second_mode="checkerboard", checker=2)[..., 0]
    assert board[0, 0] == 200 and board[0, 2] == 50 and board[2, 2] == 200
    with pytest.raises(ParameterError):
        render.compose(a, second=b, second_mode="swirl")


def test_colormap_lut():
    lut = render.colormap_lut("inferno")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].sum() < lut[-1].sum()
    with pytest.raises(ParameterError, match="colour map"):
        render.colormap_lut("no-such-map")


# ---------------------------------------------------------------------------- resampling
def test_resample_like_flipped_and_shifted_layer():
    ref = phantom_lps()
    for code in ("RAS", "LAS", "PIR"):
        layer = reoriented(ref.with_array((ref.array >= 1000).astype(np.uint8), kind="label", labels={1: "cube"}), code)
        out = render.resample_like(layer, ref)
        assert out.same_grid(ref) and out.is_label and out.labels[1].name == "cube"
        np.testing.assert_array_equal(out.array, ref.array >= 1000)
    coarse = Image(ref.array[:, ::2, ::2].astype(np.float32), (1.6, 1.2, 3.0), ref.origin)
    out = render.resample_like(coarse, ref)
    assert out.same_grid(ref) and out.dtype == np.float32


def test_resample_like_refuses_disjoint_and_colour():
    ref = phantom_lps()
    far = Image(np.ones((4, 4, 4)), origin=(1000, 1000, 1000))
    with pytest.raises(GeometryError, match="does not overlap"):
        render.resample_like(far, ref)
    rgb = Image(np.zeros((4, 4, 3), np.uint8), rgb=True)
    with pytest.raises(ImageError, match="colour"):
        render.resample_like(rgb, Image(np.zeros((4, 4))))


def test_label_map_with_other_direction_overlays_real_ct(shared):
    """The shared label map is stored y-flipped (LAS); only geometry makes it land on the organs."""
    folder = shared("ct_abdomen/example_ct_dicom")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ct = Image.from_sitk(reader.Execute(), metadata={"modality": "CT", "units": "HU"})
    names = {int(k): v for k, v in json.loads(shared("ct_abdomen/labels_total.json").read_text()).items()}
    seg = Image.from_sitk(sitk.ReadImage(str(shared("ct_abdomen/example_seg_dicom.nii.gz"))), kind="label", labels=names)
    assert seg.orientation != ct.orientation
    on_ct = render.resample_like(seg, ct)
    assert on_ct.same_grid(ct)
    liver = on_ct.array == 5
    assert liver.sum() > 1000 and on_ct.labels[5].name == "liver"
    assert 20 < ct.array[liver].mean() < 200, "liver voxels must hold soft-tissue HU"
    naive = seg.array == 5  # ignoring direction puts the liver elsewhere
    assert not 20 < ct.array[naive].mean() < 200
    body = on_ct.array > 0
    assert (ct.array[body] > -300).mean() > 0.95


# ---------------------------------------------------------------------------- PNG and thumbnails
def test_to_png_round_trip_and_errors():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    back = np.asarray(PILImage.open(io.BytesIO(render.to_png(grey))))
    np.testing.assert_array_equal(back, grey)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1] = (1, 2, 3)
    np.testing.assert_array_equal(np.asarray(PILImage.open(io.BytesIO(render.to_png(rgb)))), rgb)
    with pytest.raises(ParameterError, match="uint8"):
        render.to_png(np.zeros((2, 2), np.float32))


def test_thumbnail_has_three_planes_in_physical_proportion():
    # 0.78 x 0.78 x 6.5 mm like the shared brain MRI: coronal must be stretched vertically
    img = Image(np.random.default_rng(0).normal(size=(25, 64, 64)).astype(np.float32), (0.78, 0.78, 6.5),
                metadata={"modality": "MR"})
    html = render.thumbnail_html(img)
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(pngs) == 3
    (aw, ah), (cw, ch), (sw, sh) = (png_size(p) for p in pngs)
    assert aw == pytest.approx(ah, rel=0.05)
    assert ch / cw == pytest.approx(25 * 6.5 / (64 * 0.78), rel=0.05)
    assert sh / sw == pytest.approx(25 * 6.5 / (64 * 0.78), rel=0.05)
    for text in ("64×64×25", "0.78×0.78×6.5", "MR", ">R<", ">S<", ">A<"):
        assert text in html


def test_thumbnail_two_d_and_rgb():
    grey = Image(np.arange(200, dtype=np.uint8).reshape(10, 20), spacing=(0.5, 1.0))
    html = render.thumbnail_html(grey)
    (b64,) = re.findall(r"base64,([A-Za-z0-9+/=]+)", html)
    w, h = png_size(b64)
    assert w == pytest.approx(h, rel=0.05), "10 rows x 1 mm == 20 cols x 0.5 mm"
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    html = render.thumbnail_html(Image(rgb, rgb=True))
    (b64,) = re.findall(r"base64,([A-Za-z0-9+/=]+)", html)
    pic = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
    assert pic[..., 0].min() > 200 and pic[..., 1].max() < 50, "colour stays colour"
    assert "RGB" in html


def test_image_repr_html_uses_thumbnail():
    assert "medlab-thumbnail" in phantom_lps()._repr_html_()


def test_label_map_thumbnail_is_coloured():
    arr = np.zeros((4, 8, 8), np.uint8)
    arr[:, 2:6, 2:6] = 3
    html = render.thumbnail_html(Image(arr, kind="label", labels={3: ("organ", (0, 200, 0))}))
    b64 = re.findall(r"base64,([A-Za-z0-9+/=]+)", html)[0]
    pic = np.asarray(PILImage.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)
    centre = pic[pic.shape[0] // 2, pic.shape[1] // 2]
    assert centre[1] > 150 and centre[0] < 50 and centre[2] < 50


def test_plain_arrays_and_odd_arguments():
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    assert render.slice_count(arr, "axial") == 3
    assert render.extract_slice(arr, "axial", 1).shape == (4, 5)
    assert len(render.auto_window(arr)) == 2
    assert "<img" in render.thumbnail_html(arr)
    with pytest.raises(ParameterError, match="integer"):
        render.extract_slice(arr, "axial", 1.7)
    for window, level in ((None, 0), (100, np.nan), ("w", 1)):
        with pytest.raises(ParameterError):
            render.window_level(arr, window, level)
