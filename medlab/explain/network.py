"""The model being explained: a checkpoint or a torch module, its layers, and checks before use.

A :class:`medlab.outputs.Checkpoint` rebuilds its own network from its config. The networks
known here are MONAI's (``DenseNet``, ``ViT``), the small 3D classifier shipped with medlab
(``"cnn_classifier"``, a VGG-like stack of MONAI ``Convolution`` blocks with global average
pooling), and the segmentation networks of :mod:`medlab.deep` (``"unet"``, ``"segresnet"``),
built, sized and weight-checked by :mod:`medlab.deep.networks` itself. A plain
``torch.nn.Module`` is used as it is.

**Target layer.** The widget lists :func:`candidate_layers` (the names of the modules that are,
or contain, a convolution, in registration order) and passes the chosen name as the stages'
``layer`` parameter (``"auto"``: :func:`find_target_layer`, the last convolutional block).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..deep.networks import NETWORKS as SEGMENTATION_NETWORKS
from ..deep.networks import build_network, load_weights, size_divisor
from ..errors import ParameterError

__all__ = ["CLASSIFIERS", "LayerPass", "Network", "build_classifier", "candidate_layers", "classifier_config",
           "find_target_layer", "forward_keeping_layer", "resolve_model"]

CLASSIFIERS = ("cnn_classifier", "densenet", "vit")

_CLASSIFIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "cnn_classifier": {"channels": [8, 16, 32], "convs_per_block": 2, "norm": "batch", "dropout": 0.0,
                       "head": "average", "downsample": None},
    "densenet": {"init_features": 16, "growth_rate": 8, "block_config": [2, 2, 2], "dropout": 0.0},
    "vit": {"img_size": [64, 64, 32], "patch_size": [8, 8, 8], "hidden_size": 96, "mlp_dim": 192,
            "num_layers": 4, "num_heads": 4, "dropout": 0.0},
}
_COMMON = ("network", "spatial_dims", "in_channels", "out_channels")


def classifier_config(network: str = "cnn_classifier", *, spatial_dims: int = 3, in_channels: int = 1,
                      out_channels: int = 2, **options: Any) -> dict[str, Any]:
    """A complete, checked classifier config (plain JSON values), as a checkpoint stores it.

    Parameters
    ----------
    network : {'cnn_classifier', 'densenet', 'vit'}
        ``cnn_classifier``: blocks of 3×3(×3) convolutions (batch norm, ReLU), max pooling
        between blocks, global average pooling and one linear layer; its Grad-CAM layer is
        ``features.block{n}``; with ``head="max_evidence"`` a 1×1 convolution maps the features
        to one evidence map per class and the logit is its maximum over the image (no bias
        after pooling: a class is present where its evidence is positive), a
        multiple-instance detector whose evidence map is its own Grad-CAM at
        ``layer="head.evidence"`` (``"auto"`` picks the last feature block before it).
        ``densenet``: MONAI's ``DenseNet``. ``vit``: MONAI's ``ViT``
        with a classification token (explained by attention rollout).
    spatial_dims : {2, 3}
    in_channels, out_channels : int
        Image channels, and classes.
    **options
        ``cnn_classifier``: ``channels`` (one entry per block), ``convs_per_block``, ``norm``
        (``'batch'``, ``'instance'``, ``None``), ``dropout``, ``head`` (``'average'``: global
        average pooling and a linear layer; ``'max_evidence'``; ``'lse_evidence'``: the same with
        a smooth maximum, log-mean-exp), ``downsample`` (how many of the
        first blocks are followed by 2× max pooling; None: all but the last). ``densenet``: ``init_features``,
        ``growth_rate``, ``block_config``, ``dropout``. ``vit``: ``img_size``, ``patch_size``
        (x, y, z order of the network input's array axes), ``hidden_size``, ``mlp_dim``,
        ``num_layers``, ``num_heads``, ``dropout``.

    Examples
    --------
    >>> classifier_config("cnn_classifier", channels=[4, 8])["convs_per_block"]
    2
    >>> classifier_config("cnn_classifier", chanels=[4, 8])
    Traceback (most recent call last):
    ...
    medlab.errors.ParameterError: cnn_classifier config: unknown option(s) ['chanels']; it takes ['channels', 'convs_per_block', 'downsample', 'dropout', 'head', 'norm']
    """
    if network not in CLASSIFIERS:
        raise ParameterError(f"network must be one of {list(CLASSIFIERS)}; got {network!r}")
    unknown = sorted(set(options) - set(_CLASSIFIER_DEFAULTS[network]))
    if unknown:
        raise ParameterError(f"{network} config: unknown option(s) {unknown}; it takes "
                             f"{sorted(_CLASSIFIER_DEFAULTS[network])}")
    return check_classifier_config({"network": network, "spatial_dims": spatial_dims, "in_channels": in_channels,
                                    "out_channels": out_channels, **_CLASSIFIER_DEFAULTS[network], **options})


def check_classifier_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a classifier config; returns a clean copy (raises ParameterError naming the key)."""
    cfg = dict(config)
    net = cfg.get("network")
    if net not in CLASSIFIERS:
        raise ParameterError(f"classifier config: 'network' must be one of {list(CLASSIFIERS)}; got {net!r}")
    unknown = sorted(set(cfg) - set(_COMMON) - set(_CLASSIFIER_DEFAULTS[net]))
    if unknown:
        raise ParameterError(f"{net} config: unknown key(s) {unknown}")
    cfg = {**_CLASSIFIER_DEFAULTS[net], **cfg}
    _int(cfg, "spatial_dims", 2, 3)
    _int(cfg, "in_channels", 1, 16)
    _int(cfg, "out_channels", 1, 1000)
    if not isinstance(cfg["dropout"], (int, float)) or not 0 <= cfg["dropout"] < 1:
        raise ParameterError(f"{net} config: 'dropout' must be a number in [0, 1); got {cfg['dropout']!r}")
    if net == "cnn_classifier":
        _ints(cfg, "channels", 1, 512)
        _int(cfg, "convs_per_block", 1, 4)
        if cfg["norm"] not in ("batch", "instance", None):
            raise ParameterError(f"cnn_classifier config: 'norm' must be 'batch', 'instance' or None; got {cfg['norm']!r}")
        if cfg["downsample"] is not None:
            _int(cfg, "downsample", 0, len(cfg["channels"]) - 1)
        if cfg["head"] not in HEADS:
            raise ParameterError(f"cnn_classifier config: 'head' must be one of {list(HEADS)}; got {cfg['head']!r}")
    elif net == "densenet":
        _int(cfg, "init_features", 1, 256)
        _int(cfg, "growth_rate", 1, 256)
        _ints(cfg, "block_config", 1, 64)
    else:
        for key in ("img_size", "patch_size"):
            _ints(cfg, key, 1, 4096)
            if len(cfg[key]) != cfg["spatial_dims"]:
                raise ParameterError(f"vit config: {key!r} needs {cfg['spatial_dims']} values; got {cfg[key]}")
        if any(i % p for i, p in zip(cfg["img_size"], cfg["patch_size"])):
            raise ParameterError(f"vit config: img_size {cfg['img_size']} must be a multiple of patch_size {cfg['patch_size']}")
        for key in ("hidden_size", "mlp_dim", "num_layers", "num_heads"):
            _int(cfg, key, 1, 8192)
        if cfg["hidden_size"] % cfg["num_heads"]:
            raise ParameterError("vit config: 'hidden_size' must be a multiple of 'num_heads'")
    return cfg


def build_classifier(config: Mapping[str, Any]):
    """The ``torch.nn.Module`` a classifier config describes, with fresh weights.

    Examples
    --------
    >>> net = build_classifier(classifier_config("cnn_classifier", spatial_dims=2, channels=[4, 8]))
    >>> [n for n, _ in net.named_children()]
    ['features', 'head']
    """
    from torch import nn

    cfg = check_classifier_config(config)
    d = cfg["spatial_dims"]
    if cfg["network"] == "densenet":
        from monai.networks.nets import DenseNet

        return DenseNet(d, cfg["in_channels"], cfg["out_channels"], init_features=cfg["init_features"],
                        growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]),
                        dropout_prob=cfg["dropout"])
    if cfg["network"] == "vit":
        from monai.networks.nets import ViT

        return ViT(cfg["in_channels"], cfg["img_size"], cfg["patch_size"], hidden_size=cfg["hidden_size"],
                   mlp_dim=cfg["mlp_dim"], num_layers=cfg["num_layers"], num_heads=cfg["num_heads"],
                   classification=True, num_classes=cfg["out_channels"], dropout_rate=cfg["dropout"],
                   spatial_dims=d, post_activation=None)
    from monai.networks.blocks import Convolution

    norm = {"batch": "BATCH", "instance": "INSTANCE", None: None}[cfg["norm"]]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    previous = cfg["in_channels"]
    pool = nn.MaxPool3d if d == 3 else nn.MaxPool2d
    n_pools = len(cfg["channels"]) - 1 if cfg["downsample"] is None else cfg["downsample"]
    for i, width in enumerate(cfg["channels"], 1):
        convs = []
        for _ in range(cfg["convs_per_block"]):
            convs.append(Convolution(d, previous, width, kernel_size=3, act="RELU", norm=norm,
                                     dropout=cfg["dropout"] or None))
            previous = width
        if 1 < i <= n_pools + 1:
            layers[f"pool{i - 1}"] = pool(2)
        layers[f"block{i}"] = nn.Sequential(*convs)
    if cfg["head"] in ("max_evidence", "lse_evidence"):
        conv = nn.Conv3d if d == 3 else nn.Conv2d
        if cfg["head"] == "lse_evidence":
            pooling = _log_mean_exp()
        else:
            pooling = nn.AdaptiveMaxPool3d(1) if d == 3 else nn.AdaptiveMaxPool2d(1)
        head = nn.Sequential(OrderedDict(evidence=conv(previous, cfg["out_channels"], 1), pool=pooling,
                                         flatten=nn.Flatten()))
    else:
        pooling = nn.AdaptiveAvgPool3d(1) if d == 3 else nn.AdaptiveAvgPool2d(1)
        head = nn.Sequential(OrderedDict(pool=pooling, flatten=nn.Flatten(), fc=nn.Linear(previous, cfg["out_channels"])))
    return nn.Sequential(OrderedDict(features=nn.Sequential(layers), head=head))


HEADS = ("average", "max_evidence", "lse_evidence")
_LSE: list = []


def _log_mean_exp():
    """``log(mean(exp(e)))`` over space: a smooth maximum of an evidence map (Pinheiro & Collobert,
    CVPR 2015). Unlike the maximum, every place gets a gradient, so it trains; like the maximum,
    the class is present when the evidence is positive somewhere, and negative evidence elsewhere
    keeps it so."""
    if not _LSE:
        import math

        import torch
        from torch import nn

        class LogMeanExp(nn.Module):
            def forward(self, x):
                flat = x.flatten(2)
                return (torch.logsumexp(flat, dim=2) - math.log(flat.shape[2]))[..., None]

        _LSE.append(LogMeanExp)
    return _LSE[0]()


def _size_multiple(config: Mapping[str, Any]) -> int:
    """What each network-input size must be a multiple of (pooling and striding)."""
    net = config.get("network")
    if net == "cnn_classifier":
        n = config.get("downsample")
        return 2 ** (len(config.get("channels", [1])) - 1 if n is None else n)
    if net == "densenet":
        return 4 * 2 ** (len(config.get("block_config", [1])) - 1)
    if net in SEGMENTATION_NETWORKS:
        return size_divisor(config)
    return 1


# ---------------------------------------------------------------------------- resolving a model
@dataclass
class Network:
    """A model ready to explain: the module, how images reach it, and what its outputs mean.

    Attributes
    ----------
    module : torch.nn.Module
        In evaluation mode while a stage runs (its training flag is restored afterwards).
    preprocessing : dict
        The checkpoint's record (see :mod:`medlab.explain.geometry`); empty for a bare module.
    labels : dict
        ``{class index: name}``.
    spatial_dims : int or None
        2 or 3 when known (checkpoint config, or the module's convolutions).
    size_multiple : int
        Network input sizes are padded to a multiple of this.
    source : str
        How the model is named in messages.
    """

    module: Any
    preprocessing: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    spatial_dims: int | None = None
    size_multiple: int = 1
    source: str = "model"
    fingerprint: str = ""

    def class_name(self, index: int) -> str:
        return self.labels.get(int(index), f"class {int(index)}")

    @property
    def input_record(self) -> dict:
        """The preprocessing record images go through, padded to what the network's pooling needs
        (a record from :mod:`medlab.deep` says nothing of it: its sliding windows are sized)."""
        import math

        rec = dict(self.preprocessing)
        multiple = math.lcm(int(rec.get("size_multiple", 1) or 1), int(self.size_multiple))
        if multiple > 1:
            rec["size_multiple"] = multiple
        return rec


_built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_model(model, name: str = "model") -> Network:
    """A :class:`Network` from a :class:`~medlab.outputs.Checkpoint` or a ``torch.nn.Module``.

    A checkpoint's network is built once per checkpoint object (and its weights checked); a
    module is used as given, never modified.

    Raises
    ------
    ParameterError
        An unknown network in the checkpoint config, or weights that do not fit it.
    """
    from torch import nn

    from ..outputs import Checkpoint

    if isinstance(model, Network):
        return model
    if isinstance(model, Checkpoint):
        cached = _built.get(model)
        if cached is not None:
            return cached
        net = _from_checkpoint(model, name)
        _built[model] = net
        return net
    if isinstance(model, nn.Module):
        return Network(model, spatial_dims=_conv_dims(model), source=f"{name} ({type(model).__name__})")
    raise ParameterError(f"{name} must be a medlab Checkpoint or a torch.nn.Module; got {type(model).__name__}")


def _from_checkpoint(ck, name: str) -> Network:
    cfg = dict(ck.config)
    net = cfg.get("network")
    source = f"{name} (checkpoint, network {net!r})"
    if net in CLASSIFIERS:
        module = build_classifier(cfg)
        dims = check_classifier_config(cfg)["spatial_dims"]
    elif net in SEGMENTATION_NETWORKS:
        module = build_network(cfg)
        dims = int(cfg.get("spatial_dims", 3))
    else:
        raise ParameterError(f"{source}: medlab.explain cannot build this network; known networks are "
                             f"{[*CLASSIFIERS, *SEGMENTATION_NETWORKS]}. Pass the torch module itself instead.")
    load_weights(module, ck.state_dict, source=source)   # names, shapes and NaN checked, for either kind
    module.eval()
    return Network(module, dict(ck.preprocessing), _channel_names(ck), dims, _size_multiple(cfg), source)


def _channel_names(ck) -> dict:
    """Class names by output channel. A medlab.deep segmenter names its labels by label value
    (8: 'enhancing tumour') and records which value each channel after background predicts."""
    values = ck.preprocessing.get("label_values")
    if not isinstance(values, list):
        return dict(ck.labels)
    names = {int(k): v for k, v in ck.labels.items()}
    return {0: "background", **{i + 1: f"{names.get(int(v), f'label {v}')} (label {v})" for i, v in enumerate(values)}}


def _conv_dims(module) -> int | None:
    from torch import nn

    dims = {2 if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) else 3
            for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))}
    return dims.pop() if len(dims) == 1 else None


def uses_batch_statistics(module) -> bool:
    """Whether a layer normalises by its batch's statistics (in evaluation mode too: batch norm
    without running statistics), so that an output depends on the copies batched beside it."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) and (m.training or m.running_mean is None) for m in module.modules())


@contextlib.contextmanager
def evaluating(module) -> Iterator[None]:
    """Evaluation mode inside the block; each submodule's training flag restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def copy_module(module):
    """A deep copy (for randomisation: the user's model is never modified)."""
    return copy.deepcopy(module)


# ---------------------------------------------------------------------------- layers
def _is_conv(m) -> bool:
    from torch import nn

    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))


def candidate_layers(model) -> list[str]:
    """Names of the layers a CAM method can use: the modules that are, or contain, a convolution.

    In registration order (usually the order of the forward pass), as ``model.named_modules()``
    names them; pass one as a stage's ``layer`` parameter. A widget lists these for the user.

    Parameters
    ----------
    model : Checkpoint or torch.nn.Module

    Returns
    -------
    list of str

    Examples
    --------
    >>> from medlab.explain.network import build_classifier, classifier_config
    >>> net = build_classifier(classifier_config(spatial_dims=2, channels=[4, 8]))
    >>> [n for n in candidate_layers(net) if n.count(".") < 2]
    ['features', 'features.block1', 'features.block2']
    """
    module = resolve_model(model).module
    holders = set()   # every dotted prefix of a convolution's name: the modules that contain it
    for name, m in module.named_modules():
        if _is_conv(m):
            parts = name.split(".")
            holders.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return [n for n, _ in module.named_modules() if n and n in holders]


def get_layer(network: Network, name: str):
    """The module called ``name`` in the network; ParameterError listing candidates otherwise."""
    modules = dict(network.module.named_modules())
    if name not in modules or not name:
        options = candidate_layers(network.module)
        shown = ", ".join(options[:12]) + (f" and {len(options) - 12} more" if len(options) > 12 else "")
        raise ParameterError(f"layer {name!r} does not exist in {network.source}; convolutional layers are: "
                             f"{shown or 'none'} (see medlab.explain.candidate_layers(model)), or use 'auto'")
    return modules[name]


def forward_with_layers(network: Network, x):
    """One forward pass (no gradients) that also finds the last convolutional block.

    Returns the model's main output and the layer :func:`find_target_layer` would name (None if
    there is none). Only the last two distinct spatial outputs are held, whatever the depth.
    """
    out, name, _ = _forward(network, x, graph=False)
    return out, name


@dataclass
class LayerPass:
    """One forward pass with its graph kept, ready for the backward pass of a layer method.

    Attributes
    ----------
    output : torch.Tensor
        The model's main output (part of the graph).
    auto_layer : str or None
        The last convolutional block (what ``layer="auto"`` picks).
    layer : str or None
        The layer whose activations were kept (``auto_layer`` when asked for ``"auto"``).
    activation : torch.Tensor or None
        That layer's output as its forward hook saw it; None when it is not a tensor or was
        changed in place further on (``ReLU(inplace=True)``): then the values captum's layer
        methods see are gone, and a method computes them its own way.
    """

    output: Any
    auto_layer: str | None
    layer: str | None
    activation: Any


def forward_keeping_layer(network: Network, x, layer: str = "auto") -> LayerPass:
    """One forward pass with gradients that finds the last convolutional block and keeps the
    activations of ``layer`` (``"auto"``: that block) for one backward pass.

    Grad-CAM needs the target's gradient at a layer; captum's ``LayerGradCam`` obtains it with a
    forward and a backward pass of its own. The target (the predicted class) and the automatic
    layer need a forward pass first, so calling captum meant two forward passes; this pass serves
    all three. captum holds a clone of the layer's output so that later in-place operations
    cannot change it; here nothing is copied, and an activation changed in place after its layer
    (its tensor version moved on) is not returned, so the map is captum's either way.
    """
    if layer != "auto":
        get_layer(network, layer)   # a name the model does not have is refused, with the candidates listed
    out, auto, kept = _forward(network, x, graph=True, named=None if layer == "auto" else layer)
    chosen = auto if layer == "auto" else layer
    return LayerPass(out, auto, chosen, kept.get(chosen) if chosen else None)


def _forward(network: Network, x, *, graph: bool, named: str | None = None):
    """The forward pass behind :func:`forward_with_layers` and :func:`forward_keeping_layer`.

    Returns the main output, the automatic layer's name and, with ``graph``, ``{name: activation}``
    for the automatic layer and ``named`` (only activations not changed in place afterwards).
    """
    import torch

    module = network.module
    candidates = set(candidate_layers(module))
    # the last two distinct spatial outputs, the names of the modules that returned each (innermost
    # first) and the tensor's version when it was first seen
    state = {"last": None, "names": [], "version": 0, "prev": None, "prev_names": [], "prev_version": 0}
    seen: dict[str, tuple] = {}

    def spatial(t) -> bool:
        return isinstance(t, torch.Tensor) and t.ndim == x.ndim and min(t.shape[2:]) > 1

    def hook(name):
        def _record(_m, _inp, out):
            if not isinstance(out, torch.Tensor):
                return
            if graph and not out.requires_grad and out.grad_fn is None:
                out.requires_grad_()   # frozen weights: the layer still gets a gradient (as in captum)
            if graph and name == named:
                seen[name] = (out, out._version)
            if not spatial(out):
                return
            if _alias(out, state["last"]):
                state["names"].append(name)
            else:
                state["prev"], state["prev_names"], state["prev_version"] = (state["last"], state["names"],
                                                                             state["version"])
                state["last"], state["names"], state["version"] = out, [name], out._version
        return _record

    hooked = candidates | ({named} if named else set())
    hooks = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n in hooked]
    try:
        with torch.set_grad_enabled(graph), evaluating(module):
            out = module(x)
    finally:
        for h in hooks:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    modules = dict(module.named_modules())
    if not isinstance(out, torch.Tensor):   # a dict or None: the caller names what it needs
        return out, None, {}
    if _alias(out, state["last"]) or (_class_score_map(modules, state["names"], state["last"], out)
                                       and state["prev_names"]):
        # the last spatial output is the network's own (a segmentation network), or the class-score
        # map of a CAM-style head: the features before it are the last convolutional block (a
        # head with no block before it, a bare CAM, is its own last block)
        names, tensor, version = state["prev_names"], state["prev"], state["prev_version"]
    else:
        names, tensor, version = state["names"], state["last"], state["version"]
    auto = names[0] if names else None
    if graph and auto is not None:
        seen.setdefault(auto, (tensor, version))
    kept = {n: t for n, (t, version) in seen.items() if t._version == version}
    return out, auto, kept


def _class_score_map(modules: dict, names: list, scores, out) -> bool:
    """The last spatial output is a classifier's class-score map, not features: a 1×1(×1)
    convolution to as many channels as the classifier has outputs, from which the output
    (``[B, K]``) is only pooled, as in CAM-style heads (Zhou et al. 2016; medlab's
    ``max_evidence``/``lse_evidence`` heads). It is the linear classifier applied at each place,
    so Grad-CAM there weights K class maps, not feature channels; the field's "last
    convolutional block" (pytorch-grad-cam's ``layer4[-1]``, MONAI's ``class_layers.relu``) is
    the block before it."""
    import math

    import torch

    if not names or out.ndim != 2 or scores is None:
        return False
    m = modules.get(names[-1])   # the outermost module returning that tensor
    inner = modules.get(names[0])
    if not any(_is_conv(c) and all(k == 1 for k in c.kernel_size) and c.out_channels == out.shape[1]
               for c in (m, inner) if c is not None):
        return False
    # "only pooled": the output is the map's maximum, mean or log-mean-exp over space. A 1×1
    # bottleneck that has as many channels as there are classes by coincidence, followed by more
    # layers (a linear layer, a bias), is features and stays the last block.
    with torch.no_grad():
        flat, o = scores.detach().flatten(2).double(), out.detach().double()
        if flat.shape[:2] != o.shape:
            return False
        pooled = (flat.amax(2), flat.mean(2), torch.logsumexp(flat, 2) - math.log(flat.shape[2]))
        return any(torch.allclose(p, o, rtol=1e-4, atol=1e-5) for p in pooled)


def _alias(a, b) -> bool:
    """``a`` is ``b``, or the same memory seen through a new tensor object (with gradients on, a
    module's full backward hook wraps its outputs: MONAI's GradCAM leaves such hooks on the layer
    it explained). ``b`` is held, so its memory cannot have been reused by ``a``."""
    if a is b:
        return True
    return (b is not None and a is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape
            and a.stride() == b.stride() and a.dtype == b.dtype)


def find_target_layer(network: Network, x) -> str:
    """The last convolutional block: the last module in the forward pass that contains a
    convolution and outputs a spatial feature map (``[B, C, *spatial]`` with as many spatial
    axes as ``x``), other than the network's own output and other than a classifier's
    class-score map (a 1×1 convolution to the K class channels that are then only pooled: the
    block before it is the last block of features, where Grad-CAM weights feature channels).
    When several modules output the same tensor (a block and the sequence that ends with it),
    the innermost is named. A vision transformer's only such layer is its patch embedding, which
    is what this returns for MONAI's ViT: attention rollout explains a transformer better.

    Raises
    ------
    ParameterError
        The model has no such layer (e.g. a network of linear layers only).
    """
    _, name = forward_with_layers(network, x)
    if name is None:
        raise no_conv_layer(network)
    return name


def no_conv_layer(network: Network) -> ParameterError:
    return ParameterError(f"{network.source} has no convolutional layer with a spatial output, so Grad-CAM "
                          "has nothing to weight; for a vision transformer use attention_rollout, "
                          "otherwise a gradient method (integrated_gradients, smoothgrad) or occlusion")


def _int(cfg: dict, key: str, lo: int, hi: int) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ParameterError(f"{cfg['network']} config: {key!r} must be an integer in [{lo}, {hi}]; got {v!r}")


def _ints(cfg: dict, key: str, lo: int, hi: int) -> None:
    v = cfg.get(key)
    if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                                       and lo <= x <= hi for x in v)):
        raise ParameterError(f"{cfg['network']} config: {key!r} must be a list of integers in [{lo}, {hi}]; got {v!r}")
    cfg[key] = [int(x) for x in v]
