"""What a cohort run yields: every number of every case (one row per number), the per-case and
results tables written as CSV and Parquet, and :class:`CohortResult`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cases import Case
from .records import CASES_DIR, read_record


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
        """``(case, error)`` of every failed case (a case a cancel left undone is not a failure)."""
        return [(c, r.get("error", "")) for c, r in self.records.items() if _outcome(r) == "failed"]

    @property
    def counts(self) -> dict[str, int]:
        """How many cases were computed, skipped (done before), failed and cancelled."""
        return _counts(self.records.values())

    @property
    def ok(self) -> bool:
        """Every case is done: none failed, none left undone by a cancel. A cancel that came
        after every case had finished (``cancelled`` is still True then) lost nothing."""
        return all(r.get("status") == "done" for r in self.records.values())

    def summary(self) -> str:
        c = self.counts
        failed = (f"{c['failed']} failed, {c['cancelled']} cancelled" if self.cancelled or c["cancelled"]
                  else f"{c['failed']} failed")
        lines = [(f"{len(self.records)} case(s) in {self.elapsed_s:.1f} s: {c['computed']} computed, "
                  f"{c['skipped']} skipped (done before), {failed}"),
                 f"outputs and records: {self.out_dir / CASES_DIR}",
                 f"tables: {self.out_dir / 'cases.csv'}, {self.out_dir / 'results.csv'} (and .parquet)"]
        if self.failures:
            lines.append("failures:")
            lines += [f"  {case}: {err.splitlines()[0] if err else 'failed'}" for case, err in self.failures]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def _counts(records: Iterable[dict]) -> dict[str, int]:
    """Computed, skipped, failed and cancelled cases among ``records``: the statuses of cases.csv
    ("done" split into computed and skipped), so the summary, the widget and the table agree."""
    out = {"computed": 0, "skipped": 0, "failed": 0, "cancelled": 0}
    for r in records:
        out[_outcome(r)] += 1
    return out


def _outcome(record: dict) -> str:
    """'computed', 'skipped', 'cancelled' or 'failed' (any other status not done)."""
    status = record.get("status")
    if status == "done":
        return "skipped" if record.get("run") == "skipped" else "computed"
    return "cancelled" if status == "cancelled" else "failed"


def write_tables(out_dir: Path, cases: Sequence[Case], records: Mapping[str, dict]):
    """``cases`` and ``results`` tables (CSV and Parquet) of every case recorded in ``out_dir``.

    Each case's row comes from its record in ``records`` (the run's result), so the tables,
    the result and its summary agree; a case done before and not redone has the earlier record
    (a cancelled run settles it so). A case missing from ``records`` is taken from its record
    on disk, if any.
    """
    import pandas as pd

    rows, numbers = [], []
    for case in cases:
        rec = records.get(case.id)
        if rec is None:
            disk = read_record(Path(out_dir) / CASES_DIR / case.id)
            rec = dict(disk, run="earlier") if disk else {"status": "not run"}
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
    from ..io import atomic_path, atomic_write_text

    atomic_write_text(csv_path, df.to_csv(index=False), overwrite=True)
    with atomic_path(parquet_path, overwrite=True) as tmp:
        df.to_parquet(tmp, index=False)


def numbers_of(outputs: Mapping[str, Any], recipe) -> list[dict]:
    """Every number in a run's outputs, one dict per number: tables cell by cell, each curve's
    last and best value, each transform's parameters (rotation in degrees, translation in mm)."""
    from ..outputs import Curve, Table, Transform

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

