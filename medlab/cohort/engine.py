"""Running a cohort on Dask from the client: a local cluster or a given one, one task per case,
live per-case status, failures isolated, cancel, and the tables at the end."""

from __future__ import annotations

import contextlib
import numbers
import os
import secrets
import shutil
import statistics
import time
import traceback as _traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import MedlabError, ParameterError, WriteError
from .cases import _as_recipe, list_cases
from .records import CASES_DIR, _checksums, _same_work, read_record, recipe_hash
from .results import CohortResult, _counts, write_tables
from .task import run_case, run_cases

BATCH_TARGET_S = 1.5
"""CPU seconds of work one Dask task aims at when cases are small enough to batch (automatic
``batch``): Dask's own cost per task (measured 4-14 ms of CPU between client, scheduler and
worker, and a result and its as-completed round trip) is then about 1 % of the task, instead
of 5-15 % of a 0.1 s case."""
MAX_BATCH = 32
SMALLEST_TASK_S = 0.25
"""The last tasks of a run shrink towards this many CPU seconds (guided self-scheduling,
Polychronopoulos & Kuck 1987): a worker that finishes early then waits at most about this long
for the others, instead of a whole :data:`BATCH_TARGET_S` batch (7 % of a 20 s run on two
workers), and Dask's cost per task is still under 10 % of it."""
CANCEL_GRACE_S = 5.0
"""Seconds a cancelled run waits for the cases already running to end before it reports.
Dask cannot stop a running task: a case running at the cancel goes on and may commit its
record after the cancel. Waiting a little (a small case takes well under a second) lets the
result, the summary and the tables say what is on disk; a case still running after this is
reported as such ("running at the cancel"), and a re-run skips it if it did finish. Bounded so
that Stop on a long case still returns promptly."""
CANCEL_POLL_S = 0.05
"""Seconds between two looks at the workers' running tasks while waiting after a cancel."""


WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 32 << 20, "MALLOC_TRIM_THRESHOLD_": 64 << 20}
"""glibc allocator settings of local workers: the state glibc's own dynamic thresholds reach in a
plain Python process (a freed block of up to 32 MiB raises the mmap threshold to its size and the
trim threshold to twice that), i.e. what a plain loop over the cases gets. Dask's default for
workers, ``MALLOC_TRIM_THRESHOLD_=65536``, returns every freed block to the kernel at once and
(any setting does) freezes the dynamic thresholds, so each array of a case was mapped afresh and
zero-filled page by page: a worker running the plain loop took 135,000 page faults and 0.38-0.44
system CPU-s for 60 small cases, against 10-30 and 0.12-0.15 with these (user CPU 5.1-5.2 s
either way; resident memory 201 against 207 MB). Arrays above 32 MiB are still mapped and
returned when freed. A value the user configured in Dask's ``pre-spawn-environ`` wins, and so
does a variable already in the environment (Dask's rule), including a ``MALLOC_TRIM_THRESHOLD_``
left in ``os.environ`` by an earlier default Dask cluster in the same process."""


def local_cluster(workers: int | None = None, *, dashboard: bool = True):
    """A local Dask cluster on 127.0.0.1: one worker process per core, one thread each.

    Returns ``(client, cluster)``; close both when done.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency
        raise MedlabError("cohort runs need dask.distributed: pip install 'dask[distributed]'") from None
    _check_workers(workers)
    n = workers or _cores()
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)
    except ImportError:
        dashboard = False
    import logging

    import dask

    # Dask's background work costs CPU in every process even when idle (measured 0.045 CPU-s per
    # second for a 1-worker cluster): the workers' statistical profiler samples every thread's
    # stack 100 times a second, the system monitor polls psutil twice a second. Without the
    # profiler (a dashboard tab cohort users rarely open) and with slower monitors (the memory
    # limit still applies, checked every second) it fell to 0.011-0.019 CPU-s per second.
    quiet = {"distributed.worker.profile.enabled": False, "distributed.admin.system-monitor.interval": "5s",
             "distributed.admin.tick.interval": "200ms", "distributed.worker.memory.monitor-interval": "1s",
             "distributed.nanny.pre-spawn-environ": _worker_environ(dask)}
    # Dask's nanny copies its pre-spawn variables into this process's os.environ to pass them on
    # (and again when it restarts a killed worker): put the caller's back, or every later
    # subprocess and Dask cluster of the session inherits these allocator thresholds
    saved = {k: os.environ.get(k) for k in {*quiet["distributed.nanny.pre-spawn-environ"], "PYTHONHASHSEED"}}
    try:
        with dask.config.set(quiet):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address="127.0.0.1:0" if dashboard else None,
                                   silence_logs=logging.ERROR)
    finally:
        _restore_environ(saved)
    cluster.medlab_environ = saved
    return Client(cluster), cluster


def _worker_environ(dask) -> dict:
    """Dask's pre-spawn variables with :data:`WORKER_MALLOC` in place of Dask's shipped default;
    an allocator setting the user configured themselves (one that differs from the shipped
    default) is kept."""
    configured = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    shipped = {}
    for defaults in dask.config.defaults:
        shipped.update(defaults.get("distributed", {}).get("nanny", {}).get("pre-spawn-environ") or {})
    ours = {k: v for k, v in WORKER_MALLOC.items() if k not in configured or configured[k] == shipped.get(k)}
    return {**configured, **ours}


def _restore_environ(saved: dict) -> None:
    """Environment variables back to ``saved`` (None: absent)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _check_workers(workers) -> None:
    """None (one per core) or a whole number >= 1 (0 meant one per core, silently)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, numbers.Integral)
                                or workers < 1):
        raise ParameterError(f"workers must be a whole number >= 1, or None for one per core; got {workers!r}")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


class CohortRun:
    """A cohort run in steps, for callers that watch it (the widget, the CLI).

    ``start()`` submits one task per case; iterating :meth:`as_completed` yields each case's
    record as it finishes (run it in a thread to keep a notebook responsive); :meth:`finish`
    writes the tables and closes a cluster it started. :func:`run_cohort` does all three.

    Parameters
    ----------
    recipe : Recipe or path
    inputs : folder, list of paths, CSV manifest or Cases
    out_dir : path
    client : distributed.Client or str, optional
        A client of any cluster, or a scheduler address; default a local cluster.
    workers : int, optional
        Worker processes of the local cluster (default: one per core).
    threads : int
        Threads each case may use (SimpleITK, torch); 1 with one worker per core.
    rerun : bool
        Recompute every case, even those done before with the same recipe and inputs.
    dashboard : bool
        Serve the Dask dashboard of a local cluster (on 127.0.0.1).
    batch : int, optional
        Cases per Dask task. Default (None): automatic -- one case per task at first (two in flight
        per worker thread); once a case computed by a warm worker (not its first, which pays the
        imports) tells how much CPU a byte of input takes, the rest are planned from each case's
        input bytes: large cases first, one per task, then batches of about
        :data:`BATCH_TARGET_S` CPU seconds (at most :data:`MAX_BATCH` cases) that shrink towards
        :data:`SMALLEST_TASK_S` as the work left runs out, so the workers finish together
        (see :meth:`CohortRun._plan`). Each case of a batch still has its
        own record, outputs, peak memory, live events and failure isolation; a batch whose
        worker died is sent again one case per task, and a case whose own task then dies is tried
        once more alone at the end (Dask also blames healthy cases queued beside it), so a case
        that kills workers fails alone.
        ``1``: always one case per task.
    on_event : callable, optional
        ``on_event(message)`` for live per-case events (step, progress, published values),
        called from the client's event loop thread.
    """

    def __init__(self, recipe, inputs, out_dir, client=None, *, workers: int | None = None, threads: int = 1,
                 rerun: bool = False, dashboard: bool = True, on_event: Callable[[dict], None] | None = None,
                 batch: int | None = None):
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1):
            raise ParameterError(f"batch must be a whole number >= 1, or None for automatic; got {batch!r}")
        if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
            raise ParameterError(f"threads (per case) must be a whole number >= 1; got {threads!r}")
        _check_workers(workers)
        self.recipe = _as_recipe(recipe)
        if not self.recipe.steps:
            raise ParameterError("the recipe has no steps: nothing to run")
        self.cases = list_cases(inputs, self.recipe)
        self.out_dir = Path(out_dir)
        self.recipe_sha = recipe_hash(self.recipe)
        self.threads, self.rerun, self.dashboard_wanted = int(threads), bool(rerun), dashboard
        self.workers = workers
        self._given = client
        self.client = self.cluster = None
        self.on_event = on_event
        self.status: dict[str, dict] = {c.id: {"case": c.id, "status": "queued"} for c in self.cases}
        self.records: dict[str, dict] = {}
        self.futures: list = []
        self.batch = None if batch is None else int(batch)
        self._pending: list = []  # cases not yet sent to Dask
        self._bytes: dict[str, int] = {}  # input bytes per case id (cost estimate)
        self._suspects: list = []  # cases whose worker died, to try again alone at the end
        self._tried_alone: set[str] = set()
        self._read: set = set()  # keys of the futures whose result was read
        self._by_id = {c.id: c for c in self.cases}
        self._completed = None  # the distributed.as_completed iterator, once watching
        self.topic = f"medlab-cohort-{secrets.token_hex(6)}"
        # who wrote a record: this run's tasks write this id in every record they commit. Not the
        # record file's time against the client's clock: a worker's host (a cluster node, a
        # network file system) has its own clock, and file times can be coarse
        self.run_id = uuid.uuid4().hex
        self._own_client = False
        self._lock = None
        self._t0 = 0.0
        self._dashboard = ""
        self._scheduler_address = ""
        self.cancelled = False

    # -- setup
    @property
    def dashboard(self) -> str:
        """The Dask dashboard's address, once started ('' when the scheduler serves none)."""
        return self._dashboard

    def start(self) -> CohortRun:
        """Take the output folder, connect (or start the local cluster) and send the first cases.

        On any failure (an unreachable scheduler, Ctrl-C during the cluster's start-up) the run
        is closed first (the folder released, a cluster it started stopped), then the error is
        raised: the next run into the folder is never refused because of this one."""
        self._t0 = time.perf_counter()
        try:
            self._prepare_out_dir()
            self.client = self._connect()
            self._scheduler_address = getattr(getattr(self.client, "scheduler", None), "address", None) or ""
            self._dashboard = self._find_dashboard()
            self.client.subscribe_topic(self.topic, self._on_event)
            self._functions = {s.stage: _stage_function(s.stage) for s in self.recipe.steps}
            self._recipe_dict = self.recipe.to_dict()
            self._run_key = secrets.token_hex(4)
            self._pending = list(self.cases)
            self._submit_more()
        except BaseException:
            self.close()
            raise
        return self

    def _find_dashboard(self) -> str:
        """The dashboard link, or '' when the scheduler serves no dashboard. Dask's
        ``client.dashboard_link`` cannot tell: a scheduler started without a dashboard still
        serves its HTTP routes (health, metrics) on 8787 and the link names /status there (a dead
        link, or another user's server)."""
        try:
            link = self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no HTTP server at all
            return ""
        try:
            served = self.client.run_on_scheduler(_serves_dashboard)
        except Exception:  # noqa: BLE001 - a scheduler refusing to run functions: Dask's word then
            return link
        return link if served else ""

    # -- sending cases
    def _submit_more(self) -> None:
        """Send queued cases: all at once with a fixed ``batch``; automatic: single cases, two in
        flight per worker thread, until a warm worker's case gives its time, then the rest as
        planned by :meth:`_plan`."""
        if self.cancelled:
            return
        if self.client is not None and self._scheduler_lost():   # nowhere to send them
            for case in self._pending + self._suspects:
                self._keep(self._lost_record(case.id))
            self._pending, self._suspects = [], []
            return
        if not self._pending:
            if self._suspects and not self._running():
                self._submit([self._suspects.pop(0)])   # one at a time, the cluster otherwise idle
            return
        if self.batch is not None:
            chunks = [self._pending[i:i + self.batch] for i in range(0, len(self._pending), self.batch)]
        else:
            rate = self._cpu_per_byte()
            if rate is None:
                # two cases in flight per worker thread: the second is queued on the worker (no idle
                # round trip between them) and is the first timed without the worker's warm-up
                busy = self._running()
                for _ in range(max(0, 2 * self._slots() - busy)):
                    if self._pending:
                        self._submit([self._pending.pop(0)])
                return
            chunks = self._plan(rate)
        self._pending = []
        for chunk in chunks:
            self._submit(chunk)

    def _running(self) -> int:
        """Tasks not yet read back. Not ``not f.done()``: a future read back turns 'lost' when the
        worker holding its result dies (a case killing workers), and is never done again."""
        return sum(not f.done() and f.key not in self._read for f in self.futures)

    def _input_bytes(self, case) -> int:
        """Bytes on disk of a case's inputs (a folder: all its files), the estimate of its cost."""
        if case.id not in self._bytes:
            self._bytes[case.id] = max(sum(source.nbytes() for source in case.inputs.values()), 1)
        return self._bytes[case.id]

    def _cpu_per_byte(self) -> float | None:
        """CPU seconds per input byte of the cases warm workers computed (median), or None yet.

        CPU seconds, not wall: Dask's cost per task is CPU, and a loaded machine stretches wall
        time. Not a worker's first case: it includes the imports and first calls (0.4-1 CPU-s,
        several times a small case), which made batches of ~2 cases where ~10 were meant."""
        rates = [r["timings"]["cpu_s"] / self._input_bytes(self._by_id[c]) for c, r in self.records.items()
                 if r.get("run") == "computed" and r.get("status") == "done" and "cpu_s" in r.get("timings", {})
                 and r.get("worker", {}).get("cases_before", 0) >= 1 and c in self._by_id]
        return max(statistics.median(rates), 1e-12) if rates else None

    def _plan(self, rate: float) -> list[list]:
        """The pending cases as Dask tasks, from each case's estimated CPU (``rate`` x its input bytes).

        * Cases of at least half :data:`BATCH_TARGET_S` go first, one per task, largest first
          (longest-processing-time first): a large case sent last kept one worker busy alone (the
          real CT of the benchmark after 200 small phantoms: two workers ran 1.3x one).
        * The rest, in their listed order, in batches of about :data:`BATCH_TARGET_S` (at most
          :data:`MAX_BATCH` cases), shrinking towards :data:`SMALLEST_TASK_S` as the work left
          runs out: each batch holds at most the work left / (2 x worker threads) (guided
          self-scheduling), so the run ends on small tasks and the workers finish together.

        The input bytes are a rough estimate (a compressed file holds more voxels per byte);
        it only orders the cases and sizes the batches, so a wrong one costs time, never a result.
        """
        cost = {c.id: rate * self._input_bytes(c) for c in self._pending}
        large = sorted((c for c in self._pending if cost[c.id] >= BATCH_TARGET_S / 2), key=lambda c: -cost[c.id])
        small = [c for c in self._pending if cost[c.id] < BATCH_TARGET_S / 2]
        chunks = [[c] for c in large]
        left, slots, i = sum(cost[c.id] for c in small), self._slots(), 0
        while i < len(small):
            aim = min(BATCH_TARGET_S, max(left / (2 * slots), SMALLEST_TASK_S))
            chunk, spent = [small[i]], cost[small[i].id]
            i += 1
            while i < len(small) and len(chunk) < MAX_BATCH and spent + cost[small[i].id] <= aim * (1 + 1e-9):
                chunk.append(small[i])
                spent += cost[small[i].id]
                i += 1
            chunks.append(chunk)
            left -= spent
        return chunks

    def _slots(self) -> int:
        """Worker threads of the cluster (at least 1: a cluster still scaling up may have none)."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a scheduler that does not answer: be conservative
            return 1

    def _submit(self, chunk: list) -> None:
        out = str(self.out_dir.resolve())
        kw = {"recipe_sha": self.recipe_sha, "topic": self.topic, "threads": self.threads, "rerun": self.rerun,
              "run_id": self.run_id, "pure": False}
        if len(chunk) == 1:
            again = "-alone" if chunk[0].id in self._tried_alone else ""   # a new key, or Dask returns the old error
            fut = self.client.submit(run_case, self._recipe_dict, self._functions, chunk[0], out,
                                     key=f"medlab-case-{chunk[0].id}-{self._run_key}{again}", **kw)
        else:
            fut = self.client.submit(run_cases, self._recipe_dict, self._functions, chunk, out,
                                     key=f"medlab-cases-{chunk[0].id}-{len(chunk)}-{self._run_key}", **kw)
        fut.medlab_cases = [c.id for c in chunk]
        self.futures.append(fut)
        if self._completed is not None:
            self._completed.add(fut)

    def _connect(self):
        if self._given is None:
            client, self.cluster = local_cluster(self.workers, dashboard=self.dashboard_wanted)
            return client
        if isinstance(self._given, str):
            from distributed import Client
            from distributed.comm import get_address_host_port

            try:
                if not self._given.startswith("inproc://"):   # checked before a Client: a half-made one stalls its collector
                    get_address_host_port(self._given)
                self._own_client = True
                return Client(self._given, timeout="20s")
            except OSError as exc:
                raise ParameterError(f"cannot reach the Dask scheduler at {self._given}: {exc}") from None
            except (ValueError, TypeError) as exc:   # Dask's address parser: no port, an http:// link
                raise ParameterError(f"client {self._given!r} is not a Dask scheduler address ({exc}); give one "
                                     "such as 'tcp://127.0.0.1:8786' (the scheduler's, not its dashboard's "
                                     "http:// link), a distributed.Client, or None for a local cluster") from None
        return self._given

    def _prepare_out_dir(self) -> None:
        from ..io import atomic_write_text

        cases_dir = self.out_dir / CASES_DIR
        try:
            cases_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create the output folder {cases_dir}: {exc.strerror or exc}") from None
        self._lock = _lock_folder(self.out_dir)
        for entry in cases_dir.iterdir():  # left by a killed worker or run; we hold the lock
            if entry.name.startswith(".") and entry.name.endswith((".partial", ".old")):
                shutil.rmtree(entry, ignore_errors=True)
        atomic_write_text(self.out_dir / "recipe.json", self.recipe.to_json() + "\n", overwrite=True)

    # -- watching
    def _on_event(self, event) -> None:
        msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if not isinstance(msg, dict):
            return
        if self._apply_event(msg) and self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event({k: v for k, v in msg.items() if k != "next"})
        if isinstance(msg.get("next"), dict):   # a batch's next case, announced with this one's end
            self._on_event(msg["next"])

    def _apply_event(self, msg: dict) -> bool:
        """Show a live event in its case's status row; False when it is not shown.

        A case with a record is settled: its row follows the record (:meth:`_keep`), never a later
        event (a case running at the cancel announced "done" after it was marked cancelled, and
        its row read "done" beside the error "cancelled before it finished")."""
        cid = msg.get("case")
        if cid not in self.status or cid in self.records:
            return False
        row = self.status[cid]
        if row.get("status") in ("done", "failed", "skipped", "cancelled") and msg.get("status") == "running":
            return False  # a late event of a finished case
        for k in ("status", "step", "steps", "stage", "fraction", "message", "seconds", "peak_mb"):
            if k in msg:
                row[k] = msg[k]
        if "live" in msg:
            row["live"] = msg["live"]
        return True

    def as_completed(self) -> Iterator[dict]:
        """Each case's record as it finishes (failed ones included; never raises for a case)."""
        from distributed import as_completed

        self._completed = as_completed(self.futures)
        for fut in self._completed:
            self._read.add(fut.key)
            records = self._records_of(fut)
            self._submit_more()
            yield from records

    def _records_of(self, fut) -> list[dict]:
        ids = fut.medlab_cases
        if fut.status == "finished":
            result = fut.result()
            records = [self._computed_here(r) for r in (result if isinstance(result, list) else [result])]
        elif fut.status == "cancelled" and not self.cancelled and self._scheduler_lost(fut):
            records = [self._done_on_disk(cid) or self._lost_record(cid) for cid in ids]
        elif fut.status == "cancelled":
            records = [self._done_on_disk(cid) or _cancelled(cid) for cid in ids]   # a batch stops between cases
        elif len(ids) > 1 and not self.cancelled:
            # a batch whose worker died (out of memory, killed) as often as Dask allows: its cases
            # go again one per task, so one that kills workers fails alone (done ones are skipped)
            for cid in ids:
                self._submit([self._by_id[cid]])
            return []
        else:  # the task itself failed: a worker died on it repeatedly, or it could not be sent
            exc = fut.exception()
            if (len(ids) == 1 and type(exc).__name__ == "KilledWorker" and ids[0] not in self._tried_alone
                    and not self._done_on_disk(ids[0])):
                # Dask blames every task a dead worker held, so a healthy case queued beside one
                # that kills workers can fail without having run: once more, alone, at the end
                self._tried_alone.add(ids[0])
                self._suspects.append(self._by_id[ids[0]])
                return []
            tb = "".join(_traceback.format_tb(fut.traceback())) if fut.traceback() is not None else ""
            records = [self._done_on_disk(cid) or {"case": cid, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                                   "traceback": tb, "run": "computed"} for cid in ids]
        for record in records:
            self._keep(record)
        return records

    def _scheduler_lost(self, fut=None) -> bool:
        """Whether the client lost its scheduler (it stopped, or the network failed): Dask then
        cancels every future (reason "scheduler-connection-lost") while it tries to reconnect."""
        reason = getattr(getattr(getattr(fut, "_state", None), "exception", None), "reason", "")
        status = getattr(self.client, "status", "running")
        return reason == "scheduler-connection-lost" or status in ("connecting", "closing", "closed")

    def _lost_record(self, case_id: str) -> dict:
        """The record of a case not finished when the scheduler was lost (nobody cancelled it)."""
        return {"case": case_id, "status": "failed", "run": "lost",
                "error": (f"the Dask scheduler at {self._scheduler_address or 'its address'} was lost before the "
                          "case finished (the scheduler stopped or the network failed); run again: a re-run "
                          "skips the cases done")}

    def _computed_here(self, record: dict) -> dict:
        """A record the worker found done on disk ("skipped") but which this run wrote (its
        ``run_id``): a case sent again after its batch's worker died, once it had committed. It
        was computed, not skipped. A record without a run id (older medlab) is an earlier run's."""
        if record.get("run") != "skipped" or not self._written_here(record):
            return record
        return {**record, "run": "computed"}

    def _written_here(self, record: dict | None) -> bool:
        """Whether this run's tasks committed ``record`` (it carries this run's id)."""
        return bool(record) and record.get("run_id") == self.run_id

    def _done_on_disk(self, case_id: str, *, earlier: bool = False) -> dict | None:
        """The record of a case whose task failed but which is done on disk, with this recipe and
        these inputs: a worker that died after the case committed, or a healthy case queued on a
        worker another case killed (Dask blames every task the dead worker held). None otherwise.

        With ``rerun``, a record of an earlier run does not count (the case was to be redone),
        unless ``earlier``: after a cancel, a case done before and not redone is still done."""
        case = self._by_id[case_id]
        folder = self.out_dir / CASES_DIR / case_id
        old = read_record(folder)
        if not old or old.get("status") != "done":
            return None
        try:
            sums = _checksums(case)
            new = {"recipe_sha256": self.recipe_sha, "truth_sha256": sums["truth_sha256"],
                   "inputs": {k: {"sha256": digest} for k, digest in sums["inputs"].items()}}
        except Exception:  # noqa: BLE001 - an input gone since: not done with these inputs
            return None
        if not _same_work(old, new, folder):
            return None
        fresh = self._written_here(old)
        if self.rerun and not fresh and not earlier:   # done before this run, which was asked to redo it
            return None
        return {**old, "run": "computed" if fresh else "skipped"}

    def _keep(self, record: dict) -> None:
        cid = record["case"]
        self.records[cid] = record
        row = self.status[cid]
        row["status"] = "skipped" if record.get("run") == "skipped" else record.get("status", "failed")
        row["seconds"] = record.get("timings", {}).get("total_s")
        row["peak_mb"] = record.get("memory", {}).get("peak_rss_mb")
        row["error"] = (record.get("error") or "").splitlines()[0] if record.get("error") else ""
        row.pop("fraction", None)

    def status_table(self):
        """The per-case status (queued, running step k/n, done, skipped, failed) as a DataFrame."""
        import pandas as pd

        cols = ["case", "status", "step", "steps", "stage", "fraction", "seconds", "peak_mb", "error"]
        return pd.DataFrame([{k: r.get(k) for k in cols} for r in self.status.values()], columns=cols)

    def cancel(self) -> None:
        """Stop: cancel every case not finished (finished ones stay, a re-run does the rest).

        Dask drops the tasks not started; those running go on (Dask cannot stop them), and
        :meth:`finish` waits up to :data:`CANCEL_GRACE_S` for them before it reports."""
        self.cancelled = True
        for case in self._pending + self._suspects:  # never sent (again)
            self._keep(_cancelled(case.id))
        self._pending, self._suspects = [], []
        if self.client is not None and self.futures:
            with contextlib.suppress(Exception):
                self.client.cancel([f for f in self.futures if not f.done()])

    # -- ending
    def finish(self) -> CohortResult:
        """Write the tables, close a cluster this run started, release the output folder.

        Every case has a record, in the cases' listed order (not the order they finished in).
        After a cancel, the cases still running get up to :data:`CANCEL_GRACE_S` to end; then
        each case not read back is settled from its record on disk: done (with this recipe and
        these inputs; computed if this run wrote it), failed (this run's failed record), still
        running (it may yet commit: a re-run skips it then), or cancelled. The result, its
        summary, the status table and cases.csv all come from these records."""
        try:
            if self.cancelled:
                self._settle_after_cancel()
            self.records = {c.id: self.records[c.id] for c in self.cases if c.id in self.records}
            cases, results = write_tables(self.out_dir, self.cases, self.records)
        finally:
            self.close()
        return CohortResult(self.out_dir, cases, results, dict(self.records), time.perf_counter() - self._t0,
                            self._dashboard, self.cancelled)

    def _settle_after_cancel(self) -> None:
        """The record of every case a cancel left open (none yet, or a "cancelled" placeholder),
        once the tasks still running ended or :data:`CANCEL_GRACE_S` passed."""
        running = self._wait_for_running_cases(CANCEL_GRACE_S)
        for fut in self.futures:   # finished, but not read back (the loop stopped at the cancel)
            if fut.key not in self._read and getattr(fut, "status", "") == "finished":
                self._read.add(fut.key)
                with contextlib.suppress(Exception):
                    self._records_of(fut)
        for case in self.cases:
            record = self.records.get(case.id)
            if record is None or record.get("status") == "cancelled":
                self._keep(self._settled(case.id, case.id in running))

    def _settled(self, case_id: str, running: bool) -> dict:
        """A cancel-affected case's record, from disk: done, this run's failure, or cancelled."""
        done = self._done_on_disk(case_id, earlier=True)
        if done is not None:
            return done
        disk = read_record(self.out_dir / CASES_DIR / case_id)
        if self._written_here(disk) and disk.get("status") == "failed":   # it ran, and failed, after the cancel
            return {**disk, "run": "computed"}
        return _cancelled(case_id, running=running)

    def _wait_for_running_cases(self, grace: float) -> set[str]:
        """Wait (at most ``grace`` seconds) until no task of this run runs on a worker; the cases
        of the tasks still running then. When the workers cannot be asked, every task not finished
        is taken as still running (which may be too many, never too few); so it is after a second
        Ctrl-C, which ends the wait."""
        cases = {f.key: f.medlab_cases for f in self.futures}
        unfinished = {f.key for f in self.futures if getattr(f, "status", "") != "finished"}
        deadline = time.monotonic() + grace
        # workers that do not answer, or a second Ctrl-C: the tasks not finished may still run
        with contextlib.suppress(Exception, KeyboardInterrupt):
            while unfinished:
                unfinished = {k for ks in self.client.run(_running_keys).values() for k in ks} & cases.keys()
                if not unfinished or time.monotonic() >= deadline:
                    break
                time.sleep(CANCEL_POLL_S)
        return {cid for k in unfinished for cid in cases[k]}

    def close(self) -> None:
        if self.client is not None and not self._scheduler_lost():   # else it waits for the reconnection
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)
        if self.cluster is not None or (self._own_client and self.client is not None):
            with contextlib.suppress(Exception):
                self.client.close()
            with contextlib.suppress(Exception):
                self.cluster.close()
            _restore_environ(getattr(self.cluster, "medlab_environ", {}))   # a worker restarted after a kill set them again
            self.cluster = None
        if self.cluster is None and (self._own_client or self._given is None):
            self.client = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _cancelled(case_id: str, *, running: bool = False) -> dict:
    """The record of a case the run was cancelled before; ``running``: its task was still
    running when the run reported (Dask cannot stop it), so it may yet finish."""
    error = ("running at the cancel: may still finish; a re-run skips it if it did" if running
             else "cancelled before it finished")
    return {"case": case_id, "status": "cancelled", "error": error, "run": "cancelled"}


def _serves_dashboard(dask_scheduler) -> bool:
    """Whether the scheduler serves the Bokeh dashboard (run on the scheduler): Dask adds it to
    the scheduler's HTTP application only when the dashboard is on and Bokeh is installed."""
    return bool(getattr(dask_scheduler.http_application, "applications", None))


def _running_keys(dask_worker) -> list:
    """The keys of the tasks running on a worker (cancelled ones still running included: Dask
    keeps them in ``executing`` until they return)."""
    state = dask_worker.state
    return [ts.key for ts in (*state.executing, *getattr(state, "long_running", ()))]


def _stage_function(name: str) -> Callable:
    from ..stage import get_stage

    return get_stage(name).function


def _lock_folder(folder: Path):
    """Hold ``<folder>/.medlab-cohort.lock`` for the run: two runs never write one folder at once."""
    fh = open(folder / ".medlab-cohort.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # pragma: no cover - Windows
        pass
    except OSError:
        fh.close()
        raise ParameterError(f"another medlab run is writing to {folder}; wait for it or choose another --out") from None
    return fh


def run_cohort(recipe, inputs, out_dir, client=None, *, workers: int | None = None, threads: int = 1,
               rerun: bool = False, progress: bool = True, dashboard: bool = True,
               on_update: Callable[[dict, CohortRun], None] | None = None, batch: int | None = None) -> CohortResult:
    """Run a recipe on every case of a cohort, on Dask; resumable, failures isolated.

    Parameters
    ----------
    recipe : Recipe or path
        What to run (a :class:`~medlab.recipe.Recipe`, or its JSON file).
    inputs : folder, sequence of paths, CSV manifest, or Cases
        The cases (see :func:`list_cases`); all are checked before any work.
    out_dir : path
        Where outputs, per-case records and the result tables go (created if needed).
    client : distributed.Client or str, optional
        Run on this cluster (any: local, Slurm through dask-jobqueue, Kubernetes) or on the
        scheduler at this address. Default: a local cluster of ``workers`` processes, one
        thread each, dashboard on 127.0.0.1, closed at the end.
    workers : int, optional
        Processes of the local cluster (default: one per core).
    threads : int
        Threads per case for SimpleITK and torch (keep 1 with one worker per core).
    rerun : bool
        Recompute cases done before with the same recipe and inputs (default: skip them).
    progress : bool
        Show the dashboard link and a progress bar (tqdm; a notebook bar in Jupyter).
    dashboard : bool
        Serve the local cluster's dashboard.
    on_update : callable, optional
        ``on_update(record, run)`` after each case; raising ``KeyboardInterrupt`` in it stops the
        run like Ctrl-C (finished cases are kept, a re-run does the rest).
    batch : int, optional
        Cases per Dask task: automatic by default (small cases go in batches of about a second
        of work, each still with its own record; see :class:`CohortRun`), ``1`` for one per task.

    Returns
    -------
    CohortResult
        ``.cases`` and ``.results`` (pandas DataFrames, also written as CSV and Parquet),
        ``.failures``, ``.counts``, ``.records``, ``.summary()``.

    Raises
    ------
    ManifestError
        The inputs were refused before any work.

    Examples
    --------
    >>> result = run_cohort("recipe.json", "manifest.csv", "out/")       # doctest: +SKIP
    >>> print(result.summary())                                          # doctest: +SKIP
    """
    run = CohortRun(recipe, inputs, out_dir, client, workers=workers, threads=threads, rerun=rerun,
                    dashboard=dashboard, batch=batch)
    run.start()   # on failure (Ctrl-C during the cluster's start-up too) it closes itself and raises
    bar = None
    try:
        if progress:
            if run.dashboard:
                print(f"Dask dashboard: {run.dashboard}", flush=True)
            from tqdm.auto import tqdm

            bar = tqdm(total=len(run.cases), desc="cases", unit="case")
        for record in run.as_completed():
            if bar is not None:
                bar.update(1)
                c = _counts(run.records.values())
                bar.set_postfix(done=c["computed"], skipped=c["skipped"], failed=c["failed"], refresh=False)
            if on_update is not None:
                on_update(record, run)
    except KeyboardInterrupt:
        run.cancel()
    except BaseException:
        run.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    return run.finish()

