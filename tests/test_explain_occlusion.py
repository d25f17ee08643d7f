"""Occlusion through incremental inference gives the full-forward map (medlab.explain.incremental).

Each test computes the same occlusion map twice, once recomputing only what each box changes and
once running every occluded copy through the whole network, and asks them to agree to 1e-5 of
the map's peak (float sums in another order)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medlab
from medlab.explain import occlusion, table_value, tumour_classifier
from medlab.explain._common import prepare
from medlab.explain.incremental import IncrementalOcclusion, chain_layers
from medlab.explain.perturbation import occlusion_drop, window_starts

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _maps(image, model, box, *, overlap=0.5, batch=7, refine=0.0, score="logit", target_class=-1, **kw):
    """The map with and without incremental inference, and the first one's table information."""
    ctx = prepare("occlusion", image, model, None, target_class=target_class, region=kw.get("region", ()),
                  region_radius=kw.get("region_radius", 10.0), sign="signed")
    fast, info, _ = occlusion_drop(ctx, box, overlap, "mean", batch, refine, score)
    full, info_full, _ = occlusion_drop(ctx, box, overlap, "mean", batch, refine, score, incremental=False)
    assert info_full["incremental inference"].startswith("off")
    for key in ("boxes computed", "share of voxels computed exactly"):
        assert info[key] == info_full[key]
    return fast, full, info


def _same(fast, full, tol=1e-5):
    peak = np.abs(full).max()
    assert peak > 0
    print(f"max difference {np.abs(fast - full).max() / peak:.2e} of the peak {peak:.3g}")
    assert np.abs(fast - full).max() <= tol * peak


def _blob(shape, centre, spacing=None):
    grid = np.indices(shape)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    # a strong blob: boxes over it move the target by much more than float rounding of the logit
    arr = (10 * np.exp(-r2 / 20.0) + 0.5 * np.random.default_rng(0).random(shape)).astype(np.float32)
    return medlab.Image(arr, spacing=spacing or (1.0,) * len(shape))


def test_shipped_classifier_incremental_equals_full_forward():
    ck = tumour_classifier()
    image = _blob((32, 64, 64), (10, 40, 22), spacing=(3.0, 3.0, 4.0))
    fast, full, info = _maps(image, ck, (16, 32, 32), overlap=0.0, batch=3)  # 8 boxes: 3 batches, the last of 2
    _same(fast, full)
    assert info["incremental inference"].startswith("layers 1-")
    assert info["boxes computed"] == 8


def _tiny3d():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv3d(4, 6, 3, stride=2, padding=1), nn.BatchNorm3d(6), nn.LeakyReLU(0.1),
        nn.AvgPool3d(2), nn.Conv3d(6, 6, 3, padding=2, dilation=2, groups=2), nn.ELU(),
        nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(6, 3)).eval()


def test_stride_two_avg_pool_and_border_boxes_with_an_odd_batch():
    net = _tiny3d()
    with torch.no_grad():
        net[3].running_mean.uniform_(-0.3, 0.3)
        net[3].running_var.uniform_(0.5, 1.5)
    image = _blob((24, 40, 48), (5, 30, 9))
    box = (8, 10, 12)
    starts = window_starts((24, 40, 48), box, 0.5)
    assert len(starts) % 8 and {0, 24 - 8} <= set(starts[:, 0])   # boxes flush with both borders
    fast, full, info = _maps(image, net, box, overlap=0.5, batch=8, target_class=2)
    _same(fast, full)
    assert "layers 1-8 of 11" in info["incremental inference"] and "AdaptiveMaxPool3d" in info["incremental inference"]
    fast, full, _ = _maps(image, net, box, overlap=0.5, batch=64, score="probability", target_class=2)
    _same(fast, full)
    # on a small input the dilated convolution's region would cover most of its layer: it runs in full
    small = _blob((12, 14, 16), (5, 6, 9))
    fast, full, info = _maps(small, net, (4, 5, 4), overlap=0.5, batch=7, target_class=2)
    _same(fast, full)
    assert "layers 1-6 of 11" in info["incremental inference"] and "then Conv3d" in info["incremental inference"]


def test_engine_outputs_equal_the_model_on_occluded_copies():
    """The lower level: every box's model output, border boxes included, against ``model(copies)``."""
    net = _tiny3d()
    x = torch.rand(1, 1, 24, 40, 48)
    box = (8, 10, 12)
    starts = window_starts((24, 40, 48), box, 0.3)
    copies = x.repeat(len(starts), 1, 1, 1, 1)
    for i, s in enumerate(starts):
        copies[(i, slice(None), *[slice(int(a), int(a) + m) for a, m in zip(s, box)])] = -1.5
    inc = IncrementalOcclusion(net, x)
    plan = inc.plan(starts, box)
    assert plan.stop == 8
    got = torch.cat([inc.outputs(starts, box, -1.5, plan=plan, rows=np.arange(i, min(i + 5, len(starts))))
                     for i in range(0, len(starts), 5)])
    with torch.no_grad():
        want = net(copies)
    assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
    assert torch.equal(inc.acts[0], x)   # the in-place ReLU left the image's activations alone


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # torch's, full forward
def test_two_d_cnn_with_max_pool_ceil_mode_and_same_padding():
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 4, padding="same"), nn.SiLU(), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.Dropout(0.5), nn.GELU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    image = _blob((27, 31), (9, 20), spacing=(0.8, 0.8))
    fast, full, info = _maps(image, net, (5, 6), overlap=0.4, batch=9)
    _same(fast, full)
    assert "layers 1-6 of 9" in info["incremental inference"]


def test_unsupported_layer_mid_way_falls_back_after_it():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.InstanceNorm3d(4, affine=True),
                        nn.Conv3d(4, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    image = _blob((12, 14, 10), (4, 7, 5))
    fast, full, info = _maps(image, net, (4, 4, 4), batch=5)
    _same(fast, full)
    assert "layers 1-2 of 7" in info["incremental inference"] and "then InstanceNorm3d" in info["incremental inference"]


class _Skip(nn.Module):
    """``x + f(x)``: a residual connection, which the chain cannot walk through."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


class _TinyUNet(nn.Module):
    """Encoder, decoder and a concatenated skip: not a chain at all."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2))
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        d = self.down(x)
        return self.out(torch.cat([d, self.mid(d)], 1))


class _Branchy(nn.Module):
    """A branch on the data: torch.fx cannot trace it, so the chain walker runs it in full."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return (y if y.mean() > 0 else -y).flatten(1)[:, :2]


def test_non_chain_models_through_the_traced_graph():
    torch.manual_seed(4)
    image = _blob((16, 20), (6, 12), spacing=(1.0, 1.0))
    unet = _TinyUNet().eval()
    assert chain_layers(unet) == [unet]
    fast, full, info = _maps(image, unet, (4, 4), batch=6, region=[(12.0, 6.0)], region_radius=4.0, target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("traced graph: 7 of 10 nodes")
    # a chain with a residual block inside
    residual = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), _Skip(nn.Conv2d(4, 4, 3, padding=1)),
                             nn.Conv2d(4, 2, 1)).eval()
    fast, full, info = _maps(image, residual, (4, 4), batch=6, region=[(12.0, 6.0)], region_radius=4.0,
                             target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("traced graph: 5 of 7 nodes")
    # a model fx cannot trace runs in full, as before
    fast, full, info = _maps(image, _Branchy().eval(), (4, 4), batch=6, target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("none (the model is not a chain")


def test_monai_densenet_and_unet_through_the_traced_graph():
    from monai.networks.nets import DenseNet, UNet

    torch.manual_seed(6)
    image = _blob((24, 28), (9, 17), spacing=(1.0, 1.0))
    dense = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=4, growth_rate=4,
                     block_config=(2, 2), bn_size=2).eval()
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    fast, full, info = _maps(image, dense, (6, 6), overlap=0.5, batch=7, target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("traced graph:")
    unet = UNet(2, 1, 2, (4, 8), (2,), num_res_units=1).eval()
    fast, full, info = _maps(image, unet, (6, 6), overlap=0.5, batch=7, region=[(17.0, 9.0)], region_radius=5.0,
                             target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("traced graph:")


def test_graph_refuses_in_place_changes_of_a_shared_tensor():
    from medlab.explain.incremental_graph import GraphIncrementalOcclusion

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.conv(x)
            return self.act(y) + y     # the in-place ReLU changes y before the sum reads it

    net = Shared().eval()
    with pytest.raises(ValueError, match="in place"):
        GraphIncrementalOcclusion(net, torch.rand(1, 1, 8, 8))
    fast, full, info = _maps(_blob((10, 12), (4, 6), spacing=(1.0, 1.0)), net, (3, 3), batch=4, target_class=0,
                             region=[(6.0, 4.0)], region_radius=3.0)
    _same(fast, full)
    assert info["incremental inference"].startswith("none")


def test_dense_chain_reaches_the_output_and_refine_composes():
    """A fully convolutional segmentation chain is local to its output: the regions are pasted
    into the output itself; the coarse-to-fine pass gives the same map both ways."""
    torch.manual_seed(5)
    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()
    image = _blob((18, 22), (8, 8), spacing=(1.0, 1.0))
    fast, full, info = _maps(image, seg, (5, 5), batch=4, region=[(8.0, 8.0)], region_radius=3.0, target_class=1)
    _same(fast, full)
    assert info["incremental inference"] == "layers 1-3 of 3 recomputed on the changed region only"
    fast, full, info = _maps(image, seg, (5, 5), batch=4, refine=0.4, region=[(8.0, 8.0)], region_radius=3.0,
                             target_class=1)
    _same(fast, full)
    assert info["boxes computed"] < info["boxes in the full computation"]


def test_hooked_model_and_a_box_too_large_run_in_full():
    net = _tiny3d()
    handle = net[0].register_forward_hook(lambda m, i, o: o * 1.0)
    try:
        inc = IncrementalOcclusion(net, torch.rand(1, 1, 8, 8, 8))
        assert inc.local_layers == 0 and inc.layers == [net]
    finally:
        handle.remove()
    image = _blob((10, 12, 14), (5, 6, 7))
    fast, full, info = _maps(image, net, (9, 11, 13), overlap=0.5, batch=3, target_class=1)
    _same(fast, full)
    assert info["incremental inference"].startswith("none (the box changes more than 80% of the first layer)")


def test_map_keeps_the_scans_geometry():
    net = _tiny3d()
    direction = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]).ravel()
    arr = _blob((12, 14, 16), (5, 6, 9)).array
    image = medlab.Image(arr, spacing=(0.9, 1.1, 2.0), origin=(-12.0, 30.5, 7.0), direction=direction)
    s, numbers = occlusion(image, net, mask_size=4.0, overlap=0.5, batch=11, target_class=0, sign="signed",
                           normalise="none")
    assert s.shape == image.shape
    assert np.allclose(s.spacing, image.spacing) and np.allclose(s.origin, image.origin)
    assert np.allclose(np.ravel(s.direction), np.ravel(image.direction))
    assert table_value(numbers, "incremental inference").startswith("layers 1-")
    assert np.abs(s.array).max() > 0


@pytest.mark.parametrize("name", ["medlab.explain.incremental", "medlab.explain.incremental_graph"])
def test_incremental_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("box", [(1, 1), (2, 3), (15, 1), (3, 19)])
def test_changes_that_vanish_and_whole_axis_boxes(box):
    """A 1x1 stride-2 convolution never reads odd voxels: a box there changes nothing further on;
    a ceil_mode pooling and a dilated strided convolution read past the last voxel."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 1, stride=2), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),
                        nn.MaxPool2d(2, ceil_mode=True), nn.Conv2d(3, 2, 2, stride=3, dilation=2), nn.Flatten(),
                        nn.Linear(2, 2)).eval()
    x = torch.rand(1, 1, 15, 19)
    starts = window_starts((15, 19), box, 0.5)
    inc = IncrementalOcclusion(net, x, max_share=1.0)
    assert inc.plan(starts, box).stop == 5
    copies = x.repeat(len(starts), 1, 1, 1)
    for i, s in enumerate(starts):
        copies[(i, slice(None), *[slice(int(a), int(a) + m) for a, m in zip(s, box)])] = 7.0
    with torch.no_grad():
        want = net(copies)
    got = inc.outputs(starts, box, 7.0)
    assert torch.allclose(got, want, rtol=0, atol=1e-6 * float(want.abs().max()))
