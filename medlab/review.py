"""Clinician review of explanation maps: the study, the verdict store and its statistics.

A **review study** is a list of cases; each case is a scan, the model's prediction (optional),
the ground truth (optional) and one or more explanation maps (saliency images on the scan's grid
or on any grid that overlaps it). A clinician rates every map of every case with a structured
verdict (:data:`VERDICTS`), a confidence from 1 to 5, a free-text comment and, optionally, a click
where they would look (mm, LPS).

The study file
--------------
JSON; paths are relative to the study file's folder (a scan may be a DICOM folder)::

    {"format": "medlab-review-study", "version": 1,
     "name": "Glioma classifier, Grad-CAM vs IG", "id": "5f0c...", "seed": 0,
     "hide_prediction": true, "blind_methods": true, "database": "study.verdicts.sqlite",
     "cases": [{"id": "case-001", "scan": "case-001/scan.nii.gz",
                "maps": {"gradcam": "case-001/gradcam.nii.gz", "ig": "case-001/ig.nii.gz"},
                "prediction": "tumour (p = 0.93)", "truth": "tumour"}]}

Blinding: with ``hide_prediction`` the reviewer does not see the prediction; with
``blind_methods`` maps are shown as "Map A", "Map B"... in an order drawn from a seed made of the
study seed, the reviewer and the case, so it is random across reviewers and cases and the same
every time one reviewer opens one case. Each stored verdict records both the method and the name
it was shown under, so the summary is un-blinded.

The verdict store
-----------------
One SQLite file in WAL mode (:class:`ReviewStore`). Each verdict is one row committed in its own
``BEGIN IMMEDIATE`` transaction (``synchronous=FULL``), so a kernel restart or a browser refresh
never loses one, and several processes can write at once (``busy_timeout`` plus retries). The
table is append-only (triggers refuse UPDATE and DELETE): editing a verdict adds version n + 1
and keeps version n; the latest version is the current one. Every row carries the reviewer's
name and the UTC time. A file that exists but is not a readable medlab review database is
refused with a message naming it, and is never recreated or written.

Statistics
----------
:func:`verdict_distribution` (per method), :func:`reviewer_agreement` (Cohen's kappa for every
pair of reviewers and Fleiss' kappa for all, from ``statsmodels.stats.inter_rater``),
:func:`click_agreement` (distance in mm between the clinician's click and the map's peak), and
:func:`summarize`, which bundles them and exports CSV files atomically.

Examples
--------
>>> import medlab
>>> from medlab.review import ReviewStudy
>>> p = medlab.data.brain_mri(size=(48, 48, 24))
>>> blob = p.t1.with_array(p.mask("tumour core", "enhancing rim").astype("float32"))  # doctest: +SKIP
>>> study = ReviewStudy.create("pilot/", [{"id": "c1", "scan": p.t1, "maps": {"truth": blob}}],
...                            name="pilot")                                        # doctest: +SKIP
>>> store = study.open_store()                                                      # doctest: +SKIP
>>> item = study.items("Dr Grey")[0]                                                # doctest: +SKIP
>>> store.record("Dr Grey", item.case_id, item.method, verdict="relevant", confidence=4,
...              shown_as=item.shown_as)                                            # doctest: +SKIP
>>> print(summarize(store.current()))                                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import re
import sqlite3
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GeometryError, ImageError, MedlabError, ParameterError, ReadError, WriteError
from .image import Image

__all__ = [
    "CONFIDENCE_LEVELS",
    "VERDICTS",
    "VERDICT_LABELS",
    "LoadedCase",
    "ReviewCase",
    "ReviewItem",
    "ReviewStore",
    "ReviewStoreError",
    "ReviewStudy",
    "ReviewSummary",
    "Verdict",
    "VerdictConflict",
    "click_agreement",
    "map_peak",
    "reviewer_agreement",
    "summarize",
    "verdict_distribution",
]

VERDICTS = ("relevant", "partly", "irrelevant", "artefact")
"""The structured verdict on one map, in the order the form shows them."""

VERDICT_LABELS = {
    "relevant": "Highlights the relevant finding",
    "partly": "Partly highlights the finding",
    "irrelevant": "Highlights an irrelevant region",
    "artefact": "Driven by an artefact",
}
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
"""Confidence of a verdict: 1 = a guess, 5 = certain."""

STUDY_FORMAT = "medlab-review-study"
STUDY_VERSION = 1
DB_FORMAT = "medlab-review-verdicts"
DB_SCHEMA_VERSION = 1
MAX_COMMENT = 10_000


class ReviewStoreError(MedlabError, OSError):
    """The verdict database cannot be opened or written (corrupt, foreign, locked too long)."""


class VerdictConflict(MedlabError):
    """A verdict would replace another one that the caller has not seen (never done silently)."""


# ============================================================================ the study
@dataclass(frozen=True)
class ReviewCase:
    """One case of a study: a scan, its explanation maps (method -> file) and what is known.

    Paths are absolute (the study file holds them relative to its folder).
    """

    case_id: str
    scan: Path
    maps: dict[str, Path]
    prediction: str | None = None
    truth: str | None = None


@dataclass(frozen=True)
class ReviewItem:
    """One map of one case as one reviewer sees it (position in that reviewer's sequence)."""

    index: int
    case_id: str
    method: str
    shown_as: str
    case_number: int
    n_cases: int
    map_number: int
    n_maps: int


@dataclass
class LoadedCase:
    """A case read from disk: the scan, each map resampled onto it and each map's peak (mm).

    A map that cannot be used (missing file, another grid that does not overlap, no finite value)
    is absent from ``maps`` and its reason is in ``errors``.
    """

    case: ReviewCase
    scan: Image
    maps: dict[str, Image] = field(default_factory=dict)
    peaks: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _text(value, what: str, *, optional: bool = False, limit: int = 200) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ParameterError(f"{what} must be a non-empty text; got {value!r}")
    value = value.strip()
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise ParameterError(f"{what} must be one line of at most {limit} characters; got {value[:60]!r}...")
    return value


def neutral_name(position: int) -> str:
    """The blinded name of the map shown at ``position`` (0 -> 'Map A', 26 -> 'Map AA').

    Examples
    --------
    >>> neutral_name(0), neutral_name(1), neutral_name(27)
    ('Map A', 'Map B', 'Map AB')
    """
    letters, n = "", position
    while True:
        letters = chr(ord("A") + n % 26) + letters
        n = n // 26 - 1
        if n < 0:
            return f"Map {letters}"


def blinded_order(methods: Sequence[str], *, seed: int, reviewer: str, case_id: str) -> list[str]:
    """``methods`` in the random order that ``reviewer`` sees for ``case_id`` (reproducible).

    The order comes from a SHA-256 of the study seed, the reviewer and the case (Python's
    ``hash`` is salted per process, so it would change between sessions).

    Examples
    --------
    >>> a = blinded_order(["gradcam", "ig", "occlusion"], seed=0, reviewer="Dr Grey", case_id="c1")
    >>> a == blinded_order(["gradcam", "ig", "occlusion"], seed=0, reviewer="Dr Grey", case_id="c1")
    True
    >>> sorted(a)
    ['gradcam', 'ig', 'occlusion']
    """
    digest = hashlib.sha256(json.dumps([int(seed), reviewer, case_id]).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [methods[i] for i in rng.permutation(len(methods))]


class ReviewStudy:
    """A review study: cases, blinding options and where the verdicts are stored.

    Parameters
    ----------
    cases : sequence of ReviewCase
        In the order reviewers see them.
    name : str
        Shown to reviewers.
    study_id : str, optional
        Ties the verdict database to this study (a database made for another study is refused).
    seed : int
        Seed of the blinded map order.
    hide_prediction, blind_methods : bool
        Hide the model's prediction; show maps as "Map A", "Map B"... in random order.
    database : str or Path, optional
        The SQLite file of verdicts (default: ``<study file stem>.verdicts.sqlite`` beside it).
    path : Path, optional
        The study file, when it has one.

    Examples
    --------
    >>> study = ReviewStudy.load("pilot/study.json")          # doctest: +SKIP
    >>> [i.shown_as for i in study.items("Dr Grey")][:2]      # doctest: +SKIP
    ['Map A', 'Map B']
    """

    def __init__(self, cases: Sequence[ReviewCase], *, name: str, study_id: str | None = None,
                 seed: int = 0, hide_prediction: bool = True, blind_methods: bool = True,
                 database: str | Path | None = None, path: str | Path | None = None):
        self.name = _text(name, "study name")
        self.study_id = _text(study_id, "study id", optional=True)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ParameterError(f"study seed must be an integer; got {seed!r}")
        self.seed = int(seed)
        self.hide_prediction = bool(hide_prediction)
        self.blind_methods = bool(blind_methods)
        self.path = Path(path).resolve() if path is not None else None
        self.cases = list(cases)
        if not self.cases:
            raise ParameterError(f"study {self.name!r} has no cases")
        ids = [c.case_id for c in self.cases]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ParameterError(f"study {self.name!r}: case ids must be unique; repeated: {dup}")
        for case in self.cases:
            if not case.maps:
                raise ParameterError(f"study {self.name!r}: case {case.case_id!r} has no explanation map")
        self._database = Path(database) if database is not None else None

    # ------------------------------------------------------------------ file format
    @classmethod
    def load(cls, path) -> ReviewStudy:
        """Read a study file (JSON; see the module docstring for the format).

        Only the file itself is read here; missing scans or maps are reported per case by
        :meth:`check` and :meth:`load_case`, so one broken case does not stop a review.

        Raises
        ------
        ReadError
            The file is missing, is not JSON, or is not a medlab review study.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReadError(f"review study file {path} does not exist; check the path") from None
        except IsADirectoryError:
            raise ReadError(f"{path} is a folder; give the study's JSON file (e.g. {path / 'study.json'})") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReadError(f"{path} is not a readable JSON review study ({exc})") from None
        try:
            return cls._from_dict(data, path)
        except (KeyError, TypeError, AttributeError, ParameterError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ReadError(f"{path} is not a valid medlab review study: {detail}") from None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], path: Path) -> ReviewStudy:
        if not isinstance(data, Mapping) or data.get("format") != STUDY_FORMAT:
            raise ParameterError(f'"format" must be "{STUDY_FORMAT}"')
        if int(data.get("version", 1)) > STUDY_VERSION:
            raise ParameterError(f"it was written by a newer medlab (version {data['version']}); upgrade medlab")
        folder = path.resolve().parent
        cases = []
        for i, raw in enumerate(data["cases"]):
            if not isinstance(raw, Mapping):
                raise ParameterError(f"case {i + 1} must be an object with id, scan and maps")
            maps = raw["maps"]
            if not isinstance(maps, Mapping):
                raise ParameterError(f"case {raw.get('id')!r}: maps must be an object {{method: path}}")
            cases.append(ReviewCase(
                case_id=_text(raw["id"], f"case {i + 1} id"),
                scan=_under(folder, _text(raw["scan"], f"case {raw['id']!r} scan", limit=4096)),
                maps={_text(m, "method name"): _under(folder, _text(p, f"map {m!r}", limit=4096)) for m, p in maps.items()},
                prediction=_text(raw.get("prediction"), "prediction", optional=True, limit=500),
                truth=_text(raw.get("truth"), "truth", optional=True, limit=500),
            ))
        database = data.get("database")
        return cls(cases, name=data["name"], study_id=data.get("id"), seed=data.get("seed", 0),
                   hide_prediction=data.get("hide_prediction", True), blind_methods=data.get("blind_methods", True),
                   database=_under(folder, database) if database else None, path=path)

    def to_dict(self, relative_to: Path | None = None) -> dict:
        """The study as the JSON object of its file (paths relative to ``relative_to``)."""
        def rel(p: Path) -> str:
            if relative_to is None:
                return str(p)
            try:
                return Path(os.path.relpath(p, relative_to)).as_posix()
            except ValueError:  # another drive (Windows): keep it absolute
                return str(p)

        out: dict[str, Any] = {"format": STUDY_FORMAT, "version": STUDY_VERSION, "name": self.name}
        if self.study_id:
            out["id"] = self.study_id
        out.update(seed=self.seed, hide_prediction=self.hide_prediction, blind_methods=self.blind_methods)
        if self._database is not None:
            out["database"] = rel(self._database)
        out["cases"] = []
        for c in self.cases:
            entry: dict[str, Any] = {"id": c.case_id, "scan": rel(c.scan), "maps": {m: rel(p) for m, p in c.maps.items()}}
            if c.prediction is not None:
                entry["prediction"] = c.prediction
            if c.truth is not None:
                entry["truth"] = c.truth
            out["cases"].append(entry)
        return out

    def save(self, path=None, *, overwrite: bool = False) -> Path:
        """Write the study file atomically (paths relative to its folder); returns its path."""
        from .io.atomic import atomic_write_text

        path = Path(path) if path is not None else self.path
        if path is None:
            raise ParameterError("give the path of the study file to write")
        text = json.dumps(self.to_dict(path.resolve().parent), indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(path, text, overwrite=overwrite)
        self.path = path.resolve()
        return path

    @classmethod
    def create(cls, folder, cases: Iterable[Mapping[str, Any]], *, name: str, seed: int | None = None,
               hide_prediction: bool = True, blind_methods: bool = True,
               filename: str = "study.json") -> ReviewStudy:
        """Make a study in ``folder``: write in-memory images as NIfTI, then the study file.

        Parameters
        ----------
        folder : str or Path
            Created if needed; must not hold a study file of the same name already.
        cases : iterable of mapping
            Each with ``id``, ``scan`` (an :class:`Image` or a path) and ``maps``
            (``{method: Image or path}``), optionally ``prediction`` and ``truth`` (text).
            Images are saved as ``<folder>/<id>/scan.nii.gz`` and ``<folder>/<id>/<method>.nii.gz``;
            paths are referenced as they are (not copied).
        seed : int, optional
            Seed of the blinded order (default: drawn at random and stored in the file).

        Examples
        --------
        >>> import medlab
        >>> p = medlab.data.brain_mri(size=(32, 32, 16))
        >>> study = ReviewStudy.create("pilot", [{"id": "c1", "scan": p.t1,
        ...                            "maps": {"intensity": p.t1}}], name="pilot")  # doctest: +SKIP
        """
        folder = Path(folder)
        study_path = folder / filename
        if study_path.exists():
            raise WriteError(f"{study_path} exists already; choose another folder or file name")
        specs = []
        for i, spec in enumerate(cases):  # check everything before writing anything
            if not isinstance(spec, Mapping):
                raise ParameterError(f"case {i + 1} must be a mapping with id, scan and maps; got {type(spec).__name__}")
            case_id = _text(spec.get("id", f"case-{i + 1:03d}"), f"case {i + 1} id")
            maps = spec.get("maps")
            if not isinstance(maps, Mapping) or not maps:
                raise ParameterError(f"case {case_id!r}: maps must be a non-empty mapping {{method: Image or path}}")
            for what, obj in [("scan", spec.get("scan")), *((f"map {m!r}", img) for m, img in maps.items())]:
                if not isinstance(obj, (Image, str, Path)):
                    raise ParameterError(f"case {case_id!r}: {what} must be an Image or a path; got {type(obj).__name__}")
            specs.append((case_id, spec, {_text(m, "method name"): img for m, img in maps.items()}))
        folder.mkdir(parents=True, exist_ok=True)
        made = [ReviewCase(
            case_id=case_id, scan=_stored(spec["scan"], folder / _slug(case_id) / "scan.nii.gz"),
            maps={m: _stored(img, folder / _slug(case_id) / f"map-{_slug(m)}.nii.gz") for m, img in maps.items()},
            prediction=_text(spec.get("prediction"), "prediction", optional=True, limit=500),
            truth=_text(spec.get("truth"), "truth", optional=True, limit=500),
        ) for case_id, spec, maps in specs]
        study = cls(made, name=name, study_id=uuid.uuid4().hex,
                    seed=random.SystemRandom().randrange(2**31) if seed is None else seed,
                    hide_prediction=hide_prediction, blind_methods=blind_methods,
                    database=folder / f"{Path(filename).stem}.verdicts.sqlite")
        study.save(study_path)
        return study

    # ------------------------------------------------------------------ what a reviewer sees
    @property
    def database_path(self) -> Path:
        """The verdict database (default: ``<study file stem>.verdicts.sqlite`` beside it)."""
        if self._database is not None:
            return self._database
        if self.path is None:
            raise ParameterError("this study has no file: give database= or save it first")
        return self.path.with_name(f"{self.path.stem}.verdicts.sqlite")

    def open_store(self, database=None) -> ReviewStore:
        """The :class:`ReviewStore` of this study (created on first use)."""
        return ReviewStore(database if database is not None else self.database_path, study_id=self.study_id)

    def case(self, case_id: str) -> ReviewCase:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise ParameterError(f"study {self.name!r} has no case {case_id!r}")

    def items(self, reviewer: str) -> list[ReviewItem]:
        """Every map of every case in the order ``reviewer`` rates them, with the names shown."""
        reviewer = _text(reviewer, "reviewer name")
        out = []
        for n, case in enumerate(self.cases):
            methods = list(case.maps)
            if self.blind_methods:
                methods = blinded_order(methods, seed=self.seed, reviewer=reviewer, case_id=case.case_id)
            for k, method in enumerate(methods):
                shown = neutral_name(k) if self.blind_methods else method
                out.append(ReviewItem(len(out), case.case_id, method, shown, n + 1, len(self.cases), k + 1, len(methods)))
        return out

    def check(self) -> list[str]:
        """Problems found without reading images: missing scan or map files (empty when none)."""
        problems = []
        for c in self.cases:
            if not c.scan.exists():
                problems.append(f"case {c.case_id!r}: scan {c.scan} does not exist")
            problems += [f"case {c.case_id!r}: map {m!r} file {p} does not exist"
                         for m, p in c.maps.items() if not p.exists()]
        return problems

    def load_case(self, case_id: str) -> LoadedCase:
        """Read a case's scan and maps; each map is resampled onto the scan for display.

        Raises
        ------
        ReadError
            The scan is missing or unreadable (the message names the case and the file).
        """
        from . import render
        from .io import load

        case = self.case(case_id)
        where = f" (paths in {self.path} are relative to its folder)" if self.path else ""
        if not case.scan.exists():
            raise ReadError(f"case {case_id!r}: scan {case.scan} does not exist{where}")
        try:
            scan = load(case.scan)
        except MedlabError as exc:
            raise ReadError(f"case {case_id!r}: the scan cannot be read: {exc}") from exc
        loaded = LoadedCase(case, scan)
        for method, p in case.maps.items():
            try:
                if not p.exists():
                    raise ReadError(f"map file {p} does not exist{where}")
                saliency = load(p, allow_nonfinite=True)
                if saliency.ndim != scan.ndim:
                    raise GeometryError(f"the map ({p.name}) is {saliency.ndim}D but the scan is {scan.ndim}D")
                if not saliency.overlaps(scan):
                    lo, hi = saliency.bounds()
                    slo, shi = scan.bounds()
                    raise GeometryError(
                        f"the map ({p.name}, box {np.round(lo, 1).tolist()}..{np.round(hi, 1).tolist()} mm) does "
                        f"not overlap the scan (box {np.round(slo, 1).tolist()}..{np.round(shi, 1).tolist()} mm): "
                        "it was computed on another image")
                loaded.peaks[method] = map_peak(saliency)
                finite = np.isfinite(saliency.array)
                if not finite.all():  # NaN/inf would spoil the colour scale: show them as the map's minimum
                    saliency = saliency.with_array(np.where(finite, saliency.array, saliency.array[finite].min()))
                loaded.maps[method] = render.resample_like(saliency, scan)
            except MedlabError as exc:
                loaded.errors[method] = f"case {case_id!r}, map {method!r}: {exc}"
        return loaded


def _under(folder: Path, relative: str) -> Path:
    """``folder / relative`` with ``..`` folded (an absolute ``relative`` stays as it is)."""
    return Path(os.path.normpath(folder / relative))


def _stored(obj: Image | str | Path, target: Path) -> Path:
    """A path is referenced as it is; an Image is saved as ``target`` (never over a file)."""
    from .io import save

    if isinstance(obj, (str, Path)):
        return Path(obj).resolve()
    target.parent.mkdir(exist_ok=True)
    return save(obj, target).resolve()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def map_peak(saliency: Image) -> tuple[float, float, float]:
    """Physical point (mm, LPS) of the map's largest finite value; 2D maps get z = 0.

    Raises
    ------
    ImageError
        The map holds no finite value.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 5, 6)); a[1, 2, 3] = 1
    >>> map_peak(Image(a, spacing=(2, 2, 2), origin=(10, 0, 0)))
    (16.0, 4.0, 2.0)
    """
    arr = np.asarray(saliency.array, dtype=float)
    if saliency.rgb or not np.isfinite(arr).any():
        raise ImageError("the map holds no finite value (all NaN or infinite), so it has no peak")
    flat = np.nanargmax(np.where(np.isfinite(arr), arr, np.nan))
    index = np.unravel_index(flat, arr.shape)[::-1]  # (x, y, z)
    point = [float(v) for v in saliency.index_to_physical(index)]
    return tuple(point + [0.0] * (3 - len(point)))


# ============================================================================ the store
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
        self.path = Path(path)
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
        from .io.atomic import atomic_write

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
                    out.writerow([v.record_id, v.reviewer, v.case_id, v.method, v.shown_as, v.verdict, v.confidence,
                                  v.comment, *(v.click or ("",) * 3), *(v.peak or ("",) * 3),
                                  "" if dist is None else f"{dist:.3f}", int(v.prediction_shown), v.version,
                                  v.recorded_at])

        return atomic_write(path, write, overwrite=overwrite)


# ============================================================================ statistics
def verdict_distribution(verdicts: Sequence[Verdict]):
    """Count of each verdict per method (un-blinded), with the mean confidence.

    Returns
    -------
    pandas.DataFrame
        One row per method: ``n``, one count column per verdict (:data:`VERDICTS`), the same as
        fractions (``frac_<verdict>``) and ``mean_confidence``.

    Examples
    --------
    >>> verdict_distribution(store.current())          # doctest: +SKIP
    """
    import pandas as pd

    rows = []
    for method in sorted({v.method for v in verdicts}):
        mine = [v for v in verdicts if v.method == method]
        row: dict[str, Any] = {"method": method, "n": len(mine)}
        row.update({k: sum(v.verdict == k for v in mine) for k in VERDICTS})
        row.update({f"frac_{k}": row[k] / len(mine) for k in VERDICTS})
        row["mean_confidence"] = float(np.mean([v.confidence for v in mine]))
        rows.append(row)
    columns = ["method", "n", *VERDICTS, *(f"frac_{k}" for k in VERDICTS), "mean_confidence"]
    return pd.DataFrame(rows, columns=columns)


def _ratings(verdicts: Sequence[Verdict]) -> dict[str, dict[tuple[str, str], int]]:
    """reviewer -> {(case, method): verdict code}."""
    out: dict[str, dict[tuple[str, str], int]] = {}
    for v in verdicts:
        out.setdefault(v.reviewer, {})[(v.case_id, v.method)] = VERDICTS.index(v.verdict)
    return out


def _undefined(table: np.ndarray) -> bool:
    """Chance agreement is 1 (every rating in one category): kappa is 0/0."""
    p_rows, p_cols = table.sum(axis=1) / table.sum(), table.sum(axis=0) / table.sum()
    return bool(np.isclose(float(p_rows @ p_cols), 1.0))


def reviewer_agreement(verdicts: Sequence[Verdict], *, by_method: bool = True):
    """Agreement between reviewers on the verdict category: Cohen's and Fleiss' kappa.

    Cohen's kappa (``statsmodels.stats.inter_rater.cohens_kappa`` on the 4 x 4 contingency table)
    for every pair of reviewers over the maps both rated; Fleiss' kappa
    (``statsmodels.stats.inter_rater.fleiss_kappa``) over the maps every reviewer rated. Both
    over all maps (``scope='all'``) and, with ``by_method``, for each method alone. When every
    rating falls in one category, kappa is undefined (0/0): it is left empty with a note.

    Returns
    -------
    cohen, fleiss : pandas.DataFrame
        ``cohen``: scope, reviewer_a, reviewer_b, n_items, observed_agreement, kappa,
        kappa_low, kappa_high (95 % interval), note. ``fleiss``: scope, n_items, n_reviewers,
        kappa, note.
    """
    import pandas as pd
    from statsmodels.stats.inter_rater import aggregate_raters, cohens_kappa, fleiss_kappa

    scopes = [("all", list(verdicts))]
    if by_method:
        scopes += [(m, [v for v in verdicts if v.method == m]) for m in sorted({v.method for v in verdicts})]
    cohen_rows, fleiss_rows = [], []
    k = len(VERDICTS)
    for scope, subset in scopes:
        ratings = _ratings(subset)
        names = sorted(ratings)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                common = sorted(set(ratings[a]) & set(ratings[b]))
                row: dict[str, Any] = {"scope": scope, "reviewer_a": a, "reviewer_b": b, "n_items": len(common),
                                       "observed_agreement": None, "kappa": None, "kappa_low": None,
                                       "kappa_high": None, "note": ""}
                if not common:
                    row["note"] = "no map rated by both"
                else:
                    table = np.zeros((k, k))
                    for item in common:
                        table[ratings[a][item], ratings[b][item]] += 1
                    row["observed_agreement"] = float(np.trace(table) / table.sum())
                    if _undefined(table):
                        row["note"] = "undefined: every verdict in one category"
                    else:
                        with warnings.catch_warnings(), np.errstate(all="ignore"):
                            warnings.simplefilter("ignore", RuntimeWarning)
                            res = cohens_kappa(table)
                        # the asymptotic 95 % interval, clipped to kappa's range [-1, 1]
                        row.update(kappa=float(res.kappa), kappa_low=max(-1.0, float(res.kappa_low)),
                                   kappa_high=min(1.0, float(res.kappa_upp)))
                        if not np.isfinite(res.std_kappa):
                            row.update(kappa_low=None, kappa_high=None)
                cohen_rows.append(row)
        common_all = set.intersection(*(set(r) for r in ratings.values())) if ratings else set()
        frow: dict[str, Any] = {"scope": scope, "n_items": len(common_all), "n_reviewers": len(names),
                                "kappa": None, "note": ""}
        if len(names) < 2:
            frow["note"] = "needs at least two reviewers"
        elif not common_all:
            frow["note"] = "no map rated by every reviewer"
        else:
            data = np.array([[ratings[r][item] for r in names] for item in sorted(common_all)])
            counts, _ = aggregate_raters(data, n_cat=k)
            totals = counts.sum(axis=0)
            if np.count_nonzero(totals) < 2:
                frow["note"] = "undefined: every verdict in one category"
            else:
                frow["kappa"] = float(fleiss_kappa(counts, method="fleiss"))
        fleiss_rows.append(frow)
    cohen = pd.DataFrame(cohen_rows, columns=["scope", "reviewer_a", "reviewer_b", "n_items", "observed_agreement",
                                              "kappa", "kappa_low", "kappa_high", "note"])
    fleiss = pd.DataFrame(fleiss_rows, columns=["scope", "n_items", "n_reviewers", "kappa", "note"])
    return cohen, fleiss


def click_agreement(verdicts: Sequence[Verdict], *, within_mm: float = 10.0):
    """How close the clinicians' clicks are to each map's peak, per method.

    Returns
    -------
    pandas.DataFrame
        One row per method with clicks: ``n_clicks``, ``median_mm``, ``mean_mm``, ``max_mm``
        and ``frac_within`` (the fraction of clicks within ``within_mm`` of the peak).
    """
    import pandas as pd

    if not (isinstance(within_mm, (int, float)) and math.isfinite(within_mm) and within_mm > 0):
        raise ParameterError(f"within_mm must be a positive distance in mm; got {within_mm!r}")
    rows = []
    for method in sorted({v.method for v in verdicts}):
        d = np.array([v.click_to_peak_mm for v in verdicts if v.method == method and v.click_to_peak_mm is not None])
        if d.size:
            rows.append({"method": method, "n_clicks": int(d.size), "median_mm": float(np.median(d)),
                         "mean_mm": float(d.mean()), "max_mm": float(d.max()),
                         "frac_within": float(np.mean(d <= within_mm)), "within_mm": float(within_mm)})
    return pd.DataFrame(rows, columns=["method", "n_clicks", "median_mm", "mean_mm", "max_mm", "frac_within",
                                       "within_mm"])


@dataclass
class ReviewSummary:
    """Every summary table of a review (pandas DataFrames), un-blinded."""

    distribution: Any
    cohen: Any
    fleiss: Any
    clicks: Any
    n_verdicts: int
    reviewers: list[str]

    def to_csv(self, folder, *, overwrite: bool = False) -> dict[str, Path]:
        """Write ``distribution.csv``, ``cohen_kappa.csv``, ``fleiss_kappa.csv`` and
        ``click_agreement.csv`` into ``folder`` (each atomically); returns their paths."""
        from .io.atomic import atomic_write

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, table in (("distribution", self.distribution), ("cohen_kappa", self.cohen),
                            ("fleiss_kappa", self.fleiss), ("click_agreement", self.clicks)):
            out[name] = atomic_write(folder / f"{name}.csv", lambda p, t=table: t.to_csv(p, index=False),
                                     overwrite=overwrite)
        return out

    def __str__(self) -> str:
        parts = [f"{self.n_verdicts} current verdicts by {len(self.reviewers)} reviewer(s): {', '.join(self.reviewers)}",
                 "", "Verdicts per method", self.distribution.to_string(index=False),
                 "", "Cohen's kappa (pairs of reviewers)", self.cohen.to_string(index=False),
                 "", "Fleiss' kappa (all reviewers)", self.fleiss.to_string(index=False),
                 "", "Click vs map peak", self.clicks.to_string(index=False)]
        return "\n".join(parts)


def summarize(verdicts: Sequence[Verdict] | ReviewStore, *, within_mm: float = 10.0) -> ReviewSummary:
    """All summary tables of the current verdicts (a :class:`ReviewStore` or a list of them).

    Examples
    --------
    >>> s = summarize(ReviewStudy.load("pilot/study.json").open_store())   # doctest: +SKIP
    >>> s.to_csv("pilot/summary")                                           # doctest: +SKIP
    """
    if isinstance(verdicts, ReviewStore):
        verdicts = verdicts.current()
    verdicts = list(verdicts)
    cohen, fleiss = reviewer_agreement(verdicts)
    reviewers = list(dict.fromkeys(v.reviewer for v in verdicts))
    return ReviewSummary(verdict_distribution(verdicts), cohen, fleiss, click_agreement(verdicts, within_mm=within_mm),
                         len(verdicts), reviewers)
