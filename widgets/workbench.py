"""The workbench: one widget for every stage group. Pick a stage, fill its inputs from the
session's images (and earlier outputs), set parameters on a live preview, Apply; every output
stays available (show it, overlay it, save it, use it as the next input), with a history that
undoes, and the whole session exported as a recipe (JSON and Python).

The workbench holds no code for a particular stage: it reads each declaration (inputs,
parameters, outputs) and builds a :class:`~medlab.widgets.panel.StagePanel` for it. Stage
widgets (preprocess, segment, register, explain) are configurations of it that add only what
is specific to them.

Examples
--------
>>> import medlab
>>> from medlab.widgets import Workbench
>>> brain = medlab.data.brain_mri(size=(64, 64, 32))                        # doctest: +SKIP
>>> wb = Workbench({"t1": brain.t1, "flair": brain.flair}, group="preprocess")   # doctest: +SKIP
>>> wb.select("n4_bias_correction"); wb.apply(wait=True)                   # doctest: +SKIP
>>> wb.session["step1.field"]                                              # doctest: +SKIP
>>> wb.export("n4.json")                                                   # doctest: +SKIP

CSS classes (besides the panel's, see :mod:`medlab.widgets.panel`)
--------------------------------------------------------------------
``medlab-workbench``         the whole widget
``medlab-group-picker``      the group dropdown (when several groups are offered)
``medlab-stage-picker``      the stage dropdown
``medlab-input-<name>``      the dropdown choosing input ``<name>`` from the session
``medlab-before``, ``medlab-after``  the input viewer and the preview/result viewer
``medlab-history``           the list of applied steps
``medlab-undo``              the Undo button
``medlab-export-path``       the recipe path box (empty: nothing is written until you name a file)
``medlab-export-overwrite``  the "overwrite" checkbox
``medlab-export``            the Export button
``medlab-recipe-code``       the recipe as Python code
"""

from __future__ import annotations

import html
import keyword
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from medlab.errors import MedlabError
from medlab.image import Image, as_image
from medlab.outputs import Checkpoint, Transform, describe_value
from medlab.recipe import Recipe, _unique
from medlab.stage import ImageInput, ModelInput, StageSpec, TransformInput
from medlab.stage import groups as registered_groups
from medlab.stage import stages as registered_stages

from .panel import StagePanel, _as_spec, link_window

__all__ = ["Workbench"]


class Workbench(widgets.VBox):
    """Pick a stage of a group, wire its inputs from the session, preview, apply, keep everything.

    Parameters
    ----------
    inputs : Image or mapping of str to Image (or Transform, model)
        The session's starting values; one image is named ``image``.
    group : str, optional
        Offer the stages of this group only (``"preprocess"``, ``"segment"`` ...); default every
        group that has stages, with a group picker.
    stages : sequence of stage functions, StageSpecs or names, optional
        Offer exactly these stages instead.
    stage : str, optional
        The stage selected first.
    height : int
        Height of each viewer in pixels.
    debounce : float
        Quiet time (s) before a preview starts; see :class:`StagePanel`.

    Attributes
    ----------
    session : dict
        Every value available as an input: the starting ones, then each Apply's outputs under
        ``"stepN.<output>"`` (the names the recipe uses).
    history : list of (name, params, output)
        Applied steps; ``output`` is the step's first image output (or its whole Result).
    results : list of Result or tuple
        Everything each step returned.
    recipe : Recipe
        What was applied, wired as a graph; replays bit-identically.
    panel : StagePanel
        The panel of the selected stage.
    """

    def __init__(self, inputs: Image | Mapping[str, Any], *, group: str | None = None, stages: Sequence | None = None,
                 stage: str | None = None, height: int = 360, debounce: float = 0.15):
        super().__init__()
        self.add_class("medlab-workbench")
        start = {"image": inputs} if not isinstance(inputs, Mapping) else dict(inputs)
        if not start:
            raise MedlabError("give the workbench at least one image: Workbench(image) or Workbench({'t1': t1, ...})")
        self.session: dict[str, Any] = {}
        for name, value in start.items():
            key = _unique(_identifier(name), self.session)  # "t-1" and "t_1" stay two images
            self.session[key] = as_image(value, key) if not isinstance(value, (Transform, Checkpoint)) and \
                not hasattr(value, "state_dict") else value
        self.original = next((v for v in self.session.values() if isinstance(v, Image)), None)
        if self.original is None:
            raise MedlabError("the workbench needs at least one image among its inputs")
        self.specs = self._offered(group, stages)
        self.history: list[tuple[str, dict[str, Any], Any]] = []
        self.results: list = []
        self.recipe = Recipe()
        self.recipe.name_values(**self.session)
        self._current = next(k for k, v in self.session.items() if isinstance(v, Image))
        self._debounce = debounce
        self._panels: dict[str, StagePanel] = {}
        self._lock = threading.Lock()

        from .viewer import Viewer

        self.before = Viewer(self.original, height=height)
        self.after = Viewer(None, height=height)
        self.before.add_class("medlab-before")
        self.after.add_class("medlab-after")
        self._unlink = link_window(self.before, self.after)
        self._build(group, stage)

    # -------------------------------------------------------------- construction
    @staticmethod
    def _offered(group: str | None, stages: Sequence | None) -> dict[str, StageSpec]:
        if stages is not None:
            specs = [_as_spec(s) for s in stages]
        elif group is not None:
            specs = list(registered_stages(group))
        else:
            specs = [s for g in registered_groups() for s in registered_stages(g) if g != "measure"]
        if not specs:
            raise MedlabError(f"no {group or ''} stages are registered (is medlab.{group or 'preprocess'} installed?)")
        return {s.name: s for s in specs}

    def _build(self, group: str | None, stage: str | None) -> None:
        specs = list(self.specs.values())
        groups = list(dict.fromkeys(s.group for s in specs))
        self.group_picker = widgets.Dropdown(options=groups, value=groups[0], description="group",
                                             layout=widgets.Layout(display="" if len(groups) > 1 else "none"))
        self.group_picker.add_class("medlab-group-picker")
        first = self.specs[stage] if stage in self.specs else specs[0]
        self.group_picker.value = first.group
        self.picker = widgets.Dropdown(options=self._stage_options(first.group), description="stage",
                                       value=first.name)
        self.picker.add_class("medlab-stage-picker")
        self._inputs_box = widgets.VBox([])
        self.history_list = widgets.HTML("")
        self.history_list.add_class("medlab-history")
        self.undo_button = widgets.Button(description="Undo last", icon="undo", disabled=True,
                                          layout=widgets.Layout(width="auto", min_width="8.5em"))   # the default width cut it to "Undo l…"
        self.undo_button.add_class("medlab-undo")
        self.export_path = widgets.Text(value="", placeholder="e.g. recipes/my_recipe.json", description="recipe file",
                                        style={"description_width": "initial"})
        self.export_path.add_class("medlab-export-path")
        self.overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                          layout=widgets.Layout(width="8em"))
        self.overwrite.add_class("medlab-export-overwrite")
        self.export_button = widgets.Button(description="Export recipe", icon="download",
                                            tooltip="write the recipe (JSON) to the file named on the left")
        self.export_button.add_class("medlab-export")
        self.code = widgets.HTML("")
        self.code.add_class("medlab-recipe-code")

        self.group_picker.observe(lambda ch: self._safely(lambda: self._group_changed(ch["new"])), "value")
        self.picker.observe(lambda ch: self._safely(lambda: self.select(ch["new"])), "value")
        self.undo_button.on_click(lambda _: self._safely(self.undo))
        self.export_button.on_click(lambda _: self._safely(lambda: self.export(self.export_path.value,
                                                                               overwrite=self.overwrite.value)))
        self.before_caption, self.after_caption = widgets.HTML(), widgets.HTML()
        self.before_caption.add_class("medlab-before-caption")
        self.after_caption.add_class("medlab-after-caption")
        self._panel_box = widgets.VBox([])
        self.panel: StagePanel = None  # type: ignore[assignment]
        self.select(self.picker.value)
        self.children = [
            widgets.HBox([self.group_picker, self.picker]),
            self._inputs_box,
            widgets.HBox([widgets.VBox([self.before_caption, self.before]),
                          widgets.VBox([self.after_caption, self.after])]),
            self._panel_box,
            widgets.HTML("<b>History</b>"),
            widgets.HBox([self.history_list, self.undo_button], layout=widgets.Layout(align_items="flex-start")),
            widgets.HBox([self.export_path, self.overwrite, self.export_button]),
            self.code,
        ]
        self._refresh_history()

    def _stage_options(self, group: str) -> list[tuple[str, str]]:
        return [(s.title, s.name) for s in self.specs.values() if s.group == group]

    def _group_changed(self, group: str) -> None:
        options = self._stage_options(group)
        self.picker.options = options
        if self.picker.value not in [v for _, v in options]:
            self.picker.value = options[0][1]

    # -------------------------------------------------------------- stages and inputs
    def select(self, name: str) -> StagePanel:
        """Show the panel of stage ``name`` (its parameters are kept while switching)."""
        if name not in self.specs:
            raise MedlabError(f"stage {name!r} is not offered here; choose one of {sorted(self.specs)}")
        if self.panel is not None and self.panel.spec.name == name:
            return self.panel
        spec = self.specs[name]
        if self.group_picker.value != spec.group:
            self.group_picker.value = spec.group
        if self.panel is not None:
            self.panel.detach()
        panel = self._panels.get(name)
        if panel is None:
            panel = StagePanel(spec, self.before, after=self.after, debounce=self._debounce)
            panel.on_apply(self._applied)
            panel.outputs_view.on_use = self._use_output
            self._panels[name] = panel
        self.panel = panel
        self._wire_inputs(panel)
        if panel.error is None and not panel.running:
            panel.show_status("", "info")  # no stale "applied … in 0.6 s" from an earlier visit
        panel.attach()
        self._show_after_pane()
        self._caption("preview")
        self._panel_box.children = [panel]
        if self.picker.value != name:
            self.picker.value = name
        return panel

    def _fits(self, inp, value) -> bool:
        """Whether a value can be input ``inp`` of the shown stage."""
        if isinstance(inp, ImageInput):
            if not isinstance(value, Image):
                return False
            kind = "rgb" if value.rgb else value.kind
            return kind in inp.kinds and value.ndim in (inp.dims or self.panel_dims(inp))
        if isinstance(inp, TransformInput):
            return isinstance(value, Transform)
        if isinstance(inp, ModelInput):
            return isinstance(value, Checkpoint) or hasattr(value, "state_dict")
        return True

    def _choices(self, inp) -> list[tuple[str, str]]:
        """Session values an input can take: ``(label, key)``, newest first."""
        out = []
        for key, value in reversed(list(self.session.items())):
            if not self._fits(inp, value):
                continue
            text = describe_value(value)
            out.append((f"{key} — {text[:70]}{'…' if len(text) > 70 else ''}", key))
        return out

    def panel_dims(self, inp) -> tuple[int, ...]:
        return self.panel.spec.dims if self.panel is not None else (2, 3)

    def _wire_inputs(self, panel: StagePanel) -> None:
        """One dropdown per input of the stage, filled from the session; the first image input
        follows the current image (the last result) as the preprocess chain expects."""
        rows = []
        spec = panel.spec
        # rewired for the same stage (after an Apply, or a value added): keep what the user chose
        kept = ({name: box.value for box in self._inputs_box.children for name in spec.inputs
                 if name != spec.primary and f"medlab-input-{name}" in box._dom_classes}
                if getattr(self, "_wired_stage", None) == spec.name else {})
        self._wired_stage = spec.name
        for name, inp in spec.inputs.items():
            choices = self._choices(inp)
            if inp.optional:
                choices = [("(none)", ""), *choices]
            if name == spec.primary and self._current in [k for _, k in choices]:
                value = self._current
            elif name in kept and kept[name] in [k for _, k in choices] and (kept[name] or inp.optional):
                value = kept[name]
            else:
                value = choices[0][1] if choices else None
                if isinstance(inp, ImageInput) and name != spec.primary:
                    # a second image: another image than the primary one, or the user chooses
                    other = [k for _, k in choices if k and k != self._current]
                    if other:
                        value = other[0]
                    elif not inp.optional:
                        choices = [("(choose an image: the session has only one)", ""), *choices]
                        value = None
            box = widgets.Dropdown(options=choices or [("(nothing suitable in the session)", "")], value=value or "",
                                   description=name.replace("_", " "), style={"description_width": "initial"},
                                   layout=widgets.Layout(width="36em"))
            box.add_class(f"medlab-input-{name}")
            box.observe(lambda ch, n=name: self._safely(lambda: self._input_chosen(n, ch["new"])), "value")
            rows.append(box)
            panel._inputs[name] = self.session.get(value) if value else None
        self._inputs_box.children = rows
        if spec.primary is not None and panel._inputs.get(spec.primary) is not None:
            panel.set_input(spec.primary, panel._inputs[spec.primary])
        panel.inputs_note.value = ""  # the dropdowns say it

    def _input_chosen(self, name: str, key: str) -> None:
        value = self.session.get(key) if key else None
        if name == self.panel.spec.primary and key:
            self._current = key
        self.panel.set_input(name, value)

    def _use_output(self, name: str, value) -> None:
        key = next((k for k, v in self.session.items() if v is value), None)
        if key is None:
            raise MedlabError(f"output {name!r} is not in the session (was it kept after a Cancel?)")
        for inp_name in self.panel.spec.inputs:
            box = self._input_box(inp_name)
            if key in [k for _, k in box.options]:
                box.value = key
                self.panel.show_status(f"{key} is now input {inp_name!r}", "ok")
                return
        raise MedlabError(f"{self.panel.spec.title} has no input that takes {key}")

    # -------------------------------------------------------------- running
    @property
    def image(self) -> Image:
        """The current image: the last applied step's first image output, or the original."""
        return self.session[self._current]

    def set(self, **params) -> None:
        """Set parameters of the selected stage (validated; errors also shown)."""
        self.panel.set(**params)

    def set_input(self, name: str, key_or_value) -> None:
        """Choose the session value of input ``name`` (by key, or a value to add to the session)."""
        spec = self.panel.spec
        if name not in spec.inputs:
            raise MedlabError(f"{spec.title} has no input {name!r}; its inputs are {list(spec.inputs)}")
        inp = spec.inputs[name]
        if not isinstance(key_or_value, str):
            value = key_or_value
            if isinstance(inp, ImageInput) and not isinstance(value, Image):
                value = as_image(value, name)
            if not self._fits(inp, value):  # checked before the session keeps it
                raise MedlabError(f"input {name!r} of {spec.title} cannot take {describe_value(value)[:80]}; "
                                  f"it needs {_wants(inp)}")
            key = _unique(f"input_{name}", self.session)
            self.session[key] = value
            self.recipe.name_values(**{key: value})
            self._wire_inputs(self.panel)
            key_or_value = key
        box = self._input_box(name)
        keys = [k for _, k in box.options if k]
        if key_or_value not in keys:
            raise MedlabError(f"input {name!r} of {spec.title} cannot take session value {key_or_value!r}; "
                              f"it takes {keys or 'nothing in the session yet: give a value'}")
        box.value = key_or_value

    def _input_box(self, name: str) -> widgets.Dropdown:
        return next(b for b in self._inputs_box.children if f"medlab-input-{name}" in b._dom_classes)

    def apply(self, wait: bool = False):
        """Apply the selected stage to its chosen inputs (see :meth:`StagePanel.apply`)."""
        spec = self.panel.spec
        if spec.primary is not None and self.panel._inputs.get(spec.primary) is not self.image \
                and self._current in self.session:
            box = next((b for b in self._inputs_box.children if f"medlab-input-{spec.primary}" in b._dom_classes), None)
            if box is not None and box.value == self._current:
                self.panel.set_input(spec.primary, self.image)
        return self.panel.apply(wait=wait)

    def _applied(self, panel: StagePanel) -> None:
        """Runs in the Apply thread after success: record the steps, keep every output."""
        with self._lock:
            for step in panel.steps:
                recorded = self.recipe.append(step)
                result = step.result
                for out, value in (result.items() if result is not None else ()):
                    if value is not None:
                        self.session[f"{recorded.id}.{out}"] = value
            last = self.recipe.steps[-1] if self.recipe.steps else None
            outputs = panel.outputs
            image_out = panel.result
            self.history.append((panel.spec.name, dict(last.params) if last else {}, image_out
                                 if image_out is not None else outputs))
            self.results.append(outputs)
            advances = self._advances(panel.spec, image_out)
            if advances and last is not None:
                key = next((k for k, v in self.session.items() if v is image_out), None)
                if key is not None:
                    self._current = key
        if panel is not self.panel:
            # the user picked another stage while this one ran: keep its outputs in the session
            # and the history, and leave the shown stage's panes and inputs as they are
            self._wire_inputs(self.panel)
            self._refresh_history()
            self.panel.show_status(f"{panel.spec.title} finished ({self.recipe.steps[-1].id if self.recipe.steps else ''}); "
                                   "its outputs are in the session", "ok")
            return
        overlaid = (not advances and image_out is not None and image_out.is_label
                    and image_out.overlaps(self.before.image))
        if advances:
            # a chain: the result is what the next stage takes. Both panes show it until the
            # user changes something, rather than a preview of the stage applied a second time.
            panel.hold_preview()
            self.before.image = image_out
            self.after.image = image_out
        elif overlaid:
            self.before.set_labels(image_out, opacity=0.4)   # a segmentation: over its image
        elif image_out is not None:
            # e.g. a registered image or a saliency map, beside its inputs. The panes share
            # window/level, and the output's own automatic window (a 0-1 map) must not reach the
            # input's pane: it blew the scan out to white under Grad-CAM
            window_level = self.before.window, self.before.level
            self.after.image = image_out
            self.before.window, self.before.level = window_level
        self._wire_inputs(panel)
        self._refresh_history()
        self._show_after_pane()
        self._caption("result" if image_out is not None else "preview", overlaid=overlaid)
        if not advances:
            panel.request_preview()

    def _caption(self, what: str, *, overlaid: bool = False) -> None:
        """Say what each pane shows: the input (which session value) and the preview or result."""
        spec = self.panel.spec
        key = next((k for k, v in self.session.items() if v is self.before.image), None)
        source = self._source_text(key)
        self.before_caption.value = f"<b>input</b> <code>{html.escape(key or '')}</code> {html.escape(source)}"
        if what == "result" and self.recipe.steps:
            step = self.recipe.steps[-1]
            title = self.specs[step.stage].title if step.stage in self.specs else step.stage
            where = "drawn over the input, left" if overlaid else (
                "change a parameter to preview the next step" if spec.preview is not None else "Apply runs it again")
            self.after_caption.value = f"<b>result</b> of {html.escape(step.id)} ({html.escape(title)}): {where}"
        elif spec.preview is None:
            self.after_caption.value = "<b>result</b> (this stage has no live preview: Apply runs it)"
        else:
            where = "a downsampled volume" if spec.preview == "volume" else "the shown slice"
            self.after_caption.value = f"<b>preview</b> of {html.escape(spec.title)} on {where}"

    def _source_text(self, key: str | None) -> str:
        if key is None or "." not in key:
            return "(original)" if key else ""
        sid = key.split(".")[0]
        step = next((s for s in self.recipe.steps if s.id == sid), None)
        title = self.specs[step.stage].title if step is not None and step.stage in self.specs else ""
        return f"(after {sid}: {title})" if title else ""

    def _show_after_pane(self) -> None:
        """The result pane is hidden while it has nothing to show (a stage without preview)."""
        empty = self.panel.spec.preview is None and self.after.image is None
        self.after.layout.display = "none" if empty else ""

    @staticmethod
    def _advances(spec: StageSpec, image_out) -> bool:
        """Whether a result becomes the current image: an intensity image made from a stage's
        only image input (preprocessing). Label maps and registered images sit beside it."""
        return (image_out is not None and not image_out.is_label and len(spec.image_inputs) == 1)

    # -------------------------------------------------------------- history
    def undo(self):
        """Remove the last applied step and its outputs; returns the new current image."""
        if self.panel.running:
            raise MedlabError("a stage is running: wait for it or cancel it before undoing")
        with self._lock:
            if not self.history:
                raise MedlabError("nothing to undo: no step has been applied")
            name, _, _ = self.history.pop()
            self.results.pop()
            step = self.recipe.undo()
            for key in [k for k in self.session if step is not None and k.startswith(f"{step.id}.")]:
                del self.session[key]
            if self._current not in self.session:
                self._current = self._latest_image()
        self.before.image = self.image
        self.before.set_labels(None)
        self._wire_inputs(self.panel)
        self._refresh_history()
        self._caption("preview")
        self.panel.show_status(f"undid {self.specs[name].title if name in self.specs else name}", "ok")
        self.panel.request_preview()
        return self.image

    def _latest_image(self) -> str:
        for step in reversed(self.recipe.steps):
            for key, value in self.session.items():
                if key.startswith(f"{step.id}.") and isinstance(value, Image) and not value.is_label:
                    return key
        return next(k for k, v in self.session.items() if isinstance(v, Image))

    def _refresh_history(self) -> None:
        items = []
        for step, (name, params, _) in zip(self.recipe.steps, self.history):
            title = self.specs[name].title if name in self.specs else name
            args = ", ".join(f"{k}={v}" for k, v in params.items())
            wiring = ", ".join(f"{k} ← {v}" for k, v in step.inputs.items())
            items.append(f"<li><b>{html.escape(step.id)}</b> {html.escape(title)} "
                         f"<code>{html.escape(args)}</code> <span style='opacity:.7'>({html.escape(wiring)})</span></li>")
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
        if path is None or not str(path).strip():
            raise MedlabError("type a file name for the recipe first, e.g. recipes/my_recipe.json")
        if not isinstance(path, (str, Path)):
            raise MedlabError(f"the recipe file must be a file name (a str or Path); got {type(path).__name__}")
        written = self.recipe.save(Path(path).expanduser(), overwrite=overwrite)
        self.code.value = f"<pre>{html.escape(self.recipe.to_python())}</pre>"
        self.panel.show_status(f"recipe with {len(self.recipe)} step(s) written to {written}", "ok")
        return written

    def _safely(self, action) -> None:
        try:
            action()
        except Exception as exc:
            if self.panel is not None:
                self.panel._fail(exc)
            else:
                raise

    def close(self) -> None:
        for p in self._panels.values():
            p.close()
        if callable(self._unlink):
            unlink, self._unlink = self._unlink, None   # a second close (ipywidgets' __del__) finds nothing to unlink
            unlink()
        super().close()


def _identifier(name: str) -> str:
    key = re.sub(r"\W", "_", str(name)).strip("_") or "image"
    key = key if key[0].isalpha() else f"image_{key}"
    return f"{key}_" if keyword.iskeyword(key) else key  # "class" is a fine label, not a Python name


def _wants(inp) -> str:
    if isinstance(inp, ImageInput):
        dims = f" ({' or '.join(f'{d}D' for d in inp.dims)})" if inp.dims else ""
        return f"an image of kind {' or '.join(inp.kinds)}{dims}"
    return f"a {inp.type_name}"
