"""What one Dask task does on a worker: run the recipe on one case, with its peak memory, live
events to the client, and every failure kept in the case's record (never raised)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ParameterError
from .cases import Case
from .records import (
    CASES_DIR,
    RECORD_SCHEMA,
    _checksums,
    _commit,
    _now,
    _same_work,
    read_record,
    summarize_live,
)
from .results import _table_numbers, numbers_of

EVENT_EVERY = 0.5
"""Seconds between two live progress events of one case (step changes are always sent)."""

_computed_here = 0
"""Cases this process computed so far: its first pays the imports and first calls (a warm-up
of about 0.4-1 CPU-s on a fresh worker), so automatic batches are sized from later ones."""


def run_case(recipe_dict: dict, functions: Mapping[str, Callable], case: Case, out_dir: str, *,
             recipe_sha: str, topic: str | None = None, threads: int = 1, rerun: bool = False,
             announce: bool = True, run_id: str = "") -> dict:
    """Run one case and write its outputs and record (what each Dask task does).

    Returns the case record; ``record["run"]`` says whether it was ``computed`` or ``skipped``
    (done before with the same recipe and inputs). Never raises for a failing case: the error
    and traceback go into the record. ``announce=False``: no event when the case starts (a batch
    announces it in the previous case's end event); progress events after
    :data:`EVENT_EVERY` seconds are sent either way. ``run_id``: the client's run, written in
    every record this task commits (``record["run_id"]``), so the client knows which records its
    own run wrote (a skipped case keeps the record, and the id, of the run that computed it).
    """
    from .. import __version__

    t0, cpu0 = time.perf_counter(), time.process_time()
    started = _now()
    emit = _emitter(topic)
    cases_dir = Path(out_dir) / CASES_DIR
    final = cases_dir / case.id
    record: dict[str, Any] = {"schema": RECORD_SCHEMA, "version": 1, "case": case.id, "status": "failed",
                              "recipe_sha256": recipe_sha, "medlab_version": __version__,
                              "inputs": {k: {"path": v.path, "series": v.series} for k, v in case.inputs.items()},
                              "truth": {k: v.path for k, v in case.truth.items()}, "worker": _worker_info(),
                              "started": started, "run_id": run_id}
    try:
        sums = _checksums(case)
        for k, digest in sums["inputs"].items():
            record["inputs"][k]["sha256"] = digest
        record["truth_sha256"] = sums["truth_sha256"]
        old = read_record(final)
        if not rerun and _same_work(old, record, final):
            old["run"] = "skipped"
            return old
    except Exception as exc:  # noqa: BLE001 - any failure belongs to this case only
        return _finish_failed(record, exc, cases_dir, t0, emit)
    staging = cases_dir / f".{case.id}.{secrets.token_hex(4)}.partial"
    memory = _Memory()
    live: dict[str, dict] = {}
    try:
        staging.mkdir(parents=True)
        _ensure_stages(functions)
        with _limit_threads(threads):
            record.update(_compute(recipe_dict, case, staging, emit, live, announce))
        record["status"] = "done"
    except Exception as exc:  # noqa: BLE001
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = _traceback.format_exc()
        for f in staging.iterdir() if staging.is_dir() else ():  # a failed case keeps its record only
            shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
    finally:
        record["memory"] = memory.stop()
        record["live"] = {step: {"stage": e["stage"], "values": {k: summarize_live(v) for k, v in e["values"].items()}}
                          for step, e in live.items()}
    record.setdefault("timings", {})["total_s"] = round(time.perf_counter() - t0, 4)
    global _computed_here
    record["worker"]["cases_before"] = _computed_here   # 0: this process's first case, warm-up included
    _computed_here += 1
    # CPU seconds of the worker process over the case: unlike wall time, not stretched by a busy
    # machine (sizes automatic batches); library threads included, other tasks of a
    # multi-threaded worker too (an overestimate, so batches err small)
    record["timings"]["cpu_s"] = round(time.process_time() - cpu0, 4)
    record["finished"] = _now()
    record["run"] = "computed"
    try:
        _commit(staging, final, record)
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk while writing the record
        shutil.rmtree(staging, ignore_errors=True)
        return _finish_failed(record, exc, cases_dir, t0, emit)
    return record


def run_cases(recipe_dict: dict, functions: Mapping[str, Callable], cases: list[Case], out_dir: str, *,
              recipe_sha: str, topic: str | None = None, threads: int = 1, rerun: bool = False,
              run_id: str = "") -> list[dict]:
    """Run several small cases in one Dask task, one after the other: :func:`run_case` for each
    (its own record, outputs, peak memory and failure isolation), and an event when each ends,
    so the client's per-case status stays live. Dask's own cost per task (4-14 ms of CPU
    between client, scheduler and worker) is then paid once per batch, not once per case.

    One event per case: the end of a case also announces the next one as running (each event
    costs CPU in the worker, the scheduler and the client; two per case of 0.1 s were measurable).
    """
    emit = _emitter(topic)
    still_wanted = _still_wanted()
    steps = recipe_dict.get("steps") or [{}]
    records = []
    for i, case in enumerate(cases):
        record = run_case(recipe_dict, functions, case, out_dir, recipe_sha=recipe_sha, topic=topic, threads=threads,
                          rerun=rerun, announce=i == 0, run_id=run_id)
        records.append(record)
        more = i + 1 < len(cases) and still_wanted()   # False once the run was cancelled: the rest is left for a re-run
        msg = {"case": case.id, "status": "skipped" if record.get("run") == "skipped" else record.get("status", "failed"),
               "seconds": record.get("timings", {}).get("total_s"), "peak_mb": record.get("memory", {}).get("peak_rss_mb")}
        if more:
            msg["next"] = {"case": cases[i + 1].id, "status": "running", "step": 1, "steps": len(steps),
                           "stage": steps[0].get("stage", ""), "fraction": 0.0}
        emit(msg)
        if not more:
            break
    return records


def _still_wanted() -> Callable[[], bool]:
    """Whether the client still wants this task's result: False once the run was cancelled
    (Dask cannot stop a running task; a batch stops between two cases instead)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        key = worker.get_current_task()
    except (ImportError, ValueError):
        return lambda: True

    def wanted() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is not None and ts.state == "executing"

    return wanted


def _finish_failed(record: dict, exc: Exception, cases_dir: Path, t0: float, emit) -> dict:
    record.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=_traceback.format_exc(),
                  finished=_now(), run="computed")
    record.setdefault("timings", {})["total_s"] = round(time.perf_counter() - t0, 4)
    staging = cases_dir / f".{record['case']}.{secrets.token_hex(4)}.partial"
    with contextlib.suppress(Exception):
        staging.mkdir(parents=True)
        _commit(staging, cases_dir / record["case"], record)
    return record


def _worker_info() -> dict:
    import socket

    info = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        from distributed import get_worker

        info["address"] = get_worker().address
    except (ImportError, ValueError):
        info["address"] = ""
    return info


def _compute(recipe_dict: dict, case: Case, staging: Path, emit, live: dict, announce: bool = True) -> dict:
    from ..metrics import segmentation_scores
    from ..outputs import fingerprint
    from ..recipe import Recipe
    from ..stage import progress_to

    recipe = Recipe.from_dict(recipe_dict, f"recipe of case {case.id}")
    timings: dict[str, Any] = {}
    t = time.perf_counter()
    values = {k: src.load(recipe.inputs.get(k, {}).get("type", "image")) for k, src in case.inputs.items()}
    timings["load_s"] = round(time.perf_counter() - t, 4)
    fingerprints = {k: fingerprint(v) for k, v in values.items()}
    state = {"step": "", "index": 0, "last": time.perf_counter(), "started": time.perf_counter()}
    steps: dict[str, float] = {}
    n = len(recipe.steps)

    def on_step(i: int, total: int, stage_name: str) -> None:
        now = time.perf_counter()
        if state["step"]:
            steps[state["step"]] = round(now - state["started"], 4)
        due = now - state["last"] >= EVENT_EVERY or (i == 0 and announce)
        state.update(step=recipe.steps[i].id, index=i + 1, started=now)
        if due:  # events cost the scheduler CPU: a fast case sends one, a slow one one per EVENT_EVERY
            state["last"] = now
            emit({"case": case.id, "status": "running", "step": i + 1, "steps": total, "stage": stage_name,
                  "fraction": 0.0})

    def on_progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - state["last"] >= EVENT_EVERY:
            state["last"] = now
            emit({"case": case.id, "status": "running", "step": state["index"], "steps": n,
                  "fraction": round(float(fraction), 3), "message": message})

    def on_publish(stage_name: str, published: dict) -> None:
        # keep references; summarised when sent and at the end (a curve grows in place)
        entry = live.setdefault(state["step"] or "step?", {"stage": stage_name, "values": {}})
        entry["values"].update(published)
        now = time.perf_counter()
        if now - state["last"] >= EVENT_EVERY:
            state["last"] = now
            emit({"case": case.id, "status": "running", "step": state["index"], "steps": n,
                  "live": {k: summarize_live(v) for k, v in published.items()}})

    with progress_to(on_progress, None, publish=on_publish):
        outputs = recipe.run(**values, progress=on_step)
    if state["step"]:
        steps[state["step"]] = round(time.perf_counter() - state["started"], 4)
    timings["steps"] = steps
    t = time.perf_counter()
    saved, label_names = _save_outputs(outputs, staging)
    timings["save_s"] = round(time.perf_counter() - t, 4)
    numbers = numbers_of(outputs, recipe)
    scores = {}
    for key, src in case.truth.items():
        pred = outputs.get(key)
        if pred is None:
            raise ParameterError(f"ground truth given for {key!r}, which this recipe does not produce")
        truth = src.load(label=True)
        rows = segmentation_scores(pred, truth, resample=not pred.same_grid(truth))
        scores[key] = rows
        step, out = key.split(".", 1)
        stage_name = next(s.stage for s in recipe.steps if s.id == step)
        numbers += _table_numbers(step, stage_name, f"{out} vs truth", rows, {})
    return {"outputs": {k: p.name for k, p in saved.items()}, "label_names": label_names, "numbers": numbers,
            "timings": timings, "fingerprints": fingerprints, "steps": [{"id": s.id, "stage": s.stage} for s in recipe.steps]}


def _save_outputs(outputs: Mapping[str, Any], folder: Path) -> tuple[dict[str, Path], dict[str, dict]]:
    """Save every output as :meth:`RecipeOutputs.save` names it (``step1_image.nii.gz``), and
    return ``({key: path}, {key: label names})``.

    NIfTI has no place for label names, so :func:`medlab.save` warns that they are lost. In a
    cohort they are not: the names of each label output go into the case's record (read back
    by :func:`~medlab.cohort.load_output`), and the map is saved without them, so no worker
    prints that warning once per case. The file's bytes are the same either way (the NIfTI
    writer never stores names).
    """
    from ..image import Image
    from ..outputs import default_suffix, save_output

    saved: dict[str, Path] = {}
    names: dict[str, dict] = {}
    for key, value in outputs.items():
        suffix = default_suffix(value) if value is not None else ""
        if not suffix:
            continue
        if isinstance(value, Image) and value.is_label and value.labels and suffix.startswith(".nii"):
            names[key] = {str(v): {"name": lab.name, "color": list(lab.color)} for v, lab in value.labels.items()}
            value = value.with_array(value.array, labels={})
        saved[key] = save_output(value, folder / f"{key.replace('.', '_')}{suffix}")
    return saved, names


class _Memory:
    """Peak resident memory of this process during one case.

    Linux: the kernel's high-water mark (VmHWM), reset at the start by writing 5 to
    ``/proc/self/clear_refs``: exact, no sampling. Elsewhere: psutil's RSS sampled every 50 ms.
    One task per worker process (threads_per_worker=1) makes it the case's own peak.
    """

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.start_mb = self.proc.memory_info().rss / 1e6
        self.kernel = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.kernel = self._hwm() is not None
        except OSError:
            pass
        self.peak = self.start_mb
        self._stop = threading.Event()
        if not self.kernel:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def _hwm() -> float | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / 1e6
        except OSError:
            return None
        return None

    def _sample(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.proc.memory_info().rss / 1e6)

    def stop(self) -> dict:
        self._stop.set()
        peak = self._hwm() if self.kernel else max(self.peak, self.proc.memory_info().rss / 1e6)
        return {"peak_rss_mb": round(peak or 0.0, 1), "start_rss_mb": round(self.start_mb, 1),
                "method": "VmHWM" if self.kernel else "psutil sampling"}


def _emitter(topic: str | None) -> Callable[[dict], None]:
    """Send live events to the client (Dask's structured events), or nowhere outside a worker."""
    if topic is None:
        return lambda msg: None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return lambda msg: None
    return lambda msg: worker.log_event(topic, msg)


def _ensure_stages(functions: Mapping[str, Callable]) -> None:
    """Make the recipe's stages known in this process. Stages of importable modules registered
    themselves when their function was unpickled; one defined in a notebook arrives by value
    (cloudpickle) without its registration, so it is added here."""
    from .. import stage as stage_module

    for fn in functions.values():
        spec = getattr(fn, "stage", None)
        if spec is not None:
            stage_module.register(spec)


@contextlib.contextmanager
def _limit_threads(threads: int):
    """SimpleITK's and torch's thread pools at ``threads`` for one case, restored after (a
    worker in the client's own process must not change the session's settings)."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    torch = sys.modules.get("torch")
    torch_before = torch.get_num_threads() if torch is not None else None
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    if torch is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
        if torch is not None and torch_before is not None:
            torch.set_num_threads(torch_before)

