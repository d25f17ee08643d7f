"""medlab.detect: spot candidates in mm on any grid, features, matching, FROC (hand-computed),
clusters and the findings table, bad input, recipes."""

from __future__ import annotations

import numpy as np
import pytest

import medlab
from medlab.detect import (
    FEATURES,
    cluster_findings,
    extract_patches,
    froc_curve,
    group_clusters,
    match_points,
    spot_candidates,
    spot_features,
)
from medlab.errors import GeometryError, ImageError, ParameterError
from medlab.recipe import Recipe


def _rotation(deg: float, d: int = 2) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    r = np.array([[c, -s], [s, c]])
    if d == 3:
        r = np.block([[r, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    return r


def _scene(spacing, origin, direction, shape, blobs, *, sigma_mm=0.12, noise=0.03, seed=0) -> medlab.Image:
    """Gaussian blobs at physical points (mm) rendered on a grid, with white noise."""
    empty = medlab.Image(np.zeros(shape, np.float32), spacing, origin, direction)
    idx = np.indices(shape).reshape(len(shape), -1)[::-1].T.astype(float)      # (x, y[, z]) per voxel
    mm = empty.index_to_physical(idx)
    values = np.zeros(len(mm))
    for b in blobs:
        values += np.exp(-np.sum((mm - b) ** 2, axis=1) / (2 * sigma_mm**2))
    rng = np.random.default_rng(seed)
    return empty.with_array((values.reshape(shape) + rng.normal(0, noise, shape)).astype(np.float32))


BLOBS_2D = np.array([[9.1, -4.4], [10.4, -3.1], [8.3, -1.7], [9.7, -0.6]])     # inside both grids below


@pytest.fixture
def oblique_2d():
    """Anisotropic (0.06 x 0.09 mm) pixels, rotated 30 degrees, off-centre origin."""
    return _scene((0.06, 0.09), (9.0, -6.0), _rotation(30), (60, 70), BLOBS_2D)


# ---------------------------------------------------------------------------- candidates
def test_candidates_land_on_the_blobs_in_mm_on_an_oblique_anisotropic_grid(oblique_2d):
    candidates, features = spot_candidates(oblique_2d, sigma_mm=0.1, threshold=6.0)
    hits = match_points(candidates, BLOBS_2D, radius_mm=0.1)
    assert sorted(hits[hits >= 0].tolist()) == [0, 1, 2, 3]          # each blob found once, within 0.1 mm
    assert (hits < 0).sum() <= 1                                      # and (almost) nothing else
    found = {int(h): row for h, row in zip(hits, features.rows) if h >= 0}
    for row in found.values():
        # a Gaussian blob of sigma 0.12 mm: half maximum at radius 0.14 mm (diameter 0.28), a little
        # wider after the detector's own smoothing
        assert 0.22 < row["size_mm"] < 0.45
        assert row["cnr"] > 10 and row["contrast"] > 0.5
    assert features.columns[:3] == ["candidate", "x", "y"] and set(FEATURES) <= set(features.columns)
    assert features.units["x"] == "mm" and features.units["size_mm"] == "mm"


def test_the_same_scene_on_another_grid_gives_the_same_points_and_sizes(oblique_2d):
    plain = _scene((0.05, 0.05), (6.0, -6.5), np.eye(2), (150, 140), BLOBS_2D, seed=1)
    a, fa = spot_candidates(oblique_2d, sigma_mm=0.1, threshold=6.0)
    b, fb = spot_candidates(plain, sigma_mm=0.1, threshold=6.0)
    ha, hb = match_points(a, BLOBS_2D, radius_mm=0.1), match_points(b, BLOBS_2D, radius_mm=0.1)
    for k in range(len(BLOBS_2D)):
        pa, pb = a.points[ha == k][0], b.points[hb == k][0]
        assert np.linalg.norm(pa - pb) < 0.1                       # same mm, whatever the pixels
        sa = fa.rows[int(np.flatnonzero(ha == k)[0])]["size_mm"]
        sb = fb.rows[int(np.flatnonzero(hb == k)[0])]["size_mm"]
        assert abs(sa - sb) < 0.1


def test_candidates_in_3d_with_thick_slices():
    blobs = np.array([[3.0, 4.0, 10.0], [-5.0, 2.0, 14.0]])
    vol = _scene((0.5, 0.5, 1.5), (-10.0, -6.0, 2.0), _rotation(20, 3), (20, 40, 44), blobs, sigma_mm=1.2,
                 noise=0.02)
    candidates, features = spot_candidates(vol, sigma_mm=1.0, threshold=8.0, min_distance_mm=2.0, ring_mm=3.0)
    hits = match_points(candidates, blobs, radius_mm=1.0)
    assert sorted(hits[hits >= 0].tolist()) == [0, 1]
    assert features.columns[1:4] == ["x", "y", "z"]
    row = features.rows[int(np.flatnonzero(hits == 0)[0])]
    # sphere-equivalent diameter of a sigma 1.2 mm blob above half maximum: about 2 x 1.41 mm
    assert 2.0 < row["size_mm"] < 4.2


def test_mask_restricts_the_search_and_inputs_are_not_modified(oblique_2d):
    before = oblique_2d.array.copy()
    mask_arr = np.zeros(oblique_2d.shape, np.uint8)
    mask_arr[:32] = 1                                   # the rows of blobs 0 and 1 (index y 15 and 20)
    mask = oblique_2d.with_array(mask_arr, kind="label")
    candidates, _ = spot_candidates(oblique_2d, mask, sigma_mm=0.1, threshold=4.0)
    assert sorted(match_points(candidates, BLOBS_2D, radius_mm=0.1).tolist()) == [0, 1]
    assert np.array_equal(oblique_2d.array, before)


def test_constant_image_has_no_candidates_and_no_nan():
    img = medlab.Image(np.full((32, 32), 0.5, np.float32), spacing=(0.1, 0.1))
    candidates, features = spot_candidates(img)
    assert len(candidates) == 0 and len(features) == 0
    row = spot_features(img, [(1.0, 1.0)]).rows[0]
    assert all(np.isfinite(row[k]) for k in FEATURES) and row["contrast"] == 0.0


def test_bad_input_is_refused_with_medlab_errors(oblique_2d):
    with pytest.raises(ParameterError, match="sigma_mm"):
        spot_candidates(oblique_2d, sigma_mm=0.0)
    with pytest.raises(ParameterError, match="threshold"):
        spot_candidates(oblique_2d, threshold=-1.0)
    bad = oblique_2d.array.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ImageError):
        spot_candidates(oblique_2d.with_array(bad))
    empty = oblique_2d.with_array(np.zeros(oblique_2d.shape, np.uint8), kind="label")
    with pytest.raises(ImageError, match="mask is empty"):
        spot_candidates(oblique_2d, empty)
    other = medlab.Image(np.ones((10, 10), np.uint8), spacing=(1.0, 1.0), kind="label")
    with pytest.raises((GeometryError, ImageError)):
        spot_candidates(oblique_2d, other)
    with pytest.raises(ParameterError):
        spot_features(oblique_2d, [[1.0, 2.0, 3.0]])          # 3D points on a 2D image


# ---------------------------------------------------------------------------- matching and FROC
def test_match_points_nearest_within_radius():
    truth = [[0.0, 0.0], [10.0, 0.0]]
    assert match_points([[0.4, 0.0], [9.0, 0.0], [5.0, 0.0]], truth, radius_mm=0.5).tolist() == [0, -1, -1]
    assert match_points([[9.0, 0.0]], truth, radius_mm=[0.5, 1.5]).tolist() == [1]   # one radius per truth
    assert match_points(np.zeros((0, 2)), truth).tolist() == []
    assert match_points([[1.0, 1.0]], np.zeros((0, 2))).tolist() == [-1]
    with pytest.raises(ParameterError):
        match_points([[0.0, 0.0]], truth, radius_mm=[1.0])
    with pytest.raises(ParameterError):
        match_points([[0.0, 0.0]], truth, radius_mm=0.0)


def test_froc_against_a_hand_computed_case():
    # 2 images, 3 true lesions; lesion 0 is found twice, lesion 2 never
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    hits = [0, -1, 0, 1, -1, -1]
    f = froc_curve(scores, hits, n_lesions=3, n_images=2)
    assert f.thresholds.tolist() == [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert np.allclose(f.sensitivity, [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert np.allclose(f.fp_per_image, [0, 0, 0.5, 0.5, 0.5, 1.0, 1.5])   # the duplicate of lesion 0 is no FP
    assert f.sensitivity_at(0.0) == pytest.approx(1 / 3)
    assert f.sensitivity_at(0.5) == pytest.approx(2 / 3)
    assert f.sensitivity_at(0.25) == pytest.approx(1 / 3)
    assert f.threshold_at(0.5) == 0.6 and f.threshold_at(1.0) == 0.5
    # LUNA16's rates 1/8 .. 8: 1/3 at 1/8 and 1/4, 2/3 from 1/2 on
    assert f.cpm() == pytest.approx((2 * (1 / 3) + 5 * (2 / 3)) / 7)
    curve = f.to_curve("toy")
    assert curve.series("toy")[0] == f.fp_per_image.tolist()
    assert f.table().column("sensitivity")[3] == pytest.approx(2 / 3)        # at 1 FP per image


def test_froc_ties_form_one_operating_point():
    f = froc_curve([0.5, 0.5, 0.2], [0, -1, -1], n_lesions=2, n_images=1)
    assert f.sensitivity.tolist() == [0.0, 0.5, 0.5] and f.fp_per_image.tolist() == [0.0, 1.0, 2.0]


def test_froc_bad_input():
    with pytest.raises(ParameterError, match="finite"):
        froc_curve([np.nan], [0], n_lesions=1, n_images=1)
    with pytest.raises(ParameterError, match="2 scores but 1 hits"):
        froc_curve([0.1, 0.2], [0], n_lesions=1, n_images=1)
    with pytest.raises(ParameterError, match="below n_lesions"):
        froc_curve([0.1], [3], n_lesions=2, n_images=1)
    with pytest.raises(ParameterError, match="n_images"):
        froc_curve([0.1], [0], n_lesions=1, n_images=0)
    assert froc_curve([], [], n_lesions=1, n_images=1).sensitivity.tolist() == [0.0]


# ---------------------------------------------------------------------------- clusters
def test_group_clusters_single_linkage_in_mm():
    pts = [[0, 0], [1, 0], [2, 0], [3, 0], [20, 0], [21, 0], [22, 0], [50, 0]]
    assert group_clusters(pts, max_distance_mm=1.5).tolist() == [0, 0, 0, 0, 1, 1, 1, -1]   # largest first
    assert group_clusters(pts, max_distance_mm=1.5, min_count=5).tolist() == [-1] * 8
    assert group_clusters([[1.0, 1.0]], min_count=1).tolist() == [0]
    with pytest.raises(ParameterError):
        group_clusters(pts, max_distance_mm=0)
    with pytest.raises(ParameterError):
        group_clusters(pts, min_count=0)


def test_cluster_findings_table_by_hand():
    img = medlab.Image(np.zeros((200, 200), np.float32), spacing=(0.1, 0.1), origin=(0.0, 0.0))
    square = [(2.0, 2.0), (4.0, 2.0), (4.0, 4.0), (2.0, 4.0)]          # 2 mm square: hull 4 mm²
    line = [(10.0, 15.0), (11.0, 15.0), (12.0, 15.0)]                  # collinear: no area
    clusters, findings = cluster_findings(img, detections=[*square, *line, (18.0, 1.0)], max_distance_mm=2.5)
    assert len(clusters) == 2 and np.allclose(clusters.points[0], (3.0, 3.0))
    first, second = findings.rows
    assert first["spots"] == 4 and first["extent_mm"] == pytest.approx(2 * np.sqrt(2))
    assert first["hull_area_mm2"] == pytest.approx(4.0) and first["spots_per_cm2"] == pytest.approx(100.0)
    assert second["spots"] == 3 and second["hull_area_mm2"] == 0.0 and second["spots_per_cm2"] is None
    assert findings.units["hull_area_mm2"] == "mm²" and findings.units["x"] == "mm"
    with pytest.raises(ParameterError, match="detections"):
        cluster_findings(img, detections=[(500.0, 500.0)])                # outside the image


def test_cluster_findings_in_3d_keeps_mm():
    vol = medlab.Image(np.zeros((10, 20, 20), np.float32), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0))
    pts = [(2.0, 2.0, 3.0), (4.0, 2.0, 3.0), (2.0, 4.0, 3.0), (2.0, 2.0, 6.0)]
    _, findings = cluster_findings(vol, detections=pts, max_distance_mm=3.5)
    row = findings.rows[0]
    assert row["spots"] == 4 and row["hull_volume_mm3"] == pytest.approx(2 * 2 * 3 / 6)   # a tetrahedron
    assert row["z"] == pytest.approx(3.75)


# ---------------------------------------------------------------------------- patches
def test_extract_patches_centred_with_edge_padding():
    a = np.arange(100, dtype=np.float32).reshape(10, 10)
    img = medlab.Image(a, spacing=(0.5, 0.5), origin=(1.0, 1.0))
    patches = extract_patches(img, [img.index_to_physical([5, 4]), img.index_to_physical([0, 0])], size=4)
    assert patches.shape == (2, 4, 4)
    assert patches[0][2, 2] == a[4, 5]                      # centre voxel at [size // 2]
    assert patches[1][0, 0] == a[0, 0] and patches[1][2, 2] == a[0, 0]   # edge padding
    with pytest.raises(ParameterError):
        extract_patches(img, [(1.0, 1.0)], size=0)


# ---------------------------------------------------------------------------- recipes and registry
def test_recipe_round_trip_is_bit_identical(oblique_2d):
    mask = oblique_2d.with_array(np.ones(oblique_2d.shape, np.uint8), kind="label")
    with Recipe.record(image=oblique_2d, mask=mask) as recipe:
        candidates, features = spot_candidates(oblique_2d, mask, sigma_mm=0.1, threshold=4.0)
        _, findings = cluster_findings(oblique_2d, detections=candidates, max_distance_mm=2.5)
    again = Recipe.from_json(recipe.to_json()).run(image=oblique_2d, mask=mask)
    assert np.array_equal(again["step1.candidates"].points, candidates.points)
    assert again["step1.features"].to_csv() == features.to_csv()
    assert again["step2.findings"].to_csv() == findings.to_csv() and len(findings) == 1


def test_stages_are_in_the_detect_group():
    names = [s.name for s in medlab.stages("detect")]
    assert names == ["spot_candidates", "cluster_findings"]


def test_on_the_mammogram_phantom_the_detector_finds_most_calcifications():
    p = medlab.data.mammogram(size=(256, 256), spacing=0.1, noise=0.04, seed=2)
    truth = [c["centre_mm"] for c in p.info["calcifications"] if p.mammo.contains(c["centre_mm"])]
    candidates, features = spot_candidates(p.mammo, sigma_mm=0.15, threshold=3.5)
    hits = match_points(candidates, truth, radius_mm=0.5)
    f = froc_curve(features.column("dog_snr"), hits, n_lesions=len(truth), n_images=1)
    assert f.sensitivity[-1] > 0.6                          # the candidates' ceiling
    assert f.sensitivity_at(f.fp_per_image[-1]) == f.sensitivity[-1]


def test_docstring_examples_run():
    import doctest

    import medlab.detect

    result = doctest.testmod(medlab.detect, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0
