"""medlab: geometry-true medical images, clinical formats, and processing stages that are
declared once and become a function, a notebook widget and a replayable recipe.

>>> import medlab
>>> img = medlab.data.brain_mri(seed=0).t1        # doctest: +SKIP
>>> medlab.load("scan/")                          # doctest: +SKIP

``import medlab`` is light: torch, MONAI and captum load only when a function needs them.
"""

from __future__ import annotations

import importlib

from .errors import (
    Cancelled,
    GeometryError,
    ImageError,
    MedlabError,
    ParameterError,
    ReadError,
    WriteError,
)
from .image import Image, Label, as_image
from .stage import get_stage, stages

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "GeometryError",
    "Image",
    "ImageError",
    "Label",
    "MedlabError",
    "ParameterError",
    "ReadError",
    "Recipe",
    "WriteError",
    "as_image",
    "data",
    "get_stage",
    "io",
    "load",
    "metrics",
    "outputs",
    "preprocess",
    "recipe",
    "render",
    "save",
    "stage",
    "stages",
]

_SUBMODULES = {"data", "io", "metrics", "preprocess", "render", "recipe", "stage", "image", "outputs",
               "segment", "register", "explain", "deep", "mesh", "cohort", "review"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"medlab.{name}")
    if name in ("load", "save"):
        return getattr(importlib.import_module("medlab.io"), name)
    if name == "Recipe":
        return importlib.import_module("medlab.recipe").Recipe
    raise AttributeError(f"module 'medlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
