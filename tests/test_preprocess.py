"""Preprocessing stages: geometry kept (every registered stage), faithful results, real images."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import medlab
from medlab import Cancelled, Image, ImageError, ParameterError, metrics
from medlab import preprocess as pp
from medlab.stage import progress_to

SPACING = (0.8, 0.9, 3.0)
ORIGIN = (-20.0, 12.5, 7.0)
MARK = (22, 9, 5)  # (x, y, z) index of a bright marker


def _oblique(deg: float = 20.0) -> np.ndarray:
    t = np.deg2rad(deg)
    rz = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    return rz @ rx


def _phantom(shape=(12, 40, 44), noise=0.04, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy piecewise-constant head-like phantom in [0, 1] (Rician noise) and its clean version."""
    _, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    clean = np.zeros(shape, np.float32)
    clean[(x**2 + y**2) < 0.8] = 0.5
    clean[(x**2 + (y / 0.8) ** 2) < 0.35] = 0.8
    clean[((x - 0.2) ** 2 + y**2) < 0.02] = 1.0
    rng = np.random.default_rng(seed)
    noisy = np.hypot(clean + rng.normal(0, noise, shape), rng.normal(0, noise, shape)).astype(np.float32)
    return noisy, clean


@pytest.fixture(scope="module")
def oblique_image() -> Image:
    """Anisotropic, oblique, off-origin MR-like volume with a bright marker voxel block."""
    noisy, _ = _phantom()
    x, y, z = MARK
    noisy[z, y - 1:y + 2, x - 1:x + 2] = 3.0
    return Image(noisy, SPACING, ORIGIN, _oblique(), metadata={"modality": "MR"})


def _extra_kwargs(name: str, image: Image) -> dict:
    """Parameters a stage needs beyond its defaults for the generic geometry test."""
    if name == "resample_to":
        ref = Image(np.zeros((10, 30, 36)), (1.0, 1.0, 3.5), image.origin, image.direction)
        return {"reference": ref}
    if name == "resample":
        return {"spacing": (1.0, 1.1, 2.5)}
    if name == "crop_box":
        return {"start": (4,) * image.ndim, "end": tuple(s - 3 for s in image.size)}
    if name == "crop_to_foreground":
        return {"margin": 2.0}
    return {}


def _outputs(result) -> list[Image]:
    return list(result) if isinstance(result, tuple) else [result]


def _assert_same_geometry(out: Image, ref: Image) -> None:
    assert out.size == ref.size
    np.testing.assert_allclose(out.spacing, ref.spacing, rtol=1e-9)
    np.testing.assert_allclose(out.origin, ref.origin, atol=1e-9)
    np.testing.assert_allclose(out.direction, ref.direction, atol=1e-12)


def _marker_point(img: Image) -> np.ndarray:
    """Physical centre (mm) of the brightest voxels."""
    a = np.asarray(img.array, float)
    zyx = np.argwhere(a >= a.max() - 1e-6 * abs(a.max())).mean(axis=0)
    return img.index_to_physical(zyx[::-1])


ALL_STAGES = medlab.stages("preprocess")


def test_all_expected_stages_are_registered():
    names = {s.name for s in ALL_STAGES}
    assert {"nlm_denoise", "anisotropic_diffusion", "gaussian_smooth", "median_filter", "bilateral_filter",
            "window_level", "histogram_equalization", "clahe", "normalize_intensity", "resample", "resample_to",
            "crop_to_foreground", "crop_box", "pad", "reorient", "n4_bias_correction"} <= names
    for spec in ALL_STAGES:
        assert "Examples" in spec.doc, f"{spec.name} docstring lacks an Examples section"


@pytest.mark.parametrize("spec", ALL_STAGES, ids=lambda s: s.name)
def test_stage_keeps_geometry_3d(spec, oblique_image):
    """Every preprocess stage, at its defaults, on an oblique anisotropic image."""
    img = oblique_image
    before = img.array.copy()
    result = spec.func(img, **_extra_kwargs(spec.name, img))
    outs = _outputs(result)
    assert len(outs) == len(spec.outputs)
    assert np.array_equal(img.array, before), "the input was modified"
    for out in outs:
        assert isinstance(out, Image)
        assert np.all(np.isfinite(out.array))
        if not spec.resamples:
            _assert_same_geometry(out, img)
        assert out.metadata.get("modality") == "MR"
    out = outs[0]
    if spec.resamples:
        if spec.name != "reorient":
            np.testing.assert_allclose(out.direction, img.direction, atol=1e-9)
        # the marker stays at the same physical point (within a voxel diagonal)
        tol = float(np.linalg.norm(np.maximum(img.spacing, out.spacing)))
        assert np.linalg.norm(_marker_point(out) - _marker_point(img)) < tol


@pytest.mark.parametrize("spec", [s for s in ALL_STAGES if 2 in s.dims], ids=lambda s: s.name)
def test_stage_keeps_geometry_2d(spec, oblique_image):
    sl = oblique_image.array[MARK[2]]
    img2 = Image(sl, (0.7, 0.6), (3.0, -4.0), [[0.8, -0.6], [0.6, 0.8]], metadata={"modality": "MR"})
    if spec.name == "resample_to":
        kwargs = {"reference": Image(np.zeros((30, 30)), (1.0, 1.0), img2.origin, img2.direction)}
    elif spec.name == "resample":
        kwargs = {"spacing": (1.0, 1.0)}
    else:
        kwargs = _extra_kwargs(spec.name, img2)
    out = _outputs(spec.func(img2, **kwargs))[0]
    assert out.ndim == 2
    if not spec.resamples:
        _assert_same_geometry(out, img2)
    else:
        np.testing.assert_allclose(out.direction, img2.direction, atol=1e-9)


# ----------------------------------------------------------------------------- denoising
@pytest.fixture(scope="module")
def brain():
    return medlab.data.brain_mri(size=(96, 96, 24), spacing=(2.0, 2.0, 2.5), noise=0.05, seed=1)


def test_nlm_improves_psnr_ssim_and_removes_rician_floor(brain):
    noisy, clean = brain.t1, brain.clean["t1"]
    out = pp.nlm_denoise(noisy)
    assert metrics.psnr(out, clean) > metrics.psnr(noisy, clean) + 5
    assert metrics.ssim(out, clean) > metrics.ssim(noisy, clean) + 0.2
    air = brain.labels.array == 0
    assert float(out.array[air].mean()) < 0.3 * float(noisy.array[air].mean())
    gauss = pp.nlm_denoise(noisy, noise_model="gaussian")
    assert metrics.psnr(gauss, clean) > metrics.psnr(noisy, clean) + 0.5
    assert metrics.psnr(out, clean) > metrics.psnr(gauss, clean)


def test_nlm_beats_gaussian_on_edges(brain):
    noisy, clean = brain.t1, brain.clean["t1"]
    nlm = pp.nlm_denoise(noisy, noise_model="gaussian")
    gauss = pp.gaussian_smooth(noisy, sigma=1.5)
    assert metrics.edge_preservation(nlm, clean) > metrics.edge_preservation(gauss, clean)


def test_nlm_slice_preview_equals_volume_slice(brain):
    # the slice filter on a volume (3D volumes default to the 3D filter since issue 7)
    vol = pp.nlm_denoise(brain.t1, noise_model="gaussian", h=1.0, method="slices")
    k = 12
    sl = brain.t1.array[k]
    img2 = Image(sl, brain.t1.spacing[:2], brain.t1.origin[:2])
    # same sigma -> same filter: compare with the volume's sigma forced through h
    s_vol = metrics.estimate_noise_sigma(brain.t1)
    s_sl = metrics.estimate_noise_sigma(img2)
    prev = pp.nlm_denoise(img2, noise_model="gaussian", h=float(np.clip(s_vol / s_sl, 0.2, 3.0)))
    diff = np.abs(prev.array - vol.array[k])
    assert np.percentile(diff, 99) < 0.02


def test_nlm_across_slices_is_at_least_as_good(brain):
    clean = brain.clean["t1"]
    a = metrics.psnr(pp.nlm_denoise(brain.t1, method="slices"), clean)
    b = metrics.psnr(pp.nlm_denoise(brain.t1, method="slices", across_slices=True), clean)
    assert b > a - 0.2


def test_rician_unbias_inverts_the_rice_mean():
    from medlab.preprocess.denoise import rician_unbias

    rng = np.random.default_rng(0)
    for a in (0.0, 0.5, 2.0, 8.0, 60.0):
        m = np.hypot(a + rng.normal(0, 1, 400_000), rng.normal(0, 1, 400_000)).mean()
        assert float(rician_unbias(np.array([m]), 1.0)[0]) == pytest.approx(a, abs=0.05 + 0.01 * a)


@pytest.fixture(scope="module")
def gaussian_noise_phantom():
    _, clean = _phantom(shape=(16, 64, 64))
    rng = np.random.default_rng(2)
    noisy = clean + rng.normal(0, 0.08, clean.shape).astype(np.float32)
    geo = {"spacing": (1.0, 1.0, 1.5)}
    return Image(noisy, **geo), Image(clean, **geo)


@pytest.mark.parametrize("name, kwargs", [
    ("nlm_denoise", {}), ("anisotropic_diffusion", {"iterations": 10}), ("anisotropic_diffusion", {"method": "gradient"}),
    ("gaussian_smooth", {"sigma": 1.0}), ("median_filter", {}), ("bilateral_filter", {}),
])
def test_denoisers_improve_psnr(name, kwargs, gaussian_noise_phantom):
    noisy, clean = gaussian_noise_phantom
    out = getattr(pp, name)(noisy, **kwargs)
    assert metrics.psnr(out, clean, data_range=1.0) > metrics.psnr(noisy, clean, data_range=1.0) + 3


@pytest.mark.parametrize("method", ["curvature", "gradient"])
def test_diffusion_matches_simpleitk_filters(method, gaussian_noise_phantom):
    """The vectorised scheme equals SimpleITK's filter, in 3D (anisotropic) and 2D."""
    import SimpleITK as sitk

    noisy, _ = gaussian_noise_phantom
    filt = sitk.CurvatureAnisotropicDiffusion if method == "curvature" else sitk.GradientAnisotropicDiffusion
    aniso = Image(noisy.array, spacing=(0.8, 0.9, 2.5))
    sl = Image(noisy.array[5] * 100, spacing=(1.2, 1.5))
    for img in (noisy, aniso, sl):
        ours = pp.anisotropic_diffusion(img, method=method, iterations=4, conductance=1.5)
        dt = min(min(img.spacing), 1.0) / 16
        ref = sitk.GetArrayFromImage(filt(img.to_sitk(), dt, 1.5, 1, 4))
        np.testing.assert_allclose(ours.array, ref, atol=1e-5 * float(np.abs(ref).max()))


def test_gaussian_sigma_is_in_mm():
    a = np.zeros((9, 61, 61), np.float32)
    a[4, 30, 30] = 1
    out = pp.gaussian_smooth(Image(a, spacing=(0.5, 0.5, 0.5)), sigma=2.0).array[4, 30]
    var_vox = float((out * (np.arange(61) - 30) ** 2).sum() / out.sum())
    assert np.sqrt(var_vox) * 0.5 == pytest.approx(2.0, rel=0.1)


def test_median_radius_in_mm_depends_on_spacing():
    """1 mm on 1 x 1 x 5 mm voxels is a 3 x 3 x 1 box: a rod along z survives it, not a 3x3x3 box."""
    rod = np.zeros((9, 9, 9), np.int16)
    rod[:, 3:6, 4] = 100  # 3 voxels wide in y, 1 in x, along all of z
    img = Image(rod, spacing=(1.0, 1.0, 5.0))
    in_mm = pp.median_filter(img, radius=1.0, radius_unit="mm")
    in_voxels = pp.median_filter(img, radius=1.0)
    assert in_mm.dtype == np.int16
    assert int(in_mm.array[4, 4, 4]) == 0 and int(in_voxels.array[4, 4, 4]) == 0  # 3 of 9 / 9 of 27: removed
    slab = np.zeros((9, 9, 9), np.int16)
    slab[4] = 100  # one z-slice: kept by the 3x3x1 box (1 mm), removed by 3x3x3 (9 of 27)
    img = Image(slab, spacing=(1.0, 1.0, 5.0))
    assert int(pp.median_filter(img, radius=1.0, radius_unit="mm").array[4, 4, 4]) == 100
    assert int(pp.median_filter(img, radius=1.0).array[4, 4, 4]) == 0


# ----------------------------------------------------------------------------- contrast
def test_window_level_presets_and_outputs():
    ct = Image(np.array([[-1200.0, -600.0, 40.0, 3000.0]]), metadata={"modality": "CT", "units": "HU"})
    lung = pp.window_level(ct, preset="lung").array[0]
    np.testing.assert_allclose(lung, [0.1, 0.5, 1390 / 1500, 1.0], atol=1e-6)
    clip = pp.window_level(ct, window=400, level=40, output="clip")
    np.testing.assert_allclose(clip.array[0], [-160, -160, 40, 240])
    assert clip.metadata["units"] == "HU"
    assert "units" not in pp.window_level(ct, preset="brain").metadata


def test_histogram_equalization_is_uniform():
    img = Image(np.random.default_rng(0).exponential(size=(32, 64, 64)).astype(np.float32))
    out = pp.histogram_equalization(img).array
    assert np.histogram(out, bins=4, range=(0, 1))[0].std() / out.size < 0.02


def test_clahe_3d_matches_skimage_and_kernel_is_in_mm():
    from skimage.exposure import equalize_adapthist

    t1 = medlab.data.brain_mri(size=(64, 64, 24), spacing=(1.5, 1.5, 3.0)).t1
    out = pp.clahe(t1, kernel_size=24.0, clip_limit=0.02)
    a = t1.array
    ref = equalize_adapthist((a - a.min()) / (a.max() - a.min()), kernel_size=(8, 16, 16), clip_limit=0.02)
    np.testing.assert_allclose(out.array, ref, atol=1e-5)
    assert 0 <= out.array.min() and out.array.max() <= 1


def test_normalize_intensity_zscore_and_percentile(brain):
    from medlab.preprocess._common import foreground_mask

    t1 = brain.t1
    z = pp.normalize_intensity(t1).array[foreground_mask(t1.array)]
    assert abs(float(z.mean())) < 1e-3 and float(z.std()) == pytest.approx(1.0, abs=1e-3)
    p = pp.normalize_intensity(t1, method="percentile", region="whole", lower=2, upper=98, clip=True).array
    assert p.min() == 0 and p.max() == 1
    assert np.mean(p == 1) == pytest.approx(0.02, abs=0.01)
    with pytest.raises(ParameterError, match="lower"):
        pp.normalize_intensity(t1, method="percentile", lower=50, upper=50)


# ----------------------------------------------------------------------------- geometry
def test_resample_label_map_never_blends(oblique_image):
    lab = oblique_image.with_array((oblique_image.array > 0.6).astype(np.uint8) * 3, kind="label",
                                   labels={3: "tissue"})
    for interp in ("linear", "bspline", "nearest", "label_gaussian"):
        out = pp.resample(lab, spacing=(0.5, 0.5, 1.0), interpolator=interp)
        assert out.is_label and set(np.unique(out.array)) <= {0, 3}
        assert out.labels[3].name == "tissue"
    with pytest.raises(ParameterError, match="label"):
        pp.resample(oblique_image, spacing=1.0, interpolator="label_gaussian")


def test_resample_to_a_flipped_grid_is_exact(oblique_image):
    flipped = pp.reorient(oblique_image, orientation="RAS")
    out = pp.resample_to(oblique_image, reference=flipped, interpolator="nearest")
    assert out.same_grid(flipped)
    np.testing.assert_allclose(out.array, flipped.array, atol=1e-6)
    far = Image(np.zeros((4, 4, 4)), origin=(1e4, 1e4, 1e4))
    with pytest.raises(medlab.GeometryError, match="overlap"):
        pp.resample_to(oblique_image, reference=far)


def test_reorient_round_trip_and_physical_points(oblique_image):
    ras = pp.reorient(oblique_image, orientation="RAS")
    assert ras.orientation == "RAS"
    back = pp.reorient(ras, orientation=oblique_image.orientation)
    assert back.same_grid(oblique_image) and np.array_equal(back.array, oblique_image.array)


def test_pad_then_crop_box_gives_the_input_back(oblique_image):
    padded = pp.pad(oblique_image, width=3)
    assert padded.size == tuple(s + 6 for s in oblique_image.size)
    assert float(padded.array[0, 0, 0]) == float(oblique_image.array.min())
    back = pp.crop_box(padded, start=(3, 3, 3), end=tuple(s + 3 for s in oblique_image.size))
    assert back.same_grid(oblique_image) and np.array_equal(back.array, oblique_image.array)


def test_crop_box_mm_matches_index():
    img = Image(np.arange(10 * 20 * 30, dtype=np.float32).reshape(10, 20, 30), spacing=(2, 2, 2), origin=(-10, 0, 0))
    mm = pp.crop_box(img, start=(0, 0, 0), end=(10, 20, 8), units="mm")
    idx = pp.crop_box(img, start=(5, 0, 0), end=(11, 11, 5))
    assert mm.same_grid(idx) and np.array_equal(mm.array, idx.array)
    with pytest.raises(ParameterError, match="overlap"):
        pp.crop_box(img, start=(40, 0, 0), end=(50, 5, 5))


def test_crop_to_foreground_keeps_margin():
    a = np.zeros((20, 40, 40), np.float32)
    a[5:10, 10:20, 12:30] = 1
    img = Image(a, spacing=(1.0, 1.0, 2.0))
    out = pp.crop_to_foreground(img, margin=4.0)
    assert out.size == (18 + 8, 10 + 8, 5 + 4)
    np.testing.assert_allclose(out.origin, img.index_to_physical((8, 6, 3)))
    with pytest.raises(ImageError, match="foreground"):
        pp.crop_to_foreground(Image(np.zeros((8, 8))))


# ----------------------------------------------------------------------------- bias field
def test_n4_recovers_the_bias_field():
    p = medlab.data.brain_mri(size=(64, 64, 24), spacing=(3.0, 3.0, 4.0), noise=0.01, bias=0.3, seed=2,
                              contrasts=("t1",))
    corrected, field = pp.n4_bias_correction(p.t1, iterations=20, levels=3, shrink_factor=2)
    wm = p.labels.array == p.label_value("white matter")

    def cv(a):
        return float(a[wm].std() / a[wm].mean())

    assert cv(corrected.array) < 0.7 * cv(p.t1.array)
    true = p.bias_field.array[wm]
    assert np.corrcoef(field.array[wm], true)[0, 1] > 0.8
    np.testing.assert_allclose(corrected.array * field.array, p.t1.array, rtol=1e-4, atol=1e-6)


def test_n4_refuses_non_positive_images():
    with pytest.raises(ImageError, match="positive"):
        pp.n4_bias_correction(Image(-np.ones((16, 16, 16), np.float32)))


# ----------------------------------------------------------------------------- declaration, progress
def test_bad_parameters_are_named():
    img = Image(np.zeros((16, 16), np.float32))
    with pytest.raises(ParameterError, match="patch_size"):
        pp.nlm_denoise(img, patch_size=4)
    with pytest.raises(ParameterError, match="preset"):
        pp.window_level(img, preset="liver")
    with pytest.raises(ParameterError, match="spacing"):
        pp.resample(img, spacing=(1.0, 2.0, 3.0))
    with pytest.raises(ImageError, match="3D"):
        pp.reorient(img)


def test_progress_and_cancel(brain):
    seen: list[float] = []
    with progress_to(lambda f, msg: seen.append(f)):
        pp.nlm_denoise(brain.t1)
        pp.anisotropic_diffusion(brain.t1, iterations=2)
    assert len(seen) > 10 and max(seen) == 1.0
    ev = threading.Event()
    ev.set()
    for fn in (pp.nlm_denoise, pp.anisotropic_diffusion, pp.n4_bias_correction, pp.clahe):
        with progress_to(lambda f, m: None, cancel=ev), pytest.raises(Cancelled):
            fn(brain.t1)


# ----------------------------------------------------------------------------- real images
def _load(path) -> Image:
    import SimpleITK as sitk

    return Image.from_sitk(sitk.ReadImage(str(path)), metadata={"modality": "MR"})


def _rician(img: Image, sigma: float, seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    a = img.array
    return img.with_array(np.hypot(a + rng.normal(0, sigma, a.shape), rng.normal(0, sigma, a.shape)).astype(np.float32))


@pytest.fixture
def real_brain(shared):
    """brain1 (0.78 x 0.78 x 6.5 mm, LPS), cropped in-plane, scaled to [0, 1]."""
    img = _load(shared("labels/brain1_image.nrrd"))
    img = pp.crop_box(img, start=(64, 64, 6), end=(192, 192, 18))
    a = img.array.astype(np.float32)
    return img.with_array(np.clip(a / np.percentile(a, 99.9), 0, 1))


@pytest.fixture
def real_t1(shared):
    """chris_t1 (0.88 mm isotropic) cropped to 80 x 80 x 32 around the centre, scaled to [0, 1]."""
    img = _load(shared("noncommercial/chris_t1.nii.gz"))
    c = np.asarray(img.size) // 2
    img = pp.crop_box(img, start=tuple(c - [40, 40, 16]), end=tuple(c + [40, 40, 16]))
    a = img.array.astype(np.float32)
    return img.with_array(np.clip(a / np.percentile(a, 99.9), 0, 1))


@pytest.mark.parametrize("which", ["real_brain", "real_t1"])
def test_real_images_denoising_improves_psnr_and_keeps_geometry(which, request):
    clean = request.getfixturevalue(which)
    noisy = _rician(clean, 0.05)
    base = metrics.psnr(noisy, clean, data_range=1.0)
    for fn in (pp.nlm_denoise, pp.anisotropic_diffusion):
        out = fn(noisy)
        _assert_same_geometry(out, clean)
        assert metrics.psnr(out, clean, data_range=1.0) > base + 1.0, fn.__name__


@pytest.mark.parametrize("which", ["real_brain", "real_t1"])
def test_real_images_every_stage_runs(which, request):
    img = request.getfixturevalue(which)
    for spec in ALL_STAGES:
        out = _outputs(spec.func(img, **_extra_kwargs(spec.name, img)))[0]
        if not spec.resamples:
            _assert_same_geometry(out, img)


def test_n4_reports_progress_and_stops_mid_fit(brain):
    """ITK's N4 ignores Abort and sends a single progress event: medlab counts its iterations
    for the bar, and a Cancel during the fit stops it there (not after the full fit)."""

    seen: list[float] = []
    with progress_to(lambda f, msg: seen.append(f)):
        pp.n4_bias_correction(brain.t1, shrink_factor=4, iterations=10, levels=2)
    inside = [f for f in seen if 0.05 < f < 0.9]
    assert len(inside) >= 5 and inside == sorted(inside)

    ev = threading.Event()
    calls = []

    def cancel_after_a_few(fraction, message):
        calls.append(fraction)
        if len(calls) == 4:
            ev.set()

    with progress_to(cancel_after_a_few, cancel=ev), pytest.raises(Cancelled):
        pp.n4_bias_correction(brain.t1, shrink_factor=2, iterations=200, levels=4)
    assert len(calls) <= 6, "N4 went on after Cancel"
