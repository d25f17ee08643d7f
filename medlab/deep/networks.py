"""MONAI segmentation networks built from a small JSON-able config, and weight checks.

A config is a plain dict that a :class:`medlab.outputs.Checkpoint` stores beside the weights,
so a checkpoint rebuilds its own network::

    {"network": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 4,
     "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance",
     "dropout": 0.0}

MONAI provides the networks; this module only validates the config (so that a typo is a
:class:`~medlab.errors.ParameterError` naming the key, not a ``TypeError`` deep inside MONAI)
and checks that a set of weights fits the network before loading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ParameterError

NETWORKS = ("unet", "segresnet")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "unet": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance",
             "dropout": 0.0},
    "segresnet": {"init_filters": 8, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout": 0.0},
}
_COMMON = ("network", "spatial_dims", "in_channels", "out_channels")
_NORMS = ("instance", "batch", "group")


def network_config(network: str = "unet", *, spatial_dims: int = 3, in_channels: int = 1,
                   out_channels: int = 2, **options: Any) -> dict[str, Any]:
    """A complete, checked network config: defaults filled in, every value a plain JSON type.

    Parameters
    ----------
    network : {'unet', 'segresnet'}
        MONAI's ``UNet`` (encoder-decoder with skip connections and residual units) or
        ``SegResNet`` (the BraTS 2018 winner's residual encoder, without the VAE branch).
    spatial_dims : {2, 3}
        2D (slices, radiographs) or 3D (volumes).
    in_channels : int
        Image channels (contrasts) the network reads, e.g. 2 for T1 and FLAIR.
    out_channels : int
        Classes it predicts, background included.
    **options
        UNet: ``channels`` (features per level), ``strides`` (downsampling per level, one
        fewer than ``channels``), ``num_res_units``, ``norm`` (``'instance'``, ``'batch'``,
        ``'group'``), ``dropout``. SegResNet: ``init_filters``, ``blocks_down``, ``blocks_up``,
        ``dropout``.

    Returns
    -------
    dict
        The config, as stored in a checkpoint.

    Examples
    --------
    >>> cfg = network_config("unet", in_channels=2, out_channels=4)
    >>> cfg["channels"], cfg["strides"]
    ([8, 16, 32, 64], [2, 2, 2])
    >>> network_config("unet", chanels=[8, 16])
    Traceback (most recent call last):
    ...
    medlab.errors.ParameterError: unet network config: unknown option(s) ['chanels']; it takes ['channels', 'dropout', 'norm', 'num_res_units', 'strides']
    """
    if network not in NETWORKS:
        raise ParameterError(f"network must be one of {list(NETWORKS)}; got {network!r}")
    unknown = sorted(set(options) - set(_DEFAULTS[network]))
    if unknown:
        raise ParameterError(f"{network} network config: unknown option(s) {unknown}; "
                             f"it takes {sorted(_DEFAULTS[network])}")
    cfg = {"network": network, "spatial_dims": spatial_dims, "in_channels": in_channels,
           "out_channels": out_channels, **_DEFAULTS[network], **options}
    return check_config(cfg)


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a stored config (from a checkpoint or by hand); returns a clean copy.

    Raises
    ------
    ParameterError
        Naming the key and what it must be.
    """
    if not isinstance(config, Mapping):
        raise ParameterError(f"a network config must be a dict; got {type(config).__name__}")
    cfg = dict(config)
    network = cfg.get("network")
    if network not in NETWORKS:
        raise ParameterError(f"network config: 'network' must be one of {list(NETWORKS)}; got {network!r}")
    unknown = sorted(set(cfg) - set(_COMMON) - set(_DEFAULTS[network]))
    if unknown:
        raise ParameterError(f"{network} network config: unknown key(s) {unknown}")
    cfg = {**_DEFAULTS[network], **cfg}
    _int(cfg, "spatial_dims", 2, 3)
    _int(cfg, "in_channels", 1, 16)
    _int(cfg, "out_channels", 2, 64)
    _number(cfg, "dropout", 0.0, 0.9)
    if network == "unet":
        cfg["channels"] = _ints(cfg, "channels", 1, 1024, min_len=2)
        cfg["strides"] = _ints(cfg, "strides", 1, 4, min_len=1)
        if len(cfg["strides"]) != len(cfg["channels"]) - 1:
            raise ParameterError(f"unet network config: 'strides' needs one value fewer than 'channels' "
                                 f"({len(cfg['channels'])} levels); got {cfg['strides']}")
        _int(cfg, "num_res_units", 0, 4)
        if cfg["norm"] not in _NORMS:
            raise ParameterError(f"unet network config: 'norm' must be one of {list(_NORMS)}; got {cfg['norm']!r}")
    else:
        _int(cfg, "init_filters", 1, 256)
        cfg["blocks_down"] = _ints(cfg, "blocks_down", 1, 8, min_len=1)
        cfg["blocks_up"] = _ints(cfg, "blocks_up", 1, 8, min_len=1)
        if len(cfg["blocks_up"]) != len(cfg["blocks_down"]) - 1:
            raise ParameterError("segresnet network config: 'blocks_up' needs one value fewer than 'blocks_down'")
    return cfg


def size_divisor(config: Mapping[str, Any]) -> int:
    """What every input size (a training patch, a sliding window) must be a multiple of."""
    cfg = check_config(config)
    if cfg["network"] == "unet":
        divisor = 1
        for s in cfg["strides"]:
            divisor *= s
        return divisor
    return 2 ** (len(cfg["blocks_down"]) - 1)


def build_network(config: Mapping[str, Any]):
    """The MONAI network (a ``torch.nn.Module``) a config describes, with fresh weights.

    Examples
    --------
    >>> net = build_network(network_config("unet", spatial_dims=2, out_channels=3))
    >>> type(net).__name__
    'UNet'
    """
    cfg = check_config(config)
    if cfg["network"] == "unet":
        from monai.networks.nets import UNet

        norm = {"instance": "INSTANCE", "batch": "BATCH", "group": ("GROUP", {"num_groups": 4})}[cfg["norm"]]
        return UNet(cfg["spatial_dims"], cfg["in_channels"], cfg["out_channels"], cfg["channels"],
                    cfg["strides"], num_res_units=cfg["num_res_units"], norm=norm, dropout=cfg["dropout"])
    from monai.networks.nets import SegResNet

    groups = min(8, cfg["init_filters"])
    return SegResNet(spatial_dims=cfg["spatial_dims"], init_filters=cfg["init_filters"],
                     in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
                     dropout_prob=cfg["dropout"] or None, blocks_down=tuple(cfg["blocks_down"]),
                     blocks_up=tuple(cfg["blocks_up"]), norm=("GROUP", {"num_groups": groups}))


def load_weights(network, state_dict: Mapping[str, Any], *, source: str = "checkpoint") -> None:
    """Load weights into ``network`` after checking every tensor's name and shape.

    Raises
    ------
    ParameterError
        Listing the missing, unexpected and mis-shaped tensors (a checkpoint made for another
        config: other channels, levels or classes).
    """
    import torch

    own = network.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    shaped = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and (not isinstance(state_dict[k], torch.Tensor)
                                      or tuple(state_dict[k].shape) != tuple(own[k].shape))]
    # load_state_dict would cast integer or complex weights to float without a word (integers
    # truncate every weight to 0), and a sparse or meta tensor fails deep inside torch
    typed = [f"{k} ({state_dict[k].dtype}, {state_dict[k].layout}, {state_dict[k].device.type})" for k in own
             if k in state_dict and isinstance(state_dict[k], torch.Tensor)
             and (state_dict[k].layout != torch.strided or state_dict[k].is_meta or state_dict[k].is_complex()
                  or state_dict[k].is_floating_point() != own[k].is_floating_point())]
    if typed:
        more = f" and {len(typed) - 6} more" if len(typed) > 6 else ""
        raise ParameterError(f"{source}: weights of the wrong kind for the network (it needs dense, real-valued "
                             f"tensors of its own kind): {', '.join(typed[:6])}{more}. Was the checkpoint edited?")
    if missing or extra or shaped:
        parts = []
        for what, names in (("missing", missing), ("unexpected", extra), ("of the wrong shape (stored vs network)", shaped)):
            if names:
                more = f" and {len(names) - 6} more" if len(names) > 6 else ""
                parts.append(f"{len(names)} {what}: {', '.join(names[:6])}{more}")
        raise ParameterError(f"{source}: the weights do not match the network config "
                             f"({type(network).__name__}); " + "; ".join(parts)
                             + ". Was the checkpoint's config edited, or saved from another network?")
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ParameterError(f"{source}: weights hold NaN or infinite values in {', '.join(bad[:6])}")
    network.load_state_dict(state_dict, strict=True)


def _int(cfg: dict, key: str, lo: int, hi: int) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ParameterError(f"{cfg['network']} network config: {key!r} must be an integer in [{lo}, {hi}]; got {v!r}")


def _number(cfg: dict, key: str, lo: float, hi: float) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ParameterError(f"{cfg['network']} network config: {key!r} must be a number in [{lo}, {hi}]; got {v!r}")
    cfg[key] = float(v)


def _ints(cfg: dict, key: str, lo: int, hi: int, *, min_len: int) -> list[int]:
    v = cfg.get(key)
    ok = isinstance(v, (list, tuple)) and len(v) >= min_len and all(
        isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in v)
    if not ok:
        raise ParameterError(f"{cfg['network']} network config: {key!r} must be a list of at least {min_len} "
                             f"integers in [{lo}, {hi}]; got {v!r}")
    return [int(x) for x in v]
