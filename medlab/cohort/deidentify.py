"""De-identifying a cohort's DICOM on the cohort machinery: one Dask task per series."""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
import traceback as _traceback
from pathlib import Path

from ..errors import ParameterError, ReadError
from .cases import _hash_file
from .engine import _lock_folder, local_cluster
from .results import CohortResult


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
    from ..io import list_series
    from ..io.deidentify import _check_options, _key_bytes, _pseudo

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
    from ..io import atomic_write_text
    from ..io.deidentify import deidentify_files

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
