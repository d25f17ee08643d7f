"""The cohort widget: run a recipe over many scans on Dask from the notebook, and watch it.

Choose the recipe (one from the session, or a JSON file) and the inputs (a folder or a CSV
manifest), preview the case list, Start; a per-case table and the failures fill in as cases
finish, with the Dask dashboard link; Stop cancels what has not finished (a re-run does the
rest). Any finished case opens in a :class:`~medlab.widgets.Viewer` with its outputs overlaid.

The run goes through :class:`medlab.cohort.CohortRun`; the Dask client's ``as_completed`` loop
runs in a thread, so the kernel stays free while hundreds of cases run.

Examples
--------
>>> from medlab.widgets import Cohort
>>> Cohort(recipe, "scans/", "out/")                         # doctest: +SKIP
>>> Cohort()            # picks Recipe objects from the notebook's variables   # doctest: +SKIP

CSS classes
-----------
``medlab-cohort``          the whole widget
``medlab-cohort-recipe``   the recipe dropdown; ``medlab-cohort-recipe-path`` its file box
``medlab-cohort-inputs``   the folder / manifest box; ``medlab-cohort-out`` the output folder;
                          ``medlab-cohort-workers`` the number of local worker processes
``medlab-cohort-list``     the "List cases" button; ``medlab-cohort-cases`` the case preview
``medlab-cohort-start``, ``medlab-cohort-stop``   the run buttons
``medlab-cohort-status``   the per-case table; ``medlab-cohort-failures`` the failures
``medlab-cohort-open``     the "Open case" button; ``medlab-cohort-viewer`` where it opens
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from medlab.errors import MedlabError

REFRESH_EVERY = 0.5
"""Seconds between two redraws of the status table (each finished case also redraws)."""
_FROM_FILE = "(file)"
"""The recipe picker's value when the recipe comes from the file box."""
ERROR_CHARS = 160
"""Characters of an error shown in the status table (the failures list has it whole)."""

_STATUS_COLOURS = {"done": "#2e7d32", "skipped": "#607d8b", "failed": "#c62828", "running": "#1565c0",
                   "cancelled": "#8d6e63", "queued": "#9e9e9e"}


def _session_recipes(session: Mapping[str, Any] | None) -> dict[str, Any]:
    from medlab.recipe import Recipe

    if session is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
            session = shell.user_ns if shell is not None else {}
        except ImportError:  # pragma: no cover - IPython comes with Jupyter
            session = {}
    return {k: v for k, v in session.items() if isinstance(v, Recipe) and not k.startswith("_")}


class Cohort(widgets.VBox):
    """Run a recipe on a cohort and watch it live.

    Parameters
    ----------
    recipe : Recipe or path, optional
        The recipe; otherwise choose one of the session's recipes or give a JSON file.
    inputs : path, optional
        A folder (every DICOM series and image file in it) or a CSV manifest.
    out_dir : path
        Where outputs, records and tables go.
    session : mapping, optional
        Where to look for Recipe objects (default: the notebook's variables).
    client : distributed.Client, optional
        Run on this cluster; default a local one (one worker per core) started on Start.
    workers : int, optional
        Worker processes of the local cluster.
    """

    def __init__(self, recipe=None, inputs=None, out_dir="cohort-out", *, session: Mapping[str, Any] | None = None,
                 client=None, workers: int | None = None):
        self.client, self.run, self.result = client, None, None
        self.cases = None
        self._thread: threading.Thread | None = None
        self._last_draw = 0.0
        self._draw_lock = threading.Lock()
        recipes = _session_recipes(session)
        if recipe is not None and not isinstance(recipe, (str, Path)):
            recipes = {"(given)": recipe, **recipes}
        # the file choice has a value of its own: a Dropdown whose value is None shows a blank box
        self.recipe_picker = widgets.Dropdown(options=[("(from the file below)", _FROM_FILE), *recipes.items()],
                                              value=next(iter(recipes.values()), _FROM_FILE), description="recipe")
        self.recipe_path = widgets.Text(value=str(recipe) if isinstance(recipe, (str, Path)) else "",
                                        placeholder="recipe.json", description="or file")
        self.inputs = widgets.Text(value="" if inputs is None else str(inputs),
                                   placeholder="folder of scans, or manifest.csv", description="inputs")
        self.out_dir = widgets.Text(value=str(out_dir), description="output")
        self.workers = widgets.BoundedIntText(value=workers or 0, min=0, max=512, description="workers",
                                              tooltip="worker processes of the local cluster (0: one per core)",
                                              layout=widgets.Layout(width="14em"))
        self.workers_hint = widgets.HTML("<span style='opacity:.75'>0: one per core</span>")
        self.list_button = widgets.Button(description="List cases", icon="list")
        self.start_button = widgets.Button(description="Start", icon="play", button_style="primary")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.message = widgets.HTML()
        self.case_preview = widgets.HTML()
        self.dashboard = widgets.HTML()
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="cases")
        self.counts = widgets.HTML()
        self.status = widgets.HTML()
        self.failures = widgets.HTML()
        self.case_picker = widgets.Dropdown(options=[], description="case")
        self.open_button = widgets.Button(description="Open case", icon="eye", disabled=True)
        self.viewer_area = widgets.Output()
        self.viewer = None
        for w, cls in ((self.recipe_picker, "recipe"), (self.recipe_path, "recipe-path"), (self.inputs, "inputs"),
                       (self.out_dir, "out"), (self.workers, "workers"), (self.list_button, "list"), (self.case_preview, "cases"),
                       (self.start_button, "start"), (self.stop_button, "stop"), (self.status, "status"),
                       (self.failures, "failures"), (self.open_button, "open"), (self.viewer_area, "viewer")):
            w.add_class(f"medlab-cohort-{cls}")
        self.list_button.on_click(lambda _: self.preview())
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.open_button.on_click(lambda _: self.open_case(self.case_picker.value))
        super().__init__([
            widgets.HBox([self.recipe_picker, self.recipe_path]),
            widgets.HBox([self.inputs, self.list_button]),
            widgets.HBox([self.out_dir, self.workers, self.workers_hint], layout=widgets.Layout(align_items="center")),
            self.case_preview,
            widgets.HBox([self.start_button, self.stop_button, self.dashboard]),
            widgets.HBox([self.progress, self.counts]),
            self.message, self.status, self.failures,
            widgets.HBox([self.case_picker, self.open_button]), self.viewer_area])
        self.add_class("medlab-cohort")

    # ------------------------------------------------------------------ choosing
    def recipe(self):
        """The chosen recipe: the dropdown's, or the file's when the dropdown says so."""
        from medlab.recipe import Recipe

        if self.recipe_picker.value is not _FROM_FILE:
            return self.recipe_picker.value
        if not self.recipe_path.value.strip():
            raise MedlabError("choose a recipe from the session, or give the path of a recipe JSON file")
        return Recipe.load(self.recipe_path.value.strip())

    def preview(self):
        """List the cases (checked: a bad manifest is refused with its rows named) and show them."""
        from medlab.cohort import list_cases

        self.case_preview.value = ""      # never a list of other inputs beside a refusal
        inputs = self.inputs.value.strip()
        if not inputs:                    # "" would list the kernel's working folder
            self._say("type the folder of scans or the CSV manifest in 'inputs' first", error=True)
            self.cases = None
            return None
        try:
            self.cases = list_cases(inputs, self.recipe())
        except MedlabError as exc:
            self._say(str(exc), error=True)
            self.cases = None
            return None
        self.case_preview.value = (f"<b>{len(self.cases)} case(s)</b>"
                                   + self.cases.table.to_html(index=False, max_rows=50, escape=True))
        self._say("")
        return self.cases

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Start the run in a thread: the kernel stays free; the tables update as cases finish."""
        from medlab.cohort import CohortRun

        if self._thread is not None and self._thread.is_alive():
            self._say("a run is going on; Stop it first", error=True)
            return
        if self.cases is None and self.preview() is None:
            return
        try:
            self.run = CohortRun(self.recipe(), self.cases, self.out_dir.value.strip() or "cohort-out", self.client,
                                 workers=self.workers.value or None, on_event=lambda _msg: self._draw())
        except MedlabError as exc:
            self._say(str(exc), error=True)
            return
        self.result = None
        self.progress.max, self.progress.value, self.progress.bar_style = len(self.run.cases), 0, ""
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.failures.value = ""
        self._say("starting the Dask cluster…" if self.client is None else "submitting…")
        self._thread = threading.Thread(target=self._work, name="medlab-cohort", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        run = self.run
        try:
            run.start()
            link = run.dashboard
            self.dashboard.value = (f'<a href="{html.escape(link)}" target="_blank">Dask dashboard</a>'
                                    if link else "")
            self._say("running")
            for _record in run.as_completed():
                self.progress.value += 1
                self._draw(force=True)
            self.result = run.finish()
            self._say(html.escape(self.result.summary().splitlines()[0]), error=not self.result.ok)
            self.progress.bar_style = _bar_style(self.result)
        except Exception as exc:  # noqa: BLE001 - shown in the widget, never lost in a thread
            run.close()
            self._say(f"{type(exc).__name__}: {exc}", error=True)
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
            self._draw(force=True)

    def stop(self) -> None:
        """Cancel every case not finished (finished ones are kept; a re-run does the rest).
        Nothing when no run is going on: the summary of the run that ended stays."""
        if self.run is not None and self.result is None and self._thread is not None and self._thread.is_alive():
            self.run.cancel()
            self._say("stopping: finished cases are kept, Start again does the rest")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends (for scripts and tests); True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ drawing
    def _say(self, text: str, *, error: bool = False) -> None:
        colour = "#c62828" if error else "inherit"
        self.message.value = f'<span style="color:{colour}">{html.escape(text) if error else text}</span>' if text else ""

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_draw < REFRESH_EVERY:
            return
        with self._draw_lock:
            self._last_draw = now
            run = self.run
            if run is None:
                return
            table = run.status_table()
            counts = table["status"].value_counts().to_dict()
            self.counts.value = " · ".join(f"{html.escape(str(k))} {v}" for k, v in sorted(counts.items()))
            self.status.value = _status_html(table)
            failed = [(c, r) for c, r in run.records.items() if r.get("status") == "failed"]
            self.failures.value = _failures_html(failed)
            finished = [c for c, r in run.records.items() if r.get("status") == "done"]
            if sorted(finished) != sorted(o for o in self.case_picker.options):
                keep = self.case_picker.value
                self.case_picker.options = sorted(finished)
                # new options leave the dropdown blank: show a case that "Open case" opens
                self.case_picker.value = keep if keep in finished else (min(finished) if finished else None)
            self.open_button.disabled = not finished

    # ------------------------------------------------------------------ opening a case
    def open_case(self, case: str):
        """Show a finished case: its first input with the last label output overlaid (or the last
        image output blended over it). Returns the :class:`~medlab.widgets.Viewer`."""
        import medlab
        from medlab.cohort import CASES_DIR, load_output, read_record

        from .viewer import Viewer

        out = Path(self.out_dir.value.strip() or "cohort-out")
        record = read_record(out / CASES_DIR / str(case))
        if record is None or record.get("status") != "done":
            self._say(f"case {case!r} has no finished result in {out}", error=True)
            return None
        try:
            first = next(iter(record["inputs"].values()))
            image = medlab.load(first["path"], series=first.get("series"))
            files = {k: out / CASES_DIR / str(case) / f for k, f in record["outputs"].items()}
            images = [k for k, f in files.items() if f.name.endswith((".nii.gz", ".png"))]
            loaded = {k: load_output(out / CASES_DIR / str(case), k) for k in images}  # with label names
            labels = [k for k, v in loaded.items() if v.kind == "label"]
            viewer = Viewer(image, labels=loaded[labels[-1]] if labels else None)
            others = [k for k, v in loaded.items() if v.kind != "label"]
            if not labels and others:
                viewer.set_second_image(loaded[others[-1]], mode="blend")
        except MedlabError as exc:
            self._say(str(exc), error=True)
            return None
        self.viewer = viewer
        self.viewer.add_class("medlab-cohort-viewer")
        self.viewer_area.clear_output()
        with self.viewer_area:
            from IPython.display import display

            display(widgets.VBox([widgets.HTML(f"<b>{html.escape(str(case))}</b>: "
                                               + html.escape(", ".join(k for k in images))), viewer]))
        return viewer


def _bar_style(result) -> str:
    """Green when every case is done, amber when some failed beside done ones (a whole red bar
    read as "everything failed") or a Stop left cases undone and none failed, red when cases
    failed and none is done."""
    if result.ok:
        return "success"
    c = result.counts
    return "warning" if c.get("computed", 0) + c.get("skipped", 0) or not c.get("failed", 0) else "danger"


def _status_html(table) -> str:
    rows = []
    for r in table.itertuples(index=False):
        colour = _STATUS_COLOURS.get(r.status, "inherit")
        step = ""
        if r.status == "running" and isinstance(r.step, (int, float)) and r.step == r.step:
            step = f"step {int(r.step)}/{int(r.steps) if r.steps == r.steps else '?'} {r.stage or ''}"
            if isinstance(r.fraction, float) and r.fraction == r.fraction:
                step += f" {100 * r.fraction:.0f}%"
        secs = f"{r.seconds:.1f}" if isinstance(r.seconds, float) and r.seconds == r.seconds else ""
        mem = f"{r.peak_mb:.0f}" if isinstance(r.peak_mb, float) and r.peak_mb == r.peak_mb else ""
        error = r.error if isinstance(r.error, str) else ""       # a case without error has NaN here
        if len(error) > ERROR_CHARS:       # the whole message and traceback are in the failures below
            error = error[:ERROR_CHARS].rstrip() + "… (in full below)"
        rows.append(f"<tr><td>{html.escape(str(r.case))}</td><td style='color:{colour}'>{html.escape(str(r.status))}"
                    f"</td><td>{html.escape(step)}</td><td>{secs}</td><td>{mem}</td>"
                    f"<td>{html.escape(error)}</td></tr>")
    head = "".join(f"<th style='white-space:nowrap;padding-right:10px'>{h}</th>"
                   for h in ("case", "status", "step now", "time (s)", "peak memory (MB)", "error"))
    return (f"<div style='max-height:18em;overflow:auto'><table><tr>{head}</tr>" + "".join(rows) + "</table></div>")


def _failures_html(failed) -> str:
    if not failed:
        return ""
    items = "".join(f"<details><summary><b>{html.escape(c)}</b>: {html.escape((r.get('error') or '').splitlines()[0])}"
                    f"</summary><pre>{html.escape(r.get('traceback', ''))}</pre></details>" for c, r in failed)
    return f"<b>{len(failed)} failed</b>{items}"
