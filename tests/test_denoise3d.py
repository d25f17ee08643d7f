"""3D non-local means (issue 7 section 2) and the NaN/overflow guards of the denoisers (section 1)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medlab import Image, ImageError, ParameterError, metrics
from medlab import preprocess as pp
from medlab.preprocess import denoise
from medlab.stage import progress_to


def _rician(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)


def _mr(array: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Image:
    return Image(array, spacing, metadata={"modality": "MR"})


@pytest.fixture
def t1_crop(shared):
    """A 64^3 crop of the real T1 (chris_t1, 0.88 mm), scaled to [0, 1]: reference and Rician noise 5 %."""
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(shared("noncommercial/chris_t1.nii.gz")))).astype(np.float32)
    z, y, x = (np.array(a.shape) - 64) // 2
    c = a[z:z + 64, y:y + 64, x:x + 64]
    c = (c - c.min()) / (c.max() - c.min())
    return c, _mr(_rician(c, 0.05), (0.88, 0.88, 0.88))


# ----------------------------------------------------------------------------- the 3D filter
def _brute_force_nlm(noisy: np.ndarray, sigma: float, *, beta: float, patch_radius: int, axis: int) -> np.ndarray:
    """The estimator written out directly: every offset in both directions, every block voxel
    and patch voxel as its own shifted array (no box sums, no symmetry), reflect padding."""
    cube = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
    ring = [o for o in itertools.product((-2, 0, 2), repeat=3) if o[axis] == 0 and o != (0, 0, 0)]
    pad = 2 + patch_radius + 1 + 2
    p = np.pad(noisy.astype(np.float64), pad, mode="reflect")
    shape = noisy.shape

    def at(shift):
        return p[tuple(slice(pad + s, pad + s + n) for s, n in zip(shift, shape))]

    near = range(-patch_radius, patch_radius + 1)
    num = np.zeros(shape)
    den = np.zeros(shape)
    wmax = np.zeros(shape)
    for o in cube + ring:
        wt = np.zeros(shape)
        for b in itertools.product((-1, 0, 1), repeat=3):  # block voxel
            d = np.zeros(shape)
            for q in itertools.product(near, repeat=3):  # patch voxel
                s = tuple(bi + qi for bi, qi in zip(b, q))
                d += (at(s) - at(tuple(si + oi for si, oi in zip(s, o)))) ** 2
            wt += np.exp(-d / len(near) ** 3 / (2 * beta * sigma**2))
        num += wt * at(o) ** 2
        den += wt
        wmax = np.maximum(wmax, wt)
    est = (num + wmax * noisy.astype(np.float64) ** 2) / (den + wmax) - 2 * sigma**2
    return np.sqrt(np.maximum(est, 0))


@pytest.mark.parametrize("axis", [0, 2])
def test_3d_filter_equals_the_estimator_written_out(axis):
    rng = np.random.default_rng(3)
    clean = np.zeros((7, 8, 9), np.float32)
    clean[2:6, 3:7, 1:5] = 1.0
    noisy = _rician(clean, 0.2, seed=int(rng.integers(100)))
    with progress_to(None):
        fast = denoise._nlm3d(noisy, 0.2, h=1.0, patch_radius=1, rician=True, axis=axis)
    slow = _brute_force_nlm(noisy, 0.2, beta=denoise._BETA, patch_radius=1, axis=axis)
    np.testing.assert_allclose(fast, slow, atol=2e-5)


def test_3d_is_the_default_for_volumes_and_beats_the_slice_filter(t1_crop):
    clean, noisy = t1_crop
    out = pp.nlm_denoise(noisy)
    np.testing.assert_array_equal(out.array, pp.nlm_denoise(noisy, method="3d").array)
    assert out.dtype == np.float32 and out.same_grid(noisy)
    slices = pp.nlm_denoise(noisy, method="slices")
    assert metrics.psnr(out, clean, data_range=1.0) > metrics.psnr(slices, clean, data_range=1.0) + 0.5


def test_3d_is_at_least_as_good_as_dipy_on_a_real_t1(t1_crop):
    """The bar of issue 7, on a small crop: dipy's blockwise NLM, patch radius 1, block radius 2,
    Rician, sigma from its own estimate (the full comparison is benchmarks/bench_denoise_real.py)."""
    from dipy.denoise.nlmeans import nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma

    clean, noisy = t1_crop
    a = noisy.array
    ref = nlmeans(a, float(estimate_sigma(a)[0]), patch_radius=1, block_radius=2, rician=True, num_threads=1)
    ours = metrics.psnr(pp.nlm_denoise(noisy), clean, data_range=1.0)
    assert ours >= metrics.psnr(ref, clean, data_range=1.0)


def test_rician_floor_removed_and_low_snr_signal_kept():
    """Averaging magnitudes converges to the Rice mean; the second-moment correction undoes it."""
    sigma = 0.1
    clean = np.zeros((24, 36, 32), np.float32)
    clean[:, 12:24] = 2 * sigma  # low SNR: its magnitude mean is 0.227, 13 % too high
    clean[:, 24:] = 1.0
    noisy = _mr(_rician(clean, sigma, seed=1))
    out = pp.nlm_denoise(noisy).array
    assert float(noisy.array[:, 2:10].mean()) > 1.2 * sigma  # the Rayleigh floor, 1.25 sigma
    assert float(out[:, 2:10].mean()) < 0.45 * sigma
    assert float(out[:, 14:22].mean()) == pytest.approx(2 * sigma, rel=0.05)
    assert float(out[:, 26:].mean()) == pytest.approx(1.0, rel=0.01)
    gaussian = pp.nlm_denoise(noisy, noise_model="gaussian").array
    assert float(gaussian[:, 14:22].mean()) > 1.1 * 2 * sigma  # without the correction the bias stays


def test_auto_uses_the_slice_filter_on_thick_slices():
    rng = np.random.default_rng(0)
    arr = (rng.normal(1, 0.1, (6, 40, 40))).astype(np.float32)
    thick = _mr(arr, (0.8, 0.8, 6.5))
    np.testing.assert_array_equal(pp.nlm_denoise(thick).array, pp.nlm_denoise(thick, method="slices").array)
    near_iso = _mr(arr, (0.8, 0.8, 3.0))
    np.testing.assert_array_equal(pp.nlm_denoise(near_iso).array, pp.nlm_denoise(near_iso, method="3d").array)


def test_one_voxel_thick_volume_is_filtered_as_its_slice():
    rng = np.random.default_rng(0)
    sl = (rng.normal(1, 0.1, (40, 48))).astype(np.float32)
    flat = pp.nlm_denoise(Image(sl)).array
    for shape in ((1, 40, 48), (40, 1, 48), (40, 48, 1)):
        vol = pp.nlm_denoise(Image(sl.reshape(shape))).array
        assert vol.shape == shape
        np.testing.assert_allclose(vol.reshape(sl.shape), flat, atol=1e-6)


def test_3d_filter_reports_progress_and_leaves_input_unchanged():
    rng = np.random.default_rng(0)
    arr = rng.normal(1, 0.1, (20, 24, 28)).astype(np.float32)
    before = arr.copy()
    seen: list[float] = []
    with progress_to(lambda f, m: seen.append(f)):
        pp.nlm_denoise(_mr(arr))
    np.testing.assert_array_equal(arr, before)
    assert len(seen) >= 10 and seen[-1] == 1.0


def test_3d_filter_stops_on_cancel_and_passes_on_worker_errors(monkeypatch):
    import threading

    from medlab import Cancelled

    img = _mr(np.random.default_rng(0).normal(1, 0.1, (32, 24, 28)).astype(np.float32))
    ev = threading.Event()
    seen: list[float] = []

    def cancel_after_first(fraction, message):
        seen.append(fraction)
        ev.set()

    with progress_to(cancel_after_first, cancel=ev), pytest.raises(Cancelled):
        pp.nlm_denoise(img)
    assert 0 < max(seen) < 1

    def broken(*args, **kwargs):
        raise MemoryError("no room for the patch distances")

    monkeypatch.setattr(denoise, "_nlm_offset", broken)
    with pytest.raises(MemoryError, match="patch distances"):
        pp.nlm_denoise(img)


def test_bad_method_is_named():
    with pytest.raises(ParameterError, match="method"):
        pp.nlm_denoise(Image(np.zeros((8, 8, 8), np.float32)), method="4d")


# ----------------------------------------------------------------------------- issue 7 section 1
@pytest.mark.parametrize("shape", [(1, 32, 32), (32, 1, 32), (32, 32, 1)])
@pytest.mark.parametrize("name", ["bilateral_filter", "nlm_denoise"])
def test_one_voxel_thick_axis_gives_finite_smoothing(name, shape):
    rng = np.random.default_rng(0)
    img = Image(rng.normal(100, 5, shape).astype(np.float32))
    out = getattr(pp, name)(img).array
    assert np.isfinite(out).all() and out.std() < 0.8 * img.array.std()


@pytest.mark.parametrize("name", ["bilateral_filter", "nlm_denoise"])
def test_too_thin_an_image_is_refused_by_name(name):
    with pytest.raises(ImageError, match=name):
        getattr(pp, name)(Image(np.ones((8, 1, 1), np.float32)))


@pytest.mark.parametrize("name", ["bilateral_filter", "nlm_denoise"])
def test_unestimable_noise_is_an_error_not_a_nan_image(name, monkeypatch):
    import medlab.metrics

    monkeypatch.setattr(medlab.metrics, "estimate_noise_sigma", lambda *a, **k: float("nan"))
    img = Image(np.random.default_rng(0).normal(100, 5, (16, 16, 16)).astype(np.float32))
    with pytest.raises(ImageError, match="noise level"):
        getattr(pp, name)(img)


FILTERS = ["gaussian_smooth", "anisotropic_diffusion", "bilateral_filter", "nlm_denoise"]


@pytest.mark.parametrize("name", FILTERS)
def test_values_beyond_float32_are_refused_with_the_range(name):
    a = np.full((12, 12, 12), 1e39)
    a[0, 0, 0] = 0.0
    with pytest.raises(ImageError, match=r"3\.4e\+38"):
        getattr(pp, name)(Image(a))


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_huge_or_tiny_values_give_the_scaled_result(name, scale):
    """The filters square intensities: near float32's limits they used to return all NaN."""
    rng = np.random.default_rng(0)
    a = rng.normal(100, 5, (12, 14, 16))
    a[3:9, 4:10, 5:12] += 50
    ref = getattr(pp, name)(Image(a)).array
    out = getattr(pp, name)(Image(a * scale)).array.astype(np.float64) / scale
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
