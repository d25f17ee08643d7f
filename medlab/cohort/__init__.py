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
    cases/<case>/record.json  per case: provenance, timings, memory, numbers, label names, or the error
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

# One file per job: cases (listing and checking), records (record.json, resume), task (one case
# on a worker), results (numbers and tables), engine (the run on Dask), deidentify. The
# "X as X" names were importable from medlab.cohort before it was split, and still are.
from .cases import Case, Cases, ManifestError, Source, list_cases
from .cases import read_manifest as read_manifest
from .deidentify import deidentify_cohort
from .engine import CohortRun, run_cohort
from .engine import _lock_folder as _lock_folder
from .engine import local_cluster as local_cluster
from .records import CASES_DIR as CASES_DIR
from .records import RECORD as RECORD
from .records import RECORD_SCHEMA as RECORD_SCHEMA
from .records import load_output, recipe_hash
from .records import read_record as read_record
from .records import summarize_live as summarize_live
from .results import CohortResult
from .results import numbers_of as numbers_of
from .results import write_tables as write_tables
from .task import EVENT_EVERY as EVENT_EVERY
from .task import run_case as run_case

__all__ = ["Case", "Cases", "CohortResult", "CohortRun", "ManifestError", "Source", "deidentify_cohort",
           "list_cases", "load_output", "recipe_hash", "run_cohort"]
