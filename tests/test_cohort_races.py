"""Two races in a cohort run's bookkeeping (session 7), each test failing before its fix.

* Stop while a case runs: Dask cannot stop a running task, so the case committed after the
  cancel was processed; the result said "cancelled", cases.csv and the re-run "done", and the
  status row "done" beside the error "cancelled before it finished".
* Which run wrote a record was decided from ``record.json``'s mtime against the client's clock:
  another host's clock (a cluster node, a network file system) or coarse file times broke it.
  Records now carry the run's id.

No test here depends on how fast the machine is: a held case waits for a file the test writes
(or for the cancel to reach its worker), and the run's grace time is set by each test.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from cohort_factory import phantom_cohort

from medlab.cohort import CASES_DIR, CohortRun, read_record, run_cohort

distributed = pytest.importorskip("distributed")

IDS = [f"sub{i}" for i in range(4)]
WAIT_S = 120
"""Upper bound of every wait on a held case: only a broken run reaches it."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small phantom T1 images in a folder, and a three-stage recipe."""
    return phantom_cohort(tmp_path_factory.mktemp("race_cohort"), IDS, components=True)


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.01)


def _holding(real, held: str, gate: Path, *, until_cancelled: bool = False):
    """``real`` (run_case or run_cases), with case ``held`` kept from starting until the file
    ``gate/release`` exists (or, ``until_cancelled``, until the run's cancel reached the worker).
    ``gate/started`` says the held case's task is running."""
    def task(recipe_dict, functions, cases, *args, **kwargs):
        ids = [c.id for c in (cases if isinstance(cases, list) else [cases])]
        if held in ids:
            if ids[0] != held:   # a batch: run the cases before the held one first
                i = ids.index(held)
                done = real(recipe_dict, functions, cases[:i], *args, **kwargs)
                rest = task(recipe_dict, functions, cases[i:], *args, **kwargs)
                return done + rest
            from medlab.cohort.task import _still_wanted

            wanted = _still_wanted()
            (gate / "started").touch()
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and (wanted() if until_cancelled else not (gate / "release").exists()):
                time.sleep(0.01)
        return real(recipe_dict, functions, cases, *args, **kwargs)
    return task


def _hold(monkeypatch, held: str, gate: Path, **kw) -> None:
    from medlab.cohort import engine

    gate.mkdir(exist_ok=True)
    monkeypatch.setattr(engine, "run_case", _holding(engine.run_case, held, gate, **kw))
    monkeypatch.setattr(engine, "run_cases", _holding(engine.run_cases, held, gate, **kw))


def _idle(client) -> None:
    """Wait until the worker runs nothing (a held case let go ends in its own time)."""
    _wait_for(lambda: not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()),
              "the worker to be idle")


def _check_consistent(result, run, out: Path) -> dict[str, str]:
    """Every case once, and the same in the result, its summary, the status table, cases.csv and
    on disk: done (no error) iff its record on disk is done. Returns {case: status}."""
    assert list(result.records) == IDS
    table = pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case")
    rows = run.status_table().set_index("case")
    statuses = {}
    for cid, record in result.records.items():
        disk = read_record(out / CASES_DIR / cid)
        done = record["status"] == "done"
        assert done == (disk is not None and disk["status"] == "done"), (cid, record, disk)
        status = ("skipped" if record["run"] == "skipped" else "done") if done else record["status"]
        assert table.loc[cid, "status"] == status == rows.loc[cid, "status"], cid
        if done:
            assert not record.get("error") and table.loc[cid, "error"] == "" == rows.loc[cid, "error"], cid
        else:
            assert record["error"] and table.loc[cid, "error"] == record["error"].splitlines()[0] == rows.loc[cid, "error"]
        statuses[cid] = status
    n_done = sum(s == "done" for s in statuses.values())
    assert result.counts["computed"] == n_done
    n_cancelled = sum(s == "cancelled" for s in statuses.values())
    assert f"{n_done} computed" in result.summary().splitlines()[0]
    assert f"{n_cancelled} cancelled" in result.summary().splitlines()[0]
    return statuses


@pytest.mark.parametrize(("batch", "held"), [(1, "sub1"), (2, "sub2")])
def test_a_case_running_at_the_stop_that_commits_after_it_is_reported_done(cohort, client, tmp_path, monkeypatch,
                                                                            batch, held):
    """The widget's way: Stop while ``held`` runs; its task goes on and commits after the
    cancelled futures were read back. It is done everywhere (result, summary, status row,
    cases.csv), with no "cancelled" error, and a re-run skips it and computes only the rest."""
    from medlab.cohort import engine

    folder, recipe = cohort
    out, gate = tmp_path / "out", tmp_path / "gate"
    _hold(monkeypatch, held, gate)
    monkeypatch.setattr(engine, "CANCEL_GRACE_S", WAIT_S, raising=False)   # the held case gets to end
    run = CohortRun(recipe, folder, out, client, batch=batch)
    run.start()
    for record in run.as_completed():
        if record["case"] == "sub0":
            _wait_for((gate / "started").exists, "the held case to start")
            run.cancel()
    # a batch announces a case's end after the cancel; the row must not turn "done" beside its cancelled error
    run._on_event({"case": held, "status": "done", "seconds": 0.1, "peak_mb": 1.0})
    assert not (run.status[held]["status"] == "done" and run.status[held].get("error"))
    (gate / "release").touch()
    result = run.finish()
    assert result.cancelled
    statuses = _check_consistent(result, run, out)
    assert statuses[held] == "done" and result.records[held]["run"] == "computed"
    assert read_record(out / CASES_DIR / held)["run_id"] == run.run_id
    assert statuses["sub3"] == "cancelled" and not (out / CASES_DIR / "sub3").exists()
    late = {"case": held, "status": "running", "step": 1}       # a late event changes nothing settled
    run._on_event(late)
    run._on_event({"case": "sub3", "status": "done"})
    assert run.status[held]["status"] == "done" and run.status["sub3"]["status"] == "cancelled"
    monkeypatch.undo()
    again = run_cohort(recipe, folder, out, client, progress=False, batch=batch)
    done_before = {c for c, s in statuses.items() if s == "done"}
    assert again.ok and {c for c, r in again.records.items() if r["run"] == "skipped"} == done_before
    assert {c for c, r in again.records.items() if r["run"] == "computed"} == set(IDS) - done_before


def test_stop_from_on_update_while_a_case_runs(cohort, client, tmp_path, monkeypatch):
    """``run_cohort``'s way (``on_update`` raising KeyboardInterrupt): the case running at the
    stop goes on once the cancel reached its worker, commits, and is reported done."""
    from medlab.cohort import engine

    folder, recipe = cohort
    out, gate = tmp_path / "out", tmp_path / "gate"
    _hold(monkeypatch, "sub1", gate, until_cancelled=True)
    monkeypatch.setattr(engine, "CANCEL_GRACE_S", WAIT_S, raising=False)

    def stop(record, run):
        stop.run = run
        _wait_for((gate / "started").exists, "the held case to start")
        raise KeyboardInterrupt

    result = run_cohort(recipe, folder, out, client, progress=False, batch=1, on_update=stop)
    statuses = _check_consistent(result, stop.run, out)
    assert statuses == {"sub0": "done", "sub1": "done", "sub2": "cancelled", "sub3": "cancelled"}


def test_a_case_still_running_after_the_grace_time_says_so(cohort, client, tmp_path, monkeypatch):
    """A case that outlasts the grace time is not "cancelled before it finished": it may still
    commit. It is reported running at the cancel, and a re-run skips it once it did."""
    from medlab.cohort import engine

    folder, recipe = cohort
    out, gate = tmp_path / "out", tmp_path / "gate"
    _hold(monkeypatch, "sub1", gate)
    monkeypatch.setattr(engine, "CANCEL_GRACE_S", 0.0, raising=False)
    run = CohortRun(recipe, folder, out, client, batch=1)
    run.start()
    for record in run.as_completed():
        if record["case"] == "sub0":
            _wait_for((gate / "started").exists, "the held case to start")
            run.cancel()
    result = run.finish()
    try:
        statuses = _check_consistent(result, run, out)
        assert statuses == {"sub0": "done", "sub1": "cancelled", "sub2": "cancelled", "sub3": "cancelled"}
        assert "running at the cancel" in result.records["sub1"]["error"]
        assert result.records["sub2"]["error"] == "cancelled before it finished"
    finally:
        (gate / "release").touch()
        _idle(client)
    assert read_record(out / CASES_DIR / "sub1")["status"] == "done"      # it finished after the report
    monkeypatch.undo()
    again = run_cohort(recipe, folder, out, client, progress=False, batch=1)
    assert again.ok and [again.records[c]["run"] for c in IDS] == ["skipped", "skipped", "computed", "computed"]


def test_a_stopped_rerun_reports_the_cases_it_did_not_redo_as_done_before(cohort, client, tmp_path, monkeypatch):
    """rerun=True stopped after two cases: the two not redone are still done on disk with this
    recipe and these inputs, so they are "skipped (done before)" everywhere (the result said
    cancelled while cases.csv showed them done)."""
    from medlab.cohort import engine

    folder, recipe = cohort
    out, gate = tmp_path / "out", tmp_path / "gate"
    run_cohort(recipe, folder, out, client, progress=False, batch=1)
    _hold(monkeypatch, "sub1", gate, until_cancelled=True)
    monkeypatch.setattr(engine, "CANCEL_GRACE_S", WAIT_S, raising=False)
    run = CohortRun(recipe, folder, out, client, batch=1, rerun=True)
    run.start()
    for record in run.as_completed():
        if record["case"] == "sub0":
            _wait_for((gate / "started").exists, "the held case to start")
            run.cancel()
    result = run.finish()
    statuses = _check_consistent(result, run, out)
    assert statuses == {"sub0": "done", "sub1": "done", "sub2": "skipped", "sub3": "skipped"}
    assert [result.records[c]["run"] for c in IDS] == ["computed", "computed", "skipped", "skipped"]


def test_a_placeholder_replaced_by_a_done_record_keeps_no_cancelled_error(cohort, client, tmp_path):
    """A status row first marked cancelled, then settled done, shows no error."""
    from medlab.cohort.engine import _cancelled

    folder, recipe = cohort
    run = CohortRun(recipe, folder, tmp_path / "out", client)
    run._keep(_cancelled("sub0"))
    assert run.status["sub0"]["error"]
    run._keep({"case": "sub0", "status": "done", "run": "computed"})
    assert run.status["sub0"]["status"] == "done" and run.status["sub0"]["error"] == ""


@pytest.mark.parametrize("error", [OSError("scheduler gone"), KeyboardInterrupt()])
def test_when_the_workers_cannot_be_asked_every_unfinished_task_counts_as_running(cohort, tmp_path, error):
    """No answer from the workers (or a second Ctrl-C during the wait): the cases of every task
    not finished may still run, and are reported so, not as cancelled before they finished."""
    from types import SimpleNamespace

    folder, recipe = cohort
    run = CohortRun(recipe, folder, tmp_path / "out")

    def no_answer(*args, **kwargs):
        raise error

    run.client = SimpleNamespace(run=no_answer)
    run.futures = [SimpleNamespace(key="a", medlab_cases=["sub0"], status="finished"),
                   SimpleNamespace(key="b", medlab_cases=["sub1", "sub2"], status="cancelled")]
    assert run._wait_for_running_cases(WAIT_S) == {"sub1", "sub2"}


# ------------------------------------------------------------------- race 2: who wrote a record
def _set_mtime(out: Path, case: str, shift_s: float) -> None:
    path = out / CASES_DIR / case / "record.json"
    t = time.time() + shift_s
    os.utime(path, (t, t))


def test_a_record_this_run_wrote_on_a_host_whose_clock_is_behind_counts_as_computed(cohort, client, tmp_path,
                                                                                     monkeypatch):
    """A worker whose clock is an hour behind commits a case, then its task fails (a worker that
    died after the commit) or a resent task finds it done ("skipped"): this run computed it."""
    from medlab.cohort import engine, task

    def behind(recipe_dict, functions, case, out_dir, **kw):
        record = task.run_case(recipe_dict, functions, case, out_dir, **kw)
        if case.id in ("sub1", "sub2"):
            _set_mtime(Path(out_dir), case.id, -3600)                  # the worker host's clock
        if case.id == "sub1":
            raise RuntimeError("worker died after the case committed")
        if case.id == "sub2":                                          # sent again: found done
            return task.run_case(recipe_dict, functions, case, out_dir, **kw)
        return record

    monkeypatch.setattr(engine, "run_case", behind)
    result = run_cohort(cohort[1], cohort[0], tmp_path / "out", client, progress=False, batch=1)
    assert result.ok and all(result.records[c]["run"] == "computed" for c in IDS), result.records
    assert result.counts == {"computed": len(IDS), "skipped": 0, "failed": 0, "cancelled": 0}


def test_a_record_of_an_earlier_run_with_a_future_mtime_counts_as_skipped(cohort, client, tmp_path, monkeypatch):
    """Records an earlier run wrote on a host whose clock was ahead (mtimes an hour in the
    future) are the earlier run's: skipped, also when the task then fails."""
    from medlab.cohort import engine, task

    folder, recipe = cohort
    out = tmp_path / "out"
    run_cohort(recipe, folder, out, client, progress=False, batch=1)
    for cid in IDS:
        _set_mtime(out, cid, 3600)

    def dies(recipe_dict, functions, case, out_dir, **kw):
        record = task.run_case(recipe_dict, functions, case, out_dir, **kw)
        if case.id == "sub1":
            raise RuntimeError("worker died after finding the case done")
        return record

    monkeypatch.setattr(engine, "run_case", dies)
    again = run_cohort(recipe, folder, out, client, progress=False, batch=1)
    assert again.ok and [again.records[c]["run"] for c in IDS] == ["skipped"] * len(IDS)


def test_records_without_a_run_id_are_read_as_an_earlier_runs(cohort, client, tmp_path):
    """Records of older medlab have no run id: read, and taken as done before (not this run's)."""
    folder, recipe = cohort
    out = tmp_path / "out"
    first = run_cohort(recipe, folder, out, client, progress=False, batch=1)
    ids = {first.records[c]["run_id"] for c in IDS}
    assert len(ids) == 1 and len(ids.pop()) == 32                     # one uuid4 hex for the run
    for cid in IDS:
        path = out / CASES_DIR / cid / "record.json"
        record = json.loads(path.read_text())
        del record["run_id"]
        path.write_text(json.dumps(record))
    run = CohortRun(recipe, folder, out, client)
    assert run._done_on_disk("sub0")["run"] == "skipped"
    assert run._computed_here(dict(read_record(out / CASES_DIR / "sub0"), run="skipped"))["run"] == "skipped"
    again = run_cohort(recipe, folder, out, client, progress=False, batch=1)
    assert again.ok and [again.records[c]["run"] for c in IDS] == ["skipped"] * len(IDS)
