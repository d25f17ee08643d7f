"""The preprocess widget: the workbench configured for the preprocess group. Pick a stage, tune
it on a live slice preview, apply it, undo it, and export what was done as a recipe.

Each Apply takes the current image (the last result) and records the same stage calls a script
makes, so ``Recipe.load(path).run(original)`` reproduces :attr:`PreprocessWidget.image` bit for
bit.

Examples
--------
>>> import medlab
>>> from medlab.widgets.preprocess import PreprocessWidget
>>> img = medlab.data.brain_mri(noise=0.05).t1                 # doctest: +SKIP
>>> w = PreprocessWidget(img); w                               # doctest: +SKIP
>>> w.select("nlm_denoise"); w.set(h=2.0)                      # doctest: +SKIP
>>> w.apply(wait=True)                                         # doctest: +SKIP
>>> w.export("denoise.json")                                   # doctest: +SKIP

CSS classes: those of :mod:`medlab.widgets.workbench`, plus ``medlab-preprocess`` on the widget.
"""

from __future__ import annotations

from collections.abc import Sequence

from medlab.errors import MedlabError
from medlab.image import Image, as_image

from .workbench import Workbench

__all__ = ["PreprocessWidget", "preprocess_widget"]


class PreprocessWidget(Workbench):
    """The :class:`~medlab.widgets.workbench.Workbench` on one image with the preprocess stages.

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
        Quiet time (s) before a preview starts.

    Examples
    --------
    >>> w = PreprocessWidget(img, stage="gaussian_smooth")    # doctest: +SKIP
    >>> w.set(sigma=1.0); out = w.apply(wait=True)            # doctest: +SKIP
    >>> w.undo(); w.image is img                              # doctest: +SKIP
    True
    """

    def __init__(self, image: Image, *, stages: Sequence | None = None, stage: str | None = None,
                 height: int = 360, debounce: float = 0.15):
        try:
            super().__init__({"image": as_image(image)}, group=None if stages is not None else "preprocess",
                             stages=stages, stage=stage, height=height, debounce=debounce)
        except MedlabError as exc:
            if "no preprocess stages" in str(exc):
                raise MedlabError("no preprocessing stages are registered (is medlab.preprocess installed?)") from None
            raise
        self.add_class("medlab-preprocess")


def preprocess_widget(image: Image, **kwargs) -> PreprocessWidget:
    """Open the preprocess widget on ``image`` (a function form of :class:`PreprocessWidget`).

    Examples
    --------
    >>> preprocess_widget(medlab.data.brain_mri().t1)   # doctest: +SKIP
    """
    return PreprocessWidget(image, **kwargs)
