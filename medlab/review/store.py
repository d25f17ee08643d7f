"""The verdict store: one append-only SQLite file in WAL mode, one transaction per verdict."""

from __future__ import annotations

import contextlib
import csv
import math
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ParameterError
from ._base import (
    CONFIDENCE_LEVELS,
    VERDICTS,
    ReviewStoreError,
    VerdictConflict,
    _text,
    check_encodable,
)

if TYPE_CHECKING:
    from .study import ReviewStudy

DB_FORMAT = "medlab-review-verdicts"
DB_SCHEMA_VERSION = 1
MAX_COMMENT = 10_000


@dataclass(frozen=True)
class Verdict:
    """One stored version of one reviewer's verdict on one map of one case."""

    record_id: int
    reviewer: str
    case_id: str
    method: str
    shown_as: str
    verdict: str
    confidence: int
    comment: str
    click: tuple[float, float, float] | None
    peak: tuple[float, float, float] | None
    prediction_shown: bool
    version: int
    recorded_at: str

    @property
    def click_to_peak_mm(self) -> float | None:
        """Distance between the click and the map's peak, in mm (None without both)."""
        if self.click is None or self.peak is None:
            return None
        return float(math.dist(self.click, self.peak))


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS verdicts (
    record_id INTEGER PRIMARY KEY AUTOINCREMENT,
    reviewer TEXT NOT NULL,
    case_id TEXT NOT NULL,
    method TEXT NOT NULL,
    shown_as TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({", ".join(repr(v) for v in VERDICTS)})),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    comment TEXT NOT NULL,
    click_x REAL, click_y REAL, click_z REAL,
    peak_x REAL, peak_y REAL, peak_z REAL,
    prediction_shown INTEGER NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    recorded_at TEXT NOT NULL,
    UNIQUE (reviewer, case_id, method, version)
);
CREATE TRIGGER IF NOT EXISTS verdicts_append_only_update BEFORE UPDATE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'verdicts are append-only: record a new version'); END;
CREATE TRIGGER IF NOT EXISTS verdicts_append_only_delete BEFORE DELETE ON verdicts
    BEGIN SELECT RAISE(ABORT, 'verdicts are append-only: they are never deleted'); END;
"""
_COLUMNS = ("record_id, reviewer, case_id, method, shown_as, verdict, confidence, comment, click_x, click_y, "
            "click_z, peak_x, peak_y, peak_z, prediction_shown, version, recorded_at")
_CURRENT = (f"SELECT {_COLUMNS} FROM verdicts v WHERE version = (SELECT MAX(version) FROM verdicts w "
            "WHERE w.reviewer = v.reviewer AND w.case_id = v.case_id AND w.method = v.method)")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _point(value, what: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if arr.size == 2:
        arr = np.append(arr, 0.0)
    if arr.size != 3 or not np.all(np.isfinite(arr)):
        raise ParameterError(f"{what} must be (x, y, z) in mm, finite; got {value!r}")
    return tuple(float(v) for v in arr)


def _locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class ReviewStore:
    """The verdicts of one study: an append-only SQLite file in WAL mode.

    Parameters
    ----------
    path : str or Path
        The database file. Created (with its schema) when absent or empty. A file that exists
        but is not a readable medlab review database is refused and left untouched.
    study_id : str, optional
        When given, a database made for another study is refused.
    timeout : float
        Seconds to wait for another writer (``busy_timeout``, then retries) before giving up.

    Raises
    ------
    ReviewStoreError
        Corrupt, foreign or newer-format file, or a folder that cannot be written.

    Examples
    --------
    >>> store = ReviewStore("verdicts.sqlite")                        # doctest: +SKIP
    >>> v = store.record("Dr Grey", "c1", "gradcam", verdict="partly", confidence=3)  # doctest: +SKIP
    >>> store.record("Dr Grey", "c1", "gradcam", verdict="relevant", confidence=4,
    ...              supersedes=v.version).version                    # doctest: +SKIP
    2
    """

    def __init__(self, path, *, study_id: str | None = None, timeout: float = 15.0):
        from ..io.paths import as_file_path

        self.path = as_file_path(path, "the verdict database")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ParameterError(f"timeout is the seconds to wait for another writer, more than 0 and at most 3600; "
                                 f"got {timeout!r}")
        self.timeout = float(timeout)
        if self.path.is_dir():
            raise ReviewStoreError(f"{self.path} is a folder; give the verdict database's file name")
        if not self.path.parent.is_dir():
            raise ReviewStoreError(f"cannot keep verdicts in {self.path}: folder {self.path.parent} does not exist")
        existing = self.path.exists() and self.path.stat().st_size > 0
        try:
            with self._connection(create=not existing) as con:
                if existing:
                    check = con.execute("PRAGMA quick_check").fetchone()[0]
                    if check != "ok":
                        raise sqlite3.DatabaseError(f"integrity check failed: {check}")
                self._init_schema(con, existing, study_id)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _locked(exc):
                raise ReviewStoreError(
                    f"{self.path} stayed locked by another program for {self.timeout:g} s; try again") from None
            raise self._refusal(str(exc)) from None

    def _refusal(self, reason: str) -> ReviewStoreError:
        return ReviewStoreError(
            f"the verdict database {self.path} cannot be used: {reason}. It has not been changed and no "
            "verdict in it was touched: keep the file (copy it for a database expert or restore it from a "
            "backup) and give another file name to record new verdicts")

    @contextlib.contextmanager
    def _connection(self, *, create: bool = False):
        mode = "rwc" if create else "rw"
        uri = f"{self.path.resolve().as_uri()}?mode={mode}"
        try:
            con = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise ReviewStoreError(f"cannot open the verdict database {self.path}: {exc}") from None
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("PRAGMA synchronous = FULL")  # each verdict reaches the disk at its commit
            yield con
        finally:
            con.close()

    def _init_schema(self, con: sqlite3.Connection, existing: bool, study_id: str | None) -> None:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if existing and tables and "meta" not in tables:
            raise sqlite3.DatabaseError(f"it is an SQLite file of another program (tables {sorted(tables)})")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.DatabaseError(f"WAL mode is not available there (journal mode {mode}); use a local disk")
        self._transaction(con, lambda: self._create(con, study_id))
        meta = dict(con.execute("SELECT key, value FROM meta"))
        if meta.get("format") != DB_FORMAT:
            raise sqlite3.DatabaseError(f"it is not a medlab review database (format {meta.get('format')!r})")
        if int(meta.get("schema_version", 0)) > DB_SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"it was written by a newer medlab (schema {meta['schema_version']}); upgrade medlab")
        theirs = meta.get("study_id") or None
        if study_id and theirs and theirs != study_id:
            raise sqlite3.DatabaseError(f"it holds the verdicts of another study (id {theirs}, this study is {study_id})")
        self.study_id = theirs

    @staticmethod
    def _create(con: sqlite3.Connection, study_id: str | None) -> None:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:  # another writer made a foreign file meanwhile
            raise sqlite3.DatabaseError(f"it is an SQLite file of another program (tables {sorted(tables)})")
        for statement in _SCHEMA.split(";\n"):
            if statement.strip():
                con.execute(statement)
        rows = [("format", DB_FORMAT), ("schema_version", str(DB_SCHEMA_VERSION)), ("created_at", _utc_now()),
                ("study_id", study_id or "")]
        con.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", rows)
        if study_id:  # a database created without a study id adopts the first one given
            con.execute("UPDATE meta SET value = ? WHERE key = 'study_id' AND value = ''", (study_id,))

    def _transaction(self, con: sqlite3.Connection, body: Callable[[], Any]) -> Any:
        """Run ``body`` in ``BEGIN IMMEDIATE`` ... ``COMMIT``, retrying while another writer holds the lock.

        ``busy_timeout`` waits inside SQLite; in WAL mode a few cases return SQLITE_BUSY at once
        (e.g. while another connection recovers the WAL), hence the retries with jitter.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _locked(exc) and time.monotonic() < deadline:
                    time.sleep(delay * (1 + random.random()))
                    delay = min(delay * 2, 0.2)
                    continue
                raise
            try:
                result = body()
                con.execute("COMMIT")
                return result
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writing
    def record(self, reviewer: str, case_id: str, method: str, *, verdict: str, confidence: int,
               comment: str = "", click=None, peak=None, shown_as: str | None = None,
               prediction_shown: bool = False, supersedes: int | None = None) -> Verdict:
        """Store one verdict in its own transaction and return it as stored.

        Parameters
        ----------
        reviewer, case_id, method : str
            Who rated which map (``method`` is the real method, also in a blinded review).
        verdict : {'relevant', 'partly', 'irrelevant', 'artefact'}
        confidence : int
            1 (a guess) to 5 (certain).
        comment : str
        click : (x, y, z), optional
            Where the reviewer would look, mm (LPS).
        peak : (x, y, z), optional
            The map's peak (:func:`map_peak`), kept for click agreement.
        shown_as : str, optional
            The name the reviewer saw ("Map B"); default ``method``.
        prediction_shown : bool
            Whether the prediction was visible.
        supersedes : int, optional
            The version being edited. Without it the verdict must be the first one for this
            reviewer, case and method; with it, that version must still be the latest. The
            earlier versions stay in the database.

        Raises
        ------
        VerdictConflict
            A verdict exists that the caller did not name (no silent overwrite).
        ParameterError
            A value is out of range.
        """
        reviewer = _text(reviewer, "reviewer name")
        case_id, method = _text(case_id, "case id"), _text(method, "method")
        shown_as = _text(shown_as, "shown_as") if shown_as is not None else method
        if verdict not in VERDICTS:
            raise ParameterError(f"verdict must be one of {VERDICTS}; got {verdict!r}")
        if isinstance(confidence, bool) or not isinstance(confidence, (int, np.integer)) or confidence not in CONFIDENCE_LEVELS:
            raise ParameterError(f"confidence must be an integer from 1 (a guess) to 5 (certain); got {confidence!r}")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise ParameterError(f"comment must be text of at most {MAX_COMMENT} characters")
        check_encodable(comment, "comment")
        click, peak = _point(click, "click"), _point(peak, "peak")
        if supersedes is not None and (isinstance(supersedes, bool) or not isinstance(supersedes, (int, np.integer)) or supersedes < 1):
            raise ParameterError(f"supersedes must be the version number being edited (1, 2, ...); got {supersedes!r}")

        def insert(con: sqlite3.Connection) -> int:
            latest = con.execute(
                "SELECT version, recorded_at FROM verdicts WHERE reviewer = ? AND case_id = ? AND method = ? "
                "ORDER BY version DESC LIMIT 1", (reviewer, case_id, method)).fetchone()
            current = latest[0] if latest else 0
            if current != (supersedes or 0):
                what = f"{reviewer!r} on case {case_id!r}, map {method!r}"
                if supersedes is None:
                    raise VerdictConflict(
                        f"{what} is already rated (version {current}, {latest[1]}); to change it pass "
                        f"supersedes={current}: the earlier version is kept")
                if latest is None:
                    raise VerdictConflict(f"{what} has no verdict yet, so there is no version {supersedes} to edit; "
                                          "record it without supersedes=")
                raise VerdictConflict(
                    f"{what} changed since version {supersedes} (now version {current}, {latest[1]}, perhaps in "
                    "another window): reload it before editing")
            cur = con.execute(
                f"INSERT INTO verdicts ({_COLUMNS.split(', ', 1)[1]}) VALUES ({', '.join('?' * 16)})",
                (reviewer, case_id, method, shown_as, verdict, int(confidence), comment,
                 *(click or (None,) * 3), *(peak or (None,) * 3), int(bool(prediction_shown)),
                 current + 1, _utc_now()))
            return cur.lastrowid

        record_id = self._write(insert)
        return self._fetch(f"SELECT {_COLUMNS} FROM verdicts WHERE record_id = ?", (record_id,))[0]

    def _write(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            with self._connection() as con:
                return self._transaction(con, lambda: body(con))
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                raise ReviewStoreError(f"{self.path} stayed locked by another writer for {self.timeout:g} s; "
                                       "nothing was stored: try again") from None
            raise ReviewStoreError(f"could not store the verdict in {self.path}: {exc}; nothing was stored") from None
        except sqlite3.DatabaseError as exc:
            raise self._refusal(str(exc)) from None

    # ------------------------------------------------------------------ reading
    def _fetch(self, sql: str, args: Sequence = ()) -> list[Verdict]:
        try:
            with self._connection() as con:
                rows = con.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._refusal(str(exc)) from None
        return [Verdict(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                        None if r[8] is None else (r[8], r[9], r[10]),
                        None if r[11] is None else (r[11], r[12], r[13]),
                        bool(r[14]), r[15], r[16]) for r in rows]

    def current(self, reviewer: str | None = None) -> list[Verdict]:
        """The latest version of every verdict (of one reviewer, or of all), oldest first."""
        if reviewer is None:
            return self._fetch(_CURRENT + " ORDER BY record_id")
        return self._fetch(_CURRENT + " AND reviewer = ? ORDER BY record_id", (reviewer,))

    def history(self, reviewer: str | None = None) -> list[Verdict]:
        """Every version ever stored (of one reviewer, or of all), oldest first."""
        if reviewer is None:
            return self._fetch(f"SELECT {_COLUMNS} FROM verdicts ORDER BY record_id")
        return self._fetch(f"SELECT {_COLUMNS} FROM verdicts WHERE reviewer = ? ORDER BY record_id", (reviewer,))

    def versions(self, reviewer: str, case_id: str, method: str) -> list[Verdict]:
        """Every version of one verdict, first to latest."""
        return self._fetch(f"SELECT {_COLUMNS} FROM verdicts WHERE reviewer = ? AND case_id = ? AND method = ? "
                           "ORDER BY version", (reviewer, case_id, method))

    def latest(self, reviewer: str, case_id: str, method: str) -> Verdict | None:
        """The current verdict of ``reviewer`` on one map, or None."""
        found = self.versions(reviewer, case_id, method)
        return found[-1] if found else None

    def reviewers(self) -> list[str]:
        """Everyone who has recorded a verdict, in the order they first did."""
        seen: dict[str, None] = {}
        for v in self.history():
            seen.setdefault(v.reviewer, None)
        return list(seen)

    def resume_index(self, study: ReviewStudy, reviewer: str) -> int:
        """Index (in ``study.items(reviewer)``) of the first map ``reviewer`` has not rated;
        ``len(items)`` when every map is rated."""
        items = study.items(reviewer)
        done = {(v.case_id, v.method) for v in self.current(reviewer)}
        return next((i.index for i in items if (i.case_id, i.method) not in done), len(items))

    def export_csv(self, path, *, history: bool = False, overwrite: bool = False) -> Path:
        """Write the current verdicts (or every version) to CSV atomically, un-blinded.

        Columns: record_id, reviewer, case_id, method, shown_as, verdict, confidence, comment,
        click_x/y/z and peak_x/y/z (mm, LPS), click_to_peak_mm, prediction_shown, version,
        recorded_at (UTC).
        """
        from ..io.atomic import atomic_write
        from ..io.paths import as_file_path

        path = as_file_path(path, "the CSV file")
        rows = self.history() if history else self.current()
        header = ["record_id", "reviewer", "case_id", "method", "shown_as", "verdict", "confidence", "comment",
                  "click_x", "click_y", "click_z", "peak_x", "peak_y", "peak_z", "click_to_peak_mm",
                  "prediction_shown", "version", "recorded_at"]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                out = csv.writer(f)
                out.writerow(header)
                for v in rows:
                    dist = v.click_to_peak_mm
                    out.writerow([v.record_id, _cell(v.reviewer), _cell(v.case_id), _cell(v.method), v.shown_as,
                                  v.verdict, v.confidence, _cell(v.comment), *(v.click or ("",) * 3),
                                  *(v.peak or ("",) * 3),
                                  "" if dist is None else f"{dist:.3f}", int(v.prediction_shown), v.version,
                                  v.recorded_at])

        return atomic_write(path, write, overwrite=overwrite)


def _cell(text):
    """Free text for a CSV cell that a spreadsheet will not run as a formula (OWASP's CSV-injection
    advice: a leading =, +, -, @, tab or carriage return gets a quote in front)."""
    text = "" if text is None else str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
