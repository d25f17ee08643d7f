"""medlab.report: one self-contained HTML file holding figures, every measured number and the recipe."""

from __future__ import annotations

import base64
import doctest
import io
import json
import re

import numpy as np
import pytest
from PIL import Image as PILImage

import medlab
from medlab import Image
from medlab.errors import ImageError, ParameterError, WriteError
from medlab.outputs import Curve, Table
from medlab.report import Report, format_number, slice_figure, surface_picture

DATA_URI = re.compile(r'(?:src|href)="data:([^;,"]+)[^,"]*,([^"]*)"')


def resources(html: str) -> list[str]:
    """Every src/href/url() value of the page."""
    return re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)


def embedded_pngs(html: str) -> list[np.ndarray]:
    out = []
    for mime, payload in DATA_URI.findall(html):
        if mime == "image/png":
            out.append(np.asarray(PILImage.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")))
    return out


def embedded_json(html: str, element_id: str):
    m = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.DOTALL)
    assert m, f"no {element_id} block"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def brain():
    return medlab.data.brain_mri(size=(32, 32, 16), spacing=(6.0, 6.0, 8.0), seed=1)


@pytest.fixture(scope="module")
def recipe(brain):
    from medlab.preprocess import gaussian_smooth
    from medlab.recipe import Recipe

    with Recipe.record(t1=brain.t1) as r:
        gaussian_smooth(brain.t1, sigma=2.0)
    return r


def full_report(brain, recipe) -> Report:
    curve = Curve("loss", x_label="epoch", y_label="Dice loss", lower_is_better=True)
    for epoch, loss in enumerate([0.9, 0.61, 0.4321, 0.45], 1):
        curve.append("train", epoch, loss)
    heat = brain.t1.with_array((brain.labels.array == 8).astype(np.float32))
    r = Report("A session", subtitle="phantom seed 1")
    r.add_section("Images")
    r.add_image(brain.flair, labels=brain.labels, heat=heat, caption="FLAIR with labels and a map")
    r.add_image(medlab.render.to_png(np.zeros((5, 7), np.uint8)), caption="a PNG as is")
    r.add_image(np.full((4, 6, 3), 200, np.uint8), caption="an RGB array")
    r.add_section("Numbers")
    r.add_curve(curve, caption="training")
    r.add_table(Table([{"label": "tumour", "dice": 0.87654321, "volume": 12.5}], units={"volume": "mL"},
                      title="scores"))
    r.add_number("tumour volume", 42.13712, unit="mL", note="from the labels")
    r.add_numbers({"TRE": 0.8125, "hit": True}, units={"TRE": "mm"})
    r.add_skipped("U-Net", "no shipped model")
    r.add_text("Plain <b>text</b> & more.\n\nA second paragraph.")
    r.add_recipe(recipe)
    return r


def test_report_is_self_contained_and_holds_everything(brain, recipe, tmp_path):
    path = full_report(brain, recipe).save(tmp_path / "report.html")
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    for ref in resources(html):
        assert ref.startswith(("data:", "#")), f"external resource {ref[:60]}"
    assert "<link" not in html and "@import" not in html
    pngs = embedded_pngs(html)
    assert len(pngs) == 4                       # the slices, the PNG, the array and the curve's plot
    # the slice figure shows the labels (colour) and the heat map (not grey everywhere)
    rgb = pngs[0].astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 40).sum() > 50
    for text in ("42.14", "0.8765", "0.8125", "12.5", "0.4321", "volume [mL]", "TRE", "yes", "Skipped: U-Net",
                 "no shipped model", "A second paragraph"):
        assert text in html, text
    assert "Plain &lt;b&gt;text&lt;/b&gt; &amp; more." in html        # text is escaped, never HTML
    numbers = embedded_json(html, "medlab-numbers")
    assert {n["name"]: n["value"] for n in numbers} == {"tumour volume": 42.13712, "TRE": 0.8125, "hit": True}
    assert numbers[0]["unit"] == "mL" and numbers[0]["section"] == "Numbers"
    from medlab.recipe import Recipe

    assert Recipe.from_dict(embedded_json(html, "medlab-recipe")).to_json() == recipe.to_json()
    assert "gaussian_smooth(" in html                                 # the recipe as Python


def test_csv_links_hold_exact_values(brain, recipe):
    html = full_report(brain, recipe).to_html()
    links = [base64.b64decode(p).decode() for m, p in DATA_URI.findall(html) if m == "text/csv"]
    assert any("0.87654321" in text for text in links)                # the table's exact value
    assert any("0.4321" in text and "train" in text for text in links)  # every point of the curve
    assert any("42.13712" in text for text in links)                 # every measured number


def test_report_reads_back(brain, recipe):
    r = full_report(brain, recipe)
    assert r.numbers.column("name") == ["tumour volume", "TRE", "hit"]
    assert r.skipped == [{"step": "U-Net", "reason": "no shipped model", "section": "Numbers"}]


def test_save_is_atomic_and_never_overwrites(brain, recipe, tmp_path):
    path = tmp_path / "r.html"
    Report("one").save(path)
    before = path.read_text()
    with pytest.raises(WriteError):
        Report("two").save(path)
    assert path.read_text() == before
    Report("two").save(path, overwrite=True)
    assert "<title>two</title>" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]    # no temporary left behind
    with pytest.raises(ParameterError, match="html"):
        Report("x").save(tmp_path / "r.pdf")


def test_bad_input_is_refused_with_medlab_errors(brain):
    r = Report("x")
    with pytest.raises(ParameterError):
        Report("  ")
    with pytest.raises(ImageError, match="PNG"):
        r.add_image(b"GIF89a...")
    with pytest.raises(ParameterError, match="uint8"):
        r.add_image(np.zeros((4, 4)))
    with pytest.raises(ParameterError, match="Curve"):
        r.add_curve([1, 2, 3])
    with pytest.raises(ParameterError, match="Recipe"):
        r.add_recipe("recipe.json")
    with pytest.raises(ParameterError, match="labels"):
        r.add_image(np.zeros((4, 4), np.uint8), labels=brain.labels)
    with pytest.raises(ParameterError, match="at must"):
        r.add_image(brain.t1, at=(0, float("nan"), 0))
    far = Image(np.ones((4, 4, 4), np.uint8), origin=(900, 900, 900), kind="label")
    with pytest.raises(medlab.errors.GeometryError):
        r.add_image(brain.t1, labels=far)
    with pytest.raises(ParameterError, match="add_table"):
        r.add_number("profile", np.arange(100))


def test_empty_curve_says_so():
    r = Report("x").add_curve(Curve("metric"), caption="registration")
    assert r.skipped[0]["reason"] == "the curve has no points"


def test_slice_figure_places_overlays_by_position():
    """A label map stored upside down (flipped direction) is drawn on the same anatomy."""
    arr = np.zeros((9, 9, 9), np.float32)
    arr[2:5, 1:3, 6:8] = 1.0
    scan = Image(arr)
    labels = Image((arr > 0).astype(np.uint8), kind="label")
    flip = np.diag([1.0, -1.0, 1.0])
    flipped = Image(labels.array[:, ::-1, :], origin=(0, 8, 0), direction=flip, kind="label")
    a = slice_figure(scan, labels=labels, outline=False, size=90)
    b = slice_figure(scan, labels=flipped, outline=False, size=90)
    assert np.array_equal(a, b)
    grey = slice_figure(scan, size=90)
    assert not np.array_equal(a, grey)                 # the labels were drawn


def test_slice_figure_keeps_physical_proportions():
    img = Image(np.zeros((10, 40, 40), np.float32), spacing=(1.0, 1.0, 4.0))   # 40 x 40 x 40 mm
    pic = slice_figure(img, planes=("coronal",), size=80)
    assert abs(pic.shape[0] - pic.shape[1]) <= 1          # a square in mm is square on screen


def test_surface_picture_renders_headless():
    from medlab.mesh import label_surface

    mask = np.zeros((12, 16, 16), np.uint8)
    mask[3:9, 4:12, 4:12] = 1
    mesh = label_surface(Image(mask, spacing=(1.0, 1.0, 2.0), kind="label"), smoothing=0)
    pic = surface_picture([mesh], size=(160, 120))
    assert pic.shape == (120, 160, 3) and pic.dtype == np.uint8
    orange = (pic[..., 0] > 150) & (pic[..., 2] < 100)           # the label colour, shaded
    assert orange.sum() > 200
    with pytest.raises(ParameterError):
        surface_picture([])


def test_format_number():
    assert format_number(np.float32(0.5)) == "0.5"
    assert format_number(np.int64(7)) == "7"
    assert format_number(float("inf")) == "∞"


def test_examples_run():
    import medlab.report as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 5


def test_any_session_result_goes_in_by_type(brain):
    """A stage's Result (images, transform, curve, table) and recipe outputs are shown by type."""
    from medlab.data import registration_pair
    from medlab.register import linear_register

    pair = registration_pair(size=(32, 32, 16), spacing=(6, 6, 8), seed=2)
    result = linear_register(pair.fixed, pair.moving, iterations=20)
    r = Report("registration").add_outputs(result)
    html = r.to_html()
    assert len(embedded_pngs(html)) == 2                   # the registered image and the metric curve
    assert "rotation_deg" in html and "translation_mm" in html  # the transform's parameters
    assert "stop reason" in html                                # the per-level table
    labels = brain.labels.with_array((brain.labels.array == 8).astype(np.uint8), kind="label")
    r2 = Report("x").add_outputs({"tumour": labels, "dice": 0.8123, "missing": None}, over=brain.flair)
    assert len(embedded_pngs(r2.to_html())) == 1 and r2.numbers.rows[0]["value"] == 0.8123
    assert r2.skipped[0]["step"] == "missing"
    with pytest.raises(ParameterError, match="add_output"):
        Report("x").add_output({"a": 1})
