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


# ----------------------------------------------------------------------------- segmentation
# An anisotropic, oblique, off-origin grid: distances must come out in mm whatever the direction.
SPACING = (0.8, 0.6, 2.0)  # (x, y, z) mm
ORIGIN = (-40.0, 12.5, 7.0)


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


OBLIQUE = _rotation(np.radians(20), np.radians(30))


def _blob(shape, centre, radii, wobble, phase) -> np.ndarray:
    """An ellipsoid with a wavy outline (no straight faces, so distances vary), in [z, y, x]."""
    z, y, x = np.indices(shape, dtype=float)
    r = np.sqrt(sum(((g - c) / s) ** 2 for g, c, s in zip((z, y, x), centre, radii)))
    angle = np.arctan2(y - centre[1], x - centre[2])
    return r < 1 + wobble * np.sin(3 * angle + phase) * np.cos(z / 3)


@pytest.fixture(scope="module")
def seg_pair():
    """Prediction and truth label maps (label 1 wavy blob, label 2 a smaller one) on an oblique grid."""
    shape = (20, 40, 36)
    truth = _blob(shape, (10, 20, 18), (6, 12, 11), 0.15, 0.0).astype(np.uint8)
    truth[_blob(shape, (9, 14, 24), (3, 4, 4), 0.1, 1.0)] = 2
    pred = _blob(shape, (10.6, 21, 17), (5.5, 12.5, 10), 0.2, 0.7).astype(np.uint8)
    pred[_blob(shape, (9, 15, 23), (3, 4, 5), 0.1, 0.3)] = 2
    pred[4, 30, 5] = 1  # an outlier voxel far from the truth: sets the maximum distance
    kw = {"spacing": SPACING, "origin": ORIGIN, "direction": OBLIQUE, "kind": "label"}
    return (Image(pred, **kw),
            Image(truth, labels={1: "oedema", 2: ("necrotic core", (200, 0, 0))}, **kw))


def _brute_surface_distances(pred: Image, truth: Image, value: int):
    """Nearest-surface distances between physical LPS points (index_to_physical), all pairs."""
    from scipy.spatial.distance import cdist

    def points(img):
        m = img.array == value
        surface = m & ~ndimage.binary_erosion(m)  # MONAI's surface, written independently
        return img.index_to_physical(np.argwhere(surface)[:, ::-1])

    d = cdist(points(pred), points(truth))
    return d.min(axis=1), d.min(axis=0)


def test_surface_distances_are_physical_on_an_oblique_grid(seg_pair):
    pred, truth = seg_pair
    assert truth.is_oblique
    for value in (1, 2):
        ours = metrics.surface_distances(pred, truth, label=value)
        brute = _brute_surface_distances(pred, truth, value)
        for a, b in zip(ours, brute):
            assert np.allclose(np.sort(a), np.sort(b), atol=1e-9)
    # the direction rotates without stretching; the spacing does stretch
    straight = [Image(i.array, spacing=SPACING, kind="label") for i in seg_pair]
    assert metrics.hausdorff95(*straight, label=1) == pytest.approx(metrics.hausdorff95(pred, truth, label=1))
    squashed = [Image(i.array, spacing=(0.8, 0.6, 1.0), kind="label") for i in seg_pair]
    assert metrics.hausdorff95(*squashed, label=1) != pytest.approx(metrics.hausdorff95(pred, truth, label=1))


def test_known_shift_in_mm():
    truth = np.zeros((10, 30, 30), np.uint8)
    truth[3:7, 10:20, 8:18] = 1
    pred = np.roll(truth, 2, axis=2)  # 2 voxels along x
    sp = (1.5, 0.5, 3.0)
    t, p = Image(truth, spacing=sp), Image(pred, spacing=sp)
    assert metrics.hausdorff_distance(p, t) == pytest.approx(3.0)  # 2 x 1.5 mm
    assert metrics.hausdorff95(p, t) == pytest.approx(3.0)
    row = metrics.segmentation_scores(p, t)[0]
    assert row["dice"] == pytest.approx(0.8) and row["iou"] == pytest.approx(8 / 12)
    assert row["sensitivity"] == pytest.approx(0.8) and row["precision"] == pytest.approx(0.8)
    assert row["specificity"] == pytest.approx(1 - 80 / (truth.size - 400))
    assert row["volume_truth_ml"] == pytest.approx(400 * 1.5 * 0.5 * 3.0 / 1000)
    assert row["volume_difference_ml"] == 0.0
    assert 0 < row["assd_mm"] < row["hausdorff95_mm"]
    # arrays alone are on a 1 mm grid; an array beside an Image takes the Image's grid
    assert metrics.hausdorff_distance(pred, truth) == pytest.approx(2.0)
    assert metrics.hausdorff_distance(pred, t) == pytest.approx(3.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_against_monai_on_oblique_anisotropic_labels(seg_pair):
    """Same definitions as MONAI (surface = mask XOR face-connected erosion, voxel centres,
    max of the two directed percentiles, pooled mean for ASSD): equal to float32 precision.
    MONAI takes the spacing in array order and ignores the direction, which is right because
    the direction is orthonormal."""
    torch = pytest.importorskip("torch")
    mm = pytest.importorskip("monai.metrics")
    pred, truth = seg_pair
    sampling = truth.spacing[::-1]
    onehot = [torch.from_numpy(np.stack([i.array == v for v in (1, 2)]))[None].float() for i in seg_pair]
    hd95 = mm.compute_hausdorff_distance(*onehot, include_background=True, percentile=95, spacing=sampling)
    hd = mm.compute_hausdorff_distance(*onehot, include_background=True, spacing=sampling)
    asd = mm.compute_average_surface_distance(*onehot, include_background=True, symmetric=True, spacing=sampling)
    dice = mm.DiceMetric(include_background=True, ignore_empty=False)(*onehot)
    rows = metrics.segmentation_scores(pred, truth)
    assert [r["label"] for r in rows] == [1, 2]
    for c, row in enumerate(rows):
        assert row["hausdorff95_mm"] == pytest.approx(float(hd95[0, c]), rel=1e-5)
        assert row["hausdorff_mm"] == pytest.approx(float(hd[0, c]), rel=1e-5)
        assert row["assd_mm"] == pytest.approx(float(asd[0, c]), rel=1e-5)
        assert row["dice"] == pytest.approx(float(dice[0, c]), rel=1e-6)
        assert metrics.hausdorff95(pred, truth, label=row["label"]) == row["hausdorff95_mm"]
        assert metrics.assd(pred, truth, label=row["label"]) == row["assd_mm"]
    assert rows[0]["hausdorff_mm"] > 2 * rows[0]["hausdorff95_mm"]  # the outlier voxel


def test_against_simpleitk_on_oblique_anisotropic_labels(seg_pair):
    """LabelOverlapMeasures: Dice, Jaccard, 1 - FalseNegativeError = sensitivity,
    1 - FalsePositiveError = specificity (ITK's FPE is FP / (FP + TN)), 1 - FalseDiscoveryRate
    = precision. HausdorffDistanceImageFilter measures from every voxel of one *set* to the
    other set (0 inside it), so it is compared like with like on the surfaces
    (LabelContour, face-connected; the same voxels as ours away from the image border): its
    maximum is our Hausdorff distance, and its "average Hausdorff distance" is the mean of the
    two directed means (not the pooled ASSD)."""
    sitk = pytest.importorskip("SimpleITK")
    pred, truth = seg_pair
    rows = {r["label"]: r for r in metrics.segmentation_scores(pred, truth)}
    for value, row in rows.items():
        p = sitk.BinaryThreshold(pred.to_sitk(), value, value, 1, 0)
        t = sitk.BinaryThreshold(truth.to_sitk(), value, value, 1, 0)
        assert p.GetDirection() == pytest.approx(tuple(OBLIQUE.ravel()))
        ov = sitk.LabelOverlapMeasuresImageFilter()
        ov.Execute(p, t)
        assert row["dice"] == pytest.approx(ov.GetDiceCoefficient(), rel=1e-9)
        assert row["iou"] == pytest.approx(ov.GetJaccardCoefficient(), rel=1e-9)
        assert row["sensitivity"] == pytest.approx(1 - ov.GetFalseNegativeError(), rel=1e-9)
        assert row["specificity"] == pytest.approx(1 - ov.GetFalsePositiveError(), rel=1e-9)
        assert row["precision"] == pytest.approx(1 - ov.GetFalseDiscoveryRate(), rel=1e-9)
        hd = sitk.HausdorffDistanceImageFilter()
        hd.Execute(sitk.LabelContour(p, fullyConnected=False), sitk.LabelContour(t, fullyConnected=False))
        assert row["hausdorff_mm"] == pytest.approx(hd.GetHausdorffDistance(), rel=1e-6)
        d_pt, d_tp = metrics.surface_distances(pred, truth, label=value)
        assert (d_pt.mean() + d_tp.mean()) / 2 == pytest.approx(hd.GetAverageHausdorffDistance(), rel=1e-6)


EMPTY_BOTH = {"dice": 1.0, "iou": 1.0, "sensitivity": 1.0, "specificity": 1.0, "precision": 1.0,
              "hausdorff_mm": 0.0, "hausdorff95_mm": 0.0, "assd_mm": 0.0}


def test_empty_masks_follow_the_documented_rule():
    full = np.zeros((6, 12, 12), np.uint8)
    full[2:4, 3:9, 3:9] = 1
    none = np.zeros_like(full)
    both = metrics.segmentation_scores(none, none, labels=[1])[0]
    assert {k: both[k] for k in EMPTY_BOTH} == EMPTY_BOTH
    assert both["volume_pred_ml"] == both["volume_truth_ml"] == 0.0
    for pred, truth in ((none, full), (full, none)):
        row = metrics.segmentation_scores(pred, truth)[0]
        assert row["dice"] == row["iou"] == row["sensitivity"] == row["precision"] == 0.0
        assert row["hausdorff_mm"] == row["hausdorff95_mm"] == row["assd_mm"] == float("inf")
        assert 0 < row["specificity"] <= 1
        assert not any(isinstance(v, float) and np.isnan(v) for v in row.values())
        assert metrics.hausdorff95(pred, truth) == metrics.assd(pred, truth) == float("inf")
        assert metrics.dice(pred, truth) == metrics.iou(pred, truth) == 0.0
    d_pt, d_tp = metrics.surface_distances(none, full)
    assert d_pt.size == 0 and np.all(np.isinf(d_tp)) and d_tp.size > 0
    assert metrics.hausdorff95(none, none) == metrics.assd(none, none) == 0.0
    assert metrics.iou(none, none) == 1.0
    # truth covering the whole grid: specificity's denominator is 0 too
    everything = np.ones_like(full)
    assert metrics.segmentation_scores(everything, everything)[0]["specificity"] == 1.0
    assert metrics.segmentation_scores(full, everything)[0]["specificity"] == 0.0


def test_labels_names_and_selection(seg_pair):
    pred, truth = seg_pair
    rows = metrics.segmentation_scores(pred, truth)
    assert [(r["label"], r["name"]) for r in rows] == [(1, "oedema"), (2, "necrotic core")]
    only = metrics.segmentation_scores(pred, truth, labels=2)
    assert len(only) == 1 and only[0] == rows[1]
    named = truth.with_array(truth.array, labels={1: "oedema", 2: "core", 3: "enhancing"})
    rows = metrics.segmentation_scores(pred, named)
    assert rows[2]["name"] == "enhancing" and rows[2]["dice"] == 1.0  # absent from both
    assert metrics.segmentation_scores(pred, truth, labels=[7])[0]["name"] == "label 7"
    with pytest.raises(ParameterError, match="labels"):
        metrics.segmentation_scores(pred, truth, labels=[1.5])
    with pytest.raises(Exception, match="non-integer"):
        metrics.segmentation_scores(np.full((4, 4), 0.5), np.zeros((4, 4)))


def test_2d_reports_areas():
    a = np.zeros((20, 20), np.uint8)
    a[5:15, 5:15] = 1
    row = metrics.segmentation_scores(Image(a, spacing=(0.5, 2.0)), Image(a, spacing=(0.5, 2.0)))[0]
    assert row["area_truth_mm2"] == pytest.approx(100.0) and row["area_difference_mm2"] == 0.0
    assert "volume_truth_ml" not in row and row["hausdorff_mm"] == 0.0


def test_grid_mismatch_and_resample(seg_pair):
    pred, truth = seg_pair
    moved = Image(pred.array, spacing=SPACING, origin=(0, 0, 0), direction=OBLIQUE, kind="label")
    for f in (metrics.segmentation_scores, metrics.hausdorff95, metrics.dice, metrics.surface_distances):
        with pytest.raises(GeometryError, match=r"origin \(0, 0, 0\).*origin \(-40, 12.5, 7\)"):
            f(moved, truth)
    with pytest.raises(GeometryError, match="shape"):
        metrics.hausdorff95(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(GeometryError, match="2D"):
        metrics.hausdorff95(np.zeros((4, 4)), np.zeros((3, 4, 4)))
    # the prediction on a finer grid covering the same space: nearest-neighbour resampled onto truth
    fine = np.repeat(pred.array, 2, axis=2)
    shift = OBLIQUE @ np.array([-SPACING[0] / 4, 0, 0])  # voxel centres of the finer grid
    on_fine = Image(fine, spacing=(SPACING[0] / 2, *SPACING[1:]), origin=np.add(ORIGIN, shift), direction=OBLIQUE,
                    kind="label")
    with pytest.raises(GeometryError, match="resample=True"):
        metrics.dice(on_fine, truth, label=1)
    assert metrics.dice(on_fine, truth, label=1, resample=True) == pytest.approx(metrics.dice(pred, truth, label=1))
    assert metrics.segmentation_scores(on_fine, truth, resample=True)[0]["hausdorff95_mm"] == pytest.approx(
        metrics.hausdorff95(pred, truth, label=1))
    far = Image(pred.array, spacing=SPACING, origin=(1000, 0, 0), kind="label")
    with pytest.raises(GeometryError, match="overlap"):
        metrics.dice(far, truth, resample=True)


def test_bad_labels_and_parameters(seg_pair):
    pred, truth = seg_pair
    for bad in (float("nan"), float("inf"), 1.5, "1", True):
        with pytest.raises(ParameterError, match="label"):
            metrics.dice(pred, truth, label=bad)
    with pytest.raises(ParameterError, match="label"):
        metrics.hausdorff95(pred, truth, label=float("nan"))
    assert metrics.dice(pred, truth, label=1.0) == metrics.dice(pred, truth, label=1)
    with pytest.raises(ParameterError, match="percentile"):
        metrics.hausdorff_distance(pred, truth, percentile=150)
    with pytest.raises(Exception, match="NaN"):
        metrics.dice(np.full((4, 4), np.nan), np.zeros((4, 4)))


# ----------------------------------------------------------------------------- saliency localisation
@pytest.fixture
def saliency_case():
    """A 3D map with a Gaussian hot spot centred in a box mask, plus negative evidence outside."""
    z, y, x = np.indices((16, 32, 32), dtype=float)
    hot = np.exp(-((z - 8) ** 2 / 8 + (y - 16) ** 2 / 20 + (x - 12) ** 2 / 20))
    sal = hot - 0.5 * np.exp(-((z - 8) ** 2 + (y - 16) ** 2 + (x - 26) ** 2) / 10)
    mask = np.zeros(sal.shape, np.uint8)
    mask[5:12, 10:22, 6:18] = 1
    sp = (0.7, 0.7, 2.5)
    return Image(sal, spacing=sp), Image(mask, spacing=sp, kind="label")


def test_saliency_energy_in_mask(saliency_case):
    sal, mask = saliency_case
    arr = np.clip(sal.array, 0, None)
    expected = arr[mask.array > 0].sum() / arr.sum()
    assert metrics.saliency_energy_in_mask(sal, mask) == pytest.approx(expected)
    assert 0.6 < expected < 1
    # negative values are ignored, not flipped: a stronger negative lobe changes nothing
    deeper = sal.with_array(np.where(sal.array < 0, 10 * sal.array, sal.array))
    assert metrics.saliency_energy_in_mask(deeper, mask) == pytest.approx(expected)
    with pytest.raises(Exception, match="no positive"):
        metrics.saliency_energy_in_mask(sal.with_array(-np.abs(sal.array)), mask)
    with pytest.raises(ParameterError, match="mask is empty"):
        metrics.saliency_energy_in_mask(sal, np.zeros(sal.shape))
    with pytest.raises(GeometryError, match="spacing"):
        metrics.saliency_energy_in_mask(Image(sal.array), mask)
    with pytest.raises(Exception, match="NaN"):
        metrics.saliency_energy_in_mask(sal.with_array(np.where(arr > 0.9, np.nan, arr)), mask)


def test_pointing_game_tolerance_in_mm():
    sal = np.zeros((5, 20, 20))
    sal[2, 10, 12] = 1.0  # 3 voxels right of the mask along x
    sal[0, 0, 0] = -9.0  # ignored
    mask = np.zeros(sal.shape, bool)
    mask[1:4, 8:12, 6:10] = True
    sp = (2.0, 0.5, 4.0)  # x voxels are 2 mm: the peak is 6 mm from the mask
    s, m = Image(sal, spacing=sp), Image(mask.astype(np.uint8), spacing=sp)
    assert not metrics.pointing_game(s, m)
    assert not metrics.pointing_game(s, m, tolerance_mm=5.9)
    assert metrics.pointing_game(s, m, tolerance_mm=6.0)
    assert metrics.pointing_game(Image(sal), Image(mask.astype(np.uint8)), tolerance_mm=3.0)  # 1 mm grid
    inside = sal.copy()
    inside[2, 9, 7] = 2.0
    assert metrics.pointing_game(inside, mask)
    tied = inside.copy()
    tied[4, 0, 19] = 2.0  # a second, equal peak far away: not a clear hit
    assert not metrics.pointing_game(tied, mask, tolerance_mm=5)
    for bad in (-1, float("nan"), "5"):
        with pytest.raises(ParameterError, match="tolerance_mm"):
            metrics.pointing_game(s, m, tolerance_mm=bad)
    with pytest.raises(Exception, match="no positive"):
        metrics.pointing_game(-np.abs(sal), mask)


def test_saliency_iou(saliency_case):
    sal, mask = saliency_case
    q = 1 - (mask.array > 0).mean()  # a region of the mask's size
    value = metrics.saliency_iou(sal, mask, quantile=q)
    region = sal.array >= np.quantile(sal.array, q)
    inside = mask.array > 0
    assert value == pytest.approx((region & inside).sum() / (region | inside).sum())
    assert 0.3 < value < 1
    # negative values never enter the region, whatever the quantile
    low = metrics.saliency_iou(sal, mask, quantile=0.05)
    positive = sal.array > 0
    assert low == pytest.approx((positive & inside).sum() / (positive | inside).sum())
    for bad in (0, 1, 1.5, float("nan")):
        with pytest.raises(ParameterError, match="quantile"):
            metrics.saliency_iou(sal, mask, quantile=bad)


# ----------------------------------------------------------------------------- issue 7 regressions
def test_negative_or_fractional_region_boxes_are_refused(two_regions):
    noisy, _ = two_regions
    with pytest.raises(ParameterError, match="negative"):
        metrics.snr(noisy, ((0, 0, 0), (-1, 80, 20)))  # once read as "all but the last column"
    with pytest.raises(ParameterError, match="negative"):
        metrics.cnr(noisy, ((-5, 0, 0), (40, 80, 20)), RIGHT)
    with pytest.raises(ParameterError, match="whole"):
        metrics.snr(noisy, ((0, 0, 0), (40.5, 80, 20)))
    with pytest.raises(ParameterError, match="empty"):
        metrics.snr(noisy, ((40, 0, 0), (10, 80, 20)))
    # an end past the image is clipped to it
    assert metrics.snr(noisy, ((0, 0, 0), (40, 500, 20))) == metrics.snr(noisy, LEFT)


def test_noise_sigma_on_a_one_voxel_thick_axis():
    rng = np.random.default_rng(2)
    plane = 10 + rng.normal(0, 3.0, (64, 64))
    flat = metrics.estimate_noise_sigma(Image(plane))
    for arr, sp in ((plane[:, :, None], (5, 1, 1)), (plane[None], (1, 1, 5)), (plane[:, None, :], (1, 1, 1))):
        value = metrics.estimate_noise_sigma(Image(arr, spacing=sp))
        assert value == pytest.approx(flat) and value == pytest.approx(3.0, rel=0.1)
    for arr in (plane[:1], plane[None, :1, :]):
        with pytest.raises(Exception, match="2 voxels along two axes"):
            metrics.estimate_noise_sigma(Image(arr))
