"""Class activation maps: Grad-CAM, Grad-CAM++ and Guided Grad-CAM, on the scan's grid.

* **Grad-CAM** (Selvaraju et al., ICCV 2017) is captum's ``LayerGradCam``: the layer's
  activations weighted by the spatial mean of the target's gradient, summed over channels.
* **Grad-CAM++** (Chattopadhyay et al., WACV 2018) weights each activation by higher-order
  gradient terms so that several instances of a finding all light up. captum has no Grad-CAM++
  and MONAI's ``GradCAMpp`` only explains a class logit of a classifier, so it is computed here
  from the layer's activations and gradients with MONAI's formula (identical to MONAI's for
  classifiers, tested to 1e-5), which also works for a region target.
* **Guided Grad-CAM** is captum's ``GuidedGradCam``: guided backpropagation (ReLU gradients
  clipped at zero) times the upsampled Grad-CAM map: fine detail inside the CAM's region.

The sign is applied at the layer's resolution, before the map is upsampled (linear, as captum's
``LayerAttribution.interpolate`` and MONAI's default upsampler), so ``sign="positive"`` with
``normalise="none"`` is exactly MONAI's ``GradCAM`` with a normaliser that changes nothing.
"""

from __future__ import annotations

import contextlib

from ..stage import stage
from ._common import (
    Context,
    LayerName,
    apply_sign,
    inputs,
    output_params,
    outputs,
    run_method,
    sum_over_channels,
    target_params,
)


def _grad_cam(ctx: Context, layer: str):
    import torch

    kept = ctx.layer_gradients(layer)
    if kept is None:   # no forward pass kept for this layer: captum's own forward and backward
        from captum.attr import LayerGradCam

        module = ctx.layer_module(layer)
        with _feature_map_only(ctx, module):
            attr = LayerGradCam(ctx.target.module, module).attribute(ctx.x, target=None, relu_attributions=False)
    else:
        # captum's LayerGradCam.attribute, step by step, on the kept forward pass (the same tensors,
        # the same operations, so the same bits): the gradient's spatial mean weights the channels.
        act, grad, _ = kept
        weights = torch.mean(grad, dim=tuple(range(2, grad.ndim)), keepdim=True) if grad.ndim > 2 else grad
        attr = torch.sum(weights * act, dim=1, keepdim=True)
    _check_layer_output(ctx, attr)
    return ctx.interpolate(apply_sign(attr, ctx.sign))[0, 0]


@contextlib.contextmanager
def _feature_map_only(ctx: Context, module):
    """Refuse, while the block runs, a layer whose output is not a tensor (a block returning a
    tuple): captum would fail deep inside with a bare RuntimeError about concatenation."""
    import torch

    def check(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise _not_a_feature_map(ctx, out)

    handle = module.register_forward_hook(check)
    try:
        yield
    finally:
        handle.remove()


def _not_a_feature_map(ctx: Context, out):
    from ..errors import ParameterError

    return ParameterError(f"{ctx.stage}: layer {ctx.layer!r} outputs a {type(out).__name__}, not a feature map "
                          "[1, C, *spatial]; pick a convolutional layer (medlab.explain.candidate_layers(model))")


def _check_layer_output(ctx: Context, attr) -> None:
    from ..errors import ParameterError

    if attr.ndim != ctx.x.ndim:
        raise ParameterError(f"{ctx.stage}: layer {ctx.layer!r} outputs {list(attr.shape)}, not a spatial feature "
                             f"map [1, C, *spatial] like the input {list(ctx.x.shape)}; pick a convolutional layer "
                             "(medlab.explain.candidate_layers(model))")


@stage("Grad-CAM", group="explain", preview=None, **inputs(), **target_params(), layer=LayerName(),
       **output_params("positive"), outputs=outputs())
def grad_cam(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0, layer="auto",
             sign="positive", normalise="max"):
    """Grad-CAM: where the chosen layer's features raise the target score, on the scan's grid.

    The map is computed at the layer's resolution by captum's ``LayerGradCam``, the sign applied
    there, upsampled to the network input (linear), mapped back through the model's recorded
    preprocessing onto the scan's own grid, and normalised. Sign and normalisation are recorded in
    ``saliency.metadata["saliency"]`` and in the table; nothing is flipped.

    Parameters
    ----------
    image : Image
        The scan (2D or 3D, any orientation and spacing).
    model : Checkpoint or torch.nn.Module
        A classifier (``[B, K]`` logits) or a segmentation network (``[B, K, *spatial]``).
    mask : Image, optional
        Label map: for a segmentation network, the region whose class score is explained; for
        any network, the known finding: energy in the mask, pointing game and IoU are reported.
    target_class : int
        Class to explain; -1: the predicted class.
    region : points in mm
        Segmentation networks: explain the class score summed over balls around these points.
    region_radius : float
        Radius of those balls (mm).
    layer : str
        ``"auto"`` (the last convolutional block) or a name from
        :func:`medlab.explain.candidate_layers`.
    sign : {'positive', 'absolute', 'signed'}
        Grad-CAM's definition keeps the positive part.
    normalise : {'max', 'minmax', 'none'}

    Returns
    -------
    saliency : Image
        On the scan's grid (float32).
    numbers : Table
        Target, its logit and probability, layer, sign, normalisation (and localisation).

    Examples
    --------
    >>> from medlab.explain import grad_cam, tumour_classifier
    >>> from medlab.data import classification_set
    >>> image, label, tumour = classification_set(n=2, seed=7)[0]      # doctest: +SKIP
    >>> saliency, numbers = grad_cam(image, tumour_classifier(), tumour)  # doctest: +SKIP
    """
    return run_method("grad_cam", "Grad-CAM", lambda ctx: _grad_cam(ctx, layer), image, model, mask,
                      target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise, sign_applied=True, keep_layer=layer)


def layer_activation_and_gradient(ctx: Context, layer: str):
    """The layer's activations and the target's gradient with respect to them (one backward pass)."""
    import torch

    from .network import evaluating

    module = ctx.layer_module(layer)
    store = {}

    def keep(_m, _inp, out):
        if not isinstance(out, torch.Tensor):
            raise _not_a_feature_map(ctx, out)
        store["a"] = out
        return out.clone()  # later in-place operations (ReLU(inplace=True)) must not change it

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad(), evaluating(ctx.target.module):
            x = ctx.x.detach().requires_grad_(False)
            score = ctx.target.module(x)
            act = store.get("a")
            if not isinstance(act, torch.Tensor) or not act.requires_grad:
                from ..errors import ParameterError

                raise ParameterError(f"{ctx.stage}: layer {ctx.layer!r} gives no tensor the target depends on")
            (grad,) = torch.autograd.grad(score.sum(), act)
    finally:
        handle.remove()
    return act.detach(), grad.detach(), score.detach()


def _grad_cam_pp(ctx: Context, layer: str):
    import torch

    act, grad, score = ctx.layer_gradients(layer) or layer_activation_and_gradient(ctx, layer)
    if act.ndim != ctx.x.ndim:
        _check_layer_output(ctx, act)
    b, c, *spatial = grad.shape
    ones = [1] * len(spatial)
    # MONAI's GradCAMpp, term by term; exp(score) (the paper's exponential of the score) is one
    # positive number per image: factored out when it would overflow, and recorded.
    alpha_nr = grad.pow(2)
    alpha_dr = alpha_nr.mul(2) + act.mul(grad.pow(3)).view(b, c, -1).sum(-1).view(b, c, *ones)
    alpha_dr = torch.where(alpha_dr != 0.0, alpha_dr, torch.ones_like(alpha_dr))
    alpha = alpha_nr.div(alpha_dr + 1e-7)
    factor = score.exp().view(b, 1, *ones)
    finite = bool(torch.isfinite(factor).all())
    relu_grad = torch.relu(factor * grad) if finite else torch.relu(grad)
    weights = (alpha * relu_grad).view(b, c, -1).sum(-1).view(b, c, *ones)
    cam = (weights * act).sum(1, keepdim=True)
    ctx.rows.append({"quantity": "exp(score) factor", "value": "included" if finite else
                     "left out (it overflows; the map is exp(score) times smaller, same shape)"})
    return ctx.interpolate(apply_sign(cam, ctx.sign))[0, 0]


@stage("Grad-CAM++", group="explain", preview=None, **inputs(), **target_params(), layer=LayerName(),
       **output_params("positive"), outputs=outputs())
def grad_cam_pp(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0, layer="auto",
                sign="positive", normalise="max"):
    """Grad-CAM++: Grad-CAM with per-location weights, so that several findings all show.

    Computed from the layer's activations and the target's gradient with the formula of MONAI's
    ``GradCAMpp`` (equal to it for classifiers); works for region targets of segmentation
    networks too. Parameters, returns and geometry as :func:`grad_cam`.

    Examples
    --------
    >>> saliency, numbers = grad_cam_pp(image, model)   # doctest: +SKIP
    """
    return run_method("grad_cam_pp", "Grad-CAM++", lambda ctx: _grad_cam_pp(ctx, layer), image, model, mask,
                      target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise, sign_applied=True, keep_layer=layer)


def _guided_grad_cam(ctx: Context, layer: str):
    from captum.attr import GuidedGradCam
    from torch import nn

    module = ctx.layer_module(layer)
    n_relu = sum(isinstance(m, nn.ReLU) for m in ctx.target.module.modules())
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[ctx.x.ndim - 2]
    with _feature_map_only(ctx, module):
        attr = GuidedGradCam(ctx.target.module, module).attribute(ctx.x, target=None, interpolate_mode=mode)
    ctx.rows.append({"quantity": "ReLU modules guided", "value": n_relu})
    if n_relu == 0:
        ctx.rows.append({"quantity": "note", "value": "the model has no torch.nn.ReLU modules, so guided "
                                                      "backpropagation is the plain gradient here"})
    return sum_over_channels(attr)


@stage("Guided Grad-CAM", group="explain", preview=None, **inputs(), **target_params(), layer=LayerName(),
       **output_params("absolute"), outputs=outputs())
def guided_grad_cam(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0, layer="auto",
                    sign="absolute", normalise="max"):
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map (captum's
    ``GuidedGradCam``, linear upsampling): voxel-level detail inside the Grad-CAM region.

    Guided backpropagation changes the backward pass of every ``torch.nn.ReLU`` module only
    while it runs (captum's hooks); the model is left as it was. Adebayo et al. (2018) found
    that guided methods barely change when the model's weights are randomised: run
    :func:`model_randomisation_test` before trusting the detail. Parameters, returns and
    geometry as :func:`grad_cam`; the default sign is ``absolute``.

    Examples
    --------
    >>> saliency, numbers = guided_grad_cam(image, model)   # doctest: +SKIP
    """
    return run_method("guided_grad_cam", "Guided Grad-CAM", lambda ctx: _guided_grad_cam(ctx, layer), image, model,
                      mask, target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise)
