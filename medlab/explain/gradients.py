"""Gradient attributions at the network input's resolution: Integrated Gradients and SmoothGrad.

Both are captum's (``IntegratedGradients``; ``NoiseTunnel`` over ``Saliency``), called on the
same target module as every other method, so a map equals captum's own to float precision.
The attributions of each input channel are summed; the sign is applied on the network input,
then the map is resampled onto the scan's grid and normalised.
"""

from __future__ import annotations

import numpy as np

from ..stage import Choice, Float, Int, stage
from ._common import (
    Context,
    inputs,
    output_params,
    outputs,
    randomness,
    run_method,
    sum_over_channels,
    target_params,
)


def _baseline(ctx: Context, kind: str):
    import torch

    x = ctx.x
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "minimum":
        return torch.full_like(x, float(x.min()))
    from scipy import ndimage

    # a blurred copy (Fong & Vedaldi 2017): the image without its detail; sigma 5 network voxels
    arr = x[0].numpy()
    blurred = np.stack([ndimage.gaussian_filter(c, 5.0, mode="nearest") for c in arr])
    return torch.from_numpy(blurred.astype(np.float32))[None]


def _integrated_gradients(ctx: Context, baseline: str, steps: int, batch: int):
    from captum.attr import IntegratedGradients

    base = _baseline(ctx, baseline)
    attr, delta = IntegratedGradients(ctx.target.module).attribute(
        ctx.x, baselines=base, target=None, n_steps=steps, method="gausslegendre", internal_batch_size=batch,
        return_convergence_delta=True)
    f_x, f_b = ctx.target.base()[0], float(ctx.target.score(base)[0])
    ctx.rows += [{"quantity": "baseline", "value": baseline},
                 {"quantity": "target score at the baseline", "value": f_b},
                 {"quantity": "sum of attributions", "value": float(attr.sum())},
                 {"quantity": "completeness error (sum - (f(x) - f(baseline)))", "value": float(delta[0])},
                 {"quantity": "completeness error, relative", "value": float(abs(delta[0]) / max(abs(f_x - f_b), 1e-12))}]
    return sum_over_channels(attr)


@stage("Integrated Gradients", group="explain", preview=None, **inputs(), **target_params(),
       baseline=Choice(["zero", "minimum", "blurred"], "zero",
                       help="the image without information that the path starts from (on the network input)"),
       steps=Int(4, 512, 32, help="integration points (Gauss-Legendre)"),
       batch=Int(1, 512, 16, help="images per forward pass (memory)"),
       **output_params("absolute"), outputs=outputs())
def integrated_gradients(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0,
                         baseline="zero", steps=32, batch=16, sign="absolute", normalise="max"):
    """Integrated Gradients (Sundararajan et al., ICML 2017), captum's implementation.

    The gradient of the target is integrated along the straight path from a baseline to the
    image (on the network input, after its intensity normalisation). The attributions add up to
    ``f(image) - f(baseline)`` (completeness); the table reports how closely they do.

    Parameters
    ----------
    baseline : {'zero', 'minimum', 'blurred'}
        The path's start: zeros, the image's minimum everywhere, or a blurred copy.
    steps : int
        Integration points; raise it when the completeness error is large.
    batch : int
        Images per forward pass.
    sign : {'absolute', 'positive', 'signed'}
        ``signed`` keeps evidence against the target as negative values.

    Other parameters, returns and geometry as :func:`medlab.explain.grad_cam`.

    Examples
    --------
    >>> saliency, numbers = integrated_gradients(image, model, steps=64)   # doctest: +SKIP
    """
    return run_method("integrated_gradients", "Integrated Gradients",
                      lambda ctx: _integrated_gradients(ctx, baseline, steps, batch), image, model, mask,
                      target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise)


def _smoothgrad(ctx: Context, samples: int, noise: float, batch: int, seed: int):
    from captum.attr import NoiseTunnel, Saliency

    x = ctx.x
    sigma = float(noise * (x.max() - x.min()))
    if sigma <= 0:
        sigma = float(noise)
    with randomness(seed):
        attr = NoiseTunnel(Saliency(ctx.target.module)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch, stdevs=sigma, target=None,
            abs=False)
    ctx.rows += [{"quantity": "noise standard deviation (network input units)", "value": sigma},
                 {"quantity": "noisy samples", "value": samples}, {"quantity": "seed", "value": seed}]
    return sum_over_channels(attr)


@stage("SmoothGrad", group="explain", preview=None, **inputs(), **target_params(),
       samples=Int(2, 256, 16, help="noisy copies averaged"),
       noise=Float(0.0, 1.0, 0.15, help="noise standard deviation, as a share of the input's range (Smilkov: 0.1-0.2)"),
       batch=Int(1, 256, 8, help="images per forward pass (memory)"),
       seed=Int(0, 2**31 - 1, 0, help="fixes the noise, so the map replays identically"),
       **output_params("absolute"), outputs=outputs())
def smoothgrad(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0, samples=16,
               noise=0.15, batch=8, seed=0, sign="absolute", normalise="max"):
    """SmoothGrad (Smilkov et al., 2017): the target's gradient averaged over noisy copies.

    captum's ``NoiseTunnel`` over ``Saliency`` with signed gradients (``abs=False``), so the
    ``sign`` parameter decides; the noise comes from torch's generator seeded with ``seed``
    (and restored afterwards), so a recipe replays the same map.

    Parameters
    ----------
    samples : int
        Noisy copies.
    noise : float
        Standard deviation as a share of the network input's range (max - min).
    batch : int
        Copies per forward pass.
    seed : int

    Other parameters, returns and geometry as :func:`medlab.explain.grad_cam`.

    Examples
    --------
    >>> saliency, numbers = smoothgrad(image, model, samples=32)   # doctest: +SKIP
    """
    return run_method("smoothgrad", "SmoothGrad", lambda ctx: _smoothgrad(ctx, samples, noise, batch, seed), image,
                      model, mask, target_class=target_class, region=region, region_radius=region_radius, sign=sign,
                      normalise=normalise)
