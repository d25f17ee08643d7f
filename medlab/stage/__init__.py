"""The stage declaration: declare a processing step once, get a function, a widget, a recipe
step and a cohort task from it.

>>> from medlab.stage import stage, Float
>>> @stage("Scale", group="preprocess", factor=Float(0.0, 10.0, 1.0, help="multiplier"))
... def scale(image, *, factor=1.0):
...     return image.with_array(image.array * factor)

Calling ``scale(img, factor=20)`` raises a :class:`~medlab.errors.ParameterError` that names
``factor``, its range and the value, before any work starts. The widget layer reads
``scale.stage`` (a :class:`StageSpec`) to build its controls; recipes store the call as a
:class:`Step`.

A declaration has three parts:

* **Inputs**, the function's positional parameters: :class:`ImageInput` (kind, dimension,
  overlap with another input), :class:`TransformInput`, :class:`ModelInput`. An undeclared
  first parameter named ``image`` is an intensity image.
* **Parameters**, its keyword-only parameters: :class:`Float`, :class:`Int`, :class:`Choice`,
  :class:`Bool`, :class:`Vector`, :class:`Numbers` (a list, e.g. a resolution schedule),
  :class:`Points` (with a role such as ``"seeds"``), :class:`Grid`.
* **Outputs**, named and typed: :class:`ImageOut`, :class:`LabelOut`, :class:`TransformOut`,
  :class:`TableOut`, :class:`CurveOut`, :class:`PointsOut`, :class:`ModelOut`. A stage with one
  output returns it bare; with several, a :class:`Result` (a tuple that names its parts).

A running stage talks to whoever runs it through one context: :func:`progress` /
:func:`report` for progress, :func:`check_cancelled` for Cancel, :func:`publish` for live
intermediate results, :func:`execute_sitk` for SimpleITK filters. The caller picks where they
go with :func:`progress_to` (a widget, tqdm and a log in a script, the case record in a cohort).
"""

from __future__ import annotations

from .context import (
    LOG_EVERY,
    check_cancelled,
    execute_sitk,
    log_progress,
    progress,
    progress_span,
    progress_to,
    publish,
    report,
)
from .context import (
    _live as _live,
)
from .declaration import (
    _GROUPS as _GROUPS,
)
from .declaration import (
    _REGISTRY as _REGISTRY,
)
from .declaration import (
    GROUPS,
    PREVIEWS,
    Result,
    StageList,
    StageSpec,
    Step,
    get_stage,
    groups,
    record,
    register,
    register_group,
    stage,
    stages,
)
from .declaration import (
    _load_builtin_stages as _load_builtin_stages,
)
from .params import Bool, Choice, Float, Grid, Int, Numbers, Param, Points, Vector
from .ports import (
    CurveOut,
    ImageInput,
    ImageOut,
    Input,
    LabelOut,
    ModelInput,
    ModelOut,
    Output,
    PointsOut,
    TableOut,
    TransformInput,
    TransformOut,
)

__all__ = [
    "GROUPS", "LOG_EVERY", "PREVIEWS", "Bool", "Choice", "CurveOut", "Float", "Grid", "ImageInput", "ImageOut",
    "Input", "Int", "LabelOut", "ModelInput", "ModelOut", "Numbers", "Output", "Param", "Points", "PointsOut",
    "Result", "StageList", "StageSpec", "Step", "TableOut", "TransformInput", "TransformOut", "Vector",
    "check_cancelled", "execute_sitk", "get_stage", "groups", "log_progress", "progress", "progress_span",
    "progress_to", "publish", "record", "register", "register_group", "report", "stage", "stages",
]
