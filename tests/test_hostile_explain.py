"""Hostile input for medlab.explain's newer choices (the score followed, the automatic layer):
results stay finite and meaningful where a naive formula gives NaN or explodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import medlab
from medlab.explain import deletion_insertion, table_value

pytestmark = pytest.mark.usefixtures("torch_one_thread")


class _Logit(nn.Module):
    """One convolution, averaged, plus a fixed shift: the image's target logit is about ``shift``."""

    def __init__(self, shift: float):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        self.shift = shift

    def forward(self, x):
        return self.conv(x).mean((2, 3, 4)) + self.shift


@pytest.mark.parametrize("shift", [0.0, 1e-7])
def test_deletion_change_of_a_logit_near_zero_is_finite_and_in_logit_units(shift):
    """A logit of 0 (or nearly) gave a NaN (or a ratio of millions) 'relative change': the logit
    row is the change in logit units, the same whatever the logit's offset."""
    torch.manual_seed(0)
    img = medlab.Image(np.random.default_rng(0).random((8, 10, 12)).astype(np.float32))
    model = _Logit(0.0).eval()
    with torch.no_grad():
        base = float(model(torch.from_numpy(np.array(img.array))[None, None]))
    model.shift = shift - base                  # the image's logit is now `shift`
    _, numbers = deletion_insertion(img, model, img, target_class=0, steps=4, baseline="zero")
    change = table_value(numbers, "change of the target logit, top 5 % deleted")
    assert np.isfinite(change) and abs(change) < 10
    model.shift += 5.0                          # the same network 5 logits higher: the same change
    _, numbers = deletion_insertion(img, model, img, target_class=0, steps=4, baseline="zero")
    assert table_value(numbers, "change of the target logit, top 5 % deleted") == pytest.approx(change, abs=1e-5)


class _LogNet(nn.Module):
    """Takes the logarithm of its input: a zero baseline makes its logit -inf."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)

    def forward(self, x):
        return self.conv(torch.log(x)).mean((2, 3, 4))


def test_a_baseline_the_model_cannot_take_is_named_instead_of_infinite_areas():
    """Deletion towards zeros through a model taking log(x): the curves were inf and the table
    reported infinite areas; now an ImageError names the baseline to change."""
    from medlab import ImageError

    torch.manual_seed(0)
    img = medlab.Image((np.random.default_rng(1).random((8, 10, 12)) + 0.5).astype(np.float32))
    with pytest.raises(ImageError, match="'zero' baseline .* choose another baseline"):
        deletion_insertion(img, _LogNet().eval(), img, steps=4, baseline="zero")
    _, numbers = deletion_insertion(img, _LogNet().eval(), img, steps=4, baseline="mean")
    assert np.isfinite(table_value(numbers, "deletion AUC (lower is better)"))


def test_similarity_refuses_maps_it_cannot_compare():
    """Maps of different shapes raised numpy's errors (HOG even compared them), and a NaN made the
    rank correlation NaN, which the sanity verdict reads as 'the map became constant: passed'."""
    from medlab import ParameterError
    from medlab.explain.sanity import hog_similarity, similarity, spearman, ssim

    rng = np.random.default_rng(0)
    a, b = rng.random((16, 16)), rng.random((16, 17))
    for f in (similarity, spearman, ssim, hog_similarity):
        with pytest.raises(ParameterError, match="different shapes"):
            f(a, b)
    holed = a.copy()
    holed[3, 4] = np.nan
    for f in (similarity, spearman, ssim, hog_similarity):
        with pytest.raises(ParameterError, match="NaN or infinite"):
            f(holed, a)
    with pytest.raises(ParameterError, match="2D or 3D"):
        ssim(a[0], a[1])
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)


def test_random_labels_takes_a_bool_only():
    """random_labels='False' (a string from a form or a config file) silently loaded the twin
    trained on shuffled labels."""
    from medlab import ParameterError
    from medlab.explain import tumour_classifier

    for bad in ("False", 0, None):
        with pytest.raises(ParameterError, match="random_labels must be True or False"):
            tumour_classifier(random_labels=bad)
    assert tumour_classifier(random_labels=False).metrics.get("training_labels") != "shuffled (data randomisation)"


def test_coarse_to_fine_without_overlap_is_the_full_map_and_says_so():
    """With overlap=0 the coarse boxes are every box: the map is exact everywhere; it was
    reported exact only where refined (and any box computed is used, not only refined ones)."""
    from medlab.explain import occlusion
    from medlab.explain.network import build_classifier, classifier_config

    torch.manual_seed(0)
    net = build_classifier(classifier_config("cnn_classifier", channels=[2, 4], convs_per_block=1)).eval()
    img = medlab.Image(np.random.default_rng(1).random((8, 12, 12)).astype(np.float32), spacing=(2.0, 2.0, 2.0))
    full, _ = occlusion(img, net, mask_size=8, overlap=0.0, refine=0.0, normalise="none")
    quick, numbers = occlusion(img, net, mask_size=8, overlap=0.0, refine=0.5, normalise="none")
    assert table_value(numbers, "share of voxels computed exactly") == 1.0
    np.testing.assert_allclose(quick.array, full.array, atol=1e-6)


class _DictNet(nn.Module):
    """Returns its logits in a dict (as some model zoos do)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return {"logits": self.conv(x).mean((2, 3, 4))}


def test_a_model_returning_a_dict_is_refused_clearly():
    """A dict output raised a bare AttributeError ('dict' object has no attribute 'data_ptr')
    from the automatic layer search, before the check that names what medlab.explain needs."""
    from medlab import ImageError
    from medlab.explain import grad_cam, integrated_gradients, occlusion

    img = medlab.Image(np.random.default_rng(0).random((8, 10, 12)).astype(np.float32))
    for method, kw in ((grad_cam, {}), (integrated_gradients, {}), (occlusion, {"mask_size": 8})):
        with pytest.raises(ImageError, match=r"returned dict.*needs class scores \[batch, classes\]"):
            method(img, _DictNet().eval(), **kw)
