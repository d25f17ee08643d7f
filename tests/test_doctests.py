"""The Examples sections of the core modules run and say what they show (as scikit-image's do)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["medlab.image", "medlab.stage", "medlab.stage.params", "medlab.stage.ports",
           "medlab.stage.declaration", "medlab.stage.context", "medlab.outputs", "medlab.recipe", "medlab.render", "medlab.metrics",
           "medlab.widgets.viewer", "medlab.widgets.viewer_stream", "medlab.widgets.viewer_layers",
           "medlab.widgets.outputs", "medlab.widgets.controls"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} example(s) of {name} failed (run python -m doctest -v on it)"
