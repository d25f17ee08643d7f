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
>>> from medlab.review import ReviewStudy, summarize
>>> p = medlab.data.brain_mri(size=(48, 48, 24))
>>> blob = p.t1.with_array(p.mask("enhancing tumour", "necrotic core").astype("float32"))
>>> study = ReviewStudy.create("pilot/", [{"id": "c1", "scan": p.t1, "maps": {"truth": blob}}],
...                            name="pilot")                                        # doctest: +SKIP
>>> store = study.open_store()                                                      # doctest: +SKIP
>>> item = study.items("Dr Grey")[0]                                                # doctest: +SKIP
>>> store.record("Dr Grey", item.case_id, item.method, verdict="relevant", confidence=4,
...              shown_as=item.shown_as)                                            # doctest: +SKIP
>>> print(summarize(store))                                                         # doctest: +SKIP
"""

from __future__ import annotations

from ._base import CONFIDENCE_LEVELS, VERDICT_LABELS, VERDICTS, ReviewStoreError, VerdictConflict
from .stats import (
    ReviewSummary,
    click_agreement,
    reviewer_agreement,
    summarize,
    verdict_distribution,
)
from .store import ReviewStore, Verdict
from .study import (
    LoadedCase,
    ReviewCase,
    ReviewItem,
    ReviewStudy,
    blinded_order,
    map_is_flat,
    map_peak,
    neutral_name,
)

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
    "blinded_order",
    "click_agreement",
    "map_is_flat",
    "map_peak",
    "neutral_name",
    "reviewer_agreement",
    "summarize",
    "verdict_distribution",
]
