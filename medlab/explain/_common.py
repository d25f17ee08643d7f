"""What every explanation stage shares: declarations, the run from scan to map and back, sign and
normalisation, the numbers table and the metadata that travels with the map."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageError, ParameterError
from ..image import Image
from ..stage import Choice, Float, ImageInput, ImageOut, Int, ModelInput, Points, TableOut
from .geometry import NetworkInput, network_input
from .network import Network, get_layer, no_conv_layer, resolve_model
from .target import Target, make_target

SIGNS = ("positive", "absolute", "signed")
NORMALISATIONS = ("max", "minmax", "none")


class LayerName(Choice):
    """The name of a model's layer (as ``model.named_modules()`` names it), or ``"auto"``.

    A model's layers are not known when a stage is declared, so this is an open choice: its
    declared option is only ``"auto"`` (the last convolutional block), any layer name is
    accepted, and a widget fills the list from :func:`medlab.explain.candidate_layers` for the
    model it was given (``spec()["options_from"]``). A name the model does not have is refused
    when the stage runs, with the model's layers listed.
    """

    def __init__(self, *, model: str = "model", help: str = "", label: str = ""):
        super().__init__(("auto",), "auto", help=help or "network layer whose activations are weighted; "
                         "'auto': the last convolutional block", label=label)
        self.model = model

    def validate(self, value, stage_name):
        if not isinstance(value, str) or not value.strip() or len(value) > 300 or not value.isprintable():
            raise self._fail(stage_name, "'auto' or a layer name from medlab.explain.candidate_layers(model)", value)
        return value.strip()

    def spec(self):
        return {**super().spec(), "open": True, "model": self.model,
                "options_from": "medlab.explain.candidate_layers"}


def inputs() -> dict:
    """The inputs every method takes: the scan, the model, an optional label map."""
    return {"image": ImageInput("intensity", help="the scan to explain"),
            "model": ModelInput(help="a medlab Checkpoint or a torch module (classifier or segmentation network)"),
            "mask": ImageInput("label", optional=True, overlaps="image",
                               help="segmentation networks: the region whose class score is explained; "
                                    "any network: the known finding, for localisation numbers")}


def target_params() -> dict:
    return {"target_class": Int(-1, 999, -1, help="class to explain (output index); -1: the predicted class; "
                                                   "a one-logit classifier has only 0, its logit"),
            "region": Points(role="target", image="image",
                             help="segmentation networks: explain the class score summed over balls around these points"),
            "region_radius": Float(0.0, 200.0, 10.0, unit="mm", help="radius of the balls around the region points")}


SCORES = ("logit", "probability")


def score_param(what: str) -> dict:
    """The ``score`` parameter of the methods that follow the target's value as the input changes."""
    return {"score": Choice(SCORES, "logit", help=f"what {what} follows: the target logit (a class score, "
                                                   "never saturated) or its probability (softmax, sigmoid for "
                                                   "one output; 1.0 in float32 for a confident logit, where "
                                                   "nothing can be ranked)")}


def output_params(sign: str) -> dict:
    return {"sign": Choice(SIGNS, sign, help="positive: evidence for the target only; absolute: magnitude; "
                                             "signed: as computed (recorded in the map's metadata)"),
            "normalise": Choice(NORMALISATIONS, "max", help="max: divide by the largest magnitude (zero stays zero); "
                                                            "minmax: to [0, 1]; none: the method's own units")}


def outputs() -> dict:
    return {"saliency": ImageOut(grid="image", help="the map on the scan's grid"),
            "numbers": TableOut(help="target, scores, sign, normalisation, localisation when a mask is given")}


@dataclass
class Context:
    """Everything a method needs: the model, the image as it sees it, the target, the sign."""

    network: Network
    net_in: NetworkInput
    target: Target
    sign: str
    stage: str
    layer: str = ""
    rows: list = field(default_factory=list)
    info: dict = field(default_factory=dict)   # method-specific choices, recorded in the map's metadata

    @property
    def x(self):
        return self.net_in.tensor

    def layer_module(self, name: str):
        """The chosen layer ('auto': the last convolutional block); records its name."""
        if name == "auto" and self.target.auto_layer is None:
            raise no_conv_layer(self.network)
        self.layer = self.target.auto_layer if name == "auto" else name
        return get_layer(self.network, self.layer)

    def layer_gradients(self, name: str):
        """The layer's activations, the target's gradient at them (both ``[1, C, *spatial]``) and
        the target score, from the forward pass :func:`prepare` kept (``keep_layer``): one
        backward pass, as captum's ``compute_layer_gradients_and_eval`` takes it (gradient of
        the unbound target with respect to the layer's own output). None when no pass was kept
        for this layer, or its activations were changed in place further on."""
        import torch

        kept = self.target.kept
        if kept is None or kept.activation is None or kept.layer != (self.target.auto_layer if name == "auto"
                                                                      else name):
            return None
        self.layer_module(name)
        score = self.target.of_output(kept.output)
        act = kept.activation
        if not act.requires_grad or not score.requires_grad:
            raise ParameterError(f"{self.stage}: layer {self.layer!r} gives no tensor the target depends on")
        try:
            (grad,) = torch.autograd.grad(torch.unbind(score), act)
        except RuntimeError as exc:  # the layer is not on the way to the target (unused branch)
            raise ParameterError(f"{self.stage}: the target does not depend on layer {self.layer!r} "
                                 f"({str(exc).splitlines()[0][:200]}); pick another layer") from None
        self.target.kept = None   # the graph is spent; let it go
        return act.detach(), grad, score.detach()

    def interpolate(self, layer_map):
        """A ``[1, 1, *layer spatial]`` map upsampled (linear, align_corners=False, as captum's
        and MONAI's upsamplers) to the network input's size."""
        import torch.nn.functional as F

        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.x.ndim - 2]
        if tuple(layer_map.shape[2:]) == tuple(self.x.shape[2:]):
            return layer_map
        return F.interpolate(layer_map, size=tuple(self.x.shape[2:]), mode=mode, align_corners=False)


def apply_sign(values, sign: str):
    """``positive``: max(v, 0); ``absolute``: |v|; ``signed``: v (numpy or torch)."""
    if sign == "positive":
        return values.clip(min=0) if hasattr(values, "clip") else np.clip(values, 0, None)
    if sign == "absolute":
        return abs(values)
    return values


def normalise_map(array: np.ndarray, how: str) -> tuple[np.ndarray, dict]:
    """The map normalised as asked, and what was done (so it can be undone)."""
    arr = np.asarray(array, np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if how == "max":
        scale = max(abs(lo), abs(hi))
        if scale > 0:
            arr = arr / np.float32(scale)
        return arr, {"normalisation": "max", "divided_by": scale,
                     "rule": "map / max|map|: zero stays zero, the sign is kept"}
    if how == "minmax":
        span = hi - lo
        if span > 0:
            arr = (arr - np.float32(lo)) / np.float32(span)
        return arr, {"normalisation": "minmax", "minimum": lo, "divided_by": span,
                     "rule": "(map - min) / (max - min): 0 is the smallest value, not zero evidence"}
    return arr, {"normalisation": "none", "rule": "the method's own units"}


def check_model_fits(network: Network, image: Image, stage: str) -> None:
    if network.spatial_dims is not None and network.spatial_dims != image.ndim:
        raise ImageError(f"{stage}: {network.source} is a {network.spatial_dims}D network but the image is "
                         f"{image.ndim}D; give a {network.spatial_dims}D image"
                         + (" (a slice of the volume)" if network.spatial_dims == 2 else ""))
    from torch import nn

    first = next((m for m in network.module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if first is not None and first.in_channels != 1:
        raise ImageError(f"{stage}: {network.source} takes {first.in_channels} input channels; the explanation "
                         "stages explain one image (one channel)")


def prepare(stage: str, image: Image, model, mask: Image | None, *, target_class: int, region: Sequence,
            region_radius: float, sign: str, keep_layer: str | None = None) -> Context:
    """The model, the image on the network grid and the target; with ``keep_layer`` (a layer
    name or ``"auto"``) the target's forward pass keeps that layer's graph for
    :meth:`Context.layer_gradients`."""
    network = resolve_model(model)
    check_model_fits(network, image, stage)
    net_in = network_input(image, network.input_record, source=network.source)
    target = make_target(network, net_in, target_class=target_class, region=region, region_radius=region_radius,
                         mask=mask, stage=stage, keep_layer=keep_layer)
    return Context(network, net_in, target, sign, stage)


def run_method(stage: str, method: str, compute: Callable[[Context], Any], image: Image, model, mask: Image | None,
               *, target_class: int = -1, region: Sequence = (), region_radius: float = 10.0, sign: str = "positive",
               normalise: str = "max", sign_applied: bool = False, context: Context | None = None,
               keep_layer: str | None = None):
    """Run ``compute(ctx)`` (a ``[*spatial]`` tensor on the network input) and bring the map home:
    sign, mapping to the scan's grid, normalisation, metadata and the numbers table."""
    from ..outputs import Table

    ctx = context or prepare(stage, image, model, mask, target_class=target_class, region=region,
                             region_radius=region_radius, sign=sign, keep_layer=keep_layer)
    with warnings.catch_warnings():  # captum's notices about its own mechanics, not the user's data
        warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        raw = compute(ctx)
    raw = raw.detach().cpu().numpy() if hasattr(raw, "detach") else np.asarray(raw)
    if not np.all(np.isfinite(raw)):
        raise ImageError(f"{stage}: {method} gave NaN or infinite values for {ctx.network.source} (are the "
                         "model's weights finite, and is the image's range what the model expects?)")
    if not sign_applied:
        raw = apply_sign(raw, sign)
    on_scan, outside = ctx.net_in.to_scan(raw)
    arr, norm = normalise_map(on_scan, normalise)
    info = {"method": method, "target": ctx.target.description, "class_index": ctx.target.class_index,
            "class_name": ctx.network.class_name(ctx.target.class_index), "sign": sign,
            "sign_rule": {"positive": "max(map, 0)", "absolute": "|map|", "signed": "as computed"}[sign],
            **norm, "layer": ctx.layer or None, "model": ctx.network.source,
            "network_grid": "the scan's own grid" if ctx.net_in.same_grid else
            f"{'x'.join(map(str, ctx.net_in.grid.size))} voxels of {'x'.join(f'{s:g}' for s in ctx.net_in.grid.spacing)} mm, resampled back (linear)",
            "outside_network_view": outside, **ctx.info}
    saliency = image.with_array(arr, kind="intensity", metadata={"saliency": info, "units": "a.u."})
    rows = numbers(ctx, info, arr, mask) + ctx.rows
    return saliency, Table(rows, title=f"{method}: {ctx.target.description}")


def numbers(ctx: Context, info: dict, arr: np.ndarray, mask: Image | None) -> list[dict]:
    score, prob = ctx.target.base()
    rows = [{"quantity": "method", "value": info["method"]},
            {"quantity": "target", "value": info["target"]},
            {"quantity": "target score (logit)", "value": score},
            {"quantity": "target probability", "value": prob},
            {"quantity": "sign", "value": f"{info['sign']} ({info['sign_rule']})"},
            {"quantity": "normalisation", "value": info["rule"]}]
    if info.get("divided_by") is not None:
        rows.append({"quantity": "normalisation divisor", "value": float(info["divided_by"])})
    if info["layer"]:
        rows.append({"quantity": "layer", "value": info["layer"]})
    rows.append({"quantity": "network grid", "value": info["network_grid"]})
    if info["outside_network_view"] > 0:
        rows.append({"quantity": "share of the scan outside the network's view (map 0 there)",
                     "value": info["outside_network_view"]})
    if not np.any(arr > 0):
        rows.append({"quantity": "note", "value": "the map has no positive value: no evidence for the target"
                                                  + (" at this layer" if info["layer"] else "")})
    elif mask is not None and np.any(np.asarray(mask.array) != 0):
        rows += localisation_rows(ctx.net_in.scan.with_array(arr), mask)
    return rows


def localisation_rows(saliency: Image, mask: Image) -> list[dict]:
    """Energy in the mask, pointing game and thresholded IoU (medlab.metrics), on the mask's grid."""
    from .. import metrics

    if not saliency.same_grid(mask):
        from .geometry import resample_array

        saliency = mask.with_array(resample_array(np.asarray(saliency.array, np.float32), saliency, mask,
                                                  nearest=False, fill=0.0), kind="intensity")
    if not np.any(np.asarray(saliency.array) > 0):
        return []
    share = float(np.count_nonzero(mask.array)) / mask.array.size
    quantile = min(max(1.0 - share, 0.5), 0.999)
    return [{"quantity": "energy in mask", "value": metrics.saliency_energy_in_mask(saliency, mask)},
            {"quantity": "pointing game hit", "value": bool(metrics.pointing_game(saliency, mask))},
            {"quantity": f"IoU of the top {100 * (1 - quantile):.3g} % of voxels with the mask",
             "value": metrics.saliency_iou(saliency, mask, quantile=quantile)}]


def check_finite_number(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ParameterError(f"{what} is not finite")
    return value


def table_value(table, quantity: str):
    """The value of a ``quantity``/``value`` table's row (for tests and widgets)."""
    for row in table.rows:
        if row.get("quantity") == quantity:
            return row["value"]
    raise ParameterError(f"table has no row {quantity!r}; rows: {[r.get('quantity') for r in table.rows]}")


def randomness(seed: int):
    """A context in which torch's global RNG is seeded and restored afterwards."""
    import torch

    class _Seeded:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(int(seed))

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Seeded()


def sum_over_channels(attr):
    """``[1, C, *spatial]`` input attributions summed over channels -> ``[*spatial]``."""
    return attr[0].sum(0)

