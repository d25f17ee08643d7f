"""Phantoms of medlab.data: determinism, geometry, ground truth, plausible contrast."""

from __future__ import annotations

import numpy as np
import pytest

from medlab.data import (
    BRAIN_LABELS,
    CHEST_LABELS,
    MAMMO_LABELS,
    Phantom,
    brain_mri,
    chest_ct,
    classification_set,
    mammogram,
    registration_pair,
)
from medlab.errors import ParameterError

SMALL_BRAIN = {"size": (64, 64, 32), "spacing": (3.0, 3.0, 4.0)}
SMALL_CT = {"size": (96, 96, 32), "spacing": (2.0, 2.0, 5.0)}


@pytest.fixture(scope="module")
def brain() -> Phantom:
    return brain_mri(**SMALL_BRAIN, noise=0.0, bias=0.0, seed=4)


@pytest.fixture(scope="module")
def ct() -> Phantom:
    return chest_ct(**SMALL_CT, noise=20.0, seed=2)


def _all_images(p: Phantom):
    yield from p.images.values()
    yield from p.clean.values()
    yield p.labels
    if p.bias_field is not None:
        yield p.bias_field


def _assert_same_geometry(p: Phantom, size, spacing):
    for img in _all_images(p):
        assert img.size == tuple(size)
        assert np.allclose(img.spacing, spacing)
        assert np.allclose(img.direction, np.eye(len(size)))
        centre = img.index_to_physical((np.asarray(size) - 1) / 2)
        assert np.allclose(centre, 0, atol=1e-6), "the grid is centred on the physical origin"


def _median(image, p: Phantom, name: str) -> float:
    return float(np.median(image.array[p.mask(name)]))


# ---------------------------------------------------------------- brain MRI
def test_brain_is_deterministic_and_seed_changes_noise():
    a = brain_mri(**SMALL_BRAIN, bias=0.2, seed=7)
    b = brain_mri(**SMALL_BRAIN, bias=0.2, seed=7)
    for x, y in zip(_all_images(a), _all_images(b)):
        assert np.array_equal(x.array, y.array)
    c = brain_mri(**SMALL_BRAIN, bias=0.2, seed=8)
    assert not np.array_equal(a.t1.array, c.t1.array)
    same_head = brain_mri(**SMALL_BRAIN, bias=0.2, seed=8, anatomy_seed=7)
    assert np.array_equal(same_head.labels.array, a.labels.array)
    assert np.array_equal(same_head.clean["t2"].array, a.clean["t2"].array)
    assert not np.array_equal(same_head.t2.array, a.t2.array), "new seed, same anatomy, new noise"


def test_brain_geometry_metadata_and_labels(brain):
    _assert_same_geometry(brain, SMALL_BRAIN["size"], SMALL_BRAIN["spacing"])
    assert set(brain.images) == {"t1", "t2", "flair"}
    assert brain.t1 is brain.images["t1"]
    for img in _all_images(brain):
        assert img.modality == "MR"
    assert brain.labels.kind == "label"
    assert {v: lab.name for v, lab in brain.labels.labels.items()} == {v: n for v, (n, _) in BRAIN_LABELS.items()}
    present = set(np.unique(brain.labels.array)) - {0}
    assert present == set(BRAIN_LABELS), "every tissue, tumour included, is in the label map"
    for img in brain.images.values():
        assert img.dtype == np.float32 and 0 <= img.array.min() and img.array.max() <= 1.1


def test_brain_without_tumour_has_no_tumour_labels():
    p = brain_mri(**SMALL_BRAIN, tumour=False, seed=4)
    for name in ("oedema", "enhancing tumour", "necrotic core"):
        assert not p.mask(name).any()
    assert p.mask("white matter").any() and p.mask("ventricles").any()


def test_brain_tumour_centre_lies_in_the_tumour(brain):
    centre = brain.info["tumour_centre_mm"]
    i, j, k = np.rint(brain.labels.physical_to_index(centre)).astype(int)
    name = brain.labels.labels[int(brain.labels.array[k, j, i])].name
    assert name in ("necrotic core", "enhancing tumour")


def test_brain_relative_intensities_follow_clinical_contrast(brain):
    t1, t2, flair = brain.clean["t1"], brain.clean["t2"], brain.clean["flair"]
    m = lambda img, name: _median(img, brain, name)
    # CSF: dark on T1 and FLAIR, bright on T2
    assert m(t1, "ventricles") < m(t1, "grey matter") < m(t1, "white matter")
    assert m(t2, "ventricles") > m(t2, "grey matter") > m(t2, "white matter")
    assert m(flair, "ventricles") < m(flair, "white matter")
    # oedema bright on T2 and FLAIR; enhancing rim brightest in the brain on post-contrast T1
    assert m(t2, "oedema") > m(t2, "white matter") and m(flair, "oedema") > m(flair, "grey matter")
    assert m(flair, "oedema") > m(flair, "ventricles") + 0.5
    assert m(t1, "enhancing tumour") > max(m(t1, "white matter"), m(t1, "necrotic core"), m(t1, "oedema"))


def test_brain_rician_noise_has_the_requested_sigma():
    p = brain_mri(**SMALL_BRAIN, noise=0.05, seed=1)
    background = p.labels.array == 0
    for name, img in p.images.items():
        sigma = 0.05 * float(p.clean[name].array.max())
        # pure-noise magnitude is Rayleigh: mean sigma*sqrt(pi/2), always positive
        mean = float(img.array[background].mean())
        assert mean == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.1)
        assert img.metadata["noise_sigma"] == pytest.approx(sigma)


def test_brain_bias_field_is_smooth_multiplicative_and_adjustable():
    flat = brain_mri(**SMALL_BRAIN, noise=0.0, bias=0.0, seed=2)
    assert np.all(flat.bias_field.array == 1)
    assert np.allclose(flat.t1.array, flat.clean["t1"].array)
    p = brain_mri(**SMALL_BRAIN, noise=0.0, bias=0.3, seed=2)
    field = p.bias_field.array
    assert 0.65 <= field.min() < 0.9 and 1.1 < field.max() <= 1.35
    assert np.abs(np.diff(field, axis=2)).max() < 0.05, "smooth: tiny change between neighbours"
    assert np.allclose(p.t2.array, p.clean["t2"].array * field, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {"size": (64, 64)}, {"size": (4, 64, 32)}, {"noise": -0.1}, {"bias": 2.0}, {"seed": -1},
    {"seed": 1.5}, {"contrasts": ("t1", "dwi")}, {"spacing": (1, 0, 1)},
])
def test_brain_bad_parameters_raise_parameter_error(kwargs):
    with pytest.raises(ParameterError):
        brain_mri(**{**SMALL_BRAIN, **kwargs})


# ---------------------------------------------------------------- chest CT
def test_chest_ct_geometry_dtype_units_and_labels(ct):
    _assert_same_geometry(ct, SMALL_CT["size"], SMALL_CT["spacing"])
    assert ct.ct.dtype == np.int16 and ct.clean["ct"].dtype == np.int16
    assert ct.ct.metadata["units"] == "HU" and ct.ct.modality == "CT"
    assert {v: lab.name for v, lab in ct.labels.labels.items()} == {v: n for v, (n, _) in CHEST_LABELS.items()}
    assert set(np.unique(ct.labels.array)) - {0} == set(CHEST_LABELS)


def test_chest_ct_hounsfield_values(ct):
    clean = ct.clean["ct"]
    m = lambda name: _median(clean, ct, name)
    assert -900 <= m("lung") <= -780
    assert -130 <= m("fat") <= -70
    assert 20 <= m("soft tissue") <= 60
    assert m("airway") <= -900
    assert 40 <= m("vessel") <= 200 and np.percentile(clean.array[ct.mask("vessel")], 95) >= 150
    assert 250 <= m("ribs and sternum") and 250 <= m("spine")
    assert np.max(clean.array[ct.mask("ribs and sternum", "spine")]) >= 800
    assert -700 <= m("ground-glass nodule") <= -450
    assert -80 <= m("solid nodule") <= 60
    assert clean.array.min() >= -1024


def test_chest_ct_noise_sigma_and_determinism(ct):
    diff = ct.ct.array.astype(float) - ct.clean["ct"].array
    assert diff[ct.mask("soft tissue")].std() == pytest.approx(20.0, rel=0.15)
    again = chest_ct(**SMALL_CT, noise=20.0, seed=2)
    assert np.array_equal(again.ct.array, ct.ct.array) and np.array_equal(again.labels.array, ct.labels.array)
    other = chest_ct(**SMALL_CT, noise=20.0, seed=3)
    assert not np.array_equal(other.ct.array, ct.ct.array)


def test_chest_ct_nodules_and_vessels_are_where_info_says(ct):
    nodules = ct.info["nodules"]
    assert [n["kind"] for n in nodules].count("solid") == 3
    assert [n["kind"] for n in nodules].count("ground-glass") == 2
    for n in nodules:
        i, j, k = np.rint(ct.labels.physical_to_index(n["centre_mm"])).astype(int)
        expected = "solid nodule" if n["kind"] == "solid" else "ground-glass nodule"
        assert ct.labels.labels[int(ct.labels.array[k, j, i])].name in (expected, "vessel")
    # branching vessels reach into both lungs (x < 0 is the patient's right in LPS)
    vessels = ct.mask("vessel")
    half = ct.labels.array.shape[2] // 2
    assert vessels[:, :, :half].sum() > 50 and vessels[:, :, half:].sum() > 50
    airway = ct.mask("airway")
    assert airway.any() and ct.clean["ct"].array[airway].max() < -500


def test_chest_ct_bad_noise_raises():
    with pytest.raises(ParameterError, match="noise"):
        chest_ct(**SMALL_CT, noise=-5)


# ---------------------------------------------------------------- mammogram
def test_mammogram_2d_labels_and_calcifications():
    from scipy import ndimage

    p = mammogram(size=(256, 256), spacing=0.1, seed=5)
    _assert_same_geometry(p, (256, 256), (0.1, 0.1))
    assert p.mammo.ndim == 2 and p.mammo.modality == "MG"
    assert {v: lab.name for v, lab in p.labels.labels.items()} == {v: n for v, (n, _) in MAMMO_LABELS.items()}
    clean = p.clean["mammo"].array
    med = lambda name: float(np.median(clean[p.mask(name)]))
    assert float(clean[p.labels.array == 0].mean()) < med("breast") < med("dense tissue") < med("calcification")
    specks, n = ndimage.label(p.mask("calcification"))
    assert n >= 5
    sizes = ndimage.sum_labels(np.ones_like(specks), specks, index=np.arange(1, n + 1))
    # 0.1-0.5 mm specks at 0.1 mm pixels: a few pixels to ~25 (touching specks may merge)
    assert np.median(sizes) <= 25 and sizes.min() >= 1
    assert len(p.info["calcifications"]) >= 5 * len(p.info["clusters"]) - n  # clusters hold 5-15 specks
    for c in p.info["calcifications"]:
        assert 0.1 <= c["diameter_mm"] <= 0.5


def test_mammogram_is_deterministic():
    a, b = mammogram(size=(128, 128), seed=3), mammogram(size=(128, 128), seed=3)
    assert np.array_equal(a.mammo.array, b.mammo.array) and np.array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.mammo.array, mammogram(size=(128, 128), seed=4).mammo.array)


# ---------------------------------------------------------------- registration pair
def _centroid(labels, values):
    idx = np.argwhere(np.isin(labels.array, values)).mean(axis=0)[::-1]
    return labels.index_to_physical(idx)


@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_registration_transform_maps_fixed_points_to_moving(kind):
    pair = registration_pair(transform=kind, size=(64, 64, 32), spacing=(3.0, 3.0, 4.0), seed=3)
    assert pair.fixed.same_grid(pair.moving) and pair.fixed.same_grid(pair.moving_labels)
    assert pair.fixed.modality == pair.moving.modality == "MR"
    tumour = [v for v, (n, _) in BRAIN_LABELS.items() if n in ("enhancing tumour", "necrotic core")]
    in_fixed, in_moving = _centroid(pair.fixed_labels, tumour), _centroid(pair.moving_labels, tumour)
    mapped = np.array(pair.transform.TransformPoint(tuple(in_fixed)))
    wrong_way = np.array(pair.transform.GetInverse().TransformPoint(tuple(in_fixed)))
    assert np.linalg.norm(mapped - in_moving) < 2.0, "fixed -> moving lands on the tumour"
    assert np.linalg.norm(wrong_way - in_moving) > 4.0, "the inverse does not (the test can tell)"
    assert np.linalg.norm(in_fixed - in_moving) > 3.0, "the images really are displaced"
    assert pair.tre(pair.transform).max() < 1e-9
    import SimpleITK as sitk

    assert pair.tre(sitk.Euler3DTransform()).mean() > 2.0


def test_registration_pair_contrasts_and_determinism():
    kw = {"size": (48, 48, 24), "spacing": (4.0, 4.0, 5.0), "seed": 9}
    a, b = registration_pair(**kw), registration_pair(**kw)
    assert a.transform.GetParameters() == b.transform.GetParameters()
    assert np.array_equal(a.moving.array, b.moving.array)
    # T1 fixed, T2 moving: CSF dark in one, bright in the other
    ventricles = [v for v, (n, _) in BRAIN_LABELS.items() if n == "ventricles"]
    f = np.median(a.fixed.array[np.isin(a.fixed_labels.array, ventricles)])
    m = np.median(a.moving.array[np.isin(a.moving_labels.array, ventricles)])
    assert m > 2 * f
    with pytest.raises(ParameterError):
        registration_pair(transform="bspline")


# ---------------------------------------------------------------- classification set
def test_classification_set_balanced_masks_and_deterministic():
    kw = {"n": 6, "size": (32, 32, 16), "spacing": (6.0, 6.0, 8.0), "seed": 1}
    ds = classification_set(**kw)
    assert len(ds) == 6 and sorted(ds.targets.tolist()) == [0, 0, 0, 1, 1, 1]
    for image, target, mask in (ds[i] for i in range(len(ds))):
        assert mask.kind == "label" and mask.same_grid(image)
        assert image.modality == "MR"
        assert bool(mask.array.any()) == bool(target)
    again = classification_set(**kw)
    assert np.array_equal(again.targets, ds.targets)
    assert all(np.array_equal(a.array, b.array) for a, b in zip(again.images, ds.images))
    other = classification_set(**{**kw, "seed": 2})
    assert not all(np.array_equal(a.array, b.array) for a, b in zip(other.images, ds.images))
    with pytest.raises(ParameterError):
        classification_set(n=1)
