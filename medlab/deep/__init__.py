"""Deep segmentation on a CPU: MONAI networks, reproducible training, sliding-window inference
that returns label maps in the input's geometry, checkpoints in one file, and small models
shipped with the package.

- :func:`network_config` / :func:`build_network`: MONAI ``UNet`` or ``SegResNet`` (2D or 3D)
  from a small JSON-able config, the one a :class:`~medlab.outputs.Checkpoint` stores.
- :func:`train_segmenter`: train on lists of image/label pairs (Dice + cross-entropy, a
  validation split, early stopping, seeded), with live curves and Cancel keeping the best.
- :func:`deep_segment` (stage, group ``segment``): sliding-window inference with the training
  preprocessing re-applied; the label map is on the input's grid.
- :func:`pretrained`: ``"brain_tumour"`` (T1 post-contrast MRI) and ``"lung_nodules"`` (CT),
  trained on phantoms by ``python -m medlab.deep.train_models``.
- :func:`brain_tumour_cases` / :func:`lung_nodule_cases`: training data from the phantoms.

torch and MONAI are imported when first used, not by ``import medlab.deep``.

Examples
--------
>>> from medlab.deep import brain_tumour_cases, train_segmenter, deep_segment
>>> cases = brain_tumour_cases(range(8))                                  # doctest: +SKIP
>>> result = train_segmenter(cases.images, cases.labels, classes=cases.classes,
...                          epochs=20, seed=0)                           # doctest: +SKIP
>>> labels, _ = deep_segment(new_scan, result.model)                      # doctest: +SKIP
"""

from .cases import (
    BRAIN_TUMOUR_CLASSES,
    LUNG_NODULE_CLASSES,
    Cases,
    brain_tumour_cases,
    lung_nodule_cases,
)
from .inference import deep_segment, network_from_checkpoint, predict_probabilities, sliding_window
from .networks import (
    NETWORKS,
    build_network,
    check_config,
    load_weights,
    network_config,
    size_divisor,
)
from .preprocessing import INTENSITY_PRESETS
from .pretrained import pretrained, pretrained_models
from .train import train_segmenter

__all__ = [
    "BRAIN_TUMOUR_CLASSES",
    "INTENSITY_PRESETS",
    "LUNG_NODULE_CLASSES",
    "NETWORKS",
    "Cases",
    "brain_tumour_cases",
    "build_network",
    "check_config",
    "deep_segment",
    "load_weights",
    "lung_nodule_cases",
    "network_config",
    "network_from_checkpoint",
    "predict_probabilities",
    "pretrained",
    "pretrained_models",
    "size_divisor",
    "sliding_window",
    "train_segmenter",
]
