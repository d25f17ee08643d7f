"""Input and output declarations of a stage, and the :class:`Result` a stage with several
outputs returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image, as_image, check_finite

if TYPE_CHECKING:
    from .declaration import StageSpec


# ---------------------------------------------------------------------------- inputs
class Input:
    """Base of an input declaration (an image, a transform, a model); ``name`` is filled in by
    :func:`stage`. Inputs are the function's positional parameters; parameters are keyword-only."""

    type_name = "value"

    def __init__(self, *, optional: bool = False, help: str = "", label: str = ""):
        self.optional, self.help, self.label = bool(optional), help, label
        self.name = ""

    def check(self, value, stage: StageSpec):
        return value

    def spec(self) -> dict:
        return {"name": self.name, "type": self.type_name, "optional": self.optional, "help": self.help,
                "label": self.label or self.name.replace("_", " ")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_IMAGE_KINDS = ("intensity", "label", "rgb")


class ImageInput(Input):
    """An image input, checked before any work: kind, dimension, finite values, overlap.

    Parameters
    ----------
    kind : str or sequence of str
        Accepted kinds: ``"intensity"``, ``"label"``, ``"rgb"`` (a colour picture), or ``"any"``.
    dims : sequence of int, optional
        Accepted spatial dimensions; default the stage's ``dims``.
    overlaps : str, optional
        Name of another image input this one must overlap in physical space (e.g. the moving
        image must overlap the fixed one).
    same_grid : str, optional
        Name of another image input whose voxel grid this one must share (e.g. a mask).
    optional : bool
        The input may be ``None``.

    Examples
    --------
    >>> fixed, moving = ImageInput("intensity"), ImageInput("intensity", overlaps="fixed")
    >>> mask = ImageInput("label", optional=True, same_grid="image")
    """

    type_name = "image"

    def __init__(self, kind: str | Sequence[str] = "intensity", *, dims: Sequence[int] | None = None,
                 overlaps: str | None = None, same_grid: str | None = None, optional: bool = False,
                 help: str = "", label: str = ""):
        super().__init__(optional=optional, help=help, label=label)
        kinds = _IMAGE_KINDS if kind == "any" else (kind,) if isinstance(kind, str) else tuple(kind)
        if not set(kinds) <= set(_IMAGE_KINDS):
            raise ValueError(f"image kinds are {_IMAGE_KINDS} or 'any'; got {kind!r}")
        self.kinds, self.dims, self.overlaps, self.same_grid = kinds, None if dims is None else tuple(dims), overlaps, same_grid

    def check(self, value, stage: StageSpec) -> Image:
        image = as_image(value, self.name)
        dims = self.dims or stage.dims
        if image.ndim not in dims:
            raise ImageError(f"{stage.name} works on {' or '.join(f'{d}D' for d in dims)} images; "
                             f"{self.name!r} is a {image.ndim}D image")
        kind = "rgb" if image.rgb else image.kind
        if kind not in self.kinds:
            hint = " (convert a colour picture with medlab.to_grey first)" if kind == "rgb" else ""
            hint = hint or (" (make one with image.with_array(array, kind='label'))" if self.kinds == ("label",) else "")
            raise ImageError(f"{stage.name} accepts {', '.join(self.kinds)} images as {self.name!r}; "
                             f"got a {kind} image{hint}")
        check_finite(image, self.name)
        return image

    def spec(self) -> dict:
        return {**super().spec(), "kinds": list(self.kinds), "dims": list(self.dims) if self.dims else None,
                "overlaps": self.overlaps, "same_grid": self.same_grid}


class TransformInput(Input):
    """A spatial transform input (:class:`medlab.outputs.Transform`, or a SimpleITK transform)."""

    type_name = "transform"

    def check(self, value, stage: StageSpec):
        from ..outputs import Transform

        if isinstance(value, Transform):
            return value
        try:
            return Transform(value)
        except ParameterError:
            raise ParameterError(f"{stage.name}: input {self.name!r} must be a medlab Transform or a SimpleITK "
                                 f"transform; got {type(value).__name__}") from None


class ModelInput(Input):
    """A trained model: a :class:`medlab.outputs.Checkpoint` or a ``torch.nn.Module``."""

    type_name = "model"

    def check(self, value, stage: StageSpec):
        from ..outputs import Checkpoint

        if isinstance(value, Checkpoint) or (hasattr(value, "state_dict") and hasattr(value, "forward")):
            return value
        raise ParameterError(f"{stage.name}: input {self.name!r} must be a medlab Checkpoint or a torch "
                             f"module; got {type(value).__name__}")


# ---------------------------------------------------------------------------- outputs
class Output:
    """Declaration of a named, typed output; ``name`` is filled in by :func:`stage`."""

    type_name = "value"

    def __init__(self, *, optional: bool = False, help: str = ""):
        self.optional, self.help = bool(optional), help
        self.name = ""

    def value_type(self) -> type:
        raise NotImplementedError

    def coerce(self, value, inputs: dict):
        """The returned value as the declared type (or a TypeError: the stage is wrong, not the user)."""
        t = self.value_type()
        if not isinstance(value, t):
            raise TypeError(f"output {self.name!r} must be a {t.__name__}; the stage returned a {type(value).__name__}")
        return value

    def spec(self) -> dict:
        return {"name": self.name, "type": self.type_name, "optional": self.optional, "help": self.help}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ImageOut(Output):
    """An image output. ``grid`` names the input whose voxel grid it must keep (checked after
    every call); ``grid=None`` declares that the stage resamples (then the physical space is
    the stage's promise, tested in its own tests)."""

    type_name = "image"
    kind = "intensity"

    def __init__(self, *, grid: str | None = "", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.grid = grid  # "" means: the stage's first image input, unless it resamples

    def value_type(self):
        return Image

    def coerce(self, value, inputs):
        value = super().coerce(value, inputs)
        if self.kind == "label" and not value.is_label:
            raise TypeError(f"output {self.name!r} is declared a label map; the stage returned a {value.kind} image")
        return value

    def spec(self):
        return {**super().spec(), "kind": self.kind, "grid": self.grid}


class LabelOut(ImageOut):
    """A label-map output (segmentation), shown as an overlay."""

    type_name = "label"
    kind = "label"


class TransformOut(Output):
    """A :class:`medlab.outputs.Transform`; a returned SimpleITK transform is wrapped, with the
    grids of the ``fixed`` and ``moving`` inputs recorded as its frames."""

    type_name = "transform"

    def __init__(self, *, fixed: str = "fixed", moving: str = "moving", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.fixed, self.moving = fixed, moving

    def value_type(self):
        from ..outputs import Transform

        return Transform

    def coerce(self, value, inputs):
        from ..outputs import Transform, grid_of

        if not isinstance(value, Transform):
            import SimpleITK as sitk

            if not isinstance(value, sitk.Transform):
                return super().coerce(value, inputs)
            frames = {k: grid_of(inputs[n]) for k, n in (("fixed", self.fixed), ("moving", self.moving))
                      if isinstance(inputs.get(n), Image)}
            value = Transform(value, **frames)
        return value


class TableOut(Output):
    """A :class:`medlab.outputs.Table` (a list of row dicts is wrapped)."""

    type_name = "table"

    def value_type(self):
        from ..outputs import Table

        return Table

    def coerce(self, value, inputs):
        from ..outputs import Table

        if isinstance(value, list) and all(isinstance(r, dict) for r in value):
            value = Table(value)
        return super().coerce(value, inputs)


class CurveOut(Output):
    """A :class:`medlab.outputs.Curve` (metric per iteration, loss per epoch ...)."""

    type_name = "curve"

    def value_type(self):
        from ..outputs import Curve

        return Curve


class PointsOut(Output):
    """A :class:`medlab.outputs.PointSet` (an ``(n, 3)`` array in mm is wrapped with the role)."""

    type_name = "points"

    def __init__(self, *, role: str = "points", optional: bool = False, help: str = ""):
        super().__init__(optional=optional, help=help)
        self.role = role

    def value_type(self):
        from ..outputs import PointSet

        return PointSet

    def coerce(self, value, inputs):
        from ..outputs import PointSet

        if isinstance(value, (np.ndarray, list, tuple)):
            value = PointSet(value, role=self.role)
        return super().coerce(value, inputs)


class ModelOut(Output):
    """A trained model, as a :class:`medlab.outputs.Checkpoint`."""

    type_name = "model"

    def value_type(self):
        from ..outputs import Checkpoint

        return Checkpoint


# ---------------------------------------------------------------------------- results
class Result(tuple):
    """What a stage with several outputs returns: a tuple in declaration order that also knows
    each output by name.

    ``corrected, field = n4_bias_correction(img)`` unpacks it; ``result.field``,
    ``result["field"]`` and ``result.items()`` name its parts. ``result.cancelled`` is True
    for the best-so-far result kept when a run was cancelled.

    Examples
    --------
    >>> r = Result({"transform": None, "history": [1, 2]}, stage="toy")
    >>> r.history, r["history"], r.names
    ([1, 2], [1, 2], ('transform', 'history'))
    >>> t, h = r
    """

    def __new__(cls, values: Mapping[str, Any], *, stage: str = "", cancelled: bool = False):
        obj = super().__new__(cls, tuple(values.values()))
        obj._names = tuple(values)
        obj.stage, obj.cancelled = stage, cancelled
        return obj

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise KeyError(f"{self.stage or 'the stage'} has no output {key!r}; outputs: {list(self._names)}") from None
        return tuple.__getitem__(self, key)

    def __getattr__(self, name: str):
        names = self.__dict__.get("_names", ())
        if name in names:
            return tuple.__getitem__(self, names.index(name))
        raise AttributeError(f"{type(self).__name__} has no attribute or output {name!r}")

    def keys(self) -> tuple[str, ...]:
        return self._names

    def items(self):
        return list(zip(self._names, self))

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def describe(self) -> str:
        from ..outputs import describe_value

        head = f"{self.stage} result" + (" (cancelled: best so far)" if self.cancelled else "")
        return "\n".join([head, *(f"  {n}: {describe_value(v)}" for n, v in self.items())])

    def save(self, folder, *, prefix: str = "", overwrite: bool = False) -> dict[str, Any]:
        """Save every output into ``folder`` as ``<prefix><name><suffix>``; returns ``{name: path}``."""
        from ..io.paths import as_file_path
        from ..outputs import default_suffix, save_output

        folder = as_file_path(folder, "the output folder")
        return {n: save_output(v, folder / f"{prefix}{n}{default_suffix(v)}", overwrite=overwrite)
                for n, v in self.items() if v is not None and default_suffix(v)}

    def __repr__(self) -> str:
        return "Result(" + ", ".join(f"{n}={v!r}" for n, v in self.items()) + ")"

    def __reduce__(self):
        return (_rebuild_result, (self.as_dict(), self.stage, self.cancelled))


def _rebuild_result(values, stage, cancelled):
    return Result(values, stage=stage, cancelled=cancelled)


