"""Recipes: the exact sequence of stages (and parameters) applied to an image.

A recipe replays bit-identically, saves as versioned JSON and converts to a short Python
script that calls the public functions, so what a user did interactively runs on a cohort.

Examples
--------
>>> import medlab
>>> from medlab.recipe import Recipe
>>> img = medlab.data.brain_mri(size=32).t1                      # doctest: +SKIP
>>> with Recipe.record(img) as recipe:                           # doctest: +SKIP
...     out = medlab.preprocess.gaussian_smooth(img, sigma=1.0)
>>> print(recipe.to_python())                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ParameterError, ReadError
from .image import Image
from .stage import get_stage, record

SCHEMA = "medlab.recipe"
SCHEMA_VERSION = 1


@dataclass
class Recipe:
    """An ordered list of ``(stage name, parameters)`` with the medlab version and input."""

    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    medlab_version: str = ""

    def __post_init__(self):
        if not self.medlab_version:
            from . import __version__

            self.medlab_version = __version__

    # -------------------------------------------------------------- building
    @classmethod
    @contextlib.contextmanager
    def record(cls, image: Image | None = None) -> Iterator[Recipe]:
        """Record the stage calls made inside the block."""
        recipe = cls(input=describe_input(image) if image is not None else {})
        with record() as steps:
            try:
                yield recipe
            finally:
                recipe.steps.extend(steps)

    def add(self, name: str, params: dict[str, Any] | None = None) -> Recipe:
        """Append a step, validating its parameters now (JSON-form values)."""
        spec = get_stage(name)
        values = spec.validate(spec.params_from_json(dict(params or {})))
        self.steps.append((name, spec.params_to_json(values)))
        return self

    def undo(self) -> tuple[str, dict] | None:
        """Remove and return the last step (None if empty)."""
        return self.steps.pop() if self.steps else None

    # -------------------------------------------------------------- running
    def run(self, image: Image, progress=None) -> Image:
        """Apply every step in order to ``image`` and return the result.

        ``progress``, if given, is called as ``progress(step_index, n_steps, stage_name)``.
        """
        for i, (name, params) in enumerate(self.steps):
            if progress is not None:
                progress(i, len(self.steps), name)
            spec = get_stage(name)
            out = spec.function(image, **spec.params_from_json(params))
            image = out[0] if isinstance(out, tuple) else out
        return image

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, "medlab_version": self.medlab_version,
                "input": self.input, "steps": [{"stage": n, "params": p} for n, p in self.steps]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict, source: str = "recipe") -> Recipe:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReadError(f"{source} is not a medlab recipe (no '\"schema\": \"{SCHEMA}\"')")
        if data.get("version") != SCHEMA_VERSION:
            raise ReadError(
                f"{source} uses recipe schema version {data.get('version')!r}; this medlab reads version "
                f"{SCHEMA_VERSION}. Upgrade medlab (or re-export the recipe)."
            )
        recipe = cls(input=data.get("input", {}), medlab_version=data.get("medlab_version", ""))
        steps = data.get("steps", [])
        if not isinstance(steps, list):
            raise ReadError(f"{source}: 'steps' must be a list of {{\"stage\": ..., \"params\": {{...}}}}")
        for i, step in enumerate(steps):
            if not isinstance(step, dict) or "stage" not in step or not isinstance(step.get("params", {}), dict):
                raise ReadError(f"{source}, step {i + 1}: expected {{\"stage\": name, \"params\": {{...}}}}; got {step!r}")
            try:
                recipe.add(step["stage"], step.get("params", {}))
            except ParameterError as exc:
                raise ReadError(f"{source}, step {i + 1}: {exc}") from None
        return recipe

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReadError(f"{source} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the recipe as JSON (atomically; refuses to overwrite unless asked)."""
        from .io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n", overwrite=overwrite)

    @classmethod
    def load(cls, path) -> Recipe:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ReadError(f"cannot read recipe {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ReadError(f"{path} is not a text (UTF-8 JSON) file; is it a recipe?") from None
        return cls.from_json(text, str(path))

    def to_python(self, input_path: str = "input.nii.gz", output_path: str = "output.nii.gz") -> str:
        """A short runnable script that does what this recipe does."""
        modules: dict[str, list[str]] = {}
        calls = []
        for name, params in self.steps:
            spec = get_stage(name)
            modules.setdefault(_public_module(spec), []).append(name)
            args = "".join(f", {k}={_py(v)}" for k, v in params.items() if v != spec.params[k].to_json(spec.params[k].default))
            lhs = "image" if len(spec.outputs) == 1 else ", ".join(spec.outputs)
            calls.append(f"{lhs} = {name}(image{args})")
        lines = [f"# medlab recipe (medlab {self.medlab_version})"]
        if self.input.get("description"):
            lines.append(f"# recorded on: {self.input['description']}")
        lines.append("import medlab")
        for mod, names in modules.items():
            lines.append(f"from {mod} import {', '.join(dict.fromkeys(names))}")
        lines += ["", f"image = medlab.load({input_path!r})", *calls, f"medlab.save(image, {output_path!r})", ""]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.steps)


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
        return repr(tuple(_tuple(v) for v in value)) if value and isinstance(value[0], list) else repr(tuple(value))
    return repr(value)


def _tuple(v):
    return tuple(v) if isinstance(v, list) else v


def describe_input(image: Image) -> dict:
    return {"description": image.describe(), "source": str(image.metadata.get("source", "")),
            "size": list(image.size), "spacing": list(image.spacing)}
