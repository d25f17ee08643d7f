"""Clinician review: study file, blinding, verdict store (WAL, history, concurrency, corrupt files),
agreement statistics, CSV export, the review form (without a browser) and the ``medlab`` command."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import medlab
from medlab.errors import MedlabError, ParameterError, ReadError, WriteError
from medlab.review import (
    VERDICTS,
    ReviewStore,
    ReviewStoreError,
    ReviewStudy,
    Verdict,
    VerdictConflict,
    blinded_order,
    click_agreement,
    map_peak,
    neutral_name,
    reviewer_agreement,
    summarize,
    verdict_distribution,
)

SIZE = (32, 32, 16)


def gaussian_map(scan: medlab.Image, centre_mm, sigma_mm: float = 5.0) -> medlab.Image:
    """A saliency map: a Gaussian blob around ``centre_mm`` on ``scan``'s grid."""
    z, y, x = np.indices(scan.shape)
    pts = scan.index_to_physical(np.stack([x.ravel(), y.ravel(), z.ravel()], 1)).reshape(*scan.shape, 3)
    d2 = ((pts - np.asarray(centre_mm)) ** 2).sum(-1)
    return scan.with_array(np.exp(-d2 / (2 * sigma_mm**2)).astype(np.float32))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def phantom():
    return medlab.data.brain_mri(size=SIZE, seed=0)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, phantom):
    """Three cases, two maps each: one at the tumour, one mirrored to the other side."""
    folder = tmp_path_factory.mktemp("study")
    scan = phantom.t1
    centre = np.asarray(phantom.info["tumour_centre_mm"])
    cases = [{"id": f"case-{i}", "scan": scan,
              "maps": {"at_tumour": gaussian_map(scan, centre), "elsewhere": gaussian_map(scan, -centre)},
              "prediction": "tumour (p = 0.9)", "truth": "tumour"} for i in range(3)]
    ReviewStudy.create(folder, cases, name="pilot", seed=7)
    return folder


@pytest.fixture
def study(study_dir, tmp_path):
    """The study, with its verdicts in a fresh database of this test."""
    s = ReviewStudy.load(study_dir / "study.json")
    s._database = tmp_path / "verdicts.sqlite"
    return s


def _verdict(reviewer, case, method, verdict, *, click=None, peak=None, confidence=3, version=1) -> Verdict:
    return Verdict(0, reviewer, case, method, method, verdict, confidence, "", click, peak, False, version,
                   "2025-01-01T00:00:00.000Z")


# ============================================================================ study file
def test_study_file_roundtrip_paths_relative(study_dir):
    data = json.loads((study_dir / "study.json").read_text())
    assert data["format"] == "medlab-review-study" and data["name"] == "pilot" and data["seed"] == 7
    assert data["cases"][0]["scan"] == "case-0/scan.nii.gz"
    assert data["cases"][0]["maps"] == {"at_tumour": "case-0/map-at_tumour.nii.gz",
                                        "elsewhere": "case-0/map-elsewhere.nii.gz"}
    s = ReviewStudy.load(study_dir / "study.json")
    assert [c.case_id for c in s.cases] == ["case-0", "case-1", "case-2"]
    assert s.cases[1].scan == (study_dir / "case-1" / "scan.nii.gz").resolve()
    assert s.cases[0].prediction == "tumour (p = 0.9)" and s.cases[0].truth == "tumour"
    assert s.check() == []
    # saved elsewhere, the paths are rewritten relative to the new file and still resolve
    other = study_dir / "copies"
    other.mkdir(exist_ok=True)
    s.save(other / "copy.json", overwrite=True)
    again = ReviewStudy.load(other / "copy.json")
    assert json.loads((other / "copy.json").read_text())["cases"][0]["scan"] == "../case-0/scan.nii.gz"
    assert again.cases[0].scan == s.cases[0].scan and again.study_id == s.study_id


def test_create_refuses_existing_study_and_bad_cases(study_dir, tmp_path, phantom):
    with pytest.raises(WriteError, match="study.json exists already"):
        ReviewStudy.create(study_dir, [{"id": "x", "scan": phantom.t1, "maps": {"m": phantom.t1}}], name="again")
    with pytest.raises(ParameterError, match="case 'x': maps must be a non-empty"):
        ReviewStudy.create(tmp_path / "s", [{"id": "x", "scan": phantom.t1, "maps": {}}], name="n")
    with pytest.raises(ParameterError, match="map 'm' must be an Image or a path"):
        ReviewStudy.create(tmp_path / "s", [{"id": "x", "scan": phantom.t1, "maps": {"m": 3}}], name="n")
    assert not (tmp_path / "s").exists()  # nothing written before the cases were checked


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON"),
    ('{"format": "other"}', "not a valid medlab review study"),
    ('{"format": "medlab-review-study", "name": "n"}', "missing field 'cases'"),
    ('{"format": "medlab-review-study", "name": "n", "cases": [{"id": "a", "scan": "s.nii", "maps": {}}]}',
     "has no explanation map"),
    (('{"format": "medlab-review-study", "name": "n", "cases": [{"id": "a", "scan": "s", "maps": {"m": "m"}},'
     ' {"id": "a", "scan": "s", "maps": {"m": "m"}}]}'), "repeated"),
])
def test_malformed_study_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ReadError, match=message) as err:
        ReviewStudy.load(path)
    assert str(path) in str(err.value)


def test_missing_study_file(tmp_path):
    with pytest.raises(ReadError, match="does not exist"):
        ReviewStudy.load(tmp_path / "nope.json")


# ============================================================================ blinding
def test_blinded_order_is_fixed_per_reviewer_and_case_and_varies_across():
    methods = ["gradcam", "ig", "occlusion", "smoothgrad"]
    a = blinded_order(methods, seed=3, reviewer="Dr A", case_id="c1")
    assert a == blinded_order(methods, seed=3, reviewer="Dr A", case_id="c1")
    assert sorted(a) == sorted(methods)
    orders = {tuple(blinded_order(methods, seed=3, reviewer=r, case_id=c))
              for r in ("Dr A", "Dr B", "Dr C") for c in (f"c{i}" for i in range(10))}
    assert len(orders) > 5  # random across reviewers and cases, not one fixed permutation
    # a new process gives the same order (no salted hash): the value is pinned here
    assert blinded_order(["m1", "m2", "m3"], seed=0, reviewer="Dr A", case_id="c1") == \
        blinded_order(["m1", "m2", "m3"], seed=0, reviewer="Dr A", case_id="c1")
    assert [neutral_name(i) for i in (0, 1, 25, 26)] == ["Map A", "Map B", "Map Z", "Map AA"]


def test_items_blinded_and_unblinded(study):
    items = study.items("Dr A")
    assert len(items) == 6 and [i.index for i in items] == list(range(6))
    assert [i.shown_as for i in items] == ["Map A", "Map B"] * 3
    assert all({i.method for i in items if i.case_id == c.case_id} == set(c.maps) for c in study.cases)
    assert items == study.items("Dr A")
    study.blind_methods = False
    assert [i.shown_as for i in study.items("Dr A")] == [i.method for i in study.items("Dr A")]
    assert [i.method for i in study.items("Dr A")][:2] == ["at_tumour", "elsewhere"]
    with pytest.raises(ParameterError, match="reviewer name"):
        study.items("  ")


# ============================================================================ loading a case
def test_load_case_resamples_a_map_from_another_grid(study_dir, tmp_path, phantom):
    scan = phantom.t1
    centre = np.asarray(phantom.info["tumour_centre_mm"])
    # the map on a coarser, shifted grid that still covers the scan
    coarse = medlab.Image(np.zeros((10, 12, 12), np.float32), spacing=(4.5, 4.5, 3.5),
                          origin=np.asarray(scan.origin) - 2.0)
    blob = gaussian_map(coarse, centre, sigma_mm=6.0)
    s = ReviewStudy.create(tmp_path / "grid", [{"id": "c", "scan": scan, "maps": {"coarse": blob}}], name="g")
    loaded = s.load_case("c")
    assert loaded.errors == {}
    shown = loaded.maps["coarse"]
    assert shown.same_grid(scan) and shown.spacing == scan.spacing and shown.origin == scan.origin
    # the resampled peak lands near the tumour centre, in the scan's grid
    zyx = np.unravel_index(np.argmax(shown.array), shown.shape)
    assert np.linalg.norm(scan.index_to_physical(zyx[::-1]) - centre) < 4.0
    # the stored peak is the map's own maximum, in mm
    assert np.allclose(loaded.peaks["coarse"], map_peak(blob))
    assert np.linalg.norm(np.asarray(loaded.peaks["coarse"]) - centre) < 4.0


def test_map_peak_in_mm_and_errors():
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = 5
    img = medlab.Image(a, spacing=(2, 3, 4), origin=(10, 20, 30), direction=np.diag([-1, 1, 1]))
    assert map_peak(img) == (10 - 3 * 2, 20 + 2 * 3, 30 + 1 * 4)
    assert map_peak(medlab.Image(np.eye(3, dtype=float))) == (0.0, 0.0, 0.0)  # 2D: z = 0
    with pytest.raises(medlab.ImageError, match="no finite value"):
        map_peak(medlab.Image(np.full((3, 3, 3), np.nan)))
    with pytest.raises(medlab.ImageError, match="one value everywhere"):   # not its corner voxel
        map_peak(medlab.Image(np.zeros((3, 3, 3))))
    noisy = np.full((3, 3, 3), 0.7, np.float32)
    noisy[2, 2, 2] = np.nextafter(np.float32(0.7), np.float32(1))       # one rounding step: still flat
    with pytest.raises(medlab.ImageError, match="one value everywhere"):
        map_peak(medlab.Image(noisy))
    with pytest.raises(medlab.ImageError, match="RGB picture"):
        map_peak(medlab.Image(np.zeros((4, 4, 3), np.uint8), rgb=True))


def test_missing_scan_and_non_overlapping_map_are_reported_per_case(tmp_path, phantom):
    scan = phantom.t1
    far = medlab.Image(np.random.default_rng(0).random((8, 8, 8), np.float32), origin=(500.0, 500.0, 500.0))
    s = ReviewStudy.create(tmp_path / "bad", [
        {"id": "good", "scan": scan, "maps": {"ok": scan, "far": far}},
        {"id": "gone", "scan": tmp_path / "missing.nii.gz", "maps": {"ok": scan}},
    ], name="bad")
    assert any("missing.nii.gz does not exist" in p for p in s.check())
    loaded = s.load_case("good")
    assert set(loaded.maps) == {"ok"}
    assert "does not overlap the scan" in loaded.errors["far"] and "'far'" in loaded.errors["far"]
    with pytest.raises(ReadError, match=r"case 'gone': scan .*missing\.nii\.gz does not exist"):
        s.load_case("gone")


# ============================================================================ the store
def test_store_is_wal_and_verdicts_survive_reopening(study):
    store = study.open_store()
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    item = study.items("Dr A")[0]
    v = store.record("Dr A", item.case_id, item.method, verdict="partly", confidence=4, comment="rim only",
                     click=(1, 2, 3), peak=(1, 2, 7), shown_as=item.shown_as)
    assert (v.version, v.reviewer, v.shown_as, v.click, v.click_to_peak_mm) == (1, "Dr A", "Map A", (1, 2, 3), 4.0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", v.recorded_at)
    # "kernel restart": a new store object on the same file sees it, and resumes after it
    again = study.open_store()
    assert again.current() == [v]
    assert again.resume_index(study, "Dr A") == 1
    assert again.resume_index(study, "Dr B") == 0


def test_edit_keeps_history_and_never_overwrites_silently(study):
    store = study.open_store()
    first = store.record("Dr A", "case-0", "at_tumour", verdict="partly", confidence=2)
    with pytest.raises(VerdictConflict, match="already rated .*supersedes=1"):
        store.record("Dr A", "case-0", "at_tumour", verdict="relevant", confidence=5)
    second = store.record("Dr A", "case-0", "at_tumour", verdict="relevant", confidence=5, supersedes=1)
    with pytest.raises(VerdictConflict, match="changed since version 1"):  # a stale edit (another window)
        store.record("Dr A", "case-0", "at_tumour", verdict="irrelevant", confidence=1, supersedes=1)
    assert [v.version for v in store.versions("Dr A", "case-0", "at_tumour")] == [1, 2]
    assert store.latest("Dr A", "case-0", "at_tumour") == second
    assert store.current() == [second] and store.history() == [first, second]
    with sqlite3.connect(store.path) as con:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE verdicts SET verdict = 'artefact'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM verdicts")
    assert store.history() == [first, second]


@pytest.mark.parametrize("kwargs, message", [
    ({"verdict": "great"}, "verdict must be one of"),
    ({"confidence": 6}, "confidence must be an integer from 1"),
    ({"confidence": 2.5}, "confidence must be an integer from 1"),
    ({"click": (1, np.nan, 2)}, "click must be"),
    ({"supersedes": 0}, "supersedes must be"),
])
def test_record_refuses_bad_values(study, kwargs, message):
    store = study.open_store()
    args = {"verdict": "relevant", "confidence": 3, **kwargs}
    with pytest.raises(ParameterError, match=message):
        store.record("Dr A", "case-0", "at_tumour", **args)
    assert store.history() == []


def _corrupt_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:16] = b"this is no db!!\0"
    path.write_bytes(bytes(data))


def test_corrupt_database_is_refused_and_left_intact(study):
    store = study.open_store()
    store.record("Dr A", "case-0", "at_tumour", verdict="relevant", confidence=4)
    del store  # every connection is closed: the WAL is checkpointed into the file
    path = study.database_path
    original = path.read_bytes()
    _corrupt_header(path)
    before = _digest(path)
    with pytest.raises(ReviewStoreError, match=re.escape(str(path))) as err:
        study.open_store()
    assert "has not been changed" in str(err.value) and "Traceback" not in str(err.value)
    assert _digest(path) == before
    path.write_bytes(original)  # restored from a backup: the verdict is still there
    assert [v.verdict for v in study.open_store().current()] == ["relevant"]


def test_damaged_page_and_foreign_database_are_refused(study, tmp_path):
    store = study.open_store()
    store.record("Dr A", "case-0", "at_tumour", verdict="relevant", confidence=3)
    path = study.database_path
    with sqlite3.connect(path) as con:  # many more rows, in one transaction: several pages
        con.executemany("INSERT INTO verdicts (reviewer, case_id, method, shown_as, verdict, confidence, comment, "
                        "prediction_shown, version, recorded_at) VALUES (?, 'c', 'm', 'm', 'partly', 3, ?, 0, 1, 't')",
                        [(f"Dr {i}", "x" * 200) for i in range(300)])
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page:2 * page + 200] = b"\xff" * 200  # damage a b-tree page, keep the header
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(ReviewStoreError, match="cannot be used"):
        ReviewStore(path)
    assert _digest(path) == before

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE patients (name TEXT)")
    before = _digest(foreign)
    with pytest.raises(ReviewStoreError, match="another program"):
        ReviewStore(foreign)
    assert _digest(foreign) == before


def test_database_of_another_study_is_refused(study, tmp_path):
    study.open_store()
    with pytest.raises(ReviewStoreError, match="another study"):
        ReviewStore(study.database_path, study_id="0123456789abcdef")
    with pytest.raises(ReviewStoreError, match="is a folder"):
        ReviewStore(tmp_path)


WRITER = """
import sys, time
from pathlib import Path
from medlab.review import ReviewStore, VerdictConflict, VERDICTS

path, reviewer, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = ReviewStore(path)
go.with_name(f"ready-{reviewer}").touch()
while not go.exists():  # both processes start writing at the same moment
    time.sleep(0.001)
for i in range(n):
    store.record(reviewer, f"case-{i}", "m", verdict=VERDICTS[i % 4], confidence=1 + i % 5)
    while True:  # both edit one shared verdict: each edit names the version it saw
        latest = store.latest("shared", "case-0", "m")
        try:
            store.record("shared", "case-0", "m", verdict="partly", confidence=3, comment=f"{reviewer} {i}",
                         supersedes=latest.version if latest else None)
            break
        except VerdictConflict:
            continue
    time.sleep(0.01)  # a pause between saves, as a person makes: the other writer gets its turn
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "shared.sqlite"
    ReviewStore(path)
    go = tmp_path / "go"
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), r, str(n), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in ("Dr A", "Dr B")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{r}").exists() for r in ("Dr A", "Dr B")):  # both imported and opened
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a writer did not start"
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = ReviewStore(path)
    for r in ("Dr A", "Dr B"):
        mine = sorted(store.current(r), key=lambda v: int(v.case_id[5:]))
        assert [v.case_id for v in mine] == [f"case-{i}" for i in range(n)]
        assert [v.verdict for v in mine] == [VERDICTS[i % 4] for i in range(n)]
    shared = store.versions("shared", "case-0", "m")
    assert [v.version for v in shared] == list(range(1, 2 * n + 1))  # every edit kept, none lost
    assert sorted(v.comment for v in shared) == sorted(f"{r} {i}" for r in ("Dr A", "Dr B") for i in range(n))
    # the two writers really interleaved (otherwise this test would prove nothing)
    owners = [v.comment.split(" ")[1] for v in shared]
    assert sum(a != b for a, b in itertools.pairwise(owners)) > 2


# ============================================================================ statistics
def _cohen_by_hand(a: list[str], b: list[str]) -> float:
    po = np.mean([x == y for x, y in zip(a, b)])
    pe = sum((a.count(k) / len(a)) * (b.count(k) / len(b)) for k in VERDICTS)
    return (po - pe) / (1 - pe)


def _fleiss_by_hand(ratings: list[list[str]]) -> float:
    counts = np.array([[row.count(k) for k in VERDICTS] for row in ratings], float)
    n = counts.sum(1)[0]
    p_i = ((counts**2).sum(1) - n) / (n * (n - 1))
    p_j = counts.sum(0) / counts.sum()
    return (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())


def test_reviewer_agreement_matches_the_textbook_formulas():
    cases = [f"c{i}" for i in range(8)]
    a = ["relevant", "relevant", "partly", "irrelevant", "artefact", "relevant", "partly", "irrelevant"]
    b = ["relevant", "partly", "partly", "irrelevant", "artefact", "relevant", "relevant", "artefact"]
    c = ["relevant", "relevant", "partly", "artefact", "artefact", "partly", "partly", "irrelevant"]
    verdicts = [_verdict(r, case, "gradcam", v) for r, col in (("A", a), ("B", b), ("C", c))
                for case, v in zip(cases, col)]
    verdicts.append(_verdict("A", "extra", "gradcam", "relevant"))  # rated by A only: not in any pair
    cohen, fleiss = reviewer_agreement(verdicts)
    row = cohen[(cohen.scope == "all") & (cohen.reviewer_a == "A") & (cohen.reviewer_b == "B")].iloc[0]
    assert row.n_items == 8
    assert row.kappa == pytest.approx(_cohen_by_hand(a, b), abs=1e-12)
    assert row.observed_agreement == pytest.approx(5 / 8)
    assert -1 <= row.kappa_low < row.kappa < row.kappa_high <= 1
    assert len(cohen[cohen.scope == "all"]) == 3
    f = fleiss[fleiss.scope == "all"].iloc[0]
    assert (f.n_items, f.n_reviewers) == (8, 3)
    assert f.kappa == pytest.approx(_fleiss_by_hand([list(t) for t in zip(a, b, c)]), abs=1e-12)
    # per method: the only method gives the same numbers
    assert fleiss[fleiss.scope == "gradcam"].iloc[0].kappa == pytest.approx(f.kappa)


def test_agreement_undefined_cases_are_explained_not_nan():
    verdicts = [_verdict(r, f"c{i}", "m", "relevant") for r in ("A", "B") for i in range(4)]
    cohen, fleiss = reviewer_agreement(verdicts, by_method=False)
    assert cohen.iloc[0].kappa is None and "one category" in cohen.iloc[0].note
    assert cohen.iloc[0].observed_agreement == 1.0
    assert fleiss.iloc[0].kappa is None and "one category" in fleiss.iloc[0].note
    cohen, fleiss = reviewer_agreement([_verdict("A", "c", "m", "partly")])
    assert cohen.empty and "two reviewers" in fleiss.iloc[0].note


def test_distribution_and_click_agreement():
    verdicts = [
        _verdict("A", "c1", "gradcam", "relevant", click=(0, 0, 0), peak=(3, 4, 0), confidence=5),
        _verdict("B", "c1", "gradcam", "partly", click=(0, 0, 0), peak=(0, 0, 20), confidence=3),
        _verdict("A", "c1", "ig", "artefact", confidence=2),
    ]
    dist = verdict_distribution(verdicts).set_index("method")
    assert dist.loc["gradcam", ["n", "relevant", "partly", "irrelevant", "artefact"]].tolist() == [2, 1, 1, 0, 0]
    assert dist.loc["gradcam", "frac_relevant"] == 0.5 and dist.loc["gradcam", "mean_confidence"] == 4.0
    assert dist.loc["ig", "artefact"] == 1
    clicks = click_agreement(verdicts, within_mm=10).set_index("method")
    assert list(clicks.index) == ["gradcam"]  # ig has no click
    assert clicks.loc["gradcam", "n_clicks"] == 2
    assert clicks.loc["gradcam", "median_mm"] == pytest.approx(12.5)
    assert clicks.loc["gradcam", "frac_within"] == 0.5
    with pytest.raises(ParameterError, match="within_mm"):
        click_agreement(verdicts, within_mm=-1)


def test_export_csv_is_unblinded_atomic_and_refuses_overwrite(study, tmp_path):
    store = study.open_store()
    for r in ("Dr A", "Dr B"):
        for item in study.items(r):
            store.record(r, item.case_id, item.method, verdict="relevant" if item.method == "at_tumour" else "irrelevant",
                         confidence=4, comment='says "rim", ok', click=(1, 2, 3), peak=(1, 2, 3),
                         shown_as=item.shown_as)
    store.record("Dr A", "case-0", "at_tumour", verdict="partly", confidence=2, supersedes=1)
    out = store.export_csv(tmp_path / "verdicts.csv")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 12
    by_key = {(r["reviewer"], r["case_id"], r["method"]): r for r in rows}
    assert by_key[("Dr A", "case-0", "at_tumour")]["verdict"] == "partly"
    assert by_key[("Dr A", "case-0", "at_tumour")]["version"] == "2"
    assert by_key[("Dr B", "case-1", "elsewhere")]["comment"] == 'says "rim", ok'
    for item in study.items("Dr B"):  # un-blinded: method and the neutral name it was shown under
        assert by_key[("Dr B", item.case_id, item.method)]["shown_as"] == item.shown_as
    assert len(list(csv.DictReader(store.export_csv(tmp_path / "all.csv", history=True).open()))) == 13
    with pytest.raises(WriteError, match="exists already"):
        store.export_csv(tmp_path / "verdicts.csv")
    summary = summarize(store)
    files = summary.to_csv(tmp_path / "summary")
    assert sorted(p.name for p in files.values()) == ["click_agreement.csv", "cohen_kappa.csv",
                                                     "distribution.csv", "fleiss_kappa.csv"]
    dist = list(csv.DictReader(files["distribution"].open()))
    assert {r["method"]: r["relevant"] for r in dist} == {"at_tumour": "5", "elsewhere": "0"}
    assert "12 current verdicts by 2 reviewer(s)" in str(summary)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


# ============================================================================ the form, without a browser
widgets = pytest.importorskip("ipywidgets")


def _rate(app, verdict="relevant", confidence=4, comment=""):
    app.verdict.value, app.confidence.value, app.comment.value = verdict, confidence, comment
    app._on_save()


def test_review_app_records_resumes_and_edits(study):
    from medlab.widgets.review import ReviewApp

    app = ReviewApp(study, "Dr A")
    assert app.error is None and app.index == 0 and "0 of 6 rated" in app.progress.value
    assert app.viewer.image.same_grid(app.loaded.scan)
    assert "hidden (blinded review)" in app.prediction.value
    app.save_button.click()  # nothing chosen: refused with a message, nothing stored
    assert "Choose a verdict" in app.status_line.value and study.open_store().history() == []
    app.viewer.points = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # the latest click wins
    assert app.viewer.points == [[4.0, 5.0, 6.0]] and app.click == (4.0, 5.0, 6.0)
    _rate(app, "partly", 2, "faint")
    _rate(app, "artefact", 5)
    assert app.index == 2 and "Saved" in app.status_line.value
    stored = study.open_store().current("Dr A")
    items = study.items("Dr A")
    assert [(v.case_id, v.method, v.shown_as) for v in stored] == [(i.case_id, i.method, i.shown_as) for i in items[:2]]
    assert stored[0].click == (4.0, 5.0, 6.0) and stored[0].comment == "faint"
    assert stored[0].peak == app.study.load_case(items[0].case_id).peaks[items[0].method]

    again = ReviewApp(ReviewStudy.load(study.path), "Dr A", database=study.database_path)  # a browser refresh
    assert again.index == 2 and "2 of 6 rated" in again.progress.value
    again.go(0)
    app.go(0)  # two windows show version 1
    assert again.verdict.value == "partly" and again.confidence.value == 2 and "version 1" in again.earlier_label.value
    _rate(again, "relevant", 4)
    assert [v.verdict for v in study.open_store().versions("Dr A", items[0].case_id, items[0].method)] == \
        ["partly", "relevant"]
    assert again.index == 2  # back to the first unrated map
    _rate(app, "irrelevant", 1)  # the other window's edit of version 1 is refused; it now shows version 2
    assert "Not saved" in app.status_line.value and app.verdict.value == "relevant"
    assert len(study.open_store().versions("Dr A", items[0].case_id, items[0].method)) == 2

    for _ in range(4):
        _rate(again)
    assert again.item is None and "All 6 maps are rated" in again.done.children[0].value


def test_review_app_shows_bad_input_without_traceback(tmp_path, phantom):
    from medlab.widgets.review import ReviewApp

    scan = phantom.t1
    far = medlab.Image(np.random.default_rng(0).random((8, 8, 8), np.float32), origin=(500.0, 500.0, 500.0))
    s = ReviewStudy.create(tmp_path / "bad", [
        {"id": "good", "scan": scan, "maps": {"far": far}},
        {"id": "gone", "scan": tmp_path / "missing.nii.gz", "maps": {"ok": scan}},
    ], name="bad", blind_methods=False)
    app = ReviewApp(s, "Dr A")
    assert app.image_area.children == (app.case_error,)
    assert "does not overlap the scan" in app.case_error.value and app.save_button.disabled
    app.next_button.click()
    assert "missing.nii.gz does not exist" in app.case_error.value and app.save_button.disabled
    assert s.open_store().history() == []

    store = s.open_store()
    store.record("Dr A", "good", "far", verdict="artefact", confidence=1)
    del store
    _corrupt_header(s.database_path)
    before = _digest(s.database_path)
    broken = ReviewApp(s, "Dr A")
    assert broken.error and str(s.database_path) in broken.error
    text = broken.children[-1].value
    assert "cannot start" in text and "Traceback" not in text and _digest(s.database_path) == before
    assert "no reviewer name" in ReviewApp(s, "").error
    assert "does not exist" in ReviewApp(tmp_path / "none.json", "Dr A").error


# ============================================================================ the command
def test_cli_export_and_clear_errors(study, tmp_path, capsys):
    from medlab import cli

    store = study.open_store()
    store.record("Dr A", "case-0", "at_tumour", verdict="relevant", confidence=4)
    path = study.save(tmp_path / "study.json")  # a study file whose database is this test's
    out = tmp_path / "results"
    assert cli.main(["review", str(path), "--export", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["click_agreement.csv", "cohen_kappa.csv", "distribution.csv",
                                                     "fleiss_kappa.csv", "verdict_history.csv", "verdicts.csv"]
    assert "1 current verdicts" in capsys.readouterr().out
    assert cli.main(["review", str(path), "--export", str(out)]) == 2  # no silent overwrite
    assert "exists already" in capsys.readouterr().err
    assert cli.main(["review", str(path)]) == 2
    assert "--reviewer" in capsys.readouterr().err
    assert cli.main(["review", str(tmp_path / "none.json"), "--reviewer", "X"]) == 2
    assert "does not exist" in capsys.readouterr().err

    del store
    _corrupt_header(study.database_path)
    before = _digest(study.database_path)
    assert cli.main(["review", str(path), "--reviewer", "Dr A", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert str(study.database_path) in err and "Traceback" not in err
    assert _digest(study.database_path) == before


def test_cli_serves_on_localhost_with_the_packaged_template(tmp_path):
    from medlab import cli

    cmd = cli.voila_command(cli.review_notebook(), port=8899, token="t0k")
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=8899" in cmd and "--token=t0k" in cmd
    assert "--template=medlab-review" in cmd and "--no-browser" in cmd
    assert "--VoilaConfiguration.strip_sources=True" in cmd
    # a refreshed page's kernel (Voila cannot shut it, voila#1458) is culled; an open page's never
    # (checked by hand in a browser: a refreshed page's kernel went at 7 s of a 5 s limit, the open
    # page's kernel lived 75 s idle)
    assert f"--MappingKernelManager.cull_idle_timeout={cli.KERNEL_CULL_S}" in cmd
    assert "--MappingKernelManager.cull_connected=False" in cmd
    assert cli.review_notebook().is_file()
    env = cli.review_environment(tmp_path / "s.json", "Dr A", base={"JUPYTER_PATH": "/x"})
    assert env["MEDLAB_REVIEW_STUDY"] == str((tmp_path / "s.json").resolve())
    assert env["MEDLAB_REVIEW_REVIEWER"] == "Dr A" and "MEDLAB_REVIEW_DATABASE" not in env
    root = Path(env["JUPYTER_PATH"].split(":")[0])
    template = root / "voila" / "templates" / "medlab-review"
    assert (template / "conf.json").is_file() and env["JUPYTER_PATH"].endswith(":/x")
    assert "extends 'lab/index.html.j2'" in (template / "index.html.j2").read_text()
    parser = cli.build_parser()
    assert parser.parse_args(["review", "s.json", "--reviewer", "X", "--port", "9000"]).port == 9000


def test_review_errors_are_medlab_errors():
    from medlab.review import ReviewStoreError, VerdictConflict

    assert issubclass(ReviewStoreError, MedlabError) and issubclass(VerdictConflict, MedlabError)
