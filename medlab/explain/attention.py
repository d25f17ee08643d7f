"""Attention rollout for vision transformers (MONAI's ``ViT``), on the scan's grid.

Abnar & Zuidema (ACL 2020): each block's attention, averaged over heads (or their maximum or
minimum), plus the identity for the residual connection, rows renormalised, multiplied from
the first block to the last. The row of the classification token (or, without one, the mean
row) says how much each patch token flows into the output; the patch grid is upsampled
(linear) to the network input and mapped back to the scan like every other map.

MONAI's ``SABlock`` keeps its attention matrix when ``save_attn`` is set; it is set on a copy
of the model, so the user's model is never modified. Attention is not class-specific: the
table says so, and ``target_class`` is only used to report the score.
"""

from __future__ import annotations

from ..errors import ParameterError
from ..stage import Choice, stage
from ._common import Context, inputs, output_params, outputs, run_method, target_params


def _blocks(module):
    blocks = [m for m in module.modules() if hasattr(m, "attn") and hasattr(m.attn, "save_attn")]
    if not blocks:
        raise ParameterError("attention rollout needs a transformer whose blocks keep their attention "
                             "(MONAI's ViT and its SABlock); this model has none: use grad_cam or integrated_gradients")
    return blocks


def rollout(attentions, head_fusion: str = "mean"):
    """Attention rollout of per-block attention matrices ``[B, heads, N, N]`` -> ``[B, N, N]``.

    Examples
    --------
    >>> import torch
    >>> eye = torch.eye(3).expand(1, 2, 3, 3)
    >>> bool(torch.allclose(rollout([eye, eye]), torch.eye(3)[None]))
    True
    """
    import torch

    result = None
    for att in attentions:
        fused = {"mean": att.mean(1), "max": att.amax(1), "min": att.amin(1)}[head_fusion]
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype)[None]
        a = 0.5 * fused + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _attention_rollout(ctx: Context, head_fusion: str):
    import torch

    from .network import copy_module, evaluating

    model = copy_module(ctx.target.module.model)
    blocks = _blocks(model)
    for blk in blocks:
        if getattr(blk.attn, "use_flash_attention", False):
            blk.attn.use_flash_attention = False  # flash attention never forms the matrix
        blk.attn.save_attn = True
    with torch.no_grad(), evaluating(model):
        model(ctx.x)
    atts = [blk.attn.att_mat for blk in blocks]
    n = atts[0].shape[-1]
    embed = next((m for m in model.modules() if hasattr(m, "patch_embeddings") and hasattr(m, "n_patches")), None)
    grid = _patch_grid(embed, ctx)
    has_cls = n == int(torch.tensor(grid).prod()) + 1
    if n not in (int(torch.tensor(grid).prod()), int(torch.tensor(grid).prod()) + 1):
        raise ParameterError(f"{ctx.stage}: {n} tokens do not match a patch grid of {grid}")
    r = rollout(atts, head_fusion)[0]
    flow = r[0, 1:] if has_cls else r.mean(0)
    ctx.rows += [{"quantity": "blocks", "value": len(blocks)}, {"quantity": "head fusion", "value": head_fusion},
                 {"quantity": "patch grid (tensor axes)", "value": " x ".join(map(str, grid))},
                 {"quantity": "note", "value": "attention is not class-specific: the map is the same for every target"}]
    ctx.layer = "attention of every block"
    return ctx.interpolate(flow.reshape(1, 1, *grid))[0, 0]


def _patch_size(embed):
    """The patch size of MONAI's PatchEmbeddingBlock: its convolution's kernel, or the lengths of
    its perceptron's rearrangement."""
    proj = getattr(embed, "patch_embeddings", None)
    if hasattr(proj, "kernel_size"):
        return proj.kernel_size
    lengths = getattr(proj[0], "axes_lengths", None) if isinstance(proj, (list, tuple)) or hasattr(proj, "__getitem__") else None
    if lengths:
        lengths = dict(lengths)
        return tuple(lengths[k] for k in sorted(lengths) if k.startswith("p"))
    return None


def _patch_grid(embed, ctx: Context) -> tuple[int, ...]:
    shape = tuple(int(s) for s in ctx.x.shape[2:])
    patch = _patch_size(embed) if embed is not None else None
    if patch is None:
        raise ParameterError(f"{ctx.stage}: cannot find the transformer's patch size (MONAI's PatchEmbeddingBlock)")
    patch = tuple(int(p) for p in (patch if isinstance(patch, (tuple, list)) else [patch] * len(shape)))
    if any(s % p for s, p in zip(shape, patch)):
        raise ParameterError(f"{ctx.stage}: the network input {shape} is not a multiple of the patch size {patch}")
    return tuple(s // p for s, p in zip(shape, patch))


@stage("Attention rollout", group="explain", preview=None, **inputs(), **target_params(),
       head_fusion=Choice(["mean", "max", "min"], "mean", help="how the heads of a block are combined"),
       **output_params("positive"), outputs=outputs())
def attention_rollout(image, model, mask=None, *, target_class=-1, region=(), region_radius=10.0,
                      head_fusion="mean", sign="positive", normalise="max"):
    """Attention rollout of a vision transformer (MONAI's ``ViT``): where the classification token
    draws its information from, through every block, on the scan's grid.

    Parameters
    ----------
    head_fusion : {'mean', 'max', 'min'}
        How each block's heads are combined (Abnar & Zuidema use the mean).

    Other parameters, returns and geometry as :func:`medlab.explain.grad_cam`; the map is
    non-negative, and the same for every target class.

    Examples
    --------
    >>> saliency, numbers = attention_rollout(image, vit)   # doctest: +SKIP
    """
    return run_method("attention_rollout", "Attention rollout", lambda ctx: _attention_rollout(ctx, head_fusion),
                      image, model, mask, target_class=target_class, region=region, region_radius=region_radius,
                      sign=sign, normalise=normalise)
