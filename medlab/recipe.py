"""Recipes: what was done, as a small graph of stage calls that replays bit-identically.

Each step names its stage, its parameters, and where each of its inputs comes from: a recipe
input (``"fixed"``, ``"moving"``, ``"image"``) or a named output of an earlier step
(``"step1.transform"``). A recipe saves as versioned JSON that records each input's
description (shape, spacing, checksum), never its voxels, and converts to a short Python
script that calls the public functions, so what a user did interactively runs on a cohort.

Examples
--------
A one-input chain, recorded while working:

>>> import medlab
>>> from medlab.recipe import Recipe
>>> img = medlab.data.brain_mri(size=(32, 32, 16)).t1                     # doctest: +SKIP
>>> with Recipe.record(img) as recipe:                                   # doctest: +SKIP
...     out = medlab.preprocess.gaussian_smooth(img, sigma=1.0)
>>> recipe.run(img)                  # the final image                   # doctest: +SKIP

Two inputs, several outputs:

>>> with Recipe.record(fixed=fixed, moving=moving) as recipe:           # doctest: +SKIP
...     transform, registered, history = rigid_register(fixed, moving)
...     moved_labels = resample_labels(labels, transform, reference=fixed)
>>> outputs = recipe.run(fixed=fixed, moving=moving, labels=labels)      # doctest: +SKIP
>>> outputs["step2.image"]                                               # doctest: +SKIP
>>> print(recipe.to_python())                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import keyword
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MedlabError, ParameterError, ReadError
from .image import Image
from .stage import ImageInput, ModelInput, StageSpec, Step, TransformInput, get_stage, record

SCHEMA = "medlab.recipe"
SCHEMA_VERSION = 2

_INPUT_TYPES = {ImageInput: "image", TransformInput: "transform", ModelInput: "model"}


@dataclass
class Recipe:
    """Steps (stage calls wired to recipe inputs and earlier outputs), the inputs' descriptions
    and the medlab version.

    Attributes
    ----------
    steps : list of Step
        Each compares equal to ``(stage name, params)`` and has ``.id`` (``"step1"`` ...) and
        ``.inputs`` (``{input name: source}``).
    inputs : dict
        ``{name: description}`` of what the recipe needs to run (type, kind, dimension, size,
        spacing, checksum, source path).
    """

    steps: list[Step] = field(default_factory=list)
    inputs: dict[str, dict] = field(default_factory=dict)
    medlab_version: str = ""

    def __post_init__(self):
        if not self.medlab_version:
            from . import __version__

            self.medlab_version = __version__
        self._objects: dict[int, tuple[Any, str]] = {}  # id(value) -> (value, source), while building
        self._added_by: dict[str, str] = {}  # recipe input -> the step whose recording introduced it
        self._candidates: dict[int, tuple[Any, str]] = {}  # named values not used yet (a session's images)

    # -------------------------------------------------------------- building
    @classmethod
    @contextlib.contextmanager
    def record(cls, image: Any = None, /, **inputs: Any) -> Iterator[Recipe]:
        """Record the stage calls made inside the block.

        ``Recipe.record(image)`` names the one input ``image``; ``Recipe.record(fixed=a,
        moving=b)`` names several. A stage input that is neither a recipe input nor an output of
        an earlier recorded step becomes a new recipe input, named after the stage's input.
        """
        recipe = cls()
        if image is not None:
            inputs = {"image": image, **inputs}
        for name, value in inputs.items():
            recipe.bind(name, value)
        with record() as steps:
            try:
                yield recipe
            finally:
                for step in steps:
                    recipe.append(step)
                recipe.forget_values()

    def bind(self, name: str, value: Any) -> None:
        """Declare recipe input ``name`` with an example value (its description is recorded)."""
        _check_name(name, "recipe input")
        self.inputs[name] = describe_input(value)
        self._objects[id(value)] = (value, name)

    def name_values(self, **values: Any) -> None:
        """Names for values that become recipe inputs when a recorded step first uses them.

        A workbench names its session's images this way: the recipe then needs only the ones
        its steps used, under the names the user knows them by.
        """
        for name, value in values.items():
            _check_name(name, "recipe input")
            self._candidates[id(value)] = (value, name)

    def append(self, step: Step) -> Step:
        """Add a recorded step, telling where each input came from by identity: a recipe input, an
        earlier step's output, or (for an object seen for the first time) a new recipe input."""
        spec = get_stage(step.stage)
        sid = f"step{len(self.steps) + 1}"
        sources = {}
        for name, value in step.values.items():
            if value is None:
                continue
            known = self._objects.get(id(value))
            candidate = self._candidates.get(id(value))
            if known is not None and known[0] is value:
                sources[name] = known[1]
            elif candidate is not None and candidate[0] is value:
                new = _unique(candidate[1], self.inputs)
                self.bind(new, value)
                self._added_by[new] = sid
                sources[name] = new
            else:
                new = _unique(name, self.inputs)
                self.bind(new, value)
                self._added_by[new] = sid
                sources[name] = new
        new_step = Step(step.stage, dict(step.params), inputs=sources, id=sid)
        self.steps.append(new_step)
        if step.result is not None:
            for out, value in step.result.items():
                if value is not None:
                    self._objects[id(value)] = (value, f"{sid}.{out}")
        _check_step(spec, new_step, self._known_sources(len(self.steps) - 1), "recipe")
        return new_step

    def forget_values(self) -> None:
        """Drop the references to recorded values (they are only needed while recording)."""
        self._objects = {}
        self._candidates = {}

    def add(self, name: str, params: dict[str, Any] | None = None, inputs: Mapping[str, str] | None = None) -> Recipe:
        """Append a step by hand, validating its parameters now (JSON-form values).

        ``inputs`` maps the stage's input names to sources (``"image"``, ``"step1.image"``).
        Left out, a one-input chain is assumed: the stage's first image input takes the
        previous step's first image output, or the recipe input ``image`` for the first step.
        """
        spec = get_stage(name)
        try:
            values = spec.validate(spec.params_from_json(dict(params or {})))
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if isinstance(exc, MedlabError):
                raise
            raise ParameterError(f"{name}: parameters {str(params)[:120]} cannot be read ({exc})") from None
        if inputs is not None and not isinstance(inputs, Mapping):
            raise ParameterError(f"{name}: inputs must map each input to its source, e.g. {{'image': 'step1.image'}}; "
                                 f"got {type(inputs).__name__}")
        sources = dict(inputs or {})
        if not sources and spec.primary is not None:
            sources[spec.primary] = self._chain_source()
        for inp, src in sources.items():
            if not isinstance(src, str):
                raise ParameterError(f"{name}: source of input {inp!r} must be a string like 'image' or 'step1.image'")
            if "." not in src:  # a recipe input: a name its JSON can be read back with
                _check_name(src, "recipe input")
            if "." not in src and src not in self.inputs:
                kind = spec.inputs.get(inp)
                self.inputs[src] = {"type": _INPUT_TYPES.get(type(kind), "image")}
        step = Step(name, spec.params_to_json(values), inputs=sources, id=f"step{len(self.steps) + 1}")
        _check_step(spec, step, self._known_sources(len(self.steps)), "recipe")
        self.steps.append(step)
        return self

    def _chain_source(self) -> str:
        for step in reversed(self.steps):
            spec = get_stage(step.stage)
            images = [n for n, o in spec.outputs.items() if o.type_name in ("image", "label")]
            if images:
                return f"{step.id}.{images[0]}"
        return next(iter(self.inputs), "image")

    def _known_sources(self, upto: int) -> dict[str, str]:
        """``{source: type}`` of the recipe inputs and the outputs of the first ``upto`` steps."""
        known = {n: d.get("type", "image") for n, d in self.inputs.items()}
        for step in self.steps[:upto]:
            for out, o in get_stage(step.stage).outputs.items():
                known[f"{step.id}.{out}"] = "image" if o.type_name == "label" else o.type_name
        return known

    def undo(self) -> Step | None:
        """Remove and return the last step (None if empty); inputs only it used are dropped."""
        if not self.steps:
            return None
        step = self.steps.pop()
        dropped = {name for name, sid in self._added_by.items() if sid == step.id}
        for name in dropped:
            self.inputs.pop(name, None)
            del self._added_by[name]
        self._objects = {k: v for k, v in self._objects.items()
                         if not v[1].startswith(f"{step.id}.") and v[1] not in dropped}
        return step

    # -------------------------------------------------------------- running
    def run(self, *args, progress=None, strict: bool = False, **inputs):
        """Run every step on the given inputs.

        Parameters
        ----------
        *args : Image
            Shorthand for a one-input recipe: ``recipe.run(image)`` returns the final image
            (the first image output of the last step that has one), as before graphs existed.
        progress : callable, optional
            Called as ``progress(step_index, n_steps, stage_name)`` before each step.
        strict : bool
            Also refuse inputs whose content differs from the recorded ones (checksum): for
            checking a replay. By default a recipe runs on any data of the recorded type,
            dimension and kind (a cohort).
        **inputs
            One value per recipe input, by name.

        Returns
        -------
        Image or RecipeOutputs
            The final image for the shorthand; otherwise every output of every step, keyed
            ``"stepN.output"``.
        """
        shorthand = bool(args)
        if args:
            if len(args) != 1 or inputs or len(self.inputs) > 1:
                names = ", ".join(f"{n}=..." for n in self.inputs)
                raise ParameterError(f"this recipe has inputs {list(self.inputs)}: call run({names})")
            inputs = {next(iter(self.inputs), "image"): args[0]}
        self.check_inputs(inputs, strict=strict)
        env: dict[str, Any] = dict(inputs)
        outputs = RecipeOutputs()
        for i, step in enumerate(self.steps):
            if progress is not None:
                progress(i, len(self.steps), step.stage)
            spec = get_stage(step.stage)
            kwargs = {n: env[src] for n, src in step.inputs.items()}
            out = spec.function(**kwargs, **spec.params_from_json(step.params))
            values = out.as_dict() if len(spec.outputs) > 1 else {next(iter(spec.outputs)): out}
            for n, v in values.items():
                env[f"{step.id}.{n}"] = outputs[f"{step.id}.{n}"] = v
        if shorthand:
            return outputs.final_image(inputs[next(iter(inputs))])
        return outputs

    def check_inputs(self, inputs: Mapping[str, Any], *, strict: bool = False) -> None:
        """Refuse missing, unknown or mismatched inputs, naming each one."""
        missing = [n for n in self.inputs if n not in inputs]
        if missing:
            raise ParameterError(f"recipe input(s) {missing} missing: call run("
                                 + ", ".join(f"{n}=..." for n in self.inputs) + ")")
        unknown = [n for n in inputs if n not in self.inputs]
        if unknown:
            raise ParameterError(f"{unknown} are not inputs of this recipe; its inputs are {list(self.inputs)}")
        for name, value in inputs.items():
            _check_input_matches(name, self.inputs[name], value, strict)

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "medlab_version": self.medlab_version,
                "inputs": self.inputs,
                "steps": [{"id": s.id, "stage": s.stage, "inputs": s.inputs, "params": s.params} for s in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def input(self) -> dict:
        """The description of the only input (recipes of schema 1 had exactly one)."""
        return next(iter(self.inputs.values()), {})

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReadError(f"{source} is not a medlab recipe (no '\"schema\": \"{SCHEMA}\"')")
        version = data.get("version")
        if isinstance(version, bool):  # True == 1 in Python, but it is not a schema version
            version = repr(version)
        if version == 1:
            data = _migrate_v1(data, source)
        elif version != SCHEMA_VERSION:
            raise ReadError(
                f"{source} uses recipe schema version {version!r}; this medlab reads versions 1 and "
                f"{SCHEMA_VERSION}. Upgrade medlab (or re-export the recipe)."
            )
        inputs = data.get("inputs", {})
        if not isinstance(inputs, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in inputs.items()):
            raise ReadError(f"{source}: 'inputs' must map each input name to its description")
        for name in inputs:
            try:
                _check_name(name, "recipe input")
            except ParameterError as exc:
                raise ReadError(f"{source}: {exc}") from None
        version_text = data.get("medlab_version", "")
        if not isinstance(version_text, str):
            raise ReadError(f"{source}: 'medlab_version' must be a string; got {str(version_text)[:60]}")
        recipe = cls(inputs=dict(inputs), medlab_version=version_text)
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise ReadError(f"{source}: 'steps' must be a list of {{\"stage\": ..., \"params\": {{...}}}}")
        for i, step in enumerate(steps):
            where = f"{source}, step {i + 1}"
            if (not isinstance(step, dict) or not isinstance(step.get("stage"), str)
                    or not isinstance(step.get("params", {}), dict) or not isinstance(step.get("inputs", {}), dict)):
                raise ReadError(f"{where}: expected {{\"stage\": name, \"inputs\": {{...}}, \"params\": {{...}}}}; "
                                f"got {str(step)[:200]}")
            if step.get("id", f"step{i + 1}") != f"step{i + 1}":
                raise ReadError(f"{where}: steps must be numbered in order (expected id 'step{i + 1}', got {step.get('id')!r})")
            try:
                recipe.add(step["stage"], step.get("params", {}), step.get("inputs") or None)
            except MedlabError as exc:
                raise ReadError(f"{where}: {exc}") from None
            undeclared = set(recipe.inputs) - set(inputs)
            if undeclared and data.get("inputs"):
                raise ReadError(f"{where}: uses input(s) {sorted(undeclared)} that the recipe's 'inputs' do not declare")
        return recipe

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> Recipe:
        if not isinstance(text, (str, bytes, bytearray)):
            raise ParameterError(f"Recipe.from_json needs the JSON text (a str); got {type(text).__name__}. "
                                 "To read a file use Recipe.load(path)")
        try:
            data = json.loads(text)
        except RecursionError:
            raise ReadError(f"{source} is nested too deeply to be a recipe") from None
        except ValueError as exc:  # bad JSON, bad UTF-8, or a number of thousands of digits
            raise ReadError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the recipe as JSON (atomically; refuses to overwrite unless asked)."""
        from .io import atomic_write_text
        from .io.paths import as_file_path

        return atomic_write_text(as_file_path(path, "the recipe file"), self.to_json() + "\n", overwrite=overwrite)

    @classmethod
    def load(cls, path) -> Recipe:
        from .io.paths import as_file_path, read_small_file

        path = as_file_path(path, "the recipe file")
        data = read_small_file(path, "recipe")
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the JSON
        except UnicodeDecodeError:
            raise ReadError(f"{path} is not a text (UTF-8 JSON) file; is it a recipe?") from None
        return cls.from_json(text, str(path))

    # -------------------------------------------------------------- as code
    def to_python(self, input_path: str | None = None, output_path: str | None = None, *,
                  inputs: Mapping[str, str] | None = None, outputs_dir: str = "outputs") -> str:
        """A short runnable script that does what this recipe does.

        Parameters
        ----------
        input_path : str, optional
            File of the only input (one-input recipes).
        output_path : str, optional
            Where a one-input chain saves its final image (default ``output.nii.gz``).
        inputs : mapping, optional
            ``{input name: file}``; default the recorded source, else ``<name>.nii.gz``.
        outputs_dir : str
            Where a graph saves its outputs: every transform, table, curve, point set and
            model, and the images no later step uses.
        """
        return _PythonWriter(self).write(input_path, output_path, dict(inputs or {}), outputs_dir)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        steps = "; ".join(f"{s.id} {s.stage}({', '.join(s.inputs.values())})" for s in self.steps)
        return f"<medlab.Recipe inputs {list(self.inputs)}: {steps or 'no steps'}>"

    def is_chain(self) -> bool:
        """One input, and each step takes its images from the previous step (the simple case)."""
        if len(self.inputs) != 1:
            return False
        previous = next(iter(self.inputs))
        for step in self.steps:
            if list(step.inputs.values()) != [previous] and step.inputs:
                return False
            previous = self._chain_after(step)
        return True

    def _chain_after(self, step: Step) -> str:
        spec = get_stage(step.stage)
        images = [n for n, o in spec.outputs.items() if o.type_name in ("image", "label")]
        return f"{step.id}.{images[0]}" if images else ""


class RecipeOutputs(dict):
    """Every output of every step of a run, keyed ``"stepN.output"``."""

    def final_image(self, fallback=None):
        """The first image output of the last step that has one."""
        for key in reversed(list(self)):
            if isinstance(self[key], Image):
                step = key.split(".")[0]
                return next(v for k, v in self.items() if k.startswith(step + ".") and isinstance(v, Image))
        return fallback

    def describe(self) -> str:
        from .outputs import describe_value

        return "\n".join(f"{k}: {describe_value(v)}" for k, v in self.items())

    def save(self, folder, *, overwrite: bool = False) -> dict[str, Path]:
        """Save every output as ``<folder>/<step>_<output><suffix>``; returns ``{key: path}``."""
        from .io.paths import as_file_path
        from .outputs import default_suffix, save_output

        folder = as_file_path(folder, "the output folder")
        return {k: save_output(v, folder / f"{k.replace('.', '_')}{default_suffix(v)}", overwrite=overwrite)
                for k, v in self.items() if v is not None and default_suffix(v)}


# ---------------------------------------------------------------------------- inputs
def describe_input(value) -> dict:
    """What a recipe records about an input: type, kind, geometry and a checksum, never voxels."""
    from .outputs import Checkpoint, Transform, describe_value, fingerprint, grid_of

    if isinstance(value, Image):
        return {"type": "image", "kind": "rgb" if value.rgb else value.kind, "ndim": value.ndim,
                **grid_of(value), "dtype": str(value.dtype), "sha256": fingerprint(value),
                "description": value.describe(), "source": str(value.metadata.get("source", ""))}
    if isinstance(value, Transform):
        return {"type": "transform", "description": value.describe(), "sha256": value.fingerprint()}
    if isinstance(value, Checkpoint) or hasattr(value, "state_dict"):
        desc = describe_value(value) if isinstance(value, Checkpoint) else type(value).__name__
        return {"type": "model", "description": desc, "sha256": _model_sha(value)}
    raise ParameterError(f"a recipe input must be an Image, a Transform or a model; got {type(value).__name__}")


def _model_sha(value) -> str:
    from .outputs import Checkpoint

    if isinstance(value, Checkpoint):
        return value.fingerprint()
    return Checkpoint(value.state_dict(), {"network": type(value).__name__}).fingerprint()


def _check_input_matches(name: str, recorded: dict, value, strict: bool) -> None:
    from .outputs import Checkpoint, Transform

    want = recorded.get("type", "image")
    kinds = {"image": Image, "transform": Transform}
    if want == "model":
        ok = isinstance(value, Checkpoint) or hasattr(value, "state_dict")
    else:
        ok = isinstance(value, kinds.get(want, object))
    if not ok:
        raise ParameterError(f"recipe input {name!r} must be a {want} (as recorded: "
                             f"{recorded.get('description', want)}); got a {type(value).__name__}")
    if want == "image":
        kind = "rgb" if value.rgb else value.kind
        if "ndim" in recorded and value.ndim != recorded["ndim"]:
            raise ParameterError(f"recipe input {name!r} was recorded as a {recorded['ndim']}D image "
                                 f"({recorded.get('description', '')}); got a {value.ndim}D image")
        if "kind" in recorded and kind != recorded["kind"]:
            raise ParameterError(f"recipe input {name!r} was recorded as a {recorded['kind']} image; got a {kind} image")
    if strict and "sha256" in recorded:
        got = describe_input(value)["sha256"]
        if got != recorded["sha256"]:
            raise ParameterError(f"recipe input {name!r} differs from the one recorded ({recorded.get('description', '')}; "
                                 "checksum differs). Pass strict=False to run the recipe on other data.")


def _check_step(spec: StageSpec, step: Step, known: dict[str, str], source: str) -> None:
    for inp, src in step.inputs.items():
        if inp not in spec.inputs:
            raise ParameterError(f"{spec.name} has no input {inp!r}; its inputs are {list(spec.inputs)}")
        if src not in known:
            raise ParameterError(f"{spec.name}: input {inp!r} comes from {src!r}, which is neither a recipe input "
                                 f"nor an output of an earlier step (known: {sorted(known)})")
        want = _INPUT_TYPES.get(type(spec.inputs[inp]), "image")
        if known[src] != want:
            raise ParameterError(f"{spec.name}: input {inp!r} needs a {want} but {src!r} is a {known[src]}")
    missing = [n for n, i in spec.inputs.items() if not i.optional and n not in step.inputs]
    if missing:
        raise ParameterError(f"{spec.name}: input(s) {missing} have no source")


def _migrate_v1(data: dict, source: str) -> dict:
    """Schema 1: one input image, a chain of (stage, params) steps."""
    old_input = data.get("input", {})
    if not isinstance(old_input, dict):
        raise ReadError(f"{source}: 'input' must be an object")
    inputs = {"image": {"type": "image", **{k: v for k, v in old_input.items() if k in ("description", "source", "size", "spacing")}}}
    return {**data, "version": SCHEMA_VERSION, "inputs": inputs, "steps": data.get("steps", [])}


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or "." in name:
        raise ParameterError(f"a {what} name must be a Python identifier (letters, digits, _); got {name!r}")


def _unique(name: str, taken) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}{i}" in taken:
        i += 1
    return f"{name}{i}"


# ---------------------------------------------------------------------------- to Python
_RESERVED = {"medlab", "Transform", "Checkpoint"}


class _PythonWriter:
    """Writes a recipe as the script a person would write: one line per step, variables named
    after the outputs, reused when the previous value is no longer needed."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.last_use: dict[str, int] = {}
        for i, step in enumerate(recipe.steps):
            for src in step.inputs.values():
                self.last_use[src] = i

    def write(self, input_path, output_path, paths: dict, outputs_dir: str) -> str:
        r = self.recipe
        chain = r.is_chain() and r.steps
        if input_path is not None and len(r.inputs) == 1:
            paths.setdefault(next(iter(r.inputs)), input_path)
        imports: dict[str, list[str]] = {}
        var: dict[str, str] = {}      # source -> variable
        holder: dict[str, str] = {}   # variable -> source it holds now
        lines = [f"# medlab recipe (medlab {_comment(r.medlab_version)})", "import medlab"]
        body = []
        for name, desc in r.inputs.items():
            v = _identifier(name)
            var[name], holder[v] = v, name
            path = paths.get(name) or desc.get("source") or f"{name}{_SUFFIX.get(desc.get('type', 'image'), '')}"
            if desc.get("description"):
                body.append(f"# {name}: recorded on {_comment(desc['description'])}")
            loader = {"transform": "Transform.load", "model": "Checkpoint.load"}.get(desc.get("type"), "medlab.load")
            if loader != "medlab.load":
                imports.setdefault("medlab.outputs", []).append(loader.split(".")[0])
            body.append(f"{v} = {loader}({str(path)!r})")
        body.append("")
        for i, step in enumerate(r.steps):
            spec = get_stage(step.stage)
            imports.setdefault(_public_module(spec), []).append(spec.name)
            args = [var[step.inputs[n]] for n in spec.inputs if n in step.inputs]
            kw = [f"{n}={var[step.inputs[n]]}" for n in spec.inputs if n in step.inputs and
                  list(spec.inputs).index(n) >= len(args)]
            params = [f"{k}={_py(v)}" for k, v in step.params.items()
                      if v != spec.params[k].to_json(spec.params[k].default)]
            lhs = []
            for out in spec.outputs:
                src = f"{step.id}.{out}"
                v = self._name_for(out, i, holder, lhs)
                var[src], holder[v] = v, src
                lhs.append(v)
            body.append(f"{', '.join(lhs)} = {spec.name}({', '.join(args + kw + params)})")
        body.append("")
        if chain:
            final = var.get(r._chain_after(r.steps[-1]))
            body.append(f"medlab.save({final}, {output_path or 'output.nii.gz'!r})")
        else:
            body += self._saves(var, outputs_dir)
        for mod, names in imports.items():
            lines.append(f"from {mod} import {', '.join(dict.fromkeys(names))}")
        return "\n".join(lines + [""] + body) + "\n"

    def _name_for(self, out: str, i: int, holder: dict, taken_here: list) -> str:
        base = _identifier(out)
        for candidate in (base, f"{base}_{i + 1}"):
            held = holder.get(candidate)
            busy = held is not None and self.last_use.get(held, -1) > i
            if not busy and candidate not in taken_here:
                return candidate
        return f"{base}_{i + 1}_"

    def _saves(self, var: dict, outputs_dir: str) -> list[str]:
        lines = []
        used = set(self.last_use)
        out_dir = outputs_dir.rstrip("/") or "."
        lines.append("from pathlib import Path")
        lines.append(f"Path({out_dir!r}).mkdir(exist_ok=True)")
        for step in self.recipe.steps:
            spec = get_stage(step.stage)
            for out, o in spec.outputs.items():
                src = f"{step.id}.{out}"
                if src in used and o.type_name in ("image", "label"):
                    continue  # an intermediate image; transforms, tables and curves are kept
                v = var[src]
                suffix = {"image": ".nii.gz", "label": ".nii.gz", "transform": ".h5", "table": ".csv",
                          "curve": ".csv", "points": ".csv", "model": ".pt"}[o.type_name]
                path = f"{out_dir}/{v}{suffix}"
                save = f"medlab.save({v}, {path!r})" if o.type_name in ("image", "label") else f"{v}.save({path!r})"
                lines.append(f"if {v} is not None:\n    {save}" if o.optional else save)
        return lines


_SUFFIX = {"image": ".nii.gz", "transform": ".h5", "model": ".pt"}


def _comment(text) -> str:
    """``text`` made safe for one comment line: a recipe file could hold a line break followed
    by code, which the exported script would then run."""
    return re.sub(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+", " ", str(text))[:300]


def _identifier(name: str) -> str:
    v = re.sub(r"\W", "_", name)
    if not v.isidentifier() or keyword.iskeyword(v) or v in _RESERVED:
        v = f"{v}_"
    return v


def _public_module(spec) -> str:
    """``medlab.preprocess`` rather than an internal submodule, when it exports the stage."""
    import importlib

    try:
        public = importlib.import_module(f"medlab.{spec.group}")
    except ImportError:
        return spec.func.__module__
    return public.__name__ if getattr(public, spec.name, None) is spec.function else spec.func.__module__


def _py(value) -> str:
    if isinstance(value, list):
        return repr(tuple(value)) if not value or not isinstance(value[0], list) else repr(tuple(tuple(v) for v in value))
    return repr(value)
