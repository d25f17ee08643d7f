"""What is explained: a class logit of a classifier, or a class channel summed over a region.

For a classifier (output ``[B, K]``) the target is the logit of one class. For a network with
dense outputs (``[B, K, *spatial]``, a segmentation network) it is the sum of the class-``c``
logits over a region (Vinogradova et al., "Towards interpretable semantic segmentation via
gradient-weighted class activation mapping", AAAI 2020): the union of balls around clicked
points (mm), the non-zero voxels of a label map, or, when neither is given, the voxels the
network assigns to class ``c``. Either way the target is one number per image, so every
attribution method (captum's and medlab's) explains the same scalar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image
from .geometry import NetworkInput
from .network import LayerPass, Network, forward_keeping_layer, forward_with_layers


def _first(out):
    """A model's main output: the first of a tuple (MONAI's ViT returns (logits, hidden states))."""
    return out[0] if isinstance(out, (tuple, list)) else out


def run_model(network: Network, x, what: str = "the image"):
    """Forward pass with the model's errors turned into a medlab error naming the shapes.

    Returns the main output and the last convolutional block's name (or None), found in the
    same pass."""
    out, layer = _checked(network, x, what, lambda: forward_with_layers(network, x))
    return out, layer


def run_model_keeping_layer(network: Network, x, layer: str, what: str = "the image") -> LayerPass:
    """:func:`run_model` with gradients, keeping ``layer``'s activations for one backward pass
    (:func:`medlab.explain.network.forward_keeping_layer`)."""
    def forward():
        kept = forward_keeping_layer(network, x, layer)
        return kept.output, kept
    return _checked(network, x, what, forward)[1]


def _checked(network: Network, x, what: str, forward):
    import torch

    try:
        out, extra = forward()
    except ParameterError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ImageError(f"{network.source} cannot take {what} as the network sees it (tensor "
                         f"{list(x.shape)} = [batch, channels, *spatial]): {first}. Give an image of the size, "
                         "dimension and channels the model was trained on, or a checkpoint whose preprocessing "
                         "record resamples to them") from None
    if not isinstance(out, torch.Tensor) or out.ndim < 2:
        raise ImageError(f"{network.source} returned {type(out).__name__} {getattr(out, 'shape', '')}; "
                         "medlab.explain needs class scores [batch, classes] or dense scores [batch, classes, *spatial]")
    return out, extra


@dataclass
class Target:
    """The scalar being explained, as a module captum can call (one number per batch item).

    Attributes
    ----------
    module : torch.nn.Module
        ``module(x)`` returns ``[B]``: the class logit, or the region sum.
    class_index : int
    dense : bool
        The network's output is a map (segmentation) rather than class scores.
    region : torch.Tensor or None
        The region on the network's output grid (dense outputs).
    description : str
        In words, for the result's metadata and table.
    """

    module: Any
    class_index: int
    dense: bool
    region: Any
    description: str
    n_classes: int
    output: Any = None
    auto_layer: str | None = None
    kept: LayerPass | None = None

    def of_output(self, out):
        """The target (``[B]``) from a model output ``[B, K, ...]``: what :attr:`module` returns."""
        return _select(out, self.class_index, self.region)

    def _of(self, out):
        """The target's logit (or region sum) and probability from a model output ``[1, K, ...]``."""
        prob = out.sigmoid() if out.shape[1] == 1 else out.softmax(1)
        if not self.dense:
            return float(out[0, self.class_index]), float(prob[0, self.class_index])
        r = self.region[0]
        return (float((out[0, self.class_index] * r).sum()),
                float((prob[0, self.class_index] * r).sum() / r.sum()))

    def base(self) -> tuple[float, float]:
        """Score and probability of the image itself (from the forward pass already made)."""
        return self._of(self.output)

    def score(self, x):
        """The target for a batch ``x`` (no gradients)."""
        import torch

        with torch.no_grad():
            return self.module(x)

    def value(self, x, score: str = "logit"):
        """The target for a batch ``x`` as ``score`` says: ``"logit"`` (what :attr:`module`
        returns, :meth:`score`) or ``"probability"`` (:meth:`probability`)."""
        return self.probability(x) if score == "probability" else self.score(x)

    def base_value(self, score: str = "logit") -> float:
        """The image's own target as ``score`` says (from the forward pass already made)."""
        return self.base()[1 if score == "probability" else 0]

    def probability(self, x):
        """The target as a probability: softmax (sigmoid for one output) of the class, averaged over
        the region for dense outputs. Occlusion and deletion/insertion curves track it only when
        asked (``score="probability"``): a confident logit (16.65 or more for a sigmoid) makes it 1.0 in
        float32, and a saturated probability ranks nothing."""
        import torch

        with torch.no_grad():
            return self.value_of_output(self.module.model(x), "probability")

    def value_of_output(self, out, score: str = "logit"):
        """The target (``[B]``) as ``score`` says from a model output (or its tuple) that was
        computed elsewhere, e.g. by incremental inference: what :meth:`value` gives for the input."""
        out = _first(out)
        if score != "probability":
            return self.of_output(out)
        prob = out.sigmoid() if out.shape[1] == 1 else out.softmax(1)
        p = prob[:, self.class_index]
        if not self.dense:
            return p
        return (p * self.region).flatten(1).sum(1) / self.region.sum()


def _make_module(model, class_index: int, region):
    from torch import nn

    class TargetScore(nn.Module):
        """``model``'s class logit (or its sum over a region): one number per batch item."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return _select(_first(self.model(x)), class_index, region)

    return TargetScore()


def _select(out, class_index: int, region):
    """A class logit ``[B]``, or its sum over the region for dense outputs."""
    if region is None:
        return out[:, class_index]
    return (out[:, class_index] * region).flatten(1).sum(1)


def make_target(network: Network, net_in: NetworkInput, *, target_class: int = -1, region: Sequence = (),
                region_radius: float = 10.0, mask: Image | None = None, stage: str = "explain",
                keep_layer: str | None = None) -> Target:
    """The target to explain for one image (see the module docstring).

    Parameters
    ----------
    network, net_in
        The model and the image as it sees it.
    target_class : int
        The class; -1: the predicted one (for dense outputs, the non-background class covering
        most of the region, or of the image).
    region : sequence of points (mm, LPS)
        Dense outputs: balls of ``region_radius`` mm around these points.
    mask : Image, optional
        Dense outputs: its non-zero voxels are the region (joined with the balls).
    keep_layer : str, optional
        A layer name or ``"auto"``: the forward pass keeps its graph and this layer's activations
        (``Target.kept``), so a layer method needs only the backward pass.
    """

    if keep_layer is None:
        out, auto_layer = run_model(network, net_in.tensor)
        kept = None
    else:
        kept = run_model_keeping_layer(network, net_in.tensor, keep_layer)
        out, auto_layer = kept.output.detach(), kept.auto_layer
    target = _make_target(network, net_in, out, auto_layer, target_class=target_class, region=region,
                          region_radius=region_radius, mask=mask, stage=stage)
    target.kept = kept
    return target


def _make_target(network: Network, net_in: NetworkInput, out, auto_layer: str | None, *, target_class: int,
                 region: Sequence, region_radius: float, mask: Image | None, stage: str) -> Target:
    import torch

    n_classes = int(out.shape[1])
    dense = out.ndim > 2
    if dense and out.ndim != net_in.tensor.ndim:
        raise ImageError(f"{stage}: {network.source} returned {list(out.shape)}, neither class scores [1, K] nor "
                         f"a map with the input's {net_in.tensor.ndim - 2} spatial axes")
    if target_class >= n_classes:
        raise ParameterError(_no_such_class(stage, network, target_class, n_classes, dense))
    if not dense:
        if region:
            raise ParameterError(f"{stage}: region points select voxels of a segmentation network's output; "
                                 f"{network.source} is a classifier (output {list(out.shape)}): leave region empty")
        if n_classes == 1:
            # One logit (sigmoid): it is the evidence for the one named class, and "the predicted class"
            # is that logit too. A negative logit ("not tumour") is explained by the same map: where the
            # evidence for the class is, however weak. Explaining "not tumour" would be the negated map
            # (sign="signed"), never a silent flip.
            module = _make_module(network.module, 0, None)
            return Target(module, 0, False, None, f"logit of {network.class_name(0)} (index 0, the model's only "
                          "output)", n_classes, out, auto_layer)
        c = int(out[0].argmax()) if target_class < 0 else int(target_class)
        module = _make_module(network.module, c, None)
        return Target(module, c, False, None, f"logit of {network.class_name(c)} (index {c})", n_classes, out,
                      auto_layer)
    spatial = tuple(out.shape[2:])
    chosen = _region(net_in, region, region_radius, mask)
    if chosen is not None:
        chosen = _to_output_grid(chosen, spatial)
    pred = out[0].argmax(0).numpy() if n_classes > 1 else (out[0, 0] > 0).numpy().astype(int)
    if target_class < 0:
        where = pred[chosen] if chosen is not None else pred
        fg = where[where > 0]
        if fg.size == 0:
            raise ParameterError(f"{stage}: the network predicts only background "
                                 f"{'in the region' if chosen is not None else 'in the image'}; give target_class")
        c = int(np.bincount(fg).argmax())
    else:
        c = int(target_class)
    how = "the region"
    if chosen is None:
        chosen = pred == c if n_classes > 1 else pred == 1
        how = f"the voxels predicted as {network.class_name(c)}"
        if not chosen.any():
            raise ParameterError(f"{stage}: no voxel is predicted as {network.class_name(c)}; click region points "
                                 "or give a mask to say which region to explain")
    elif not chosen.any():
        raise ParameterError(f"{stage}: the region (points and mask) covers no voxel of the network's input")
    reg = torch.from_numpy(chosen.astype(np.float32))[None]
    module = _make_module(network.module, c, reg)
    n = int(chosen.sum())
    return Target(module, c, True, reg, f"sum of {network.class_name(c)} logits over {how} ({n} voxels)", n_classes,
                  out, auto_layer)


def _no_such_class(stage: str, network: Network, target_class: int, n_classes: int, dense: bool) -> str:
    """Why ``target_class`` is out of range, and what to give instead."""
    if n_classes == 1 and not dense:
        name = network.class_name(0)
        return (f"{stage}: target_class {target_class} does not exist; {network.source} has one output, the logit "
                f"of {name!r} (a sigmoid classifier: positive means {name}). Give target_class=0 or -1: both "
                f"explain that logit, the evidence for {name}, whatever the model predicts")
    names = ", ".join(f"{k}: {network.class_name(k)}" for k in range(min(n_classes, 8)))
    return (f"{stage}: target_class {target_class} does not exist; {network.source} has {n_classes} output "
            f"class{'es' if n_classes != 1 else ''} ({names}{', ...' if n_classes > 8 else ''}). Give one of "
            f"0 to {n_classes - 1}, or -1 for the predicted class")


def _region(net_in: NetworkInput, points: Sequence, radius: float, mask: Image | None) -> np.ndarray | None:
    region = None
    if mask is not None:
        region = net_in.scan_to_network(np.asarray(mask.array) != 0, nearest=True, source=mask).astype(bool)
    if points:
        pos = net_in.physical_points()
        balls = np.zeros(pos.shape[:-1], bool)
        d = pos.shape[-1]
        for p in points:
            q = np.asarray(p[:d], float)
            balls |= np.linalg.norm(pos - q, axis=-1) <= max(radius, 0.0)
            # a radius below the voxel size still selects the voxel nearest the point
            nearest = np.unravel_index(np.argmin(np.linalg.norm(pos - q, axis=-1)), balls.shape)
            balls[nearest] = True
        region = balls if region is None else region | balls
    return region


def _to_output_grid(region: np.ndarray, spatial: tuple[int, ...]) -> np.ndarray:
    if region.shape == spatial:
        return region
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(region.astype(np.float32))[None, None]
    return F.interpolate(t, size=spatial, mode="nearest")[0, 0].numpy() > 0.5
