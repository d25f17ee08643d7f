"""Cohort runs on Dask: cases listed and manifests refused before any work, failures isolated,
atomic case folders with records, resume by recipe hash and input checksums, result tables,
live results in records, the ``medlab run`` command, de-identification of a cohort; slow tests:
a worker killed mid-run, and a real scheduler with two workers as separate processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

import medlab
from medlab.cli import main
from medlab.cohort import (
    CASES_DIR,
    CohortRun,
    ManifestError,
    _lock_folder,
    list_cases,
    read_record,
    recipe_hash,
    run_cohort,
)
from medlab.errors import ParameterError
from medlab.metrics import segmentation_scores
from medlab.recipe import Recipe

distributed = pytest.importorskip("distributed")

N = 4


def _phantom(seed: int, size=(24, 24, 12)):
    return medlab.data.brain_mri(size=size, seed=seed, contrasts=("t1",))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """N phantom T1 images with head masks as ground truth, and a manifest."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "images").mkdir()
    (root / "truth").mkdir()
    rows = ["case,image,truth_step2.labels"]
    for i in range(N):
        p = _phantom(i)
        medlab.save(p.t1, root / "images" / f"sub{i}.nii.gz")
        head = p.labels.with_array((p.labels.array > 0).astype(np.uint8), kind="label", labels={})
        medlab.save(head, root / "truth" / f"sub{i}.nii.gz")
        rows.append(f"sub{i},images/sub{i}.nii.gz,truth/sub{i}.nii.gz")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def _seg_recipe(image, sigma: float = 1.0) -> Recipe:
    from medlab.preprocess import gaussian_smooth
    from medlab.segment import connected_components, otsu_threshold

    with Recipe.record(image) as recipe:
        labels = otsu_threshold(gaussian_smooth(image, sigma=sigma))
        connected_components(labels)
    return recipe


@pytest.fixture(scope="module")
def seg_recipe(cohort):
    return _seg_recipe(medlab.load(cohort / "images" / "sub0.nii.gz"))


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- listing and refusing
def test_list_cases_of_a_folder(tmp_path, shared):
    folder = tmp_path / "mixed"
    (folder / "dicom" / "ct").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "dicom" / "ct" / "slice.dcm")
    medlab.save(_phantom(0).t1, folder / "a.nii.gz")
    medlab.save(_phantom(1).t1, folder / "b.nrrd")
    (folder / "notes.txt").write_text("not an image")
    cases = list_cases(folder)
    assert [c.id for c in cases] == ["a", "b", "dicom_ct"]
    assert "DICOM CT" in cases[2].description and cases[2].inputs["image"].path.endswith("ct")
    assert list(cases.table.columns) == ["case", "image", "what"] and "3 case(s)" in repr(cases)
    # the shared folder: a DICOM series (empty Series UIDs) beside NIfTI files
    real = list_cases(shared("ct_abdomen/example_ct_dicom").parent)
    series = [c for c in real if c.description.startswith("DICOM")]
    assert len(series) == 1 and "20 file(s)" in series[0].description
    assert medlab.load(series[0].inputs["image"].path).size == (512, 512, 20)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("case,image\na,images/sub0.nii.gz\nb,images/nope.nii.gz\n", r"row 2 \(line 3\): image file images/nope.nii.gz does not exist"),
    ("case,image\na,images/sub0.nii.gz\nb,images/sub1.nii.gz\nc,images/sub0.nii.gz\n", "rows 1, 3 are duplicates"),
    ("case,image\na,images/sub0.nii.gz\na,images/sub1.nii.gz\n", "share the case name 'a'"),
    ("case,image,weight\na,images/sub0.nii.gz,3\n", r"unknown column\(s\) \['weight'\]"),
    ("case,picture\na,images/sub0.nii.gz\n", r"needs input\(s\) \['image'\]"),
    ("case,image\na,\n", r"row 1 \(line 2\): empty 'image'"),
    ("case,image,truth_step9.mask\na,images/sub0.nii.gz,truth/sub0.nii.gz\n", "matches none of the recipe's label outputs"),
    ("case,image\n", "no rows"),
])
def test_bad_manifest_refused_before_any_work(cohort, seg_recipe, client, tmp_path, text, message):
    manifest = _write(cohort / f"bad_{abs(hash(text))}.csv", text)
    with pytest.raises(ManifestError, match=message):
        run_cohort(seg_recipe, manifest, tmp_path / "out", client=client, progress=False)
    assert not (tmp_path / "out").exists()


def test_folder_refused_for_a_two_input_recipe(cohort):
    recipe = Recipe.from_dict({"schema": "medlab.recipe", "version": 2, "inputs": {"fixed": {}, "moving": {}},
                               "steps": [{"stage": "linear_register", "inputs": {"fixed": "fixed", "moving": "moving"},
                                          "params": {}}]})
    with pytest.raises(ManifestError, match="header is case,fixed,moving"):
        list_cases(cohort / "images", recipe)


# ---------------------------------------------------------------------------- a run
def test_run_with_ground_truth(cohort, seg_recipe, client, tmp_path):
    out = tmp_path / "out"
    result = run_cohort(seg_recipe, cohort / "manifest.csv", out, client=client, progress=False)
    assert result.ok and result.counts == {"computed": N, "skipped": 0, "failed": 0, "cancelled": 0}
    for i in range(N):
        folder = out / CASES_DIR / f"sub{i}"
        rec = read_record(folder)
        assert rec["status"] == "done" and rec["recipe_sha256"] == recipe_hash(seg_recipe)
        assert rec["inputs"]["image"]["sha256"] == _sha(cohort / "images" / f"sub{i}.nii.gz")
        assert rec["medlab_version"] == medlab.__version__ and rec["memory"]["peak_rss_mb"] > 0
        assert set(rec["timings"]["steps"]) == {"step1", "step2", "step3"}
        assert sorted(p.name for p in folder.iterdir()) == sorted([*rec["outputs"].values(), "record.json"])
        labels = medlab.load(folder / rec["outputs"]["step2.labels"])
        image = medlab.load(cohort / "images" / f"sub{i}.nii.gz")
        assert labels.same_grid(image)                                 # geometry kept through the run
        truth = medlab.load(cohort / "truth" / f"sub{i}.nii.gz", kind="label")
        dice = segmentation_scores(labels, truth)[0]["dice"]            # recomputed independently
        row = result.results.query(f"case == 'sub{i}' and quantity == 'dice'")
        assert len(row) == 1 and row["value"].iloc[0] == pytest.approx(dice) and 0.5 < dice <= 1
        assert result.cases.set_index("case").loc[f"sub{i}", "step2.labels vs truth[1].dice"] == pytest.approx(dice)
    volumes = result.results.query("output == 'table' and quantity == 'volume'")
    assert len(volumes) >= N and (volumes["unit"] == "mL").all()
    for name in ("cases", "results"):
        csv, parquet = pd.read_csv(out / f"{name}.csv"), pd.read_parquet(out / f"{name}.parquet")
        assert len(csv) == len(parquet) and list(csv.columns) == list(parquet.columns)
    assert Recipe.load(out / "recipe.json").to_dict()["steps"] == seg_recipe.to_dict()["steps"]
    assert not [p for p in (out / CASES_DIR).iterdir() if p.name.startswith(".")]


def test_label_names_kept_in_record_without_a_warning_per_case(cohort, seg_recipe, client, tmp_path):
    """NIfTI has no place for label names: the cohort keeps them in each case's record (load_output
    puts them back) instead of having every worker warn that they are lost, once per case."""
    import warnings

    from medlab.cohort import load_output

    expected = seg_recipe.run(image=medlab.load(cohort / "images" / "sub1.nii.gz"))
    named = {k: v.labels for k, v in expected.items() if isinstance(v, medlab.Image) and v.is_label and v.labels}
    assert named, "the test recipe must produce a label map with names"
    with warnings.catch_warnings(record=True) as caught:  # global: catches the in-process worker's thread too
        warnings.simplefilter("always")
        result = run_cohort(seg_recipe, cohort / "images", tmp_path / "out", client=client, progress=False)
    assert result.ok and result.counts["computed"] == N
    lost = [str(w.message) for w in caught if "no place for label names" in str(w.message)]
    assert lost == []
    for i in range(N):
        folder = tmp_path / "out" / CASES_DIR / f"sub{i}"
        rec = read_record(folder)
        assert set(rec["label_names"]) == set(named)
        for key, names in named.items():
            plain = medlab.load(folder / rec["outputs"][key])
            assert not plain.labels                                      # the file itself cannot hold them
            back = load_output(folder, key)
            assert back.kind == "label" and np.array_equal(back.array, plain.array) and back.same_grid(plain)
            if i == 1:
                assert {v: lab.name for v, lab in back.labels.items()} == {v: lab.name for v, lab in names.items()}
            assert {v: lab.name for v, lab in back.labels.items()} == {int(v): n["name"] for v, n in rec["label_names"][key].items()}
    with pytest.raises(ParameterError, match="has no output 'step9.labels'; it has step1.image"):
        load_output(tmp_path / "out" / CASES_DIR / "sub0", "step9.labels")
    with pytest.raises(ParameterError, match="no finished case"):
        load_output(tmp_path / "out" / CASES_DIR / "nope", "step2.labels")


def test_two_inputs_and_live_results(tmp_path, client):
    from medlab.register import linear_register

    rows = ["fixed,moving"]
    for i in range(2):
        f, m = _phantom(10 + i).t1, medlab.data.brain_mri(size=(24, 24, 12), seed=20 + i, anatomy_seed=10 + i,
                                                          contrasts=("t1",)).t1
        medlab.save(f, tmp_path / f"f{i}.nii.gz")
        medlab.save(m, tmp_path / f"m{i}.nii.gz")
        rows.append(f"f{i}.nii.gz,m{i}.nii.gz")
    manifest = _write(tmp_path / "pairs.csv", "\n".join(rows) + "\n")
    with Recipe.record(fixed=f, moving=m) as recipe:
        linear_register(f, m, shrink_factors=(1,), iterations=20)
    events = []
    run = CohortRun(recipe, manifest, tmp_path / "out", client, on_event=events.append)
    run.start()
    records = list(run.as_completed())
    result = run.finish()
    assert result.ok and len(records) == 2 and [c.id for c in run.cases] == ["f0", "f1"]
    for rec in records:
        history = rec["live"]["step1"]["values"]["history"]
        assert history["type"] == "curve" and history["points"] > 0
        series = next(iter(history["series"].values()))
        assert series["points"] == history["points"] and len(series["last"]) == 2
        quantities = {n["quantity"] for n in rec["numbers"]}
        assert {"translation_mm x", "rotation_deg z"} <= quantities and any("last" in q for q in quantities)
    assert {e["case"] for e in events if e.get("status") == "running"} == {"f0", "f1"}
    assert set(run.status_table()["status"]) == {"done"}


def test_failure_isolated_and_cli_exit_code(cohort, seg_recipe, client, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(cohort / "images", folder)
    (folder / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    result = run_cohort(seg_recipe, folder, tmp_path / "out", client=client, progress=False)
    assert [c for c, _ in result.failures] == ["broken"] and result.counts["computed"] == N
    rec = read_record(tmp_path / "out" / CASES_DIR / "broken")
    assert rec["status"] == "failed" and "ReadError" in rec["error"] and "Traceback" in rec["traceback"]
    assert "broken: ReadError" in result.summary()
    seg_recipe.save(tmp_path / "recipe.json")
    code = main(["run", str(tmp_path / "recipe.json"), str(folder), "--out", str(tmp_path / "cli"),
                 "--scheduler", client.scheduler.address])
    printed = capsys.readouterr().out
    assert code == 1 and "1 failed" in printed and "broken" in printed
    assert main(["run", str(tmp_path / "recipe.json"), str(folder), "--out", str(tmp_path / "cli"), "--list"]) == 0
    assert main(["run", str(tmp_path / "recipe.json"), str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "x")]) == 2


def test_small_cases_batched_with_a_record_and_live_status_each(cohort, seg_recipe, client, tmp_path):
    events = []
    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client, batch=3, on_event=events.append)
    run.start()
    records = list(run.as_completed())
    result = run.finish()
    assert result.ok and sorted(r["case"] for r in records) == [f"sub{i}" for i in range(N)]
    assert [len(f.medlab_cases) for f in run.futures] == [3, N - 3]           # two Dask tasks for N cases
    workers = {r["worker"]["pid"] for r in records}
    for i in range(N):
        rec = read_record(tmp_path / "out" / CASES_DIR / f"sub{i}")             # each case its own record
        assert rec["status"] == "done" and rec["memory"]["peak_rss_mb"] > 0 and rec["timings"]["cpu_s"] > 0
        assert len(result.results.query(f"case == 'sub{i}' and quantity == 'dice'")) == 1
    assert len(workers) == 1
    deadline = time.monotonic() + 60                                            # events travel apart from results
    while (len([e for e in events if e.get("status") == "done"]) < 3
           or len({e["case"] for e in events if e.get("status") == "running"}) < N) and time.monotonic() < deadline:
        time.sleep(0.05)
    finished = [e["case"] for e in events if e.get("status") == "done"]         # sent as each case of a batch ends
    assert sorted(finished) == [c for c in run.futures[0].medlab_cases]          # (a lone case: its task's result)
    # one event per case of a batch: the end of one announces the next as running (the watcher and
    # the widget still see every case run), instead of a start and an end event each
    sent = [msg for _, msg in client.get_events(run.topic)]
    assert {m["case"] for m in sent if m.get("status") == "running"} == {"sub0", "sub3"}   # a task's first case
    assert [m.get("next", {}).get("case") for m in sent if m["case"] in ("sub0", "sub1") and m["status"] == "done"] == [
        "sub1", "sub2"]
    assert {e["case"] for e in events if e.get("status") == "running"} == {f"sub{i}" for i in range(N)}
    with pytest.raises(ParameterError, match="batch must be a whole number"):
        CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "x", client, batch=0)


def test_automatic_batches_after_a_timed_case(cohort, seg_recipe, client, tmp_path, monkeypatch):
    from medlab.cohort import engine, task

    monkeypatch.setattr(engine, "BATCH_TARGET_S", 1e6)                         # every case counts as tiny
    monkeypatch.setattr(task, "_computed_here", 0)                             # a fresh worker process
    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client)
    run.start()
    assert [len(f.medlab_cases) for f in run.futures] == [1, 1]                 # two in flight per worker thread
    assert len(list(run.as_completed())) == N and run.finish().ok
    assert [len(f.medlab_cases) for f in run.futures] == [1, 1, 1, 1]          # the first was cold: one more alone
    assert sorted(r["worker"]["cases_before"] for r in run.records.values()) == [0, 1, 2, 3]


def _record(case: str, cpu_s: float, cases_before: int) -> dict:
    return {"case": case, "run": "computed", "status": "done", "timings": {"cpu_s": cpu_s},
            "worker": {"cases_before": cases_before}}


def _planned(client, seg_recipe, cohort, tmp_path, sizes: dict[str, int], rate: float, slots: int = 2):
    from types import SimpleNamespace

    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client)
    run._slots = lambda: slots
    run._pending = [SimpleNamespace(id=k) for k in sizes]
    run._bytes = dict(sizes)
    return run._plan(rate)


def test_cpu_per_byte_from_warm_cases_only(cohort, seg_recipe, client, tmp_path):
    """A worker's first case pays its imports and first calls (1 CPU-s here, for cases of 0.1):
    batches sized from it held ~2 cases where ~15 were meant. It does not count."""
    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client)
    run._bytes = {"sub0": 1000, "sub1": 1000, "sub2": 4000}
    run.records = {"sub0": _record("sub0", 1.0, 0)}                             # cold: not a measure
    assert run._cpu_per_byte() is None
    run.records["sub1"] = _record("sub1", 0.1, 1)                               # warm
    assert run._cpu_per_byte() == pytest.approx(1e-4)
    run.records["sub2"] = _record("sub2", 0.2, 2)                               # the median of warm cases, per byte
    assert run._cpu_per_byte() == pytest.approx(0.75e-4)
    assert run._input_bytes(run.cases[3]) == (cohort / "images" / "sub3.nii.gz").stat().st_size   # the input, not the truth


def test_plan_sends_large_cases_first_then_batches_that_shrink_at_the_end(cohort, seg_recipe, client, tmp_path):
    """The benchmark's cohort lists its real CT after 200 small phantoms: sent last, it kept one
    worker busy alone (two workers ran 1.3x one worker). Large cases now go first, alone, and the
    last batches are small, so the workers end together."""
    from medlab.cohort import engine

    sizes = {f"p{i}": 1000 for i in range(200)} | {"ct": 30_000, "mr": 12_000}   # 0.1 s a phantom at this rate
    chunks = _planned(client, seg_recipe, cohort, tmp_path, sizes, rate=1e-4)
    ids = [[c.id for c in chunk] for chunk in chunks]
    assert ids[:2] == [["ct"], ["mr"]]                                          # largest first, alone
    assert [c for chunk in ids[2:] for c in chunk] == [f"p{i}" for i in range(200)]   # the rest in listed order
    costs = [0.1 * len(chunk) for chunk in ids[2:]]
    assert max(costs) <= engine.BATCH_TARGET_S + 1e-9 and costs[0] == pytest.approx(engine.BATCH_TARGET_S)
    assert costs == sorted(costs, reverse=True) and costs[-1] <= engine.SMALLEST_TASK_S
    left = sum(costs)
    for cost in costs:                                                           # never more than a share of what is left
        assert cost <= max(left / 4, engine.SMALLEST_TASK_S) + 1e-9
        left -= cost
    tiny = _planned(client, seg_recipe, cohort, tmp_path, {f"p{i}": 1 for i in range(500)}, rate=1e-6)
    assert max(len(c) for c in tiny) == engine.MAX_BATCH
    few = _planned(client, seg_recipe, cohort, tmp_path, {f"p{i}": 1000 for i in range(5)}, rate=1e-4)
    assert [len(c) for c in few] == [2, 2, 1]                                    # not below SMALLEST_TASK_S (0.2-0.25 s)


def test_a_batch_whose_task_failed_is_sent_again_case_by_case(cohort, seg_recipe, client, tmp_path, monkeypatch):
    from medlab.cohort import engine

    def worker_died(*args, **kwargs):
        raise RuntimeError("worker died")                                       # as KilledWorker would

    monkeypatch.setattr(engine, "run_cases", worker_died)
    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client, batch=N)
    run.start()
    records = list(run.as_completed())
    assert run.finish().ok and sorted(r["case"] for r in records) == [f"sub{i}" for i in range(N)]
    assert [len(f.medlab_cases) for f in run.futures] == [N] + [1] * N


# ---------------------------------------------------------------------------- resume
def _computed(result) -> set[str]:
    return {c for c, r in result.records.items() if r.get("run") == "computed"}


def test_rerun_skips_done_cases_and_redoes_changed_ones(cohort, client, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(cohort / "images", folder)
    recipe = _seg_recipe(medlab.load(folder / "sub0.nii.gz"))
    out = tmp_path / "out"
    first = run_cohort(recipe, folder, out, client=client, progress=False)
    assert _computed(first) == {f"sub{i}" for i in range(N)}
    mtime = (out / CASES_DIR / "sub1" / "record.json").stat().st_mtime_ns
    again = run_cohort(recipe, folder, out, client=client, progress=False)
    assert _computed(again) == set() and again.counts["skipped"] == N
    assert (out / CASES_DIR / "sub1" / "record.json").stat().st_mtime_ns == mtime   # nothing rewritten
    assert set(again.cases["status"]) == {"skipped"} and len(again.results) == len(first.results)
    medlab.save(_phantom(99).t1, folder / "sub2.nii.gz", overwrite=True)          # one input changed
    assert _computed(run_cohort(recipe, folder, out, client=client, progress=False)) == {"sub2"}
    shutil.rmtree(out / CASES_DIR / "sub3")                                          # one case lost
    assert _computed(run_cohort(recipe, folder, out, client=client, progress=False)) == {"sub3"}
    changed = _seg_recipe(medlab.load(folder / "sub0.nii.gz"), sigma=2.0)          # the recipe changed
    assert recipe_hash(changed) != recipe_hash(recipe)
    assert len(_computed(run_cohort(changed, folder, out, client=client, progress=False))) == N
    assert len(_computed(run_cohort(changed, folder, out, client=client, progress=False, rerun=True))) == N


def test_interrupted_run_completes_only_missing_cases(cohort, seg_recipe, client, tmp_path, monkeypatch):
    from medlab.cohort import engine

    def lasting(run):
        def task(recipe_dict, functions, cases, *args, **kwargs):
            if "sub0" not in [c.id for c in (cases if isinstance(cases, list) else [cases])]:
                time.sleep(1.0)
            return run(recipe_dict, functions, cases, *args, **kwargs)
        return task

    # a warm case takes ~0.1 s: the one queued behind the running one could start before the
    # cancel reaches the worker. Every task but the first lasts 1 s, so the cancel lands first.
    monkeypatch.setattr(engine, "run_case", lasting(engine.run_case))
    monkeypatch.setattr(engine, "run_cases", lasting(engine.run_cases))
    out = tmp_path / "out"
    stopped = {}

    def stop_after_one(record, run):
        stopped["first"] = record["case"]
        stopped["sent"] = {c for f in run.futures for c in f.medlab_cases}   # done or in flight at the cancel
        raise KeyboardInterrupt

    first = run_cohort(seg_recipe, cohort / "manifest.csv", out, client=client, progress=False, on_update=stop_after_one)
    assert first.cancelled and not first.ok and stopped["first"] == "sub0"
    deadline = time.monotonic() + 30               # Dask cannot stop a running task: let the one running end
    while any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    done = {p.name for p in (out / CASES_DIR).iterdir() if not p.name.startswith(".")}
    assert 1 <= len(done) < N or len(done) == N
    for name in done:                                 # every case folder there is complete
        rec = read_record(out / CASES_DIR / name)
        assert rec["status"] == "done" and all((out / CASES_DIR / name / f).is_file() for f in rec["outputs"].values())
    assert len(done) <= 2                          # the first case, and at most the one running at the cancel
    assert "sub0" in done and done <= stopped["sent"]
    second = run_cohort(seg_recipe, cohort / "manifest.csv", out, client=client, progress=False)
    assert second.ok and _computed(second) == {f"sub{i}" for i in range(N)} - done
    assert not [p for p in (out / CASES_DIR).iterdir() if p.name.startswith(".")]


def test_refusals(cohort, seg_recipe, client, tmp_path, capsys):
    with pytest.raises(ParameterError, match="no steps"):
        run_cohort(Recipe(), cohort / "images", tmp_path / "o", client=client, progress=False)
    out = tmp_path / "locked"
    out.mkdir()
    lock = _lock_folder(out)
    try:
        with pytest.raises(ParameterError, match="another medlab run"):
            run_cohort(seg_recipe, cohort / "images", out, client=client, progress=False)
    finally:
        lock.close()
    assert main(["run", "r.json", "in", "--out", "o", "--workers", "0"]) == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="neither a folder nor a CSV"):
        list_cases(tmp_path / "absent")


# ---------------------------------------------------------------------------- de-identification on Dask
def test_deidentify_cohort_matches_deidentify(tmp_path, client, shared):
    from medlab.cohort import deidentify_cohort
    from medlab.io import deidentify

    src = tmp_path / "src"
    shutil.copytree(shared("ct_abdomen/example_ct_dicom"), src / "ct")
    (src / "small").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "small" / "a.dcm")
    key = "one key for the whole cohort"
    result = deidentify_cohort(src, tmp_path / "dask", key=key, client=client, progress=False)
    assert set(result.cases["status"]) == {"done"} and result.cases["written"].sum() == 21
    direct = deidentify(src, tmp_path / "direct", key=key)
    names = lambda folder: sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.dcm"))
    assert names(tmp_path / "dask") == names(tmp_path / "direct") and len(direct.written) == 21
    again = deidentify_cohort(src, tmp_path / "dask", key=key, client=client, progress=False)
    assert set(again.cases["run"]) == {"skipped"}


# ---------------------------------------------------------------------------- slow: processes
@pytest.mark.slow
def test_worker_killed_mid_run(cohort, seg_recipe, tmp_path):
    """A worker process killed mid-run: the run finishes, no case folder is partial."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(10):
        medlab.save(_phantom(i, size=(40, 40, 20)).t1, folder / f"c{i:02d}.nii.gz")
    killed = []

    def kill_one(record, run):
        if not killed:
            busy = {a: keys for a, keys in run.client.processing().items() if keys}
            victim = next((a for a in sorted(busy) if a != record["worker"].get("address")), None)
            if victim is None:
                return
            pid = run.client.run(os.getpid, workers=[victim])[victim]
            os.kill(pid, signal.SIGKILL)                        # mid-case: it holds a task
            killed.append((pid, [str(k) for k in busy[victim]]))

    result = run_cohort(seg_recipe, folder, tmp_path / "out", workers=2, dashboard=False, progress=False,
                        on_update=kill_one)
    # a case the killed worker had committed but not reported yet is found done when Dask reruns it
    assert killed and result.ok and result.counts["computed"] + result.counts["skipped"] == 10
    for i in range(10):
        rec = read_record(tmp_path / "out" / CASES_DIR / f"c{i:02d}")
        assert rec["status"] == "done"
        for f in rec["outputs"].values():                                  # complete, readable
            path = tmp_path / "out" / CASES_DIR / f"c{i:02d}" / f
            if f.endswith(".csv"):
                assert pd.read_csv(path).shape[0] >= 1
            else:
                medlab.load(path)
    workers = {read_record(tmp_path / "out" / CASES_DIR / f"c{i:02d}")["worker"]["pid"] for i in range(10)}
    assert os.getpid() not in workers
    again = run_cohort(seg_recipe, folder, tmp_path / "out", workers=1, dashboard=False, progress=False)
    assert again.counts["skipped"] == 10
    assert not [p for p in (tmp_path / "out" / CASES_DIR).iterdir() if p.name.startswith(".")]  # leftovers cleaned


@pytest.mark.slow
def test_local_workers_keep_glibcs_allocator_thresholds(monkeypatch):
    """Dask's worker default MALLOC_TRIM_THRESHOLD_=65536 made every array of a case a fresh
    mapping, zero-filled page by page (135,000 page faults for 60 small cases, 3x the system
    CPU); local medlab workers get glibc's own converged thresholds instead."""
    from medlab.cohort.engine import WORKER_MALLOC

    assert _allocator_environ_of_a_local_worker(monkeypatch) == {k: str(v) for k, v in WORKER_MALLOC.items()}


def test_an_allocator_setting_the_user_configured_in_dask_wins(monkeypatch):
    import dask

    from medlab.cohort.engine import WORKER_MALLOC

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), "MALLOC_TRIM_THRESHOLD_": 1 << 20}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        seen = _allocator_environ_of_a_local_worker(monkeypatch)
    assert seen == {"MALLOC_TRIM_THRESHOLD_": str(1 << 20),          # the user's
                    "MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"])}
    assert all(k not in os.environ for k in WORKER_MALLOC)


def _allocator_environ_of_a_local_worker(monkeypatch) -> dict:
    """The glibc allocator variables a worker of :func:`local_cluster` sees, none being set in
    this process before (Dask copies them into os.environ: local_cluster restores it after)."""
    from medlab.cohort.engine import WORKER_MALLOC, local_cluster

    for name in WORKER_MALLOC:
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    client, cluster = local_cluster(1, dashboard=False)
    try:
        return next(iter(client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC}).values()))
    finally:
        client.close()
        cluster.close()


def _scheduler_address(sched_file: Path) -> str | None:
    """The address in a scheduler file, or None while it is absent or still being written."""
    try:
        return json.loads(sched_file.read_text())["address"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


@contextlib.contextmanager
def _dask_cluster(tmp_path: Path, workers: int = 2):
    """``dask scheduler`` and ``dask worker`` as separate processes on 127.0.0.1; stopped on exit."""
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)]
    try:
        deadline = time.monotonic() + 60
        while not _scheduler_address(sched_file):   # Dask creates the file, then writes it: not only exists()
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.2)
        for _ in range(workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", "--scheduler-file", str(sched_file),
                                           "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                                           "--no-dashboard", "--no-nanny"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                          start_new_session=True))
        yield _scheduler_address(sched_file), procs
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.slow
def test_real_scheduler_and_two_worker_processes(cohort, seg_recipe, tmp_path):
    with _dask_cluster(tmp_path) as (address, procs):
        assert address.startswith("tcp://127.0.0.1:")
        with distributed.Client(address, timeout="60s") as c:
            c.wait_for_workers(2, timeout=90)
            worker_pids = set(c.run(os.getpid).values())
            assert len(worker_pids) == 2 and os.getpid() not in worker_pids
            addresses = set(c.scheduler_info()["workers"])
            result = run_cohort(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client=c, progress=False)
        assert result.ok and result.counts["computed"] == N
        ran_on = {r["worker"]["pid"] for r in result.records.values()}
        assert ran_on <= worker_pids and os.getpid() not in ran_on
        assert {r["worker"]["address"] for r in result.records.values()} <= addresses
    for p in procs:
        assert p.poll() is not None        # every process stopped


# ---------------------------------------------------------------------------- the widget
def test_cohort_widget(cohort, seg_recipe, client, tmp_path):
    from medlab.widgets import Cohort, Viewer

    folder = tmp_path / "in"
    shutil.copytree(cohort / "images", folder)
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    w = Cohort(session={"my_recipe": seg_recipe, "other": 3}, client=client)
    assert [label for label, _ in w.recipe_picker.options] == ["(from the file below)", "my_recipe"]
    w.inputs.value = str(tmp_path / "missing.csv")
    assert w.preview() is None and "does not exist" in w.message.value
    w.inputs.value, w.out_dir.value = str(folder), str(tmp_path / "out")
    cases = w.preview()
    assert len(cases) == N + 1 and "5 case(s)" in w.case_preview.value
    t0 = time.monotonic()
    w.start()
    assert time.monotonic() - t0 < 2.0            # returns at once: the run goes on in a thread
    assert w.wait(120)
    assert w.progress.value == N + 1 and w.result is not None and not w.result.ok
    assert w.status.value.count(">done<") == N and "failed" in w.status.value
    assert "broken" in w.failures.value and "Traceback" in w.failures.value
    assert sorted(w.case_picker.options) == [f"sub{i}" for i in range(N)]
    viewer = w.open_case("sub1")
    assert isinstance(viewer, Viewer) and viewer._labels_info      # the label output is overlaid
    names = {e["name"] for e in viewer._labels_info["legend"]}
    assert not any(n.startswith("label ") for n in names), names   # with its names from the record
    assert w.open_case("broken") is None and "no finished result" in w.message.value
    # from a file, and a second run skips what is done
    seg_recipe.save(tmp_path / "r.json")
    w2 = Cohort(str(tmp_path / "r.json"), folder, tmp_path / "out", session={}, client=client)
    w2.start()
    assert w2.wait(120) and w2.result.counts["skipped"] == N


@pytest.mark.parametrize("label_names", [[1, 2], "x", {"step2.labels": [1]}, {"step2.labels": {"a": {"name": "x"}}},
                                         {"step2.labels": {"1.5": {"name": "x"}}}])
def test_load_output_of_a_damaged_record_is_refused_clearly(cohort, seg_recipe, tmp_path, label_names):
    """A record edited or damaged by hand (label names not a mapping of whole numbers, an output
    that is not a file name of the case) gives a ParameterError naming the case, not a bare error."""
    from medlab.cohort import list_cases, load_output
    from medlab.cohort.task import run_case

    case = next(iter(list_cases(cohort / "images", seg_recipe)))
    run_case(seg_recipe.to_dict(), {}, case, str(tmp_path), recipe_sha=recipe_hash(seg_recipe))
    folder = tmp_path / CASES_DIR / case.id
    record = json.loads((folder / "record.json").read_text())
    record["label_names"] = label_names
    (folder / "record.json").write_text(json.dumps(record))
    with pytest.raises(ParameterError, match=f"{folder}.*label names"):
        load_output(folder, "step2.labels")
    record["outputs"]["step2.labels"] = 5
    (folder / "record.json").write_text(json.dumps(record))
    with pytest.raises(ParameterError, match="not a file of the case"):
        load_output(folder, "step2.labels")
    record["outputs"]["step2.labels"] = "../../elsewhere.nii.gz"
    (folder / "record.json").write_text(json.dumps(record))
    with pytest.raises(ParameterError, match="not a file of the case"):
        load_output(folder, "step2.labels")
    with pytest.raises(ParameterError, match="has no output"):
        load_output(folder, ["step2.labels"])


def test_a_case_done_on_disk_is_not_reported_failed_when_its_task_died(cohort, seg_recipe, client, tmp_path,
                                                                        monkeypatch):
    """A worker that dies after a case committed its record (or a healthy case queued on a worker
    that another case killed, which Dask blames too) fails the task with KilledWorker; the case
    is done on disk with this recipe and these inputs, so the run says so, and the tables agree
    with the records. A case whose task died before it wrote anything stays failed."""
    from medlab.cohort import engine, task

    def dies(recipe_dict, functions, case, out_dir, **kw):
        if case.id == "sub2":
            raise RuntimeError("worker died before the case ran")
        record = task.run_case(recipe_dict, functions, case, out_dir, **kw)
        if case.id == "sub1":
            raise RuntimeError("worker died after the case committed")
        return record

    monkeypatch.setattr(engine, "run_case", dies)
    result = run_cohort(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client=client, progress=False, batch=1)
    assert [c for c, _ in result.failures] == ["sub2"]
    assert result.records["sub1"]["status"] == "done" and result.records["sub1"]["run"] == "computed"
    assert read_record(tmp_path / "out" / CASES_DIR / "sub1")["status"] == "done"
    again = run_cohort(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client=client, progress=False, batch=1)
    assert again.records["sub1"]["run"] == "skipped" and [c for c, _ in again.failures] == ["sub2"]
    redo = run_cohort(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client=client, progress=False, batch=1,
                      rerun=True)
    assert redo.records["sub1"]["status"] == "done" and redo.records["sub1"]["run"] == "computed"


def test_a_healthy_case_blamed_for_a_killed_worker_is_tried_again_alone(cohort, seg_recipe, client, tmp_path,
                                                                         monkeypatch):
    """Dask blames every task a dead worker held: a healthy case queued beside a case that kills
    workers can fail with KilledWorker without ever running. Such a case is tried once more, alone,
    after the others; the killing case still fails (alone)."""
    from types import SimpleNamespace

    from distributed import KilledWorker

    from medlab.cohort import engine, task

    log = tmp_path / "calls.txt"   # the function reaches the worker as a copy: state goes through a file

    def blamed(recipe_dict, functions, case, out_dir, **kw):
        with open(log, "a") as fh:
            fh.write(case.id + "\n")
        if case.id == "sub2" or (case.id == "sub1" and log.read_text().split().count("sub1") == 1):
            raise KilledWorker(f"medlab-case-{case.id}", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)
        return task.run_case(recipe_dict, functions, case, out_dir, **kw)

    monkeypatch.setattr(engine, "run_case", blamed)
    result = run_cohort(seg_recipe, cohort / "manifest.csv", tmp_path / "out", client=client, progress=False, batch=1)
    assert [c for c, _ in result.failures] == ["sub2"] and "KilledWorker" in result.records["sub2"]["error"]
    calls = log.read_text().split()
    assert result.records["sub1"]["status"] == "done" and calls.count("sub1") == 2 and calls.count("sub2") == 2
    assert set(calls[-2:]) == {"sub1", "sub2"}                  # the second tries come after every other case


def test_a_result_lost_after_it_was_read_does_not_hold_back_the_last_tries(cohort, seg_recipe, tmp_path):
    """A future whose result was read turns 'lost' (never done again) when a case kills the worker
    that held it; the case tried again alone at the end must still be sent (it was left 'not run')."""
    from types import SimpleNamespace

    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", batch=1)
    sent = []
    run._submit = sent.append
    run.futures = [SimpleNamespace(key="medlab-case-sub0-x", done=lambda: False)]   # read, then lost
    run._read.add("medlab-case-sub0-x")
    run._suspects = [run.cases[1]]
    run._submit_more()
    assert sent == [[run.cases[1]]]


def test_a_case_a_cancelled_batch_finished_is_reported_done(cohort, seg_recipe, tmp_path):
    """Cancel stops a batch between two cases: those it finished are done on disk (and in
    cases.csv), so their records say done, not cancelled."""
    from types import SimpleNamespace

    from medlab.cohort.task import run_case

    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", batch=2)
    run_case(seg_recipe.to_dict(), {}, run.cases[0], str(tmp_path / "out"), recipe_sha=run.recipe_sha,
             run_id=run.run_id)                                  # committed by this run's task
    batch = SimpleNamespace(status="cancelled", medlab_cases=[run.cases[0].id, run.cases[1].id])
    done, cancelled = run._records_of(batch)
    assert (done["status"], done["run"]) == ("done", "computed") and cancelled["status"] == "cancelled"


def test_batch_takes_any_whole_number_type(cohort, seg_recipe, tmp_path):
    """batch=np.int64(2) (from a NumPy computation) is a whole number: taken, as a Python int."""
    run = CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", batch=np.int64(2))
    assert run.batch == 2 and type(run.batch) is int
    for bad in (0, -1, 1.5, "x", True, np.float64(2.0)):
        with pytest.raises(ParameterError, match="batch must be a whole number"):
            CohortRun(seg_recipe, cohort / "manifest.csv", tmp_path / "out", batch=bad)
