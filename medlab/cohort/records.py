"""The record of one case (``cases/<case>/record.json``): reading it, deciding from it whether a
case is done already (resume), committing a case folder atomically, and what it keeps of the
live values a stage published."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from .cases import _as_recipe

RECORD = "record.json"
RECORD_SCHEMA = "medlab.cohort.case"
CASES_DIR = "cases"


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


def load_output(case_dir, key: str):
    """One output of a finished case, as the recipe produced it: a label map saved as NIfTI gets
    back the label names its case record keeps (NIfTI has no place for them).

    Parameters
    ----------
    case_dir : path
        ``<out_dir>/cases/<case>``.
    key : str
        The output, ``"step3.labels"`` (a key of the record's ``outputs``).

    Returns
    -------
    Image, Transform, Checkpoint or pandas.DataFrame
        An image output as an Image (with its label names); a transform or a checkpoint as
        itself; a table or curve (CSV) as a DataFrame.

    Raises
    ------
    ParameterError
        The case has no finished record, or no output ``key`` (the message lists those it has).

    Examples
    --------
    >>> from medlab.cohort import load_output
    >>> labels = load_output("out/cases/ph000", "step3.labels")   # doctest: +SKIP
    >>> labels.labels[1].name                                      # doctest: +SKIP
    'foreground'
    """
    from ..errors import ParameterError

    folder = Path(case_dir)
    record = read_record(folder)
    if record is None or record.get("status") != "done":
        raise ParameterError(f"{folder} holds no finished case (no record.json with status 'done'); run the cohort first")
    outputs = record.get("outputs", {})
    outputs = outputs if isinstance(outputs, dict) else {}
    if not isinstance(key, str) or key not in outputs:
        raise ParameterError(f"case {record.get('case')!r} has no output {key!r}; it has {', '.join(outputs) or 'none'}")
    name = outputs[key]
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ParameterError(f"{folder / 'record.json'}: output {key!r} is {name!r}, not a file of the case; "
                             "the record was edited or damaged: run the case again (rerun=True)")
    path = folder / name
    names = _label_names(record, key, folder)
    if names:
        from ..io import load

        return load(path, kind="label", labels=names)
    return _load_saved(path)


def _label_names(record: dict, key: str, folder: Path) -> dict:
    """The label names a record keeps for output ``key`` (``{"1": {"name", "color"}}``) with whole-number keys."""
    from ..errors import ParameterError

    kept = record.get("label_names", {})
    names = kept.get(key) if isinstance(kept, dict) else kept
    try:
        return {int(v): lab for v, lab in (names or {}).items()}
    except (AttributeError, TypeError, ValueError):
        raise ParameterError(f"{folder / 'record.json'}: the label names of {key!r} are not a mapping of whole-number "
                             f"label values; the record was edited or damaged: run the case again (rerun=True)") from None


def _load_saved(path: Path):
    """Read a saved output back by its extension (images, transforms, checkpoints; a CSV table
    or curve as a pandas DataFrame)."""
    from ..io import load
    from ..outputs import Checkpoint, Transform

    if path.name.endswith((".h5", ".tfm", ".txt")):
        return Transform.load(path)
    if path.name.endswith((".pt", ".pth")):
        return Checkpoint.load(path)
    if path.name.endswith(".csv"):
        import pandas as pd

        return pd.read_csv(path)
    return load(path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _checksums(case) -> dict:
    """What makes a case's work the same as before: its input and truth files' sha256 (reads them)."""
    return {"inputs": {k: v.checksum() for k, v in case.inputs.items()},
            "truth_sha256": {k: v.checksum() for k, v in case.truth.items()}}


def _same_work(old: dict | None, new: dict, folder: Path) -> bool:
    """Done before with the same recipe, the same input bytes, and every output still there."""
    if not old or old.get("status") != "done" or old.get("recipe_sha256") != new["recipe_sha256"]:
        return False
    if {k: v.get("sha256") for k, v in old.get("inputs", {}).items()} != {k: v["sha256"] for k, v in new["inputs"].items()}:
        return False
    if old.get("truth_sha256", {}) != new["truth_sha256"]:
        return False
    return all((folder / name).is_file() for name in old.get("outputs", {}).values())


def _commit(staging: Path, final: Path, record: dict) -> None:
    """Write the record, then swap the staging folder in: a case folder is only ever complete."""
    from ..io import atomic_write_text

    atomic_write_text(staging / RECORD, json.dumps(record, indent=1, default=str) + "\n", overwrite=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summarize_live(value) -> Any:
    """What a case record keeps of a published live value: a Curve's length and last point, a
    transform's parameters, a number; never every iteration or a whole image."""
    from ..image import Image
    from ..outputs import Curve, Transform, describe_value

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

