"""Run a recipe over a cohort on Dask: one task per case, resumable, with nothing lost.

A recipe designed on one case in the widgets runs unchanged on hundreds: :func:`run_cohort`
sends one task per case to a ``dask.distributed`` cluster (a local one by default: one worker
process per core, one thread each; or any ``distributed.Client`` -- a scheduler address,
dask-jobqueue on Slurm, Kubernetes). medlab writes no scheduler of its own.

What a run guarantees
---------------------
* **Check first.** :func:`list_cases` lists every case before any work: each DICOM series and
  image file of a folder, each path of a list, or each row of a CSV manifest. A manifest with
  missing files, duplicated rows, unknown columns, or without a column the recipe needs is
  refused (:class:`ManifestError`, naming the rows) before anything runs.
* **Failure isolation.** A case that fails (a corrupt file, a stage error) is recorded with
  its error and traceback; the others go on. A worker that dies mid-case (killed, out of
  memory) has its case rescheduled by Dask on another worker.
* **Nothing partial.** A case's outputs and its record are written into a hidden staging
  folder, then the folder is renamed to ``cases/<case>``: a case folder exists only complete.
* **Resumable and idempotent.** Each case folder holds ``record.json``: the recipe's hash, the
  input checksums (SHA-256 of the files) and image fingerprints, the medlab version, timings,
  peak memory, the summarised live results the stages published (a curve's length and last
  point, not every iteration), and every number produced. A re-run skips a case done with the
  same recipe and inputs, and redoes one whose recipe or input changed.
* **Results.** ``results.csv`` / ``results.parquet``: every number a stage produced, one row
  per number (case, step, stage, output, row, label, name, quantity, value, unit), with segmentation
  scores (:func:`medlab.metrics.segmentation_scores`) against ground truth when the manifest
  gives it. ``cases.csv`` / ``cases.parquet``: one row per case (status, timings, memory,
  error, and the numbers of one-row outputs as columns).

Layout of ``out_dir``::

    recipe.json               the recipe that ran
    cases/<case>/record.json  per case: provenance, timings, memory, numbers, or the error
    cases/<case>/step1_image.nii.gz ...   every output of every step (RecipeOutputs.save)
    cases.csv, cases.parquet, results.csv, results.parquet

Ground truth in a manifest
--------------------------
A column ``truth`` holds the reference label map of the recipe's last label output;
``truth_<output>`` names another one, as ``truth_step2.labels`` or, when only one step has it,
``truth_labels``. A ``case`` column names the cases (default: from the first input's file name).

Examples
--------
>>> from medlab.cohort import list_cases, run_cohort
>>> cases = list_cases("scans/", recipe)                # check the list first  # doctest: +SKIP
>>> result = run_cohort(recipe, cases, "out/")          # doctest: +SKIP
>>> result.failures                                     # doctest: +SKIP
>>> result.results.pivot_table(index="case", columns="quantity", values="value")  # doctest: +SKIP

De-identifying a cohort's DICOM on the same machinery: :func:`deidentify_cohort` (one task per
series; see its docstring for why it is not a recipe step). In a notebook,
``medlab.widgets.Cohort`` shows the case list, the live per-case table and the failures.

On an existing cluster:

>>> from distributed import Client                     # doctest: +SKIP
>>> run_cohort(recipe, "manifest.csv", "out/", client=Client("tcp://10.0.0.5:8786"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import sys
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MedlabError, ParameterError, ReadError, WriteError

__all__ = ["Case", "Cases", "CohortResult", "CohortRun", "ManifestError", "Source", "deidentify_cohort",
           "list_cases", "recipe_hash", "run_cohort"]

RECORD = "record.json"
RECORD_SCHEMA = "medlab.cohort.case"
CASES_DIR = "cases"
EVENT_EVERY = 0.5
"""Seconds between two live progress events of one case (step changes are always sent)."""


class ManifestError(ParameterError):
    """A cohort's inputs are refused before any work: the message names every bad row."""


# ---------------------------------------------------------------------------- sources and cases
@dataclass(frozen=True)
class Source:
    """One input of one case: a file, or a DICOM folder (with a series selector when it holds several).

    Parameters
    ----------
    path : str
        The file or folder.
    series : str or int, optional
        SeriesInstanceUID or SeriesNumber of the series to read from a folder holding several.
    """

    path: str
    series: str | int | None = None

    def __str__(self) -> str:
        return self.path if self.series is None else f"{self.path} [series {self.series}]"

    def load(self, kind: str = "image", *, label: bool = False):
        """Read it as a recipe input of type ``kind`` (image, transform or model)."""
        if kind == "transform":
            from .outputs import Transform

            return Transform.load(self.path)
        if kind == "model":
            from .outputs import Checkpoint

            return Checkpoint.load(self.path)
        from .io import load

        return load(self.path, series=self.series, kind="label" if label else None)

    def checksum(self) -> str:
        """SHA-256 of the file's bytes (a folder: of every file's relative path and bytes)."""
        path = Path(self.path)
        h = hashlib.sha256()
        if path.is_dir():
            for f in _files_below(path):
                h.update(str(f.relative_to(path)).encode() + b"\0")
                _hash_file(f, h)
        else:
            _hash_file(path, h)
        return h.hexdigest()


def _files_below(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / f for f in sorted(files) if not f.startswith(".")]
    return out


def _hash_file(path: Path, h) -> None:
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise ReadError(f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Case:
    """One case: a source per recipe input, optional ground truth per label output."""

    id: str
    inputs: dict[str, Source]
    truth: dict[str, Source] = field(default_factory=dict)
    description: str = ""
    row: int | None = None

    def __hash__(self) -> int:
        return hash(self.id)


class Cases(list):
    """The cases of a cohort, shown as a table (``.table`` is a pandas DataFrame)."""

    @property
    def table(self):
        import pandas as pd

        rows = []
        for c in self:
            row = {"case": c.id, **{k: str(v) for k, v in c.inputs.items()},
                   **{f"truth_{k}": str(v) for k, v in c.truth.items()}}
            if c.description:
                row["what"] = c.description
            rows.append(row)
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        if not self:
            return "no cases"
        import pandas as pd

        with pd.option_context("display.max_colwidth", 70, "display.width", 160):
            return f"{len(self)} case(s)\n{self.table.to_string(index=False, max_rows=40)}"

    def _repr_html_(self) -> str:
        return f"<b>{len(self)} case(s)</b>" + self.table.to_html(index=False, max_rows=40)

    def __getitem__(self, item):
        out = super().__getitem__(item)
        return Cases(out) if isinstance(item, slice) else out


def list_cases(inputs, recipe=None) -> Cases:
    """The cases a cohort run would process, listed before any work so they can be checked.

    Parameters
    ----------
    inputs : str, Path, sequence of paths, or Cases
        A folder (every DICOM series and image file found in it, searched recursively), a
        list of files or DICOM folders (one case each), or a CSV manifest (``.csv``) with a
        column per recipe input, optional ``case`` and ``truth``/``truth_<output>`` columns.
        Relative paths in a manifest are relative to the manifest's folder.
    recipe : Recipe or path, optional
        The recipe to check a manifest against (its inputs and label outputs). A folder or a
        list needs a recipe with exactly one input (default name ``image``).

    Returns
    -------
    Cases
        A list of :class:`Case`; ``.table`` shows it as a DataFrame.

    Raises
    ------
    ManifestError
        Missing files, duplicated rows or case names, unknown columns, an input of the recipe
        without a column, empty cells; every bad row is named.

    Examples
    --------
    >>> cases = list_cases("manifest.csv", recipe)       # doctest: +SKIP
    >>> cases.table.head()                                # doctest: +SKIP
    """
    recipe = _as_recipe(recipe) if recipe is not None else None
    if isinstance(inputs, Cases):
        cases = inputs
    elif isinstance(inputs, (str, os.PathLike)) and Path(inputs).suffix.lower() == ".csv":
        return read_manifest(inputs, recipe)
    elif isinstance(inputs, (str, os.PathLike)):
        folder = Path(inputs)
        if not folder.is_dir():
            raise ManifestError(f"cohort inputs {folder} is neither a folder nor a CSV manifest (.csv)"
                                + ("; it does not exist" if not folder.exists() else ""))
        cases = _cases_in_folder(folder, _single_input(recipe, "a folder"))
    elif isinstance(inputs, Iterable):
        cases = _cases_from_paths(list(inputs), _single_input(recipe, "a list of paths"))
    else:
        raise ManifestError(f"cohort inputs must be a folder, a list of paths or a CSV manifest; got {type(inputs).__name__}")
    if not cases:
        raise ManifestError(f"no images found in {inputs}: the cohort is empty")
    if recipe is not None:
        names = set(recipe.inputs) or {"image"}
        for c in cases:
            if set(c.inputs) != names:
                raise ManifestError(f"case {c.id!r} has inputs {sorted(c.inputs)}; the recipe needs {sorted(names)}")
    return cases


def _single_input(recipe, what: str) -> str:
    if recipe is None or not recipe.inputs:
        return "image"
    if len(recipe.inputs) != 1:
        cols = ",".join(["case", *recipe.inputs])
        raise ManifestError(f"this recipe has inputs {list(recipe.inputs)}: {what} cannot say which file is which; "
                            f"give a CSV manifest whose header is {cols}")
    return next(iter(recipe.inputs))


def _cases_in_folder(folder: Path, name: str) -> Cases:
    from .io import formats, list_series

    found: list[tuple[str, Source, str]] = []
    series = list_series(folder) if _has_dicom(folder) else []
    dicom_files = {f for s in series for f in s.files}
    for info in series:
        parent = Path(os.path.commonpath([str(f.parent) for f in info.files]))
        others = [f for f in dicom_files if parent in f.parents and f not in set(info.files)]
        selector = None
        if others:
            same = [s for s in series if s is not info and s.uid and s.uid == info.uid]
            selector = info.uid if info.uid and not same else info.number
            if selector is None:
                raise ManifestError(f"{parent} holds several DICOM series without UIDs or numbers to tell them apart; "
                                    "move each series into its own folder")
        rel = parent.relative_to(folder).as_posix()
        label = (rel if rel != "." else folder.name) + (f"_{selector}" if selector is not None and others else "")
        dims = "×".join(map(str, info.size))
        found.append((label, Source(str(parent), selector),
                      f"DICOM {info.modality or '?'} {dims}, {len(info.files)} file(s): {info.description}".rstrip(": ")))
    for f in _files_below(folder):
        suffix = formats.suffix_of(f)
        if f in dicom_files or suffix not in formats.READ_SUFFIXES:
            continue
        if suffix == ".img" and f.with_suffix(".hdr").exists():
            continue  # the voxels of an Analyze .hdr/.img pair
        rel = f.relative_to(folder).as_posix()
        found.append((rel[: -len(suffix)], Source(str(f)), f"{formats.READ_SUFFIXES[suffix]} file"))
    found.sort(key=lambda x: x[0])
    return Cases(Case(cid, {name: src}, description=what)
                 for cid, (_, src, what) in zip(_unique_ids([f[0] for f in found]), found))


def _has_dicom(folder: Path) -> bool:
    from .io import formats
    from .io.dicom import DICOM_SUFFIXES, is_dicom_file

    for f in _files_below(folder):
        suffix = formats.suffix_of(f)
        if suffix in formats.READ_SUFFIXES:
            continue
        if suffix in DICOM_SUFFIXES or is_dicom_file(f):
            return True
    return False


def _cases_from_paths(paths: list, name: str) -> Cases:
    from .io import formats

    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise ManifestError(f"{len(missing)} input path(s) do not exist: {', '.join(missing[:10])}")
    resolved = [str(Path(p).resolve()) for p in paths]
    dups = _duplicates(resolved)
    if dups:
        raise ManifestError("the same file is listed twice: " + "; ".join(
            f"items {', '.join(str(i + 1) for i in idx)} ({resolved[idx[0]]})" for idx in dups))
    ids = []
    for p in paths:
        p = Path(p)
        suffix = formats.suffix_of(p)
        ids.append(p.name[: -len(suffix)] if suffix and p.is_file() and p.name.lower().endswith(suffix) else p.name)
    return Cases(Case(cid, {name: Source(str(p))}) for cid, p in zip(_unique_ids(ids), paths))


def _unique_ids(names: Sequence[str]) -> list[str]:
    out, seen = [], {}
    for n in names:
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in n).strip("._") or "case"
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}-{k + 1}")
    return out


def _duplicates(values: Sequence) -> list[list[int]]:
    where: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        where.setdefault(v, []).append(i)
    return [idx for idx in where.values() if len(idx) > 1]


def read_manifest(path, recipe=None) -> Cases:
    """The cases of a CSV manifest, checked before any work (see :func:`list_cases`)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist" if not path.exists() else f"manifest {path} is not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ReadError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path} is not a CSV text file ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ManifestError(f"manifest {path} is empty: it needs a header row naming the recipe inputs")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    problems: list[str] = []
    needed = list(recipe.inputs) if recipe is not None and recipe.inputs else None
    truth_cols = {h: _truth_key(h, recipe, problems) for h in header if h == "truth" or h.startswith("truth_")}
    input_cols = [h for h in header if h not in truth_cols and h != "case"]
    if needed is not None:
        unknown = [h for h in input_cols if h not in needed]
        if unknown:
            problems.append(f"unknown column(s) {unknown}: the recipe's inputs are {needed} "
                            "(other columns: case, truth, truth_<output>)")
        lacking = [n for n in needed if n not in header]
        if lacking:
            problems.append(f"the recipe needs input(s) {lacking}, which have no column (columns: {header})")
        input_cols = [h for h in input_cols if h in needed]
    dup_cols = [h for h in set(header) if header.count(h) > 1]
    if dup_cols:
        problems.append(f"column(s) {sorted(dup_cols)} appear more than once in the header")
    if not input_cols:
        problems.append("no input column (name one column per recipe input, e.g. image or fixed, moving)")
    if problems:
        raise ManifestError(f"manifest {path} refused:\n  - " + "\n  - ".join(problems))
    base = path.parent
    cases, keys, bad = [], [], []
    ids = []
    for i, raw in enumerate(body, start=1):
        cells = dict(zip(header, [c.strip() for c in raw] + [""] * (len(header) - len(raw))))
        where = f"row {i} (line {i + 1})"
        if len(raw) > len(header) and any(c.strip() for c in raw[len(header):]):
            bad.append(f"{where}: more cells than columns")
        srcs, truth = {}, {}
        for col in input_cols:
            if not cells[col]:
                bad.append(f"{where}: empty {col!r}")
                continue
            p = _resolve(cells[col], base)
            if not p.exists():
                bad.append(f"{where}: {col} file {cells[col]} does not exist ({p})")
            srcs[col] = Source(str(p))
        for col, key in truth_cols.items():
            if cells[col]:
                p = _resolve(cells[col], base)
                if not p.exists():
                    bad.append(f"{where}: {col} file {cells[col]} does not exist ({p})")
                truth[key] = Source(str(p))
        first = cells[input_cols[0]] if input_cols else f"row{i}"
        ids.append(cells.get("case") or Path(first).name.split(".")[0] or f"row{i}")
        keys.append(tuple(sorted((k, str(Path(v.path).resolve())) for k, v in srcs.items())))
        cases.append((srcs, truth, i))
    if not body:
        bad.append("no rows: the manifest lists no case")
    for idx in _duplicates(keys):
        bad.append("rows " + ", ".join(str(j + 1) for j in idx) + " are duplicates (same input files)")
    if "case" in header:
        for idx in _duplicates(ids):
            bad.append("rows " + ", ".join(str(j + 1) for j in idx) + f" share the case name {ids[idx[0]]!r}")
    if bad:
        shown = bad[:30] + ([f"... and {len(bad) - 30} more"] if len(bad) > 30 else [])
        raise ManifestError(f"manifest {path} refused ({len(bad)} problem(s)); nothing was run:\n  - " + "\n  - ".join(shown))
    unique = _unique_ids(ids) if "case" not in header else ids
    return Cases(Case(cid, srcs, truth, row=row) for cid, (srcs, truth, row) in zip(unique, cases))


def _resolve(cell: str, base: Path) -> Path:
    p = Path(cell).expanduser()
    return p if p.is_absolute() else base / p


def _label_outputs(recipe) -> list[str]:
    from .stage import get_stage

    return [f"{s.id}.{n}" for s in recipe.steps for n, o in get_stage(s.stage).outputs.items()
            if o.type_name == "label"]


def _truth_key(column: str, recipe, problems: list[str]) -> str:
    """``truth`` -> the last label output; ``truth_step2.labels`` / ``truth_labels`` -> that output."""
    if recipe is None:
        return column[6:] if column.startswith("truth_") else "final"
    labels = _label_outputs(recipe)
    if not labels:
        problems.append(f"column {column!r}: the recipe produces no label map to compare with ground truth")
        return ""
    if column == "truth":
        return labels[-1]
    want = column[len("truth_"):]
    matches = [k for k in labels if want in (k, k.replace(".", "_"), k.split(".", 1)[1])]
    if len(matches) != 1:
        how = "matches several" if matches else "matches none"
        problems.append(f"column {column!r} {how} of the recipe's label outputs {labels}; "
                        f"name one as truth_{labels[-1]}")
        return ""
    return matches[0]


# ---------------------------------------------------------------------------- recipes and records
def _as_recipe(recipe):
    from .recipe import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.load(recipe)
    raise ParameterError(f"recipe must be a Recipe or the path of a recipe JSON file; got {type(recipe).__name__}")


def recipe_hash(recipe) -> str:
    """SHA-256 of what a recipe computes: its steps, their parameters and where their inputs come from.

    The input descriptions recorded with the recipe (the example case's checksum) and the
    medlab version are left out: they do not change what runs.
    """
    steps = [{"stage": s.stage, "inputs": s.inputs, "params": s.params} for s in _as_recipe(recipe).steps]
    return hashlib.sha256(json.dumps(steps, sort_keys=True, default=str).encode()).hexdigest()


def read_record(case_dir) -> dict | None:
    """A case's ``record.json``, or None when absent or unreadable."""
    try:
        data = json.loads((Path(case_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------- the task (on a worker)
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


def summarize_live(value) -> Any:
    """What a case record keeps of a published live value: a Curve's length and last point, a
    transform's parameters, a number; never every iteration or a whole image."""
    from .image import Image
    from .outputs import Curve, Transform, describe_value

    if isinstance(value, Curve):
        data = value.data()
        return {"type": "curve", "name": value.name, "y": value.y_label, "points": len(value),
                "series": {k: {"points": len(x), "last": [x[-1], y[-1]] if x else None} for k, (x, y) in data.items()},
                "best": list(value.best()) if value.best() is not None else None}
    if isinstance(value, Transform):
        return {"type": "transform", "summary": json.loads(json.dumps(value.summary(), default=list))}
    if isinstance(value, Image):
        return {"type": "image", "description": value.describe()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    try:
        import numpy as np

        if isinstance(value, np.generic) and np.ndim(value) == 0:
            return float(value)
    except ImportError:  # pragma: no cover
        pass
    return describe_value(value)


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
    from . import stage as stage_module

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


def run_case(recipe_dict: dict, functions: Mapping[str, Callable], case: Case, out_dir: str, *,
             recipe_sha: str, topic: str | None = None, threads: int = 1, rerun: bool = False) -> dict:
    """Run one case and write its outputs and record (what each Dask task does).

    Returns the case record; ``record["run"]`` says whether it was ``computed`` or ``skipped``
    (done before with the same recipe and inputs). Never raises for a failing case: the error
    and traceback go into the record.
    """
    from . import __version__

    t0 = time.perf_counter()
    started = _now()
    emit = _emitter(topic)
    cases_dir = Path(out_dir) / CASES_DIR
    final = cases_dir / case.id
    record: dict[str, Any] = {"schema": RECORD_SCHEMA, "version": 1, "case": case.id, "status": "failed",
                              "recipe_sha256": recipe_sha, "medlab_version": __version__,
                              "inputs": {k: {"path": v.path, "series": v.series} for k, v in case.inputs.items()},
                              "truth": {k: v.path for k, v in case.truth.items()}, "worker": _worker_info(),
                              "started": started}
    try:
        for k, v in case.inputs.items():
            record["inputs"][k]["sha256"] = v.checksum()
        record["truth_sha256"] = {k: v.checksum() for k, v in case.truth.items()}
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
            record.update(_compute(recipe_dict, case, staging, emit, live))
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
    record["finished"] = _now()
    record["run"] = "computed"
    try:
        _commit(staging, final, record)
    except Exception as exc:  # noqa: BLE001 - e.g. a full disk while writing the record
        shutil.rmtree(staging, ignore_errors=True)
        return _finish_failed(record, exc, cases_dir, t0, emit)
    return record


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


def _same_work(old: dict | None, new: dict, folder: Path) -> bool:
    """Done before with the same recipe, the same input bytes, and every output still there."""
    if not old or old.get("status") != "done" or old.get("recipe_sha256") != new["recipe_sha256"]:
        return False
    if {k: v.get("sha256") for k, v in old.get("inputs", {}).items()} != {k: v["sha256"] for k, v in new["inputs"].items()}:
        return False
    if old.get("truth_sha256", {}) != new["truth_sha256"]:
        return False
    return all((folder / name).is_file() for name in old.get("outputs", {}).values())


def _compute(recipe_dict: dict, case: Case, staging: Path, emit, live: dict) -> dict:
    from .metrics import segmentation_scores
    from .outputs import fingerprint
    from .recipe import Recipe
    from .stage import progress_to

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
        due = now - state["last"] >= EVENT_EVERY or i == 0
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
    saved = outputs.save(staging)
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
    return {"outputs": {k: p.name for k, p in saved.items()}, "numbers": numbers, "timings": timings, "fingerprints": fingerprints,
            "steps": [{"id": s.id, "stage": s.stage} for s in recipe.steps]}


def numbers_of(outputs: Mapping[str, Any], recipe) -> list[dict]:
    """Every number in a run's outputs, one dict per number: tables cell by cell, each curve's
    last and best value, each transform's parameters (rotation in degrees, translation in mm)."""
    from .outputs import Curve, Table, Transform

    stage_of = {s.id: s.stage for s in recipe.steps}
    out: list[dict] = []
    for key, value in outputs.items():
        step, name = key.split(".", 1)
        stage_name = stage_of.get(step, "")
        if isinstance(value, Table):
            out += _table_numbers(step, stage_name, name, value.rows, value.units)
        elif isinstance(value, Curve):
            for series, (xs, ys) in value.data().items():
                if ys:
                    out.append(_number(step, stage_name, name, 0, series, f"{value.y_label} last", ys[-1], value.y_unit))
                    out.append(_number(step, stage_name, name, 0, series, f"{value.x_label} count", len(ys), ""))
            best = value.best()
            if best is not None:
                out.append(_number(step, stage_name, name, 0, "", f"{value.y_label} best", best[1], value.y_unit))
        elif isinstance(value, Transform):
            for k, v in value.summary().items():
                unit = "mm" if k.endswith("_mm") else "deg" if k.endswith("_deg") else ""
                if isinstance(v, (tuple, list)) and v and all(isinstance(c, (int, float)) for c in v):
                    for axis, c in zip("xyz", v):
                        out.append(_number(step, stage_name, name, 0, "", f"{k} {axis}", c, unit))
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    out.append(_number(step, stage_name, name, 0, "", k, v, unit))
    return out


def _table_numbers(step: str, stage_name: str, output: str, rows: Sequence[Mapping], units: Mapping) -> list[dict]:
    import numbers as _numbers

    out = []
    for i, row in enumerate(rows):
        name = next((str(v) for v in row.values() if isinstance(v, str)), "")
        label = str(row["label"]) if "label" in row else name  # the value: names may differ by case
        for k, v in row.items():
            if isinstance(v, _numbers.Real) and not isinstance(v, bool):
                out.append(_number(step, stage_name, output, i, label, k, v, units.get(k, ""), name))
    return out


def _number(step, stage_name, output, row, label, quantity, value, unit, name: str = "") -> dict:
    return {"step": step, "stage": stage_name, "output": output, "row": int(row), "label": label, "name": name,
            "quantity": str(quantity), "value": float(value), "unit": unit}


def _commit(staging: Path, final: Path, record: dict) -> None:
    """Write the record, then swap the staging folder in: a case folder is only ever complete."""
    from .io import atomic_write_text

    atomic_write_text(staging / RECORD, json.dumps(record, indent=1, default=str) + "\n", overwrite=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- the engine (client side)
def local_cluster(workers: int | None = None, *, dashboard: bool = True):
    """A local Dask cluster on 127.0.0.1: one worker process per core, one thread each.

    Returns ``(client, cluster)``; close both when done.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - a dependency
        raise MedlabError("cohort runs need dask.distributed: pip install 'dask[distributed]'") from None
    n = workers or _cores()
    if not isinstance(n, int) or n < 1:
        raise ParameterError(f"workers must be a whole number >= 1; got {workers!r}")
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
             "distributed.admin.tick.interval": "200ms", "distributed.worker.memory.monitor-interval": "1s"}
    with dask.config.set(quiet):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0" if dashboard else None,
                               silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass
class CohortResult:
    """What a cohort run did: per-case table, every number, failures, where it all is."""

    out_dir: Path
    cases: Any
    results: Any
    records: dict[str, dict]
    elapsed_s: float
    dashboard: str = ""
    cancelled: bool = False

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(case, error)`` of every failed case."""
        return [(c, r.get("error", "")) for c, r in self.records.items() if r.get("status") != "done"]

    @property
    def counts(self) -> dict[str, int]:
        out = {"computed": 0, "skipped": 0, "failed": 0}
        for r in self.records.values():
            if r.get("status") != "done":
                out["failed"] += 1
            else:
                out["skipped" if r.get("run") == "skipped" else "computed"] += 1
        return out

    @property
    def ok(self) -> bool:
        return not self.failures and not self.cancelled

    def summary(self) -> str:
        c = self.counts
        lines = [f"{len(self.records)} case(s) in {self.elapsed_s:.1f} s: {c['computed']} computed, "
                 f"{c['skipped']} skipped (done before), {c['failed']} failed"
                 + (" (cancelled)" if self.cancelled else ""),
                 f"outputs and records: {self.out_dir / CASES_DIR}",
                 f"tables: {self.out_dir / 'cases.csv'}, {self.out_dir / 'results.csv'} (and .parquet)"]
        if self.failures:
            lines.append("failures:")
            lines += [f"  {case}: {err.splitlines()[0] if err else 'failed'}" for case, err in self.failures]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


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
    on_event : callable, optional
        ``on_event(message)`` for live per-case events (step, progress, published values),
        called from the client's event loop thread.
    """

    def __init__(self, recipe, inputs, out_dir, client=None, *, workers: int | None = None, threads: int = 1,
                 rerun: bool = False, dashboard: bool = True, on_event: Callable[[dict], None] | None = None):
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
        self.topic = f"medlab-cohort-{secrets.token_hex(6)}"
        self._own_client = False
        self._lock = None
        self._t0 = 0.0
        self.cancelled = False

    # -- setup
    @property
    def dashboard(self) -> str:
        """The Dask dashboard's address ('' when there is none)."""
        try:
            return self.client.dashboard_link if self.client is not None else ""
        except Exception:  # noqa: BLE001 - no dashboard (bokeh missing, or disabled)
            return ""

    def start(self) -> CohortRun:
        self._t0 = time.perf_counter()
        self._prepare_out_dir()
        self.client = self._connect()
        self.client.subscribe_topic(self.topic, self._on_event)
        functions = {s.stage: _stage_function(s.stage) for s in self.recipe.steps}
        recipe_dict = self.recipe.to_dict()
        run_key = secrets.token_hex(4)
        for case in self.cases:
            fut = self.client.submit(run_case, recipe_dict, functions, case, str(self.out_dir.resolve()),
                                     recipe_sha=self.recipe_sha, topic=self.topic, threads=self.threads,
                                     rerun=self.rerun, key=f"medlab-case-{case.id}-{run_key}", pure=False)
            fut.medlab_case = case.id
            self.futures.append(fut)
        return self

    def _connect(self):
        if self._given is None:
            client, self.cluster = local_cluster(self.workers, dashboard=self.dashboard_wanted)
            return client
        if isinstance(self._given, str):
            from distributed import Client

            try:
                self._own_client = True
                return Client(self._given, timeout="20s")
            except OSError as exc:
                raise ParameterError(f"cannot reach the Dask scheduler at {self._given}: {exc}") from None
        return self._given

    def _prepare_out_dir(self) -> None:
        from .io import atomic_write_text

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
        if not isinstance(msg, dict) or msg.get("case") not in self.status:
            return
        row = self.status[msg["case"]]
        if row.get("status") in ("done", "failed", "skipped") and msg.get("status") == "running":
            return  # a late event of a finished case
        for k in ("status", "step", "steps", "stage", "fraction", "message"):
            if k in msg:
                row[k] = msg[k]
        if "live" in msg:
            row["live"] = msg["live"]
        if self.on_event is not None:
            with contextlib.suppress(Exception):
                self.on_event(dict(msg))

    def as_completed(self) -> Iterator[dict]:
        """Each case's record as it finishes (failed ones included; never raises for a case)."""
        from distributed import as_completed

        for fut in as_completed(self.futures):
            yield self._record_of(fut)

    def _record_of(self, fut) -> dict:
        cid = fut.medlab_case
        if fut.status == "finished":
            record = fut.result()
        elif fut.status == "cancelled":
            record = {"case": cid, "status": "cancelled", "error": "cancelled before it finished", "run": "cancelled"}
        else:  # the task itself failed: a worker died on it repeatedly, or it could not be sent
            exc = fut.exception()
            tb = "".join(_traceback.format_tb(fut.traceback())) if fut.traceback() is not None else ""
            record = {"case": cid, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": tb,
                      "run": "computed"}
        self.records[cid] = record
        row = self.status[cid]
        row["status"] = "skipped" if record.get("run") == "skipped" else record.get("status", "failed")
        row["seconds"] = record.get("timings", {}).get("total_s")
        row["peak_mb"] = record.get("memory", {}).get("peak_rss_mb")
        row["error"] = (record.get("error") or "").splitlines()[0] if record.get("error") else ""
        row.pop("fraction", None)
        return record

    def status_table(self):
        """The per-case status (queued, running step k/n, done, skipped, failed) as a DataFrame."""
        import pandas as pd

        cols = ["case", "status", "step", "steps", "stage", "fraction", "seconds", "peak_mb", "error"]
        return pd.DataFrame([{k: r.get(k) for k in cols} for r in self.status.values()], columns=cols)

    def cancel(self) -> None:
        """Stop: cancel every case not finished (finished ones stay, a re-run does the rest)."""
        self.cancelled = True
        if self.client is not None and self.futures:
            with contextlib.suppress(Exception):
                self.client.cancel([f for f in self.futures if not f.done()])

    # -- ending
    def finish(self) -> CohortResult:
        """Write the tables, close a cluster this run started, release the output folder."""
        try:
            cases, results = write_tables(self.out_dir, self.cases, self.records)
        finally:
            self.close()
        return CohortResult(self.out_dir, cases, results, dict(self.records), time.perf_counter() - self._t0,
                            self._dashboard_seen, self.cancelled)

    _dashboard_seen = ""

    def close(self) -> None:
        if self.client is not None:
            self._dashboard_seen = self.dashboard
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self.topic)
        if self.cluster is not None or (self._own_client and self.client is not None):
            with contextlib.suppress(Exception):
                self.client.close()
            with contextlib.suppress(Exception):
                self.cluster.close()
            self.cluster = None
        if self.cluster is None and (self._own_client or self._given is None):
            self.client = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _stage_function(name: str) -> Callable:
    from .stage import get_stage

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
               on_update: Callable[[dict, CohortRun], None] | None = None) -> CohortResult:
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
                    dashboard=dashboard)
    bar = None
    try:
        run.start()
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


def _counts(records: Iterable[dict]) -> dict[str, int]:
    out = {"computed": 0, "skipped": 0, "failed": 0}
    for r in records:
        if r.get("status") != "done":
            out["failed"] += 1
        else:
            out["skipped" if r.get("run") == "skipped" else "computed"] += 1
    return out


# ---------------------------------------------------------------------------- result tables
def write_tables(out_dir: Path, cases: Sequence[Case], records: Mapping[str, dict]):
    """``cases`` and ``results`` tables (CSV and Parquet) of every case recorded in ``out_dir``.

    Cases not run this time (cancelled) but recorded by an earlier run are included from
    their record, so the tables always describe the whole folder's state for these cases.
    """
    import pandas as pd

    rows, numbers = [], []
    for case in cases:
        rec = records.get(case.id)
        if rec is None or rec.get("status") == "cancelled":
            disk = read_record(Path(out_dir) / CASES_DIR / case.id)
            rec = dict(disk, run="earlier") if disk else (rec or {"status": "not run"})
        status = rec.get("status", "failed")
        row = {"case": case.id, "status": "skipped" if rec.get("run") == "skipped" and status == "done" else status}
        row.update({k: str(v) for k, v in case.inputs.items()})
        t = rec.get("timings", {})
        row.update(total_s=t.get("total_s"), load_s=t.get("load_s"), save_s=t.get("save_s"),
                   peak_rss_mb=rec.get("memory", {}).get("peak_rss_mb"),
                   worker=rec.get("worker", {}).get("address", ""),
                   error=(rec.get("error") or "").splitlines()[0] if rec.get("error") else "")
        per_output: dict[tuple, int] = {}
        for n in rec.get("numbers", []) if status == "done" else []:
            numbers.append({"case": case.id, **n})
            per_output[(n["step"], n["output"])] = max(per_output.get((n["step"], n["output"]), 0), n["row"] + 1)
        for n in rec.get("numbers", []) if status == "done" else []:
            if per_output[(n["step"], n["output"])] == 1:
                label = f"[{n['label']}]" if n["label"] and "truth" in n["output"] else ""
                row[f"{n['step']}.{n['output']}{label}.{n['quantity']}"] = n["value"]
        rows.append(row)
    cases_df = pd.DataFrame(rows)
    cols = ["case", "step", "stage", "output", "row", "label", "name", "quantity", "value", "unit"]
    results_df = pd.DataFrame(numbers, columns=cols)
    for name, df in (("cases", cases_df), ("results", results_df)):
        _write_df(df, Path(out_dir) / f"{name}.csv", Path(out_dir) / f"{name}.parquet")
    return cases_df, results_df


def _write_df(df, csv_path: Path, parquet_path: Path) -> None:
    from .io import atomic_path, atomic_write_text

    atomic_write_text(csv_path, df.to_csv(index=False), overwrite=True)
    with atomic_path(parquet_path, overwrite=True) as tmp:
        df.to_parquet(tmp, index=False)


# ---------------------------------------------------------------------------- de-identification on Dask
def deidentify_cohort(src, dst, *, key: str | bytes, client=None, workers: int | None = None,
                      progress: bool = True, **options) -> CohortResult:
    """De-identify every DICOM series below ``src`` into ``dst`` on Dask, one task per series.

    The same machinery as :func:`run_cohort` (local or given cluster, failures isolated, a
    record per series, skipped when done before with the same key, options and files). One
    ``key`` for the whole cohort keeps UIDs consistent across series, studies and workers.

    Why not a recipe step: a stage takes and returns in-memory values (an Image keeps a safe
    subset of DICOM tags, never the whole header) so "a folder of DICOM in, a folder out"
    cannot be a stage today. The stage contract would need a file-set input type (e.g.
    ``DicomInput()``: paths of one series, checksummed for resume), a folder output type
    (``FolderOut()``: files written atomically into the case folder), and a secret parameter
    kind that a recipe records as "given at run time", never in its JSON (the key).

    Parameters
    ----------
    src, dst : path
        The source folder (never modified) and the output folder.
    key : str or bytes
        The secret that makes UIDs, pseudonyms and date shifts repeatable; keep it private.
    **options
        Passed to :func:`medlab.io.deidentify` (``dates``, ``remove_private``, ``pseudonyms``,
        ``on_burned_in``).

    Examples
    --------
    >>> deidentify_cohort("raw/", "anon/", key=open("key.txt").read())   # doctest: +SKIP
    """
    from .io import list_series
    from .io.deidentify import _check_options, _key_bytes, _pseudo

    _check_options(**options)
    kb = _key_bytes(key)
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ParameterError(f"deidentify_cohort needs a folder of DICOM files; {src} is not a folder")
    series = list_series(src)
    if not series:
        raise ReadError(f"no DICOM series found in {src}")
    (dst / ".medlab-deid").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lock = _lock_folder(dst / ".medlab-deid")
    client_, cluster = (local_cluster(workers) if client is None else (client, None))
    records: dict[str, dict] = {}
    try:
        futures = []
        for s in series:
            cid = "series-" + _pseudo(kb, "series:" + "|".join(sorted(str(f) for f in s.files)))[:16]
            fut = client_.submit(_deidentify_series, [str(f) for f in s.files], str(src), str(dst), kb, cid, options,
                                 key=f"medlab-deid-{cid}-{secrets.token_hex(3)}", pure=False)
            fut.medlab_case = cid
            futures.append(fut)
        from distributed import as_completed

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), desc="series", unit="series")
        for fut in as_completed(futures):
            if fut.status == "finished":
                rec = fut.result()
            else:
                exc = fut.exception()
                rec = {"case": fut.medlab_case, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            records[rec["case"]] = rec
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        if cluster is not None:
            client_.close()
            cluster.close()
        lock.close()
    import pandas as pd

    table = pd.DataFrame([{k: r.get(k) for k in ("case", "status", "run", "files", "written", "flagged", "error")}
                          for r in records.values()])
    return CohortResult(dst, table, pd.DataFrame(), records, time.perf_counter() - t0)


def _deidentify_series(files: list[str], src: str, dst: str, key: bytes, cid: str, options: dict) -> dict:
    from .io import atomic_write_text
    from .io.deidentify import deidentify_files

    record_path = Path(dst) / ".medlab-deid" / f"{cid}.json"
    h = hashlib.sha256(key + json.dumps(options, sort_keys=True).encode())
    try:
        for f in sorted(files):
            _hash_file(Path(f), h)
        digest = h.hexdigest()
        try:
            old = json.loads(record_path.read_text())
        except (OSError, ValueError):
            old = None
        if old and old.get("status") == "done" and old.get("sha256") == digest and all(
                (Path(dst) / o).is_file() for o in old.get("outputs", [])):
            return {**old, "run": "skipped"}
        report = deidentify_files([Path(f) for f in files], Path(src), Path(dst), key=key, overwrite=True, **options)
        rec = {"case": cid, "status": "done", "run": "computed", "sha256": digest, "files": len(files),
               "written": len(report.written), "flagged": len(report.flagged),
               "outputs": [str(Path(r["output"]).relative_to(dst)) for r in report.written]}
    except Exception as exc:  # noqa: BLE001 - one series' failure must not stop the others
        rec = {"case": cid, "status": "failed", "run": "computed", "error": f"{type(exc).__name__}: {exc}",
               "traceback": _traceback.format_exc(), "files": len(files)}
    with contextlib.suppress(Exception):
        atomic_write_text(record_path, json.dumps(rec, indent=1) + "\n", overwrite=True)
    return rec
