"""Hostile pass, session 7: cohort bugs (``medlab run`` signals and exit codes, the folder lock
after a failed start, a dashboard link with no dashboard, a cancel after every case finished, the
widget's Stop after the run ended), each test failing before its fix.

No test depends on how fast the machine is: a held case waits for a file the test writes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from cohort_factory import phantom_cohort

from medlab.cohort import CASES_DIR, CohortRun, run_cohort
from medlab.errors import ParameterError

distributed = pytest.importorskip("distributed")

IDS = [f"sub{i}" for i in range(4)]
WAIT_S = 120
"""Upper bound of every wait: only a broken run reaches it."""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small phantom T1 images in a folder, and a smoothing + Otsu recipe (saved beside)."""
    root = tmp_path_factory.mktemp("hostile7_cohort")
    folder, recipe = phantom_cohort(root, IDS)
    recipe.save(root / "recipe.json")
    return folder, recipe


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------- medlab run + signals
# The CLI in a subprocess, on an in-process cluster of one worker thread (cases run in order),
# with case sub1 held until the run's cancel reached its worker: the signal always lands while
# sub1 runs and sub2, sub3 wait; sub1 then ends within the grace time.
CLI_SCRIPT = """
import sys, time
from pathlib import Path
import distributed
from medlab.cohort import engine
from medlab.cli import main

gate = Path(sys.argv[1])
engine.CANCEL_GRACE_S = 120.0   # the held case, let go after the signal, always ends within it
engine.local_cluster = lambda workers=None, dashboard=True: (lambda c: (c, c.cluster))(
    distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None))
real = engine.run_case

def run_case(recipe_dict, functions, case, *args, **kwargs):
    if case.id == "sub1":
        from medlab.cohort.task import _still_wanted

        wanted = _still_wanted()
        (gate / "started").touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and wanted():
            time.sleep(0.01)
    return real(recipe_dict, functions, case, *args, **kwargs)

engine.run_case = run_case
sys.exit(main(["run", sys.argv[2], sys.argv[3], "--out", sys.argv[4], "--no-dashboard"]))
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_medlab_run_stopped_by_a_signal_writes_the_tables_and_exits_128_plus_it(cohort, tmp_path, signum, code):
    """SIGTERM (kill, Slurm, docker stop) ended ``medlab run`` at once (exit -15: no cases.csv,
    hidden partial folders left); it now stops like Ctrl-C. Ctrl-C exited 1 like failed cases:
    both now exit 128 + the signal, so a script can tell an interrupted run from failures."""
    folder, _ = cohort
    gate, out = tmp_path / "gate", tmp_path / "out"
    gate.mkdir()
    script = tmp_path / "cli_run.py"
    script.write_text(textwrap.dedent(CLI_SCRIPT))
    proc = subprocess.Popen([sys.executable, str(script), str(gate), str(folder.parent / "recipe.json"), str(folder),
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (gate / "started").exists() or proc.poll() is not None, "case sub1 to start")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, (stdout, stderr)
    table = pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case")
    assert table.loc["sub0", "status"] == "done"
    assert table.loc["sub1", "status"] == "done"      # running at the signal: ended within the grace time
    assert table.loc["sub2", "status"] == table.loc["sub3", "status"] == "cancelled"
    assert "0 failed, 2 cancelled" in stdout and "failures:" not in stdout, stdout
    hidden = [p.name for p in (out / CASES_DIR).iterdir() if p.name.startswith(".")]
    assert hidden == [], hidden


def test_medlab_run_exit_code_tells_done_failed_and_interrupted():
    from medlab.cli import _run_exit_code
    from medlab.cohort.results import CohortResult

    def result(statuses, cancelled):
        records = {f"c{i}": {"status": s, "run": "computed"} for i, s in enumerate(statuses)}
        return CohortResult(Path("."), None, None, records, 1.0, "", cancelled)

    assert _run_exit_code(result(["done", "done"], False), []) == 0
    assert _run_exit_code(result(["done", "done"], True), [signal.SIGTERM]) == 0   # a signal after the last case
    assert _run_exit_code(result(["done", "failed"], False), []) == 1
    assert _run_exit_code(result(["done", "cancelled"], True), []) == 130
    assert _run_exit_code(result(["failed", "cancelled"], True), [signal.SIGTERM]) == 143


def test_a_signal_whose_interrupt_dask_swallowed_still_stops_the_run(cohort, client, tmp_path):
    """Ctrl-C during the local cluster's start-up could raise its KeyboardInterrupt inside Dask's
    garbage-collection callback, which only prints it: the run went on to the end (exit 0). The
    CLI now also stops at the next case once a signal came."""
    from medlab.cli import _run_exit_code, _stop_if_signalled

    folder, recipe = cohort
    received = [signal.SIGINT]      # the handler ran; its KeyboardInterrupt was lost
    result = run_cohort(recipe, folder, tmp_path / "out", client, progress=False, batch=1,
                        on_update=_stop_if_signalled(received))
    assert result.cancelled and result.counts["cancelled"] >= 1 and _run_exit_code(result, received) == 130
    assert _stop_if_signalled([])({"case": "sub0"}, None) is None


# ---------------------------------------------------------------------------- start() and the lock
def test_a_start_that_fails_after_taking_the_folder_releases_it(cohort, client, tmp_path, monkeypatch):
    """start() failing after it took the output folder's lock (an unreachable scheduler) kept the
    lock while the object lived: the next run into the folder was refused."""
    folder, recipe = cohort

    def unreachable(self):
        raise ParameterError("cannot reach the Dask scheduler at tcp://127.0.0.1:1")

    failing = CohortRun(recipe, folder, tmp_path / "out", "tcp://127.0.0.1:1", batch=1)
    with monkeypatch.context() as m:
        m.setattr(CohortRun, "_connect", unreachable)
        with pytest.raises(ParameterError, match="cannot reach"):
            failing.start()
    run = CohortRun(recipe, folder, tmp_path / "out", client, batch=1).start()   # `failing` still alive
    list(run.as_completed())
    assert run.finish().ok and failing._lock is None


# ---------------------------------------------------------------------------- dashboard link
def test_no_dashboard_link_when_the_scheduler_serves_none(cohort, client, tmp_path):
    """Dask's dashboard_link names http://host:8787/status even when the scheduler serves no
    dashboard: the CLI and the widget showed a dead link (or another user's server)."""
    folder, recipe = cohort
    run = CohortRun(recipe, folder, tmp_path / "out", client, batch=1).start()
    try:
        assert run.dashboard == ""
        list(run.as_completed())
    finally:
        result = run.finish()
    assert result.dashboard == "" and result.ok


def test_run_cohort_prints_no_dead_dashboard_link(cohort, client, tmp_path, capsys):
    folder, recipe = cohort
    assert run_cohort(recipe, folder, tmp_path / "out", client, progress=True).ok
    assert "Dask dashboard" not in capsys.readouterr().out


def test_no_dashboard_link_for_a_local_cluster_without_one(cohort, tmp_path):
    folder, recipe = cohort
    run = CohortRun(recipe, folder, tmp_path / "out", workers=1, dashboard=False, batch=4).start()
    try:
        assert run.dashboard == ""
        list(run.as_completed())
    finally:
        result = run.finish()
    assert result.dashboard == "" and result.ok


def test_a_dashboard_served_is_linked(cohort, tmp_path):
    pytest.importorskip("bokeh")
    folder, recipe = cohort
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address="127.0.0.1:0") as served:
        run = CohortRun(recipe, folder, tmp_path / "out", served, batch=4).start()
        try:
            assert run.dashboard == served.dashboard_link and run.dashboard.endswith("/status")
        finally:
            run.cancel()
            run.finish()


# ---------------------------------------------------------------------------- cancel after the end
def test_a_cancel_after_every_case_finished_is_ok(cohort, client, tmp_path):
    """A Stop/Ctrl-C that came after every case had finished made result.ok False (the CLI exited
    1) beside a summary saying '0 failed, 0 cancelled'."""
    folder, recipe = cohort
    run = CohortRun(recipe, folder, tmp_path / "out", client, batch=1).start()
    list(run.as_completed())
    run.cancel()
    result = run.finish()
    assert result.cancelled and result.ok and result.failures == []
    assert result.counts == {"computed": len(IDS), "skipped": 0, "failed": 0, "cancelled": 0}


def test_cancelled_cases_are_not_failures(cohort, client, tmp_path):
    """counts['failed'] included the cancelled cases, and the summary listed them under
    'failures:' beside '0 failed, N cancelled'; the widget and cases.csv said 'cancelled'."""
    folder, recipe = cohort

    def stop(record, run):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    result = run_cohort(recipe, folder, out, client, progress=False, batch=1, on_update=stop)
    statuses = pd.read_csv(out / "cases.csv", keep_default_na=False)["status"].value_counts().to_dict()
    c = result.counts
    assert c["cancelled"] == statuses.get("cancelled", 0) >= 1 and c["failed"] == 0 == statuses.get("failed", 0)
    assert c["computed"] == statuses.get("done", 0) and sum(c.values()) == len(IDS)
    assert result.failures == [] and not result.ok
    first = result.summary().splitlines()[0]
    assert f"0 failed, {c['cancelled']} cancelled" in first and "failures:" not in result.summary()


# ---------------------------------------------------------------------------- the widget's Stop
def test_widget_stop_after_the_run_ended_keeps_the_summary(cohort, client, tmp_path):
    """Stop after the run had ended replaced the final summary by 'stopping: ...'."""
    pytest.importorskip("ipywidgets")
    from medlab.widgets import Cohort

    folder, recipe = cohort
    w = Cohort(recipe, folder, tmp_path / "out", client=client)
    w.start()
    assert w.wait(WAIT_S) and w.result is not None and w.result.ok
    summary = w.message.value
    assert "computed" in summary and w.stop_button.disabled
    assert w.dashboard.value == ""            # the scheduler serves no dashboard: no dead link
    w.stop()
    assert w.message.value == summary and not w.run.cancelled


def test_widget_bar_after_a_stop_with_no_failure_is_amber_not_red():
    """A Stop before any case finished painted the whole bar red ("everything failed")."""
    from types import SimpleNamespace

    from medlab.widgets.cohort import _bar_style

    stopped = SimpleNamespace(ok=False, counts={"computed": 0, "skipped": 0, "failed": 0, "cancelled": 4})
    failed = SimpleNamespace(ok=False, counts={"computed": 0, "skipped": 0, "failed": 1, "cancelled": 3})
    assert _bar_style(stopped) == "warning" and _bar_style(failed) == "danger"


# ---------------------------------------------------------------------------- scheduler lost
def test_cases_a_lost_scheduler_left_undone_say_so(cohort, tmp_path, monkeypatch):
    """A scheduler that died mid-run (Dask then cancels every future) left each open case with
    "cancelled before it finished", though nobody cancelled; they now name the lost scheduler."""
    from medlab.cohort import engine

    folder, recipe = cohort
    gate = tmp_path / "gate"
    gate.mkdir()
    real = engine.run_case

    def held(recipe_dict, functions, case, *args, **kwargs):
        if case.id == "sub1":
            (gate / "started").touch()
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and not (gate / "release").exists():
                time.sleep(0.01)
        return real(recipe_dict, functions, case, *args, **kwargs)

    monkeypatch.setattr(engine, "run_case", held)
    cluster = distributed.LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                                       host="127.0.0.1", protocol="tcp")
    address = cluster.scheduler_address
    try:
        run = CohortRun(recipe, folder, tmp_path / "out", address, batch=1).start()
        for record in run.as_completed():
            if record["case"] == "sub0":
                _wait_for(lambda: (gate / "started").exists(), "case sub1 to start")
                # the connection to the scheduler breaks (as when it dies, or the network fails)
                run.client.loop.add_callback(run.client.scheduler_comm.comm.abort)
        result = run.finish()
    finally:
        (gate / "release").touch()
        cluster.close()
    assert result.records["sub0"]["status"] == "done" and not result.cancelled
    for cid in ("sub1", "sub2", "sub3"):
        record = result.records[cid]
        assert record["status"] == "failed" and f"scheduler at {address} was lost" in record["error"], record
    assert [c for c, _ in result.failures] == ["sub1", "sub2", "sub3"] and result.counts["cancelled"] == 0
    table = pd.read_csv(tmp_path / "out" / "cases.csv", keep_default_na=False).set_index("case")
    assert list(table.status) == ["done", "failed", "failed", "failed"] and "was lost" in table.loc["sub3", "error"]
