"""Incremental occlusion through a traced graph: residual additions, dense concatenations, skips.

:mod:`medlab.explain.incremental` walks a chain of layers. A model that is not a chain (a ResNet's
``x + f(x)``, a DenseNet's ``cat([x, f(x)])``, a UNet's skips, or a chain wrapped in a module with
its own ``forward``) is traced with ``torch.fx`` into a graph, and each node is handled by what it
does to a box's changed region:

- a convolution or pooling (the chain's window layers): the region grown by the kernel's reach;
- a pointwise layer or function (ReLU, batch norm in evaluation, ...): the same region;
- an elementwise sum, difference or product, or a concatenation of channels, of activations on
  one grid: the smallest box holding its inputs' regions, each input read there (its cached
  activation with its region pasted in);
- anything else (global pooling, upsampling, instance norm, a flatten, a head): in full, on the
  inputs with their regions pasted in; from there on the graph runs in full.

A region that would exceed ``max_share`` of its activation is pasted and run in full as well. The
arithmetic is a full forward pass's (exact, float sums in another order). A model ``torch.fx``
cannot trace, with forward hooks, or with in-place operations on a tensor that something else also
reads, is left to the chain walker.
"""

from __future__ import annotations

import operator

import numpy as np

from .incremental import (
    _hooked,
    _pointwise,
    _window,
    changed_outputs,
    padded_for_windows,
    paste_slices,
)

_SAME = object()     # the node's value is the unoccluded image's, for every box


class _Region:
    """Per box of a group: the recomputed values ``patch [B, C, *size]`` at ``corner``, and the
    true changed extent ``[lo, hi)`` inside it."""

    def __init__(self, patch, corner, size, lo, hi):
        self.patch, self.corner, self.size, self.lo, self.hi = patch, corner, tuple(size), lo, hi


class _Full:
    """The node's value for every box of a group, computed in full (``[B, ...]`` or a non-tensor)."""

    def __init__(self, value):
        self.value = value


def _pointwise_function(node) -> bool:
    import torch
    import torch.nn.functional as F

    unary = {torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu, F.elu, F.relu6}
    if node.op == "call_function":
        return node.target in unary
    return node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh")


def _elementwise(node) -> bool:
    import torch

    functions = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in ("add", "sub", "mul")


def _channel_cat(node) -> bool:
    import torch

    if node.op != "call_function" or node.target is not torch.cat:
        return False
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    return dim == 1


def _in_place(node, modules) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return bool(node.kwargs.get("inplace")) or (name.endswith("_") and not name.startswith("__")) or \
            name in ("iadd", "isub", "imul", "itruediv")
    return False


def _same_output(a, b) -> bool:
    import torch

    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_output(u, v) for u, v in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max() + 1e-30)))
    return type(a) is type(b) and a == b


class GraphIncrementalOcclusion:
    """Occluded model outputs, incremental through the model's traced graph (module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        In evaluation mode.
    x : torch.Tensor
        The image as the network sees it, ``[1, C, *spatial]``.
    max_share, group
        As :class:`~medlab.explain.incremental.IncrementalOcclusion`.

    Raises
    ------
    ValueError
        The model cannot be traced, has hooks, or changes a tensor in place that another node reads.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> class Residual(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.stem, self.body = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    ...         self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    ...     def forward(self, x):
    ...         y = torch.relu(self.stem(x))
    ...         return self.head(y + self.body(y))
    >>> net = Residual().eval()
    >>> x = torch.rand(1, 1, 16, 16)
    >>> inc = GraphIncrementalOcclusion(net, x)
    >>> corners = np.array([[0, 0], [8, 4]])
    >>> occluded = x.repeat(2, 1, 1, 1); occluded[0, :, :4, :4] = 0; occluded[1, :, 8:12, 4:8] = 0
    >>> bool(torch.allclose(inc.outputs(corners, (4, 4), 0.0), net(occluded), atol=1e-6))
    True
    >>> inc.describe()
    'traced graph: 4 of 9 nodes recomputed on the changed region only (convolutions, poolings, pointwise, sums, concatenations), the others in full'
    """

    def __init__(self, model, x, max_share: float = 0.8, group: int = 8):
        import torch
        from torch import fx

        if _hooked(model):
            raise ValueError("forward hooks: a traced graph would skip them")
        try:
            self.gm = fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means: not this way
            raise ValueError(f"torch.fx cannot trace the model: {type(exc).__name__}") from None
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        if sum(n.op == "placeholder" for n in self.nodes) != 1:
            raise ValueError("the model takes more than one input")
        self.nd = x.ndim - 2
        self.max_share, self.group = float(max_share), max(int(group), 1)
        for n in self.nodes:
            if _in_place(n, self.modules) and any(len(a.users) > 1 for a in n.all_input_nodes):
                raise ValueError(f"node {n.name} changes in place a tensor that another node reads")
        self.base, self.from_input, self._padded, self._windows = {}, {}, {}, {}
        try:
            with torch.inference_mode():
                for n in self.nodes:
                    self.from_input[n] = n.op == "placeholder" or any(self.from_input[a] for a in n.all_input_nodes)
                    if n.op == "placeholder":
                        self.base[n] = x
                    elif n.op == "output":
                        traced = fx.node.map_arg(n.args[0], lambda a: self.base[a])
                    else:
                        args = fx.node.map_arg((n.args, n.kwargs), lambda a: self.base[a])
                        if _in_place(n, self.modules):
                            args = fx.node.map_arg((n.args, n.kwargs), lambda a: self._clone(self.base[a]))
                        self.base[n] = self._call(n, *args)
                own = model(x.clone())
        except Exception as exc:  # noqa: BLE001 - the traced graph is not the model's function
            raise ValueError(f"the traced graph does not run: {type(exc).__name__}") from None
        # a trace follows one path through Python: a branch on isinstance(x, Tensor), False for
        # fx's proxies, can trace another function; the graph is used only if it gives the model's output
        if not _same_output(traced, own):
            raise ValueError("the traced graph's output differs from the model's")
        self.kinds = {n: self._kind(n) for n in self.nodes}

    @staticmethod
    def _clone(v):
        return v.clone() if hasattr(v, "clone") else v

    def _call(self, n, args, kwargs):
        if n.op == "call_module":
            return self.modules[n.target](*args, **kwargs)
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        if n.op == "get_attr":
            return self.gm.get_parameter(n.target) if n.target in dict(self.gm.named_parameters()) else \
                getattr(self.gm, n.target)
        raise ValueError(n.op)

    def _grid(self, n) -> bool:
        """The node's value is an activation ``[1, C, *spatial]`` (batch one, the image's)."""
        v = self.base.get(n)
        return hasattr(v, "ndim") and v.ndim == self.nd + 2 and v.shape[0] == 1 and self.from_input[n]

    def _kind(self, n) -> str:
        if n.op in ("placeholder", "output", "get_attr") or not self.from_input[n]:
            return n.op if self.from_input[n] or n.op == "output" else "constant"
        inputs = [a for a in n.all_input_nodes if self.from_input[a]]
        if not self._grid(n) or len(inputs) == 0 or not all(self._grid(a) for a in inputs):
            return "other"
        if n.op == "call_module":
            module = self.modules[n.target]
            if len(n.args) == 1 and not n.kwargs and _window(module, self.nd) is not None:
                return "window"
            return "pointwise" if len(n.args) == 1 and not n.kwargs and _pointwise(module) else "other"
        if _pointwise_function(n) and len(inputs) == 1 and n.args[0] is inputs[0]:
            return "pointwise"
        same_grid = len(inputs) == len(n.all_input_nodes) and \
            all(self.base[a].shape[2:] == self.base[n].shape[2:] for a in inputs)
        if same_grid and _elementwise(n) and all(self.base[a].shape == self.base[n].shape for a in inputs):
            return "elementwise"
        if same_grid and _channel_cat(n):
            return "cat"
        return "other"

    def describe(self) -> str:
        """How much of the graph is recomputed on regions, in words."""
        local = sum(k in ("window", "pointwise", "elementwise", "cat") for k in self.kinds.values())
        return (f"traced graph: {local} of {len(self.nodes)} nodes recomputed on the changed region only "
                "(convolutions, poolings, pointwise, sums, concatenations), the others in full")

    def plan(self, corners: np.ndarray, box):
        """The boxes (nothing is planned ahead: regions are found group by group)."""
        return np.asarray(corners, np.int64).reshape(-1, self.nd), tuple(int(b) for b in box)

    def outputs(self, corners: np.ndarray, box, fill: float, plan=None, rows=None):
        """The model's outputs for the input with each box filled with ``fill`` (see
        :meth:`medlab.explain.incremental.IncrementalOcclusion.outputs`)."""
        import torch
        from torch import fx

        corners, box = plan or self.plan(corners, box)
        rows = np.arange(len(corners)) if rows is None else np.asarray(rows)
        if len(rows) > self.group:
            parts = [self.outputs(corners, box, fill, (corners, box), rows[i:i + self.group])
                     for i in range(0, len(rows), self.group)]
            return torch.cat([p[0] if isinstance(p, (tuple, list)) else p for p in parts])
        lo = corners[rows]
        x = self.base[self.nodes[0]]
        with torch.inference_mode():
            state = {}
            for n in self.nodes:
                if n.op == "placeholder":
                    patch = torch.full((len(rows), x.shape[1], *box), float(fill), dtype=x.dtype)
                    state[n] = _Region(patch, lo, box, lo, lo + np.asarray(box))
                elif n.op == "output":
                    return fx.node.map_arg(n.args[0], lambda a: self._materialise(a, state, len(rows)))
                else:
                    state[n] = self._step(n, state, len(rows))
        raise ValueError("the graph has no output")

    def _step(self, n, state, b: int):
        kind = self.kinds[n]
        inputs = [a for a in n.all_input_nodes if self.from_input[a]]
        if kind == "constant" or all(state[a] is _SAME for a in inputs):
            return _SAME
        if kind in ("window", "pointwise") and isinstance(state[inputs[0]], _Region):
            out = self._window(n, state[inputs[0]]) if kind == "window" else \
                _Region(self._apply(n, state, inputs[0], state[inputs[0]].patch), *self._geometry(state[inputs[0]]))
            if out is not None:
                return out
        elif kind in ("elementwise", "cat") and not any(isinstance(state[a], _Full) for a in inputs):
            out = self._combine(n, state, inputs)
            if out is not None:
                return out
        from torch import fx

        args = fx.node.map_arg((n.args, n.kwargs), lambda a: self._materialise(a, state, b))
        return _Full(self._call(n, *args))

    @staticmethod
    def _geometry(r: _Region):
        return r.corner, r.size, r.lo, r.hi

    def _apply(self, n, state, source, value):
        """Node ``n`` on ``value`` standing for its input ``source`` (other arguments as they are)."""
        from torch import fx

        args = fx.node.map_arg((n.args, n.kwargs), lambda a: value if a is source else self.base[a])
        return self._call(n, *args)

    def _window(self, n, r: _Region):
        w = self._windows.setdefault(n, _window(self.modules[n.target], self.nd))
        src = n.all_input_nodes[0]
        n_in, n_out = np.array(self.base[src].shape[2:]), np.array(self.base[n].shape[2:])
        o_lo, o_hi = changed_outputs(w, r.lo, r.hi, n_out)
        length = np.maximum((o_hi - o_lo).max(0), 1)
        if np.prod(length) > self.max_share * np.prod(n_out):
            return None
        out_lo = np.minimum(o_lo, n_out - length)
        s, p = np.array(w.stride), np.array(w.pad)
        extent = (length - 1) * s + (np.array(w.kernel) - 1) * np.array(w.dilation) + 1
        padded = self._pad(src, w, n_in, n_out)
        windows = self._read(padded, out_lo * s, extent, r, out_lo * s - p)
        return _Region(w.run(windows), out_lo, tuple(int(v) for v in length), o_lo, o_hi)

    def _pad(self, src, w, n_in, n_out):
        key = (src, w.pad, w.pad_value, w.kernel, w.stride, w.dilation)
        if key not in self._padded:
            self._padded[key] = padded_for_windows(self.base[src], w, n_in, n_out)
        return self._padded[key]

    @staticmethod
    def _read(source, starts, extent, r: _Region | None, win_lo):
        """Windows ``[B, C, *extent]`` of ``source`` (a cached ``[1, C, ...]``, maybe padded) at
        ``starts``, with the region ``r`` pasted in (``win_lo``: the windows' corners in the
        region's coordinates)."""
        import torch

        src = source[0]
        windows = torch.stack([src[(slice(None), *[slice(int(a), int(a) + int(e)) for a, e in zip(st, extent)])]
                               for st in starts])
        if r is not None:
            for j, where in enumerate(paste_slices(r.corner, r.size, win_lo, extent)):
                if where is not None:
                    windows[(j, slice(None), *where[0])] = r.patch[(j, slice(None), *where[1])]
        return windows

    def _combine(self, n, state, inputs):
        """A sum, product or concatenation on the smallest box holding its inputs' regions."""
        changed = [state[a] for a in inputs if isinstance(state[a], _Region)]
        lo = np.min([r.lo for r in changed], axis=0)
        hi = np.max([r.hi for r in changed], axis=0)
        n_grid = np.array(self.base[n].shape[2:])
        size = np.minimum(np.maximum((hi - lo).max(0), 1), n_grid)
        if np.prod(size) > self.max_share * np.prod(n_grid):
            return None
        corner = np.minimum(lo, n_grid - size)
        values = {a: self._read(self.base[a], corner, size, state[a] if isinstance(state[a], _Region) else None,
                                corner) for a in inputs}
        from torch import fx

        args = fx.node.map_arg((n.args, n.kwargs), lambda a: values[a] if a in values else self.base[a])
        return _Region(self._call(n, *args), corner, tuple(int(v) for v in size), lo, hi)

    def _materialise(self, a, state, b: int):
        """Node ``a``'s value for every box of the group: ``[B, ...]`` (its cached value with the
        region pasted in), or a constant as it is."""
        s = state.get(a, _SAME)
        base = self.base.get(a)
        if isinstance(s, _Full):
            return s.value
        if s is _SAME:   # an activation gets the batch's boxes; a constant or a shape stays as it is
            batched = self.from_input[a] and hasattr(base, "repeat") and base.ndim >= 1 and base.shape[0] == 1
            return base.repeat(b, *[1] * (base.ndim - 1)) if batched else base
        full = base.repeat(b, *[1] * (base.ndim - 1))
        for j in range(b):
            full[(j, slice(None), *[slice(int(c), int(c) + m) for c, m in zip(s.corner[j], s.size)])] = s.patch[j]
        return full
