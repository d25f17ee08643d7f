"""Summaries of a review: verdicts per method, agreement between reviewers (Cohen's and Fleiss'
kappa from statsmodels), agreement between the clinicians' clicks and the maps' peaks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from ._base import VERDICTS
from .store import ReviewStore, Verdict


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
        from ..errors import WriteError
        from ..io.atomic import atomic_write
        from ..io.paths import as_file_path

        folder = as_file_path(folder, "the summary folder")
        tables = (("distribution", self.distribution), ("cohen_kappa", self.cohen),
                  ("fleiss_kappa", self.fleiss), ("click_agreement", self.clicks))
        existing = [f"{name}.csv" for name, _ in tables if (folder / f"{name}.csv").exists()]
        if existing and not overwrite:  # refused before any is written: never half a summary
            raise WriteError(f"a summary file exists already in {folder} ({', '.join(existing)}); pass "
                             "overwrite=True (--overwrite) to replace them, or choose another folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot make the folder {folder}: {exc.strerror or exc}") from None
        out = {}
        for name, table in tables:
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
    if isinstance(verdicts, (str, bytes)) or not hasattr(verdicts, "__iter__"):
        raise ParameterError(f"summarize needs a ReviewStore or a list of verdicts; got {type(verdicts).__name__}")
    verdicts = list(verdicts)
    odd = next((v for v in verdicts if not isinstance(v, Verdict)), None)
    if odd is not None:
        raise ParameterError(f"summarize needs verdicts (ReviewStore.current()); got a {type(odd).__name__}")
    cohen, fleiss = reviewer_agreement(verdicts)
    reviewers = list(dict.fromkeys(v.reviewer for v in verdicts))
    return ReviewSummary(verdict_distribution(verdicts), cohen, fleiss, click_agreement(verdicts, within_mm=within_mm),
                         len(verdicts), reviewers)
