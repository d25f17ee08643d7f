"""The ``medlab`` console command.

Sub-commands
------------
``medlab review STUDY --reviewer NAME [--port P] [--db FILE] [--no-browser]``
    Serves the clinician review app (:mod:`medlab.widgets.review`) with Voila on 127.0.0.1 only,
    behind a random token, and prints its address. The reviewer sees the scan, the map and the
    verdict form, no code; every verdict goes into the study's SQLite file as it is saved.
    Stop it with Ctrl-C.
``medlab review STUDY --export FOLDER``
    Writes ``verdicts.csv`` (current verdicts, un-blinded), ``verdict_history.csv`` (every
    version) and the summary tables (verdicts per method, Cohen's and Fleiss' kappa, click vs map
    peak) into FOLDER, and prints the summary.

``medlab run RECIPE.json INPUTS --out DIR [--scheduler ADDRESS] [--workers N] [--list]``
    Runs a recipe on every case of a cohort (a folder, or a CSV manifest with one column per
    recipe input) on Dask (:func:`medlab.cohort.run_cohort`): a local cluster of N worker
    processes on 127.0.0.1, or the scheduler at ADDRESS. Shows the dashboard link, a progress
    bar and a final summary; cases done before with the same recipe and inputs are skipped.
    Exits 0 when every case is done, 1 when any case failed, 130 when stopped by Ctrl-C and 143
    by SIGTERM (kill, Slurm, docker stop), which stops it the same way: the cases running get a
    few seconds to end, the tables are written. ``--list`` only lists the cases.

``medlab demo [CASE] [--out DIR] [--fast] [--open] [--overwrite]``
    Runs the brain tumour case study headless on the built-in phantom (:mod:`medlab.demo`) with
    a progress bar and writes one self-contained HTML report (figures, every measured number,
    the recipe) and the recipe as JSON into DIR; prints where they are, ``--open`` opens the
    report. ``--help`` lists the other case studies (notebook only for now). Exits 1 when a
    step failed (the report says which).

Adding a sub-command: write ``_add_NAME(subparsers)`` that calls ``subparsers.add_parser`` and
``set_defaults(func=...)`` (the function takes the parsed arguments and returns an exit code),
and append it to :data:`COMMANDS`. A :class:`~medlab.errors.MedlabError` becomes a one-line
message and exit code 2, never a traceback.

Examples
--------
.. code-block:: console

    $ medlab review pilot/study.json --reviewer "Dr Grey"
    medlab review: pilot (3 cases, 6 maps) for Dr Grey
    open http://127.0.0.1:8866/?token=...   (Ctrl-C to stop)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import MedlabError, ParameterError, WriteError

REVIEW_TEMPLATE = "medlab-review"
DEFAULT_REVIEW_PORT = 8866


def widgets_dir() -> Path:
    """The installed ``medlab.widgets`` folder (found without importing Jupyter libraries)."""
    spec = importlib.util.find_spec("medlab.widgets")
    if spec is None or not spec.submodule_search_locations:
        raise MedlabError("medlab.widgets is not installed; reinstall medlab")
    return Path(next(iter(spec.submodule_search_locations)))


def review_notebook() -> Path:
    """The Voila app notebook shipped with the package."""
    return widgets_dir() / "review_app.ipynb"


KERNEL_CULL_S = 300
"""Seconds a review kernel without an open page may stay idle before Voila shuts it down."""


def voila_command(notebook: Path, *, port: int, token: str, open_browser: bool = False) -> list[str]:
    """The Voila command line serving ``notebook`` on 127.0.0.1:``port`` with the review template."""
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--template={REVIEW_TEMPLATE}", "--theme=dark",
           "--VoilaConfiguration.strip_sources=True", "--VoilaConfiguration.show_tracebacks=False",
           "--Voila.ip=127.0.0.1", f"--port={port}", "--Voila.port_retries=0", f"--token={token}",
           # a page refresh leaves its old kernel running (Voila's shutdown request is refused for a
           # missing _xsrf, voila-dashboards/voila#1458): shut kernels with no page open after 5 idle
           # minutes; a page still open (connected) is never culled, however long the reader thinks
           f"--MappingKernelManager.cull_idle_timeout={KERNEL_CULL_S}", "--MappingKernelManager.cull_interval=60",
           "--MappingKernelManager.cull_connected=False"]
    if not open_browser:
        cmd.append("--no-browser")
    return cmd


def review_environment(study: Path, reviewer: str, database: Path | None = None,
                       base: dict | None = None) -> dict[str, str]:
    """The environment of the Voila server (its kernels inherit it): which study, which reviewer,
    and ``JUPYTER_PATH`` extended with the packaged template."""
    env = dict(os.environ if base is None else base)
    env["MEDLAB_REVIEW_STUDY"] = str(Path(study).resolve())
    env["MEDLAB_REVIEW_REVIEWER"] = reviewer
    if database is not None:
        env["MEDLAB_REVIEW_DATABASE"] = str(Path(database).resolve())
    else:
        env.pop("MEDLAB_REVIEW_DATABASE", None)
    templates = str(widgets_dir() / "jupyter-data")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (templates, env.get("JUPYTER_PATH", "")) if p)
    return env


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------- review
def _add_review(subparsers) -> None:
    p = subparsers.add_parser(
        "review", help="serve the clinician review app (Voila, 127.0.0.1) or export its results",
        description="Serve the clinician review of explanation maps for one reviewer, on 127.0.0.1 only; "
                    "or, with --export, write the verdicts and their summary as CSV.")
    p.add_argument("study", type=Path, help="the review study file (JSON)")
    p.add_argument("--reviewer", help="the reviewer's name, recorded with every verdict")
    p.add_argument("--port", type=int, default=DEFAULT_REVIEW_PORT,
                   help=f"port on 127.0.0.1 (default {DEFAULT_REVIEW_PORT})")
    p.add_argument("--db", type=Path, help="the verdict database (default: the study's)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.add_argument("--export", type=Path, metavar="FOLDER",
                   help="write verdicts.csv, verdict_history.csv and the summary tables there, then exit")
    p.add_argument("--overwrite", action="store_true", help="with --export: replace existing CSV files")
    p.set_defaults(func=_review)


def _review(args: argparse.Namespace) -> int:
    from .review import ReviewStudy, summarize

    study = ReviewStudy.load(args.study)
    store = study.open_store(args.db)  # refuses a corrupt or foreign database before serving
    if args.export is not None:
        folder = args.export
        names = ("verdicts.csv", "verdict_history.csv", "distribution.csv", "cohen_kappa.csv", "fleiss_kappa.csv",
                 "click_agreement.csv")
        existing = [n for n in names if (folder / n).exists()]
        if existing and not args.overwrite:  # refused before any is written: never half an export
            raise WriteError(f"a file of the export exists already in {folder} ({', '.join(existing)}); pass "
                             "--overwrite to replace them, or choose another folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot make the export folder {folder}: {exc.strerror or exc}") from None
        store.export_csv(folder / "verdicts.csv", overwrite=args.overwrite)
        store.export_csv(folder / "verdict_history.csv", history=True, overwrite=args.overwrite)
        summary = summarize(store)
        summary.to_csv(folder, overwrite=args.overwrite)
        print(summary)
        print(f"\nwritten to {folder}")
        return 0
    if not args.reviewer or not args.reviewer.strip():
        raise ParameterError('give the reviewer\'s name: medlab review STUDY --reviewer "Dr Grey"')
    if not 1 <= args.port <= 65535:
        raise ParameterError(f"--port must be between 1 and 65535; got {args.port}")
    if not _port_free(args.port):
        raise ParameterError(f"port {args.port} on 127.0.0.1 is in use; choose another with --port")
    items = study.items(args.reviewer.strip())
    for problem in study.check():
        print(f"warning: {problem} (the app will say so on that case)", file=sys.stderr)
    token = secrets.token_urlsafe(24)
    env = review_environment(args.study, args.reviewer.strip(), args.db, base=dict(os.environ))
    print(f"medlab review: {study.name} ({len(study.cases)} cases, {len(items)} maps) for {args.reviewer.strip()}")
    print(f"verdicts are saved in {store.path}")
    print(f"open http://127.0.0.1:{args.port}/?token={token}   (Ctrl-C to stop)", flush=True)
    return _serve(voila_command(review_notebook(), port=args.port, token=token, open_browser=not args.no_browser), env)


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server until it stops; a SIGTERM sent to this process is passed on to it, so it
    shuts its kernels down rather than being orphaned."""
    proc = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # Voila got the same Ctrl-C and is stopping its kernels
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- run
def _add_run(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run a recipe on a cohort (folder or CSV manifest) on Dask, resumable",
        description="Run a recipe on every case of a cohort on Dask: a local cluster on 127.0.0.1 (one worker "
                    "process per core) or an existing scheduler. Cases done before with the same recipe and "
                    "inputs are skipped; a failing case is recorded and the others go on.")
    p.add_argument("recipe", type=Path, help="the recipe (JSON, saved with Recipe.save)")
    p.add_argument("inputs", type=Path, help="a folder of images / DICOM series, or a CSV manifest")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where outputs, records and tables go")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (e.g. tcp://10.0.0.5:8786)")
    p.add_argument("--workers", type=int, help="worker processes of the local cluster (default: one per core)")
    p.add_argument("--threads", type=int, default=1, help="threads per case (default 1)")
    p.add_argument("--rerun", action="store_true", help="recompute cases done before")
    p.add_argument("--no-dashboard", action="store_true", help="do not serve the local Dask dashboard")
    p.add_argument("--list", action="store_true", help="only list the cases (checked), then exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .cohort import list_cases, run_cohort
    from .recipe import Recipe

    if args.scheduler and args.workers:
        raise ParameterError("--workers sizes the local cluster; with --scheduler the cluster has its own workers")
    if args.workers is not None and args.workers < 1:
        raise ParameterError(f"--workers must be 1 or more; got {args.workers}")
    if args.threads < 1:
        raise ParameterError(f"--threads must be 1 or more; got {args.threads}")
    recipe = Recipe.load(args.recipe)
    cases = list_cases(args.inputs, recipe)  # refuses a bad manifest before any work
    print(f"medlab run: {len(cases)} case(s) from {args.inputs}; recipe {args.recipe.name} ({len(recipe)} steps)")
    if args.list:
        print(cases)
        return 0
    where = args.scheduler or f"a local cluster ({args.workers or 'one'} worker process(es){'' if args.workers else ' per core'})"
    print(f"on {where}; outputs in {args.out}", flush=True)
    with _stop_signals() as received:
        try:
            result = run_cohort(recipe, cases, args.out, client=args.scheduler, workers=args.workers,
                                threads=args.threads, rerun=args.rerun, dashboard=not args.no_dashboard,
                                on_update=_stop_if_signalled(received))
            print(result.summary())
        except KeyboardInterrupt:   # at start-up, or while writing the tables: nothing to summarise
            if not received or received[-1] != signal.SIGTERM:
                raise               # Ctrl-C: main() says so and exits 130
            print("\nmedlab run: terminated; files are written whole or not at all: run it again", file=sys.stderr)
            return 128 + signal.SIGTERM
    return _run_exit_code(result, received)


def _stop_if_signalled(received: list[int]) -> Callable:
    """``on_update`` that stops the run once a signal came: Dask can swallow the
    KeyboardInterrupt a signal raised (one raised inside its garbage-collection callback during
    the cluster's start-up is only printed), and the run then went on to the end, exit 0."""
    def on_update(record, run) -> None:
        if received:
            raise KeyboardInterrupt
    return on_update


def _run_exit_code(result, received: list[int]) -> int:
    """0 when every case is done (even if a signal came after the last), 128 + the signal when
    the run was interrupted (130 Ctrl-C, 143 SIGTERM: the shell's convention, so a script or a
    batch system can tell it from failures), 1 when cases failed."""
    if result.ok:
        return 0
    if result.cancelled:
        return 128 + (received[-1] if received else signal.SIGINT)
    return 1


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM (kill, Slurm at the time limit, docker stop) handled like Ctrl-C: cancel, let the
    running cases settle, write the tables. Yields the list of the signals received (SIGINT,
    SIGTERM). Python's default for SIGTERM ends the process at once (no tables, hidden partial
    folders left behind)."""
    received: list[int] = []

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():   # only the main thread may set handlers
        yield received
        return
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}   # ignored (nohup, a background job): left so
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- demo
def _add_demo(subparsers) -> None:
    from .demo import CASE_STUDIES, PHANTOMS

    lines = [f"  {c.name:7s} {c.title}{'' if c.headless else ' (notebook only for now: not run headless)'}: "
             f"{c.story}" for c in CASE_STUDIES.values()]
    full, fast = PHANTOMS[False]["size"], PHANTOMS[True]["size"]
    p = subparsers.add_parser(
        "demo", help="run the brain tumour case study on the built-in phantom and write an HTML report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a clinical case study headless on built-in phantoms (offline, CPU) and write one "
                    "self-contained HTML report: figures, every measured number, and the recipe.",
        epilog="case studies:\n" + "\n".join(lines)
               + f"\n\nThe phantom is {'x'.join(map(str, full))} voxels ({'x'.join(map(str, fast))} with --fast). "
                 "Steps whose module or shipped model is missing are skipped with a line in the report.")
    p.add_argument("case", nargs="?", default="brain", choices=sorted(CASE_STUDIES), help="which case study (default brain)")
    p.add_argument("--out", type=Path, default=Path("medlab-demo"), metavar="DIR",
                   help="folder for the report and the recipe (default ./medlab-demo)")
    p.add_argument("--fast", action="store_true", help="a smaller phantom (8x fewer voxels): quicker, coarser")
    p.add_argument("--open", action="store_true", help="open the report in the web browser")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in DIR")
    p.add_argument("--seed", type=int, default=100,
                   help="phantom seed (default 100: a patient the shipped U-Nets never saw; they were trained on seeds 0-15)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from .demo import main_demo

    return main_demo(args.case, args.out, fast=args.fast, open_browser=args.open, overwrite=args.overwrite,
                     seed=args.seed, progress=not args.no_progress)


COMMANDS: list[Callable] = [_add_review, _add_run, _add_demo]
"""Functions that add one sub-command each to the ``medlab`` parser."""


def build_parser() -> argparse.ArgumentParser:
    """The ``medlab`` argument parser with every sub-command of :data:`COMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="medlab", description="medlab: interactive medical image processing.")
    parser.add_argument("--version", action="version", version=f"medlab {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medlab`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedlabError as exc:
        print(f"medlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (files are written atomically)
        print(f"\nmedlab {args.command}: interrupted; files are written whole or not at all: run it again",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
