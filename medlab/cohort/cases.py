"""The cases of a cohort, listed and checked before any work: every DICOM series and image file
of a folder, every path of a list, every row of a CSV manifest (refused, naming each bad row,
when files are missing, rows are duplicated, columns are unknown or missing)."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ParameterError, ReadError


class ManifestError(ParameterError):
    """A cohort's inputs are refused before any work: the message names every bad row."""


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
            from ..outputs import Transform

            return Transform.load(self.path)
        if kind == "model":
            from ..outputs import Checkpoint

            return Checkpoint.load(self.path)
        from ..io import load

        return load(self.path, series=self.series, kind="label" if label else None)

    def nbytes(self) -> int:
        """Bytes on disk (a folder: of every file below it); 0 when it cannot be read."""
        path = Path(self.path)
        try:
            return sum(f.stat().st_size for f in _files_below(path)) if path.is_dir() else path.stat().st_size
        except OSError:
            return 0

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
    from ..io import formats, list_series

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
    from ..io import formats
    from ..io.dicom import DICOM_SUFFIXES, is_dicom_file

    for f in _files_below(folder):
        suffix = formats.suffix_of(f)
        if suffix in formats.READ_SUFFIXES:
            continue
        if suffix in DICOM_SUFFIXES or is_dicom_file(f):
            return True
    return False


def _cases_from_paths(paths: list, name: str) -> Cases:
    from ..io import formats

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
    from ..stage import get_stage

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


def _as_recipe(recipe):
    from ..recipe import Recipe

    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, (str, os.PathLike)):
        return Recipe.load(recipe)
    raise ParameterError(f"recipe must be a Recipe or the path of a recipe JSON file; got {type(recipe).__name__}")
