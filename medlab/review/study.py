"""The review study: its cases, its file format, the blinded order each reviewer sees, and the
reading of a case (scan and maps resampled onto it)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeometryError, ImageError, MedlabError, ParameterError, ReadError, WriteError
from ..image import Image
from ._base import _text
from .store import ReviewStore

STUDY_FORMAT = "medlab-review-study"
STUDY_VERSION = 1


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
        from ..io.atomic import atomic_write_text

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
        from .. import render
        from ..io import load

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
                finite = np.isfinite(saliency.array)
                if finite.any() and map_is_flat(saliency):
                    loaded.peaks[method] = None   # one value everywhere: shown and rated, but it has no peak
                else:
                    loaded.peaks[method] = map_peak(saliency)
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
    from ..io import save

    if isinstance(obj, (str, Path)):
        return Path(obj).resolve()
    target.parent.mkdir(exist_ok=True)
    return save(obj, target).resolve()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def map_is_flat(saliency: Image) -> bool:
    """Whether a map has one value everywhere, to float32 rounding (a few units in the last
    place), or no finite value: it marks no region and has no peak.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 5, 6), np.float32); a[1, 2, 3] = np.spacing(np.float32(0))
    >>> map_is_flat(Image(a)), map_is_flat(Image(a + 1)), map_is_flat(Image(a + np.float32(0.5) * (a > 0)))
    (False, True, False)
    """
    values = np.asarray(saliency.array, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return True
    lo, hi = float(values.min()), float(values.max())
    return hi - lo <= 1e-6 * max(abs(lo), abs(hi))


def map_peak(saliency: Image) -> tuple[float, float, float]:
    """Physical point (mm, LPS) of the map's largest finite value; 2D maps get z = 0.

    Raises
    ------
    ImageError
        The map holds no finite value, or one value everywhere (it marks nothing: its first
        voxel, a corner of the volume, is no peak).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((4, 5, 6)); a[1, 2, 3] = 1
    >>> map_peak(Image(a, spacing=(2, 2, 2), origin=(10, 0, 0)))
    (16.0, 4.0, 2.0)
    """
    if saliency.rgb:
        raise ImageError("the map is an RGB picture, not a map of values: it has no peak")
    arr = np.asarray(saliency.array, dtype=float)
    if not np.isfinite(arr).any():
        raise ImageError("the map holds no finite value (all NaN or infinite), so it has no peak")
    if map_is_flat(saliency):
        raise ImageError("the map has one value everywhere (to rounding): it marks no region, so it has no peak")
    flat = np.nanargmax(np.where(np.isfinite(arr), arr, np.nan))
    index = np.unravel_index(flat, arr.shape)[::-1]  # (x, y, z)
    point = [float(v) for v in saliency.index_to_physical(index)]
    return tuple(point + [0.0] * (3 - len(point)))
