"""Quality numbers against known answers (constant regions with known noise, exact PSNR...)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from medlab import GeometryError, Image, ParameterError, metrics


@pytest.fixture
def two_regions():
    """Left half 100, right half 0, Gaussian noise sigma 4 (known SNR 25, CNR 25)."""
    rng = np.random.default_rng(0)
    clean = np.zeros((20, 80, 80), np.float32)
    clean[..., :40] = 100
    noisy = clean + rng.normal(0, 4.0, clean.shape).astype(np.float32)
    return Image(noisy, spacing=(0.7, 0.7, 2.0)), Image(clean, spacing=(0.7, 0.7, 2.0))


LEFT, RIGHT = ((0, 0, 0), (40, 80, 20)), ((40, 0, 0), (80, 80, 20))


def test_estimate_noise_sigma_wavelet_and_mask(two_regions):
    noisy, _ = two_regions
    assert metrics.estimate_noise_sigma(noisy) == pytest.approx(4.0, rel=0.08)
    assert metrics.estimate_noise_sigma(noisy, LEFT) == pytest.approx(4.0, rel=0.05)
    flat = Image(np.full((64, 64), 7.0))
    assert metrics.estimate_noise_sigma(flat) == pytest.approx(0.0, abs=1e-9)


def test_estimate_noise_sigma_rician_uses_foreground():
    rng = np.random.default_rng(3)
    clean = np.zeros((8, 96, 96), np.float32)
    clean[:, 24:72, 24:72] = 1.0
    s = 0.05
    mag = np.hypot(clean + rng.normal(0, s, clean.shape), rng.normal(0, s, clean.shape))
    img = Image(mag.astype(np.float32))
    whole = metrics.estimate_noise_sigma(img)
    fg = metrics.estimate_noise_sigma(img, rician=True)
    assert abs(fg - s) < abs(whole - s)
    assert fg == pytest.approx(s, rel=0.1)


def test_snr_two_region_and_single_region(two_regions):
    noisy, _ = two_regions
    assert metrics.snr(noisy, LEFT, RIGHT) == pytest.approx(25.0, rel=0.05)
    assert metrics.snr(noisy, LEFT) == pytest.approx(25.0, rel=0.05)
    assert metrics.snr(noisy, LEFT, RIGHT, rayleigh=True) == pytest.approx(25.0 * 0.655, rel=0.05)


def test_cnr_pooled_and_background(two_regions):
    noisy, _ = two_regions
    a = np.zeros(noisy.shape, bool)
    a[:, :, :40] = True
    assert metrics.cnr(noisy, a, ~a) == pytest.approx(25.0, rel=0.05)
    assert metrics.cnr(noisy, LEFT, RIGHT, background=RIGHT) == pytest.approx(25.0, rel=0.05)


def test_region_forms_agree(two_regions):
    noisy, _ = two_regions
    box = metrics.region_mask(noisy, LEFT)
    as_image = noisy.with_array(box, kind="label")
    sl = np.s_[0:20, 0:80, 0:40]
    for form in (box, as_image, sl):
        assert np.array_equal(metrics.region_mask(noisy, form), box)
    with pytest.raises(ParameterError, match="empty"):
        metrics.snr(noisy, ((90, 0, 0), (95, 5, 5)))
    other = Image(box.astype(np.uint8), spacing=(1, 1, 1))
    with pytest.raises(GeometryError, match="grid"):
        metrics.snr(noisy, other)
    with pytest.raises(ParameterError, match="signal"):
        metrics.snr(noisy, "left half")


def test_psnr_exact_and_errors():
    ref = np.zeros((16, 16))
    ref[0, 0] = 2.0
    assert metrics.psnr(ref + 0.2, ref) == pytest.approx(20.0)  # range 2, rmse 0.2
    assert metrics.psnr(ref + 0.2, ref, data_range=20.0) == pytest.approx(40.0)
    assert metrics.psnr(ref, ref) == float("inf")
    with pytest.raises(ParameterError, match="data_range"):
        metrics.psnr(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(GeometryError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((5, 4)))


def test_ssim_matches_skimage(two_regions):
    from skimage.metrics import structural_similarity

    noisy, clean = two_regions
    ours = metrics.ssim(noisy, clean)
    theirs = structural_similarity(noisy.array.astype(float), clean.array.astype(float), data_range=100.0)
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert metrics.ssim(clean, clean) == pytest.approx(1.0)
    thin = Image(np.random.default_rng(0).random((3, 32, 32)))
    assert 0.99 < metrics.ssim(thin, thin) <= 1.0


def test_edge_preservation_orders_blur_and_noise():
    ref = np.zeros((40, 64, 64))
    ref[10:30, 16:48, 16:48] = 1.0
    assert metrics.edge_preservation(ref, ref) == pytest.approx(1.0)
    blurred = [metrics.edge_preservation(ndimage.gaussian_filter(ref, s), ref) for s in (0.5, 1, 2, 4)]
    assert all(a > b for a, b in itertools.pairwise(blurred))
    rng = np.random.default_rng(0)
    noisy = [metrics.edge_preservation(ref + rng.normal(0, s, ref.shape), ref) for s in (0.02, 0.1, 0.3)]
    assert all(a > b for a, b in itertools.pairwise(noisy))
    with pytest.raises(Exception, match="no edges"):
        metrics.edge_preservation(np.ones((8, 8)), np.ones((8, 8)))


def test_dice_known_values():
    a = np.zeros((10, 10), bool)
    a[:5] = True
    b = np.zeros((10, 10), bool)
    b[:, :5] = True
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.dice(a, a) == 1.0
    assert metrics.dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    lab = np.zeros((10, 10), np.int16)
    lab[:5] = 1
    lab[5:] = 2
    assert metrics.dice(lab, lab * (lab == 1), label=1) == 1.0
    assert metrics.dice(lab, lab * (lab == 1), label=2) == 0.0
    with pytest.raises(GeometryError):
        metrics.dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(GeometryError):
        metrics.dice(Image(a), Image(a, spacing=(2, 2)))


def test_auto_regions_finds_three_classes_away_from_borders(two_regions):
    a = np.zeros((60, 60))
    a[10:50, 10:50] = 1
    a[20:40, 20:40] = 2
    bg, low, high = metrics.auto_regions(a)
    assert high.sum() == 18 * 18 and not (bg & low).any()
    assert metrics.auto_regions(np.zeros((8, 8))) is None
    noisy, _ = two_regions
    assert metrics.auto_regions(noisy) is not None
