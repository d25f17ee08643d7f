"""The segment widget's training panel: a U-Net (:func:`medlab.deep.train_segmenter`) trained on
brain tumour phantoms or the user's image/label pairs, with live curves, then used on the image."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ipywidgets as widgets
import numpy as np

from medlab.errors import Cancelled, MedlabError, ParameterError
from medlab.image import Image, as_image
from medlab.outputs import Checkpoint
from medlab.stage import progress_to

from .outputs import LiveView

if TYPE_CHECKING:
    from .segment import SegmentWidget

__all__ = ["TrainingPanel"]

_SIZES = {"48×48×24": (48, 48, 24), "64×64×32": (64, 64, 32), "96×96×48": (96, 96, 48)}
_PHANTOM_SEEDS = 100
"""Training phantoms use seeds from here on, so none of them is a phantom of seed 0 to 99 that
you segment."""


class TrainingPanel(widgets.VBox):
    """Train a U-Net (:func:`medlab.deep.train_segmenter`) and use it on the widget's image.

    Data: brain tumour phantoms (:func:`medlab.deep.brain_tumour_cases`, in the contrast of
    the image when it says which; the whole tumour as one label, or its three classes) or the
    pairs given to the widget. Training runs in a
    background thread with live curves; Cancel keeps the best weights so far. The model joins
    the widget's session, so *Segment this image* (:func:`medlab.deep.deep_segment`) finds it.

    Attributes
    ----------
    model : Checkpoint or None
        The last trained (or loaded) model.
    result : Result or None
        What the last run returned (``model``, ``history``, ``dice``), or its best part after a Cancel.
    """

    def __init__(self, owner: SegmentWidget, *, pairs: Sequence[tuple[Image, Image]] | None = None):
        super().__init__()
        self.add_class("medlab-segment-train")
        self.owner = owner
        self.pairs = _check_pairs(pairs)
        self.model: Checkpoint | None = None
        self.result = None
        self.running = False
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._model_key = ""
        image = owner.original
        sources = [("brain tumour phantoms", "phantoms")]
        if self.pairs:
            sources.append((f"my {len(self.pairs)} image/label pair(s)", "pairs"))
        self.data = widgets.Dropdown(options=sources, value="phantoms", description="data")
        self.count = widgets.IntSlider(value=8, min=3, max=40, description="phantoms",
                                       tooltip="how many phantoms (one in five is kept for validation)")
        size = tuple(image.size) if image.metadata.get("phantom") == "brain_mri" and image.ndim == 3 else None
        sizes = dict(_SIZES)
        if size is not None and size not in sizes.values():
            sizes["×".join(map(str, size)) + " (as the image)"] = size
        self.size = widgets.Dropdown(options=list(sizes.items()), value=size or _SIZES["64×64×32"],
                                     description="size (voxels)", style={"description_width": "initial"})
        self.contrast = widgets.Dropdown(options=["t1", "t2", "flair"], value=_contrast_of(image),
                                         description="contrast", tooltip="train on the contrast of the image you segment")
        self.target = widgets.Dropdown(options=[("whole tumour (one label)", "whole"),
                                                ("three classes: enhancing, necrotic, oedema", "classes")],
                                       value="whole", description="learn", layout=widgets.Layout(width="24em"),
                                       tooltip="the whole tumour learns in minutes on a CPU; three classes take longer")
        self.epochs = widgets.IntSlider(value=20, min=1, max=200, description="epochs")
        self.learning_rate = widgets.FloatLogSlider(value=1e-2, base=10, min=-4, max=-1, step=0.1,
                                                    description="learning rate", readout_format=".1e",
                                                    style={"description_width": "initial"},
                                                    tooltip="Adam's step: 1e-2 learns one label in a few epochs; "
                                                            "the shipped three-class models used 3e-3 for longer")
        self.target.observe(lambda ch: setattr(self.learning_rate, "value", 1e-2 if ch["new"] == "whole" else 3e-3),
                            "value")
        self.seed = widgets.IntText(value=0, description="seed", layout=widgets.Layout(width="12em"),
                                    tooltip="the same seed, data and settings give the same weights")
        self.start_button = widgets.Button(description="Train", icon="play", button_style="primary")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True,
                                            tooltip="stop; the best weights so far are kept")
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="16em"))
        self.status = widgets.HTML("")
        self.live = LiveView()
        self.segment_button = widgets.Button(description="Segment this image", icon="magic", disabled=True,
                                             tooltip="run the model on the widget's image (deep_segment)",
                                             layout=widgets.Layout(width="auto"))
        shipped = _shipped_models()
        self.shipped = widgets.Dropdown(options=shipped or ["(none shipped)"], description="shipped model",
                                        style={"description_width": "initial"}, disabled=not shipped)
        self.load_button = widgets.Button(description="Load", icon="folder-open", disabled=not shipped)
        for w, cls in ((self.data, "data"), (self.target, "target"), (self.count, "count"), (self.size, "size"), (self.contrast, "contrast"),
                       (self.epochs, "epochs"), (self.learning_rate, "learning-rate"), (self.seed, "seed"), (self.start_button, "start"),
                       (self.cancel_button, "cancel"), (self.progress, "progress"), (self.status, "status"),
                       (self.segment_button, "segment"), (self.load_button, "load")):
            w.add_class(f"medlab-train-{cls}")
        self.start_button.on_click(lambda _: self._safely(self.train))
        self.cancel_button.on_click(lambda _: self.cancel())
        self.segment_button.on_click(lambda _: self._safely(self.segment_image))
        self.load_button.on_click(lambda _: self._safely(lambda: self.load_shipped(self.shipped.value)))
        self.data.observe(lambda _: self._show_data_rows(), "value")
        self._phantom_rows = widgets.HBox([self.target, self.count, self.size, self.contrast],
                                          layout=widgets.Layout(flex_flow="row wrap"))
        self.children = [
            widgets.HTML("<span style='opacity:.85'>A 3D U-Net learns the tumour (as one label, or its three "
                         "classes) from brain phantoms in the contrast of this image, or the labels of your pairs, "
                         "on the CPU. The curves show the loss and the validation Dice per epoch; Cancel stops and "
                         "keeps the best weights.</span>"),
            widgets.HBox([self.data, self.epochs, self.learning_rate, self.seed],
                         layout=widgets.Layout(flex_flow="row wrap")),
            self._phantom_rows,
            widgets.HBox([self.start_button, self.cancel_button, self.progress]),
            self.status, self.live,
            widgets.HBox([self.segment_button, self.shipped, self.load_button],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="center")),
        ]

    def _show_data_rows(self) -> None:
        self._phantom_rows.layout.display = "" if self.data.value == "phantoms" else "none"

    # -------------------------------------------------------------- data
    def cases(self) -> tuple[list, list, dict | None, dict]:
        """The training data the controls describe: ``(images, labels, classes, settings)``.

        Phantoms are trained with the tutorial's settings (:data:`medlab.deep.train_models.BRAIN_SETTINGS`,
        the patch no larger than the phantom); your pairs with :func:`~medlab.deep.train_segmenter`'s
        defaults. The whole tumour (one label) is learnt in minutes on a CPU; the three classes apart
        take much longer.
        """
        from medlab.deep import brain_tumour_cases
        from medlab.deep.train_models import BRAIN_SETTINGS

        if self.data.value == "pairs":
            return [p[0] for p in self.pairs], [p[1] for p in self.pairs], None, {}
        size = tuple(self.size.value)
        cases = brain_tumour_cases(range(_PHANTOM_SEEDS, _PHANTOM_SEEDS + self.count.value),
                                   contrasts=(self.contrast.value,), size=size)
        settings = {k: v for k, v in BRAIN_SETTINGS.items() if k not in ("seed", "validation")}
        settings["patch_size"] = [min(p, (s // 8) * 8) for p, s in zip(BRAIN_SETTINGS["patch_size"], size)]
        if self.target.value == "classes":
            return cases.images, cases.labels, cases.classes, settings
        values = list(cases.classes)
        whole = [lab.with_array(np.isin(lab.array, values).astype(np.uint8), kind="label", labels={1: "tumour"})
                 for lab in cases.labels]
        return cases.images, whole, {1: "tumour"}, settings

    # -------------------------------------------------------------- running
    def train(self, wait: bool = False):
        """Train in a background thread (or wait for it); returns the Result when ``wait``."""
        if self.running:
            raise MedlabError("training is already running: wait for it or Cancel")
        self.error, self.result = None, None
        self._cancel = threading.Event()
        self.running = True
        self.start_button.disabled, self.cancel_button.disabled = True, False
        self.progress.value, self.progress.bar_style = 0.0, ""
        self.live.clear()
        self._status("preparing the training data…", "busy")
        self._thread = threading.Thread(target=self._run, name="medlab-train", daemon=True)
        self._thread.start()
        if not wait:
            return None
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def cancel(self) -> None:
        """Stop training at the next step; the best weights so far are kept."""
        self._cancel.set()
        if self.running:
            self._status("cancelling… (the best weights so far will be kept)", "busy")

    def _run(self) -> None:
        from medlab.deep import train_segmenter

        t0 = time.perf_counter()

        def report(fraction: float, message: str) -> None:
            self.progress.value = fraction
            self.progress.description = f"{fraction:.0%}"
            if message:
                self._status(f"training: {message}", "busy")

        try:
            images, labels, classes, settings = self.cases()
            with progress_to(report, self._cancel, publish=lambda stage, values: self.live.update(values)):
                settings = {**settings, "learning_rate": float(self.learning_rate.value)}
                result = train_segmenter(images, labels, classes=classes, epochs=self.epochs.value,
                                         seed=self.seed.value, validation=0.2 if len(labels) >= 3 else 0,
                                         **settings)
            self.live.flush()
            self.result = result
            self.add_model(result.model)
            m = result.model.metrics
            dice = f", validation Dice {m['dice_mean']:.3f} (epoch {m['epoch']})" if "dice_mean" in m else ""
            self._status(f"trained in {time.perf_counter() - t0:.0f} s{dice}; the model is "
                         f"'{self._model_key}' in the session", "ok")
            self.progress.bar_style = "success"
        except Cancelled as exc:
            self.live.flush()
            kept = getattr(exc, "result", None)
            self.progress.bar_style = "warning"
            if kept is not None and kept.model is not None:
                self.result = kept
                self.add_model(kept.model)
                m = kept.model.metrics
                self._status(f"cancelled: the best weights so far (epoch {m.get('epoch')}, validation Dice "
                             f"{m.get('dice_mean', float('nan')):.3f}) are kept as '{self._model_key}'", "info")
            else:
                self._status("cancelled before the first epoch ended: no model", "info")
        except Exception as exc:  # noqa: BLE001 - shown in the status line (and raised by train(wait=True))
            self.live.flush()
            self.error = exc
            self.progress.bar_style = "danger"
            self._status(str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}", "error")
        finally:
            self.running = False
            self.start_button.disabled, self.cancel_button.disabled = False, True

    def add_model(self, model: Checkpoint, name: str = "model") -> str:
        """Put a model (e.g. trained in a script) in the widget's session under a new key, for
        :meth:`segment_image` and the deep-learning stage; returns the key."""
        if not isinstance(model, Checkpoint):
            raise ParameterError(f"model must be a medlab Checkpoint (train_segmenter(...).model or "
                                 f"medlab.deep.pretrained(...)); got {type(model).__name__}")
        from medlab.recipe import _unique

        owner = self.owner
        key = _unique(name, owner.session)
        owner.session[key] = model
        owner.recipe.name_values(**{key: model})
        self.model, self._model_key = model, key
        self.segment_button.disabled = "deep_segment" not in owner.specs
        if owner.panel is not None and "model" in owner.panel.spec.inputs:
            owner._wire_inputs(owner.panel)
        return key

    def load_shipped(self, name: str) -> Checkpoint:
        """Load a model shipped with medlab (:func:`medlab.deep.pretrained`) into the session."""
        from medlab.deep import pretrained

        model = pretrained(name)
        self.add_model(model, name)
        self._status(f"loaded the shipped model {name!r} as '{self._model_key}'", "ok")
        return model

    def segment_image(self, wait: bool = False):
        """Run the last model on the widget's image (the ``deep_segment`` stage, recorded)."""
        owner = self.owner
        if self.model is None:
            raise MedlabError("no model yet: train one or load a shipped one first")
        owner.select("deep_segment")
        owner.set_input("model", self._model_key)
        return owner.apply(wait=wait)

    def _status(self, text: str, level: str) -> None:
        colour = {"error": "#b00020", "ok": "#1b5e20", "busy": "#555", "info": "#333"}[level]
        self.status.value = f"<span style='color:{colour}'>{html.escape(text)}</span>"

    def _safely(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button never raises into the void
            self.error = exc
            self._status(str(exc) if isinstance(exc, MedlabError) else f"{type(exc).__name__}: {exc}", "error")


def _contrast_of(image: Image) -> str:
    """The phantom contrast (t1, t2, flair) an image's ``sequence`` names; t1 when it says none."""
    sequence = str(image.metadata.get("sequence", "")).lower()
    if "flair" in sequence:
        return "flair"
    return "t2" if sequence.startswith("t2") else "t1"


def _check_pairs(pairs) -> list[tuple[Image, Image]]:
    out = []
    for i, pair in enumerate(pairs or ()):
        try:
            image, labels = pair
        except (TypeError, ValueError):
            raise ParameterError(f"training_pairs[{i}] must be an (image, label map) pair") from None
        out.append((as_image(image, f"training_pairs[{i}][0]"), as_image(labels, f"training_pairs[{i}][1]")))
    return out


def _shipped_models() -> list[str]:
    try:
        from medlab.deep import pretrained_models
    except ImportError:
        return []
    try:
        return sorted(pretrained_models())
    except (OSError, ValueError):   # a damaged model card: offer none rather than break the widget
        return []
