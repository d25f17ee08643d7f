"""``medlab demo``: the brain tumour case study headless, one self-contained HTML report, offline."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

sys.path.insert(0, str(Path(__file__).parent))
from notebook_runner import GUARD, network_events  # the kernel tests' network guard

import medlab
from medlab.demo import CASE_STUDIES, PHANTOMS, WHOLE_TUMOUR


def numbers_of(html: str) -> dict[str, object]:
    m = re.search(r'<script type="application/json" id="medlab-numbers">(.*?)</script>', html, re.DOTALL)
    return {n["name"]: n["value"] for n in json.loads(m.group(1))}


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """``medlab demo --out DIR --fast`` in a subprocess, with the network guard in that process."""
    out = tmp_path_factory.mktemp("demo")
    log = out / "network.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")]),
               MEDLAB_NETWORK_LOG=str(log))
    proc = subprocess.run([sys.executable, "-m", "medlab.cli", "demo", "--out", str(out / "report"), "--fast",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    return proc, out / "report", network_events(log)


def test_demo_writes_the_report(fast_demo):
    proc, folder, _ = fast_demo
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = folder / "brain_tumour_report.html"
    assert f"report written to {report.resolve()}" in proc.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["brain_tumour_recipe.json", "brain_tumour_report.html"]


def test_report_is_self_contained(fast_demo):
    html = (fast_demo[1] / "brain_tumour_report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) >= 8
    for b64 in pngs:
        img = PILImage.open(io.BytesIO(base64.b64decode(b64)))
        img.load()
        assert min(img.size) >= 32


def test_report_numbers_are_measured(fast_demo):
    """Key numbers are there, in plausible ranges, and the truth volume matches an independent count."""
    html = (fast_demo[1] / "brain_tumour_report.html").read_text(encoding="utf-8")
    n = numbers_of(html)
    grid = PHANTOMS[True]
    labels = medlab.data.brain_mri(seed=100, contrasts=("t1",), **grid).labels
    truth_ml = np.isin(labels.array, WHOLE_TUMOUR).sum() * np.prod(grid["spacing"]) / 1000
    assert n["true whole-tumour volume"] == pytest.approx(truth_ml)
    assert 0.7 < n["seeded: Dice (whole tumour)"] <= 1.0
    assert 0 <= n["seeded: HD95"] < 30                          # 0 when 95 % of the surface coincides
    assert n["white-matter CV, after N4"] < n["white-matter CV, T1 as acquired"]
    assert n["correlation of the N4 field with the true bias field"] > 0.5
    for scan in ("FLAIR", "T2"):
        assert 0 <= n[f"{scan} to T1: mean TRE"] < 2.0            # mm, on 3 x 3 x 4 mm voxels
    assert 0.5 * truth_ml < n["tumour volume (seeded segmentation)"] < 1.5 * truth_ml
    for name in ("seeded: Dice (whole tumour)", "tumour volume (seeded segmentation)"):
        assert f"{n[name]:.4g}" in html                             # shown in the tables too


def test_skipped_and_failed_steps_are_said(fast_demo):
    html = (fast_demo[1] / "brain_tumour_report.html").read_text(encoding="utf-8")
    n = numbers_of(html)
    assert "FAILED" not in html
    try:
        from medlab.deep import pretrained_models
        has_unet = "brain_tumour" in pretrained_models()
    except ImportError:
        has_unet = False
    assert ("U-Net: Dice (whole tumour)" in n) == has_unet
    assert ("Skipped: U-Net segmentation" in html) == (not has_unet)
    try:
        from medlab.explain import tumour_classifier
        tumour_classifier()
        has_classifier = True
    except (ImportError, medlab.errors.MedlabError):
        has_classifier = False
    assert ("Grad-CAM: energy in the true tumour" in n) == has_classifier
    if has_classifier:
        assert isinstance(n["sanity check passed (map changes when the model is randomised)"], bool)


def test_recipe_is_embedded_saved_and_replays(fast_demo):
    from medlab.recipe import Recipe

    folder = fast_demo[1]
    html = (folder / "brain_tumour_report.html").read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="medlab-recipe">(.*?)</script>', html, re.DOTALL)
    embedded = Recipe.from_dict(json.loads(m.group(1)))
    saved = Recipe.load(folder / "brain_tumour_recipe.json")
    assert embedded.to_json() == saved.to_json()
    stages = [s.stage for s in saved.steps]
    assert {"n4_bias_correction", "nlm_denoise", "linear_register", "connected_threshold", "fill_holes"} <= set(stages)
    assert {"t1", "t2", "flair"} <= set(saved.inputs)
    assert "linear_register(" in html                                # the recipe as Python
    # the saved recipe replays its first step on the same scan, bit for bit
    grid = PHANTOMS[True]
    t1 = medlab.data.brain_mri(seed=100, bias=0.3, noise=0.03, **grid).t1
    assert saved.inputs["t1"]["sha256"] == medlab.outputs.fingerprint(t1)


def test_demo_made_no_network_call(fast_demo):
    _, _, events = fast_demo
    assert any(e["kind"] == "guard" for e in events), "the guard was not active in the demo process"
    assert [e for e in events if not e["allowed"]] == []


def test_help_lists_every_case_study():
    proc = subprocess.run([sys.executable, "-m", "medlab.cli", "demo", "--help"], capture_output=True, text=True, check=False,
                          timeout=120)
    assert proc.returncode == 0
    for study in CASE_STUDIES.values():
        assert study.title in proc.stdout
    assert proc.stdout.count("notebook only for now") == sum(not s.headless for s in CASE_STUDIES.values())


def test_other_case_studies_say_notebook_only(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medlab.cli", "demo", "mammo", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "notebook only for now" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_report(fast_demo):
    folder = fast_demo[1]
    before = (folder / "brain_tumour_report.html").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "medlab.cli", "demo", "--out", str(folder), "--fast"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert (folder / "brain_tumour_report.html").stat().st_mtime_ns == before


@pytest.mark.slow
def test_unet_step_with_a_trained_model(tmp_path):
    """The U-Net path, with a (barely) trained model standing in for the shipped one."""
    pytest.importorskip("monai")
    from medlab.deep import brain_tumour_cases, train_segmenter
    from medlab.demo import _Run, _step_unet
    from medlab.report import Report

    grid = {"size": (32, 32, 16), "spacing": (6.0, 6.0, 8.0)}
    cases = brain_tumour_cases([0, 1], contrasts=("t1", "flair"), **grid)
    model = train_segmenter(cases.images, cases.labels, classes=cases.classes, channel_names=cases.channels,
                            patch_size=(32, 32, 16), epochs=1, validation=0, seed=0).model
    p = medlab.data.brain_mri(seed=5, **grid)
    truth = p.labels.with_array(np.isin(p.labels.array, WHOLE_TUMOUR).astype(np.uint8), kind="label")
    run = _Run(Report("t"), True, 0, values={"segmenter": model, "t1_clean": p.t1, "flair_registered": p.flair,
                                             "t2_registered": p.t2, "truth": truth, "phantom": p, "scores": {}})
    _step_unet(run)
    assert run.values["unet"].same_grid(p.t1)
    assert 0.0 <= run.values["scores"]["U-Net"]["dice"] <= 1.0
    assert "U-Net: Dice (whole tumour)" in run.report.numbers.column("name")


def test_open_shows_the_report_in_the_browser(tmp_path, monkeypatch, capsys):
    """``--open`` hands the report's file:// address to the web browser (the run itself is faked here)."""
    import webbrowser

    from medlab import demo
    from medlab.recipe import Recipe

    report = tmp_path / demo.REPORT_NAME
    report.write_text("<html></html>")
    fake = demo.DemoResult(report, Recipe(), medlab.outputs.Table([]), [], [], {}, {}, 1.0)
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: fake)
    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    assert demo.main_demo("brain", tmp_path, fast=True, open_browser=True, overwrite=False, seed=0) == 0
    assert opened == [report.resolve().as_uri()]
    assert str(report.resolve()) in capsys.readouterr().out
