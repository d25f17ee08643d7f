"""The preprocess widget: pick a stage, tune it on a live slice preview, apply it, undo it, and
export what was done as a recipe.

The widget records a :class:`medlab.recipe.Recipe` through the same stage calls a script makes,
so ``Recipe.load(path).run(original)`` reproduces :attr:`PreprocessWidget.image` bit for bit.

Examples
--------
>>> import medlab
>>> from medlab.widgets.preprocess import PreprocessWidget
>>> img = medlab.data.brain_mri(noise=0.05).t1                 # doctest: +SKIP
>>> w = PreprocessWidget(img); w                               # doctest: +SKIP
>>> w.select("nlm_denoise"); w.set(h=2.0)                      # doctest: +SKIP
>>> w.apply(wait=True)                                         # doctest: +SKIP
>>> w.export("denoise.json")                                   # doctest: +SKIP

CSS classes (besides the panel's, see :mod:`medlab.widgets.panel`)
--------------------------------------------------------------------
``medlab-preprocess``        the whole widget
``medlab-stage-picker``      the stage dropdown
``medlab-before``, ``medlab-after``  the input viewer and the preview viewer
``medlab-history``           the list of applied steps
``medlab-undo``              the Undo button
``medlab-export-path``       the recipe path box
``medlab-export-overwrite``  the "overwrite" checkbox
``medlab-export``            the Export button
``medlab-recipe-code``       the recipe as Python code
"""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from medlab.errors import MedlabError
from medlab.image import Image, as_image
from medlab.recipe import Recipe, describe_input
from medlab.stage import StageSpec
from medlab.stage import stages as registered_stages

from .panel import StagePanel, _as_spec, link_window

__all__ = ["PreprocessWidget", "preprocess_widget"]


class PreprocessWidget(widgets.VBox):
    """Stage picker, before/after viewers, stage panel, history with undo, and recipe export.

    Parameters
    ----------
    image : Image
        The image to preprocess (never modified).
    stages : sequence of stage functions, StageSpecs or names, optional
        The stages offered; default ``medlab.stages("preprocess")``.
    stage : str, optional
        The stage selected first; default the first one.
    height : int
        Height of each viewer in pixels.
    debounce : float
        Quiet time (s) before a preview starts; see :class:`StagePanel`.

    Attributes
    ----------
    original : Image
        The input.
    image : Image
        The current result (the original when nothing is applied).
    history : list of (name, params, Image)
        Applied steps, with the image each one produced.
    recipe : Recipe
        What was applied, as a replayable recipe.
    panel : StagePanel
        The panel of the selected stage.

    Examples
    --------
    >>> w = PreprocessWidget(img, stage="gaussian_smooth")    # doctest: +SKIP
    >>> w.set(sigma=1.0); out = w.apply(wait=True)            # doctest: +SKIP
    >>> w.undo(); w.image is img                              # doctest: +SKIP
    True
    """

    def __init__(self, image: Image, *, stages: Sequence | None = None, stage: str | None = None,
                 height: int = 360, debounce: float = 0.15):
        super().__init__()
        self.add_class("medlab-preprocess")
        self.original = as_image(image)
        specs = [_as_spec(s) for s in (registered_stages("preprocess") if stages is None else stages)]
        if not specs:
            raise MedlabError("no preprocessing stages are registered (is medlab.preprocess installed?)")
        self.specs: dict[str, StageSpec] = {s.name: s for s in specs}
        self.history: list[tuple[str, dict[str, Any], Image]] = []
        self.recipe = Recipe(input=describe_input(self.original))
        self._debounce = debounce
        self._panels: dict[str, StagePanel] = {}
        self._lock = threading.Lock()

        from .viewer import Viewer

        self.before = Viewer(self.original, height=height)
        self.after = Viewer(None, height=height)
        self.before.add_class("medlab-before")
        self.after.add_class("medlab-after")
        self._unlink = link_window(self.before, self.after)

        self.picker = widgets.Dropdown(options=[(s.title, s.name) for s in specs], description="stage",
                                       value=stage or specs[0].name)
        self.picker.add_class("medlab-stage-picker")
        self.history_list = widgets.HTML("")
        self.history_list.add_class("medlab-history")
        self.undo_button = widgets.Button(description="Undo last", icon="undo", disabled=True)
        self.undo_button.add_class("medlab-undo")
        self.export_path = widgets.Text(value="recipe.json", description="recipe file",
                                        style={"description_width": "initial"})
        self.export_path.add_class("medlab-export-path")
        self.overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                          layout=widgets.Layout(width="8em"))
        self.overwrite.add_class("medlab-export-overwrite")
        self.export_button = widgets.Button(description="Export recipe", icon="download")
        self.export_button.add_class("medlab-export")
        self.code = widgets.HTML("")
        self.code.add_class("medlab-recipe-code")

        self.picker.observe(lambda ch: self._safely(lambda: self.select(ch["new"])), "value")
        self.undo_button.on_click(lambda _: self._safely(self.undo))
        self.export_button.on_click(lambda _: self._safely(lambda: self.export(self.export_path.value,
                                                                               overwrite=self.overwrite.value)))
        self._panel_box = widgets.VBox([])
        self.panel: StagePanel = None  # type: ignore[assignment]
        self.select(self.picker.value)
        self.children = [
            self.picker,
            widgets.HBox([self.before, self.after]),
            self._panel_box,
            widgets.HTML("<b>History</b>"),
            widgets.HBox([self.history_list, self.undo_button]),
            widgets.HBox([self.export_path, self.overwrite, self.export_button]),
            self.code,
        ]
        self._refresh_history()

    # -------------------------------------------------------------- stage selection
    def select(self, name: str) -> StagePanel:
        """Show the panel of stage ``name`` (its parameters are kept while switching)."""
        if name not in self.specs:
            raise MedlabError(f"stage {name!r} is not offered here; choose one of {sorted(self.specs)}")
        if self.panel is not None and self.panel.spec.name == name:
            return self.panel
        if self.panel is not None:
            self.panel.detach()
        panel = self._panels.get(name)
        if panel is None:
            panel = StagePanel(self.specs[name], self.before, after=self.after, debounce=self._debounce)
            panel.on_apply(self._applied)
            self._panels[name] = panel
        else:
            panel.attach()
        self.panel = panel
        self._panel_box.children = [panel]
        if self.picker.value != name:
            self.picker.value = name
        return panel

    @property
    def image(self) -> Image:
        """The current result: the last applied step's output, or the original."""
        return self.history[-1][2] if self.history else self.original

    def set(self, **params) -> None:
        """Set parameters of the selected stage (validated; errors also shown)."""
        self.panel.set(**params)

    def apply(self, wait: bool = False) -> Image | None:
        """Apply the selected stage to the current image (see :meth:`StagePanel.apply`)."""
        self._check_same_input()
        return self.panel.apply(wait=wait)

    def _check_same_input(self) -> None:
        if self.before.image is not self.image:  # the viewer was given another image by hand
            self.before.image = self.image

    def _applied(self, panel: StagePanel) -> None:
        """Runs in the Apply thread after success: record the step and show the new image."""
        with self._lock:
            for name, params in panel.steps:
                self.recipe.steps.append((name, params))
            params = panel.steps[-1][1] if panel.steps else {}
            self.history.append((panel.spec.name, params, panel.result))
        self.before.image = panel.result
        self._refresh_history()
        panel.request_preview()

    # -------------------------------------------------------------- history
    def undo(self) -> Image:
        """Remove the last applied step and show the image before it; returns the new current image."""
        if self.panel.running:
            raise MedlabError("a stage is running: wait for it or cancel it before undoing")
        with self._lock:
            if not self.history:
                raise MedlabError("nothing to undo: no step has been applied")
            name, _, _ = self.history.pop()
            self.recipe.undo()
        self.before.image = self.image
        self._refresh_history()
        self.panel.show_status(f"undid {self.specs[name].title if name in self.specs else name}", "ok")
        self.panel.request_preview()
        return self.image

    def _refresh_history(self) -> None:
        items = []
        for i, (name, params, _) in enumerate(self.history, 1):
            title = self.specs[name].title if name in self.specs else name
            args = ", ".join(f"{k}={v}" for k, v in params.items())
            items.append(f"<li>{html.escape(title)} <code>{html.escape(args)}</code></li>")
        self.history_list.value = f"<ol>{''.join(items)}</ol>" if items else "<i>no step applied yet</i>"
        self.undo_button.disabled = not self.history
        self.code.value = f"<pre>{html.escape(self.recipe.to_python())}</pre>" if self.history else ""

    # -------------------------------------------------------------- export
    def export(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the recipe as JSON (atomically; refuses to overwrite unless asked) and show it as Python.

        Returns
        -------
        Path
            The file written.
        """
        if not str(path).strip():
            raise MedlabError("give a file name for the recipe, e.g. recipe.json")
        written = self.recipe.save(Path(path).expanduser(), overwrite=overwrite)
        self.code.value = f"<pre>{html.escape(self.recipe.to_python())}</pre>"
        self.panel.show_status(f"recipe with {len(self.recipe)} step(s) written to {written}", "ok")
        return written

    def _safely(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button never raises into the void
            self.panel._fail(exc)

    def close(self) -> None:
        for p in self._panels.values():
            p.close()
        if callable(self._unlink):
            self._unlink()
        super().close()


def preprocess_widget(image: Image, **kwargs) -> PreprocessWidget:
    """Open the preprocess widget on ``image`` (a function form of :class:`PreprocessWidget`).

    Examples
    --------
    >>> preprocess_widget(medlab.data.brain_mri().t1)   # doctest: +SKIP
    """
    return PreprocessWidget(image, **kwargs)
