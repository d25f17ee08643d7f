"""Sliding-window inference on whole images, with the training preprocessing re-applied and
the label map returned on the input's own grid."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image
from ..outputs import Checkpoint
from ..stage import Bool, Float, ImageInput, ImageOut, LabelOut, ModelInput, report, stage
from .networks import build_network, check_config, load_weights
from .preprocessing import check_preprocessing, from_network, to_network

__all__ = ["deep_segment", "network_from_checkpoint", "predict_probabilities", "sliding_window"]


def network_from_checkpoint(checkpoint: Checkpoint, *, source: str = "checkpoint"):
    """The network a checkpoint describes, with its weights loaded and in evaluation mode.

    Raises
    ------
    ParameterError
        When the config is invalid or the weights do not fit it (naming the tensors).
    """
    if not isinstance(checkpoint, Checkpoint):
        raise ParameterError(f"{source} must be a medlab Checkpoint; got {type(checkpoint).__name__}. A bare torch "
                             "module has no recorded preprocessing: wrap it with medlab.outputs.Checkpoint("
                             "net.state_dict(), config, labels=..., preprocessing=...)")
    try:
        cfg = check_config(checkpoint.config)
    except ParameterError as exc:
        raise ParameterError(f"{source}: {exc}") from None
    for key in ("intensity", "direction", "patch_size", "label_values"):
        if key not in checkpoint.preprocessing:
            raise ParameterError(f"{source}: its preprocessing record has no {key!r}: it was not made by "
                                 "medlab.deep.train_segmenter (see medlab.deep.preprocessing for the format)")
    check_preprocessing(checkpoint.preprocessing, cfg, source=source)
    if len(checkpoint.preprocessing["label_values"]) != cfg["out_channels"] - 1:
        raise ParameterError(f"{source}: {len(checkpoint.preprocessing['label_values'])} label values for a network "
                             f"with {cfg['out_channels']} outputs (background + one per label)")
    net = build_network(cfg)
    load_weights(net, checkpoint.state_dict, source=source)
    net.eval()
    return net


def sliding_window(net, array: np.ndarray, prep: dict[str, Any], *, overlap: float | None = None):
    """Logits ``[1, K, ...]`` of a whole preprocessed image ``[C, ...]`` by MONAI's
    ``sliding_window_inference`` with the training patch as window and Gaussian blending."""
    import torch
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(array, np.float32))[None]
    overlap = prep.get("overlap", 0.25) if overlap is None else overlap
    with torch.inference_mode():
        return sliding_window_inference(x, tuple(prep["patch_size"][::-1]), 1, net, overlap=overlap,
                                        mode="gaussian", padding_mode="replicate")


def predict_probabilities(channels: list[Image], checkpoint: Checkpoint, *, overlap: float | None = None,
                          net=None) -> np.ndarray:
    """Class probabilities ``[K, ...]`` (background first) on the grid of ``channels[0]``."""
    import torch

    prep = checkpoint.preprocessing
    cfg = check_config(checkpoint.config)
    if channels[0].ndim != cfg["spatial_dims"]:
        raise ImageError(f"the model segments {cfg['spatial_dims']}D images; the image is {channels[0].ndim}D")
    if len(channels) != cfg["in_channels"]:
        names = ", ".join(prep.get("channels", [])) or f"{cfg['in_channels']} channels"
        raise ParameterError(f"the model reads {cfg['in_channels']} channel(s) ({names}); got {len(channels)}: "
                             "give the others as image2, image3")
    net = net if net is not None else network_from_checkpoint(checkpoint)
    x, grid = to_network(channels, prep)
    report(0.1, "network")
    logits = sliding_window(net, x, prep, overlap=overlap)
    probs = torch.softmax(logits[0], dim=0).numpy()
    report(0.9, "back to the image grid")
    return from_network(probs, grid, channels[0])


def labels_from_probabilities(probs: np.ndarray, image: Image, checkpoint: Checkpoint) -> Image:
    """The arg-max label map on ``image``'s grid, with the label values, names and colours of training."""
    prep = checkpoint.preprocessing
    values = [0, *[int(v) for v in prep["label_values"]]]
    dtype = np.min_scalar_type(max(values))   # uint8, uint16 or uint32: label values are below 2**31
    labels = np.asarray(values, dtype)[np.argmax(probs, axis=0)]
    colours = prep.get("label_colours", {})
    names = {v: (checkpoint.labels.get(v, f"label {v}"), tuple(colours[str(v)])) if str(v) in colours
             else checkpoint.labels.get(v, f"label {v}") for v in values[1:]}
    meta = {"description": f"segmented by {checkpoint.config.get('network', 'a network')}",
            "source": image.metadata.get("source", "")}
    return image.with_array(labels, kind="label", labels=names, metadata=meta)


@stage("Deep-learning segmentation", group="segment", preview=None,
       image=ImageInput("intensity", help="the image to segment (the model's first channel)"),
       model=ModelInput(help="a trained model: medlab.deep.pretrained(...) or train_segmenter(...).model"),
       image2=ImageInput("intensity", optional=True, overlaps="image",
                         help="second channel, for a model trained on several contrasts"),
       image3=ImageInput("intensity", optional=True, overlaps="image", help="third channel"),
       overlap=Float(0.0, 0.75, 0.25, step=0.05,
                     help="overlap of neighbouring windows: more is smoother and slower"),
       probabilities=Bool(False, help="also return the probability of foreground (any class) per voxel"),
       outputs={"labels": LabelOut(), "probability": ImageOut(optional=True)})
def deep_segment(image, model, image2=None, image3=None, *, overlap=0.25, probabilities=False):
    """Segment an image with a trained network, by sliding windows over the whole image.

    The preprocessing recorded in the checkpoint is re-applied (intensity normalisation, then
    resampling onto the network's axes and voxel size), and the class probabilities are
    resampled back onto the input's grid before the arg-max: the label map has the input's
    size, spacing, origin and direction, whatever the input's orientation or resolution.

    Parameters
    ----------
    image : Image
        The image to segment, any orientation and spacing.
    model : Checkpoint
        A checkpoint from :func:`medlab.deep.train_segmenter` or :func:`medlab.deep.pretrained`.
    image2, image3 : Image, optional
        Further channels (contrasts) for a model trained on several; resampled onto ``image``.
    overlap : float
        Fraction by which neighbouring windows overlap (Gaussian-weighted blending).
    probabilities : bool
        Also return the probability of foreground (1 - background probability).

    Returns
    -------
    labels : Image
        Label map on ``image``'s grid, with the model's label values, names and colours.
    probability : Image or None
        Foreground probability (float32, 0..1) on ``image``'s grid, if asked for.

    Examples
    --------
    >>> from medlab.data import brain_mri
    >>> from medlab.deep import deep_segment, pretrained
    >>> p = brain_mri(seed=123)
    >>> labels, _ = deep_segment(p.t1, pretrained("brain_tumour"))   # doctest: +SKIP
    >>> labels.same_grid(p.t1)                                         # doctest: +SKIP
    True
    """
    channels = [c for c in (image, image2, image3) if c is not None]
    if image3 is not None and image2 is None:
        raise ParameterError("deep_segment: give image2 before image3")
    net = network_from_checkpoint(model, source="model")
    from .preprocessing import channels_on_one_grid

    channels = channels_on_one_grid(channels, "deep_segment")
    probs = predict_probabilities(channels, model, overlap=overlap, net=net)
    labels = labels_from_probabilities(probs, image, model)
    prob_image = None
    if probabilities:
        prob_image = image.with_array((1.0 - probs[0]).astype(np.float32), kind="intensity",
                                      metadata={"description": "foreground probability", "units": "probability"})
    report(1.0, "done")
    return labels, prob_image
