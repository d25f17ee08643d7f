"""Incremental inference for occlusion: recompute only what a box changes (exact).

Hiding a box of the input changes a convolution's output only inside the box grown by the
kernel's reach; everywhere else every activation equals the unoccluded image's. So, as Krypton
does (Nakandala, Kumar & Papakonstantinou, "Incremental and approximate inference for faster
occlusion-based deep CNN explanations", SIGMOD 2019), the image's own activations are computed
once, and for each box each layer is recomputed only on the region the box changed (with the
halo its kernel reads from the cached activation), layer after layer, while the layers are local
and the region is small. The region is then pasted into the cached activation and the rest of the
network (global pooling, head) runs on the whole, by then small, tensor. The arithmetic is the
same as a full forward pass; only the order of float sums may differ (about 1e-7 relative).

Why by hand: no maintained library does this. captum's ``Occlusion`` and MONAI's
``OcclusionSensitivity`` run a full forward pass per occluded copy; Krypton's own code is a
research prototype (custom kernels, not packaged). What is needed here is small: walk a chain of
layers and slice tensors.

What is incremental: the model is walked as a chain (nested ``nn.Sequential`` whose ``forward``
is Sequential's own, as MONAI's ``Convolution`` and ``ADN``, are flattened into their layers).
Local layers are ``ConvNd`` (zeros padding, any stride, dilation, groups), ``MaxPoolNd``
(padding counts as -inf), ``AvgPoolNd`` (without ``ceil_mode``; with padding only when
``count_include_pad``), ``BatchNorm`` in evaluation with running statistics, and pointwise layers
(ReLU and its kin, PReLU, Identity, Dropout in evaluation). The incremental part stops at the
first other layer (instance norm: its statistics are global; a flatten, a linear head, an adaptive
pool, any module with its own ``forward`` such as a UNet's skip connection, a DenseNet block or a
vision transformer), at any hooked module, or where the changed region would exceed
``max_share`` of a layer. From there the network runs in full, so any model gives the same map.
A model that is not a chain, or whose chain stops at a block with layers inside, is walked through
its traced graph instead when torch.fx can trace it (:mod:`medlab.explain.incremental_graph`).

Batching: every box's region at a layer has the same size (the largest over the boxes), shifted
inward at the borders (recomputing unchanged voxels is still exact), so the boxes of a batch are
one tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def chain_layers(model) -> list:
    """The model as a chain of layers: nested ``nn.Sequential`` (with Sequential's own ``forward``)
    flattened in order; anything else, the model itself included, is one layer.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten())
    >>> [type(m).__name__ for m in chain_layers(net)]
    ['Conv2d', 'ReLU', 'Flatten']
    """
    from torch import nn

    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward and not _own_forward(model):
        return [leaf for child in model for leaf in chain_layers(child)]
    return [model]


def _own_forward(module) -> bool:
    """The module's ``forward`` was replaced on the instance (accelerate's hooks and some adapters
    do this): calling it runs that function, not what its class and weights say."""
    return "forward" in vars(module)


@dataclass
class _Window:
    """A layer whose output voxel reads a window of its input: a convolution or a pooling."""

    kernel: tuple
    stride: tuple
    dilation: tuple
    pad: tuple               # voxels of padding before the input, per axis
    pad_value: float         # what the padding holds (0, or -inf for a max pooling)
    run: Callable            # the layer on an already padded window (no padding of its own)


def _tuple(v, nd: int) -> tuple:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _pointwise(leaf) -> bool:
    from torch import nn

    kinds = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
             nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.PReLU, nn.Identity)
    if _own_forward(leaf):
        return False
    if type(leaf) in kinds:
        return True
    if type(leaf) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        return not leaf.training
    if type(leaf) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return not leaf.training and leaf.running_mean is not None
    return False


def _window(leaf, nd: int) -> _Window | None:
    """How a convolution or pooling reads its input, or None when it is not one handled here."""
    import torch.nn.functional as F
    from torch import nn

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    maxpool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[nd]
    avgpool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[nd]
    if _own_forward(leaf):
        return None
    if type(leaf) is conv and leaf.padding_mode == "zeros":
        k, s, d = _tuple(leaf.kernel_size, nd), _tuple(leaf.stride, nd), _tuple(leaf.dilation, nd)
        if leaf.padding == "valid":
            pad = (0,) * nd
        elif leaf.padding == "same":      # torch pads the odd voxel after: the first half before
            pad = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d))
        else:
            pad = _tuple(leaf.padding, nd)
        f = getattr(F, f"conv{nd}d")
        return _Window(k, s, d, pad, 0.0, lambda w: f(w, leaf.weight, leaf.bias, s, 0, d, leaf.groups))
    if type(leaf) is maxpool and not leaf.return_indices:
        k = _tuple(leaf.kernel_size, nd)
        s = _tuple(leaf.stride if leaf.stride is not None else leaf.kernel_size, nd)
        d, pad = _tuple(leaf.dilation, nd), _tuple(leaf.padding, nd)
        f = getattr(F, f"max_pool{nd}d")
        return _Window(k, s, d, pad, -float("inf"), lambda w: f(w, k, s, 0, d))
    if type(leaf) is avgpool and not leaf.ceil_mode:
        k = _tuple(leaf.kernel_size, nd)
        s = _tuple(leaf.stride if leaf.stride is not None else leaf.kernel_size, nd)
        pad = _tuple(leaf.padding, nd)
        if any(pad) and not leaf.count_include_pad:
            return None
        f = getattr(F, f"avg_pool{nd}d")
        extra = {} if nd == 1 else {"divisor_override": leaf.divisor_override}
        return _Window(k, s, (1,) * nd, pad, 0.0, lambda w: f(w, k, s, 0, False, True, **extra))
    return None


def changed_outputs(w: _Window, lo: np.ndarray, hi: np.ndarray, n_out) -> tuple[np.ndarray, np.ndarray]:
    """The outputs ``[o_lo, o_hi)`` per box (``[n, d]``) of a window layer that read a changed
    input in ``[lo, hi)``, clipped to the layer (an empty range where the change is skipped)."""
    k, s, d, p = (np.array(v) for v in (w.kernel, w.stride, w.dilation, w.pad))
    reach = (k - 1) * d
    # output o reads inputs o*s - p + j*d, j < k: it changed if one of them is in [lo, hi)
    o_lo = np.clip(-((reach - lo - p) // s), 0, np.asarray(n_out) - 1)       # ceil((lo + p - reach) / s)
    o_hi = np.clip((hi - 1 + p) // s + 1, o_lo, np.asarray(n_out))
    return o_lo, o_hi


def paste_slices(region_lo: np.ndarray, size, win_lo: np.ndarray, extent) -> list:
    """Per box, where a region (corner ``region_lo``, ``size``) overlaps a window (corner
    ``win_lo``, ``extent``): slices into the window and into the region, or None."""
    out = []
    for r, w in zip(region_lo, win_lo):
        a, z = np.maximum(r, w), np.minimum(r + np.asarray(size), w + np.asarray(extent))
        if np.any(z <= a):
            out.append(None)
            continue
        out.append((tuple(slice(int(u - v), int(t - v)) for u, t, v in zip(a, z, w)),
                    tuple(slice(int(u - v), int(t - v)) for u, t, v in zip(a, z, r))))
    return out


def _hooked(model) -> bool:
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@dataclass
class _Step:
    """One layer of a plan: pointwise (``window`` None) or a window layer with, per box, where
    its input window starts in the padded cached activation and where the previous region goes
    inside that window."""

    layer: Any
    window: _Window | None = None
    padded: Any = None             # the cached input activation, padded
    starts: np.ndarray | None = None
    extent: tuple = ()
    paste: list | None = None      # per box: (slices into the window, slices into the region) or None


@dataclass
class Plan:
    """What a set of boxes recomputes: the steps, and where the region ends (layer index and
    per-box corner of the region, all regions ``size`` voxels)."""

    steps: list
    stop: int
    corners: np.ndarray
    size: tuple


class IncrementalOcclusion:
    """The image's activations along a model's chain, and the occluded model outputs computed
    from them incrementally (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        In evaluation mode.
    x : torch.Tensor
        The image as the network sees it, ``[1, C, *spatial]``.
    max_share : float
        The incremental part stops before a layer whose changed region would exceed this share
        of the layer's voxels.
    group : int
        Boxes recomputed together. Small groups keep a group's regions in the CPU's cache: on the
        shipped classifiers (pooled and full-resolution) 8 boxes at a time ran 1.1-2x faster than
        32 (benchmarks/RESULTS.md); a model that runs in full from the input keeps the caller's
        batches.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2)).eval()
    >>> x = torch.rand(1, 1, 16, 16)
    >>> inc = IncrementalOcclusion(net, x)
    >>> corners = np.array([[0, 0], [8, 4]])
    >>> out = inc.outputs(corners, (4, 4), 0.0)
    >>> occluded = x.repeat(2, 1, 1, 1); occluded[0, :, :4, :4] = 0; occluded[1, :, 8:12, 4:8] = 0
    >>> bool(torch.allclose(out, net(occluded), atol=1e-6)), inc.local_layers
    (True, 2)
    """

    def __init__(self, model, x, max_share: float = 0.8, group: int = 8):
        import torch

        self.layers = [model] if _hooked(model) else chain_layers(model)
        self.nd = x.ndim - 2
        self.max_share = float(max_share)
        self.group = max(int(group), 1)
        self.kinds: list = []
        acts = [x]
        with torch.inference_mode():
            for layer in self.layers:
                window = _window(layer, self.nd)
                if window is None and not _pointwise(layer):
                    break
                a = acts[-1]
                acts.append(layer(a.clone() if getattr(layer, "inplace", False) else a))
                self.kinds.append(window)
        self.acts = acts            # acts[i]: the input of layer i, for the local layers and the one after
        self._padded: dict = {}
        self._plans: dict = {}

    @property
    def local_layers(self) -> int:
        """How many layers from the input on are local (the incremental part's longest reach)."""
        return len(self.kinds)

    def plan(self, corners: np.ndarray, box) -> Plan:
        """The steps for boxes with these corners (``[n, d]``, network voxels) and size."""
        lo = np.asarray(corners, np.int64).reshape(-1, self.nd)
        key = (lo.tobytes(), tuple(int(b) for b in box))
        if key not in self._plans:
            self._plans = {key: self._plan(lo, box)}   # the last one: a call asks for the same boxes twice
        return self._plans[key]

    def _plan(self, lo: np.ndarray, box) -> Plan:
        hi = lo + np.asarray(box, np.int64)
        region_lo, size = lo.copy(), tuple(int(b) for b in box)
        steps, stop = [], 0
        for i, window in enumerate(self.kinds):
            if window is None:
                steps.append(_Step(self.layers[i]))
                stop = i + 1
                continue
            step = self._window_step(i, window, lo, hi, region_lo, size)
            if step is None:
                break
            steps.append(step[0])
            lo, hi, region_lo, size = step[1:]
            stop = i + 1
        return Plan(steps, stop, region_lo, size)

    def _window_step(self, i: int, w: _Window, lo, hi, region_lo, size):
        n_in = np.array(self.acts[i].shape[2:])
        n_out = np.array(self.acts[i + 1].shape[2:])
        o_lo, o_hi = changed_outputs(w, lo, hi, n_out)
        length = np.maximum((o_hi - o_lo).max(0), 1)
        if np.prod(length) > self.max_share * np.prod(n_out):
            return None
        out_lo = np.minimum(o_lo, n_out - length)
        s, p = np.array(w.stride), np.array(w.pad)
        extent = (length - 1) * s + (np.array(w.kernel) - 1) * np.array(w.dilation) + 1
        paste = paste_slices(region_lo, size, out_lo * s - p, extent)   # windows start at out_lo*s - p
        padded = self._pad(i, w, n_in, n_out)
        step = _Step(self.layers[i], w, padded, out_lo * s, tuple(int(e) for e in extent), paste)
        return step, o_lo, o_hi, out_lo, tuple(int(v) for v in length)

    def _pad(self, i: int, w: _Window, n_in, n_out):
        if i not in self._padded:
            self._padded[i] = padded_for_windows(self.acts[i], w, n_in, n_out)
        return self._padded[i]

    def outputs(self, corners: np.ndarray, box, fill: float, plan: Plan | None = None, rows=None):
        """The model's outputs for the input with each box (corner ``[n, d]``, size ``box``)
        filled with ``fill``: ``[n, ...]``, as ``model(occluded copies)`` would give.
        ``rows`` selects boxes of ``plan`` (which was made for ``corners``)."""
        import torch

        plan = plan or self.plan(corners, box)
        rows = np.arange(len(corners)) if rows is None else np.asarray(rows)
        if plan.stop > 0 and len(rows) > self.group:
            parts = [self.outputs(corners, box, fill, plan, rows[i:i + self.group])
                     for i in range(0, len(rows), self.group)]
            return torch.cat([p[0] if isinstance(p, (tuple, list)) else p for p in parts])
        x = self.acts[0]
        with torch.inference_mode():
            region = torch.full((len(rows), x.shape[1], *[int(b) for b in box]), float(fill), dtype=x.dtype)
            for step in plan.steps:
                region = self._run(step, region, rows)
            base = self.acts[plan.stop]
            full = base.repeat(len(rows), *[1] * (base.ndim - 1))
            for j, r in enumerate(rows):
                full[(j, slice(None), *[slice(int(a), int(a) + m) for a, m in zip(plan.corners[r], plan.size)])] = \
                    region[j]
            for layer in self.layers[plan.stop:]:
                full = layer(full)
        return full

    @staticmethod
    def _run(step: _Step, region, rows):
        import torch

        if step.window is None:
            return step.layer(region)
        padded = step.padded[0]
        windows = torch.stack([padded[(slice(None), *[slice(int(a), int(a) + e)
                                                     for a, e in zip(step.starts[r], step.extent)])] for r in rows])
        for j, r in enumerate(rows):
            if step.paste[r] is not None:
                into, take = step.paste[r]
                windows[(j, slice(None), *into)] = region[(j, slice(None), *take)]
        return step.window.run(windows)


def padded_for_windows(a, w, n_in, n_out):
    """A cached activation ``a`` padded as window layer ``w`` pads it (``w.pad_value``: 0, or -inf
    for max pooling), and after its end as far as the last output's window reads (a ``ceil_mode``
    pooling reads past the padding)."""
    import torch.nn.functional as F

    after = np.maximum((n_out - 1) * np.array(w.stride) - np.array(w.pad)
                       + (np.array(w.kernel) - 1) * np.array(w.dilation) + 1 - n_in, 0)
    widths = [int(v) for pair in zip(w.pad[::-1], after[::-1]) for v in pair]
    return F.pad(a, widths, value=w.pad_value) if any(widths) else a
