"""Classic segmentation stages (medlab.segment): geometry kept on anisotropic oblique images,
named label maps, seeds in mm (also on a one-slice slab), refusals, recipes, component tables."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import medlab
from medlab import Image, segment
from medlab.errors import ImageError, MedlabError, ParameterError
from medlab.recipe import Recipe

SPACING = (0.8, 0.9, 2.5)
ORIGIN = (12.0, -30.0, 41.0)
DIRECTION = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix()


def _oblique(array: np.ndarray, **kw) -> Image:
    return Image(array, SPACING, ORIGIN, DIRECTION, **kw)


def _blobs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels [z, y, x] 12×36×40: a bright ellipsoid (100) with a dark core, a second smaller
    blob (100) apart from it, noise σ 4; returns (image, blob-1 mask incl. core, blob-2 mask)."""
    rng = np.random.default_rng(7)
    z, y, x = np.ogrid[:12, :36, :40]
    # the ellipsoid in mm: 9 mm in x and y, 10 mm in z
    b1 = ((x - 14) * SPACING[0] / 9) ** 2 + ((y - 17) * SPACING[1] / 9) ** 2 + ((z - 6) * SPACING[2] / 10) ** 2 < 1
    core = ((x - 14) * SPACING[0] / 3) ** 2 + ((y - 17) * SPACING[1] / 3) ** 2 + ((z - 6) * SPACING[2] / 3) ** 2 < 1
    b2 = ((x - 33) * SPACING[0] / 3.5) ** 2 + ((y - 18) * SPACING[1] / 3.5) ** 2 + ((z - 6) * SPACING[2] / 6) ** 2 < 1
    arr = np.where(b1 | b2, 100.0, 0.0)
    arr[core] = 0.0
    arr = arr + rng.normal(0, 4, arr.shape)
    return arr.astype(np.float32), b1, b2


@pytest.fixture(scope="module")
def scene():
    arr, b1, b2 = _blobs()
    img = _oblique(arr, metadata={"modality": "CT", "units": "HU"})
    seed = tuple(img.index_to_physical((8, 17, 6)))         # inside blob 1's wall, not its core
    centre = tuple(img.index_to_physical((14, 17, 6)))       # blob 1's core
    outside = tuple(img.index_to_physical((2, 3, 6)))        # background
    mask = _oblique(((b1 & (arr > 50)) | b2).astype(np.uint8), kind="label", labels={1: "blob"})
    return {"image": img, "b1": b1, "b2": b2, "seed": seed, "centre": centre, "outside": outside, "mask": mask}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


# every stage, with what it needs: (stage, input name, which scene input, parameters)
def _calls(s: dict) -> list[tuple]:
    seeds, bg = [s["seed"]], [s["outside"]]
    return [
        (segment.threshold, "image", {"lower": 50.0}),
        (segment.otsu_threshold, "image", {}),
        (segment.li_threshold, "image", {}),
        (segment.triangle_threshold, "image", {"side": "below"}),
        (segment.multi_otsu_threshold, "image", {"classes": 3}),
        (segment.ct_threshold, "image", {"preset": "soft_tissue"}),
        (segment.connected_threshold, "image", {"seeds": seeds, "background": bg, "tolerance": 40.0}),
        (segment.confidence_connected, "image", {"seeds": seeds, "background": bg, "radius": 2.0}),
        (segment.neighbourhood_connected, "image", {"seeds": seeds, "tolerance": 40.0, "radius": 1.0}),
        (segment.watershed, "image", {"seeds": seeds, "background": bg}),
        (segment.fast_marching, "image", {"seeds": seeds, "edge": 5.0, "distance": 20.0}),
        (segment.opening, "labels", {"radius": 1.5}),
        (segment.closing, "labels", {"radius": 2.0}),
        (segment.fill_holes, "labels", {}),
        (segment.keep_largest_component, "labels", {}),
        (segment.keep_seeded_component, "labels", {"seeds": seeds}),
        (segment.connected_components, "labels", {}),
    ]


STAGE_NAMES = [c[0].stage.name for c in _calls({"seed": 0, "outside": 0})]


def _input(s: dict, which: str) -> Image:
    return s["image"] if which == "image" else s["mask"]


def _labels_of(out) -> Image:
    return out[0] if isinstance(out, tuple) else out


def test_every_segment_stage_is_registered_in_its_group():
    names = [s.name for s in medlab.stages("segment")]
    assert set(STAGE_NAMES) <= set(names)
    for name in STAGE_NAMES:
        spec = medlab.get_stage(name)
        assert spec.group == "segment" and spec.outputs["labels"].type_name == "label"
        assert getattr(segment, name) is spec.function
        roles = {p.role for p in spec.point_params().values()}
        assert roles <= {"seeds", "background"}


@pytest.mark.parametrize("index", range(len(STAGE_NAMES)), ids=STAGE_NAMES)
def test_stage_keeps_oblique_anisotropic_geometry_and_names_its_labels(scene, index):
    func, which, params = _calls(scene)[index]
    source = _input(scene, which)
    before = source.array.copy()
    labels = _labels_of(func(source, **params))
    assert labels.is_label and labels.array.dtype.kind in "iu"
    assert labels.size == source.size
    assert labels.spacing == source.spacing and labels.origin == source.origin
    assert np.array_equal(labels.direction, source.direction)
    present = [int(v) for v in np.unique(labels.array) if v]
    assert present, "an empty label map: the scene was built so every stage finds something"
    assert all(v in labels.labels and labels.labels[v].name for v in present)
    assert all(len(labels.labels[v].color) == 3 for v in present)
    assert np.array_equal(source.array, before)  # the input is untouched


@pytest.mark.parametrize("index", range(len(STAGE_NAMES)), ids=STAGE_NAMES)
def test_stage_replays_bit_identically_from_a_recipe(scene, index):
    func, which, params = _calls(scene)[index]
    source = _input(scene, which)
    with Recipe.record(**{which: source}) as recipe:
        first = func(source, **params)
    again = Recipe.from_json(recipe.to_json()).run(**{which: source})
    step = recipe.steps[0].id
    assert np.array_equal(again[f"{step}.labels"].array, _labels_of(first).array)
    assert again[f"{step}.labels"].same_grid(source)
    if func is segment.connected_components:
        assert again[f"{step}.table"].to_csv() == first.table.to_csv()


def test_chain_of_stages_replays_from_json(scene):
    img = scene["image"]
    with Recipe.record(img) as recipe:
        grown = segment.connected_threshold(img, seeds=[scene["seed"]], tolerance=40.0)
        filled = segment.fill_holes(grown)
        pieces, table = segment.connected_components(filled)
    assert [s.inputs for s in recipe.steps] == [{"image": "image"}, {"labels": "step1.labels"},
                                               {"labels": "step2.labels"}]
    out = Recipe.from_json(recipe.to_json()).run(image=img)
    assert np.array_equal(out["step3.labels"].array, pieces.array)
    assert out["step3.table"].to_csv() == table.to_csv()


# ---------------------------------------------------------------------------- one-slice slab
def _slab(img: Image, k: int) -> Image:
    """Slice k of a 3D image as a one-slice 3D image keeping its physical place."""
    return Image(img.array[k : k + 1], img.spacing, img.index_to_physical((0, 0, k)), img.direction,
                 kind=img.kind, labels=img.labels, metadata=img.metadata)


@pytest.mark.parametrize("index", range(len(STAGE_NAMES)), ids=STAGE_NAMES)
def test_stage_works_on_a_one_slice_slab_with_seeds_in_mm(scene, index):
    func, which, params = _calls(scene)[index]
    slab = _slab(_input(scene, which), 6)  # the seeds lie on slice 6
    labels = _labels_of(func(slab, **params))
    assert labels.shape == (1, 36, 40) and labels.same_grid(slab)
    assert labels.array.any()


def test_region_growing_on_the_slab_matches_the_volume_slice(scene):
    img, seed = scene["image"], scene["seed"]
    whole = segment.connected_threshold(img, seeds=[seed], tolerance=40.0)
    slab = segment.connected_threshold(_slab(img, 6), seeds=[seed], tolerance=40.0)
    assert np.array_equal(slab.array[0], whole.array[6])  # a convex blob: nothing reached through other slices


def test_seed_off_the_slab_is_refused(scene):
    off = tuple(scene["image"].index_to_physical((10, 17, 3)))  # slice 3, not on the slab of slice 6
    with pytest.raises(ParameterError, match="outside"):
        segment.connected_threshold(_slab(scene["image"], 6), seeds=[off])


def test_two_dimensional_image_takes_2d_and_3d_points():
    arr = np.zeros((30, 30), np.float32)
    arr[8:22, 8:22] = 100
    img = Image(arr, spacing=(0.5, 0.7), origin=(3.0, 4.0))
    p = tuple(img.index_to_physical((15, 15)))
    a = segment.connected_threshold(img, seeds=[p], tolerance=10.0)
    b = segment.connected_threshold(img, seeds=[(*p, 0.0)], tolerance=10.0)
    assert a.ndim == 2 and np.array_equal(a.array, b.array) and int(a.array.sum()) == 196
    _, table = segment.connected_components(a)
    assert table.rows[0]["area"] == pytest.approx(196 * 0.5 * 0.7) and "centroid_z" not in table.columns


# ---------------------------------------------------------------------------- what each method finds
def test_region_growing_methods_find_the_seeded_blob_only(scene):
    img, b1, b2 = scene["image"], scene["b1"], scene["b2"]
    seeds, bg = [scene["seed"]], [scene["outside"]]
    wall = b1 & (img.array > 50)
    grown = segment.connected_threshold(img, seeds=seeds, tolerance=40.0)
    for out in (grown, segment.confidence_connected(img, seeds=seeds, background=bg, radius=2.0)):
        assert _dice(out.array, wall) > 0.95, out.metadata["method"]
        assert not out.array[b2].any()
        lo, hi = out.metadata["thresholds"]
        assert 0 < lo < 100 < hi
    # a voxel joins only if its whole neighbourhood is in range: the region loses its rim
    inner = segment.neighbourhood_connected(img, seeds=seeds, tolerance=40.0, radius=0.5)
    assert not inner.array[~grown.array.astype(bool)].any() and 0.5 * wall.sum() < inner.array.sum() < wall.sum()


def test_filled_region_recovers_the_blob_with_its_core(scene):
    img = scene["image"]
    grown = segment.connected_threshold(img, seeds=[scene["seed"]], tolerance=40.0)
    filled = segment.fill_holes(grown)
    assert _dice(filled.array, scene["b1"]) > 0.97
    assert not grown.array[scene["b1"] & (img.array < 50)].any() and filled.array.sum() > grown.array.sum()


def test_background_points_cap_the_interval_halfway():
    arr = np.zeros((20, 40), np.float32)
    arr[5:15, 2:18] = 100      # the structure
    arr[5:15, 18:38] = 70      # a touching, darker neighbour
    img = Image(arr)
    leak = segment.connected_threshold(img, seeds=[(8, 10)], tolerance=40.0)
    assert int(leak.array.sum()) == 10 * 36   # without background points it leaks into the neighbour
    capped = segment.connected_threshold(img, seeds=[(8, 10)], background=[(30, 10)], tolerance=40.0)
    assert int(capped.array.sum()) == 10 * 16
    assert capped.metadata["thresholds"] == (85.0, 140.0)  # halfway between 70 and 100; 100 + 40


def test_background_points_are_never_part_of_the_region():
    rng = np.random.default_rng(1)
    i, j = np.indices((30, 30))
    arr = rng.normal(0, 5, (30, 30)) + np.where(i + j < 40, 100, 0)
    arr[20, 20] = 100.0  # bright, touching the region; the mean around it is much lower
    img = Image(arr.astype(np.float32))
    free = segment.confidence_connected(img, seeds=[(5, 5)], radius=2.0)
    assert free.array[20, 20] == 1
    # the cap comes from the mean around the background point, so its own voxel would pass the
    # interval: it is excluded as a point
    out = segment.confidence_connected(img, seeds=[(5, 5)], background=[(20, 20)], radius=2.0)
    assert out.array[20, 20] == 0 and out.array[5, 5] == 1
    assert out.metadata["thresholds"][0] < 100 <= out.metadata["thresholds"][1]


def test_neighbourhood_connected_does_not_pass_a_thin_bridge():
    arr = np.zeros((20, 40), np.float32)
    arr[5:15, 2:12] = arr[5:15, 28:38] = 10
    arr[10, 12:28] = 10
    img = Image(arr)
    assert segment.connected_threshold(img, seeds=[(6, 10)], tolerance=1.0).array[:, 28:].any()
    assert not segment.neighbourhood_connected(img, seeds=[(6, 10)], tolerance=1.0, radius=1.0).array[:, 28:].any()


def test_watershed_border_follows_the_edge(scene):
    img = scene["image"]
    for bg in ([], [scene["outside"]]):
        out = segment.watershed(img, seeds=[scene["seed"]], background=bg, sigma=1.0)
        assert _dice(out.array, scene["b1"]) > 0.9
        assert not out.array[scene["b2"]].any()


def test_fast_marching_distance_is_in_mm_and_background_stops_the_front():
    img = Image(np.zeros((21, 41, 41), np.float32), spacing=(0.5, 0.5, 2.0))
    centre = tuple(img.index_to_physical((20, 20, 10)))
    out = segment.fast_marching(img, seeds=[centre], distance=8.0)
    zs, _, xs = np.nonzero(out.array)
    # uniform speed: a ball of ~8 mm in every direction, whatever the voxel size
    assert (xs.max() - xs.min()) * 0.5 == pytest.approx(16, abs=1.5)
    assert (zs.max() - zs.min()) * 2.0 == pytest.approx(16, abs=4.5)
    near = tuple(img.index_to_physical((28, 20, 10)))  # 4 mm from the seed
    stopped = segment.fast_marching(img, seeds=[centre], background=[near], distance=8.0)
    assert stopped.metadata["arrival_limit"] == pytest.approx(4.0, abs=0.3)
    assert stopped.array.sum() < out.array.sum() / 4


def test_gradient_magnitude_is_physical_on_oblique_voxels():
    grid = _oblique(np.zeros((12, 36, 40), np.float32))
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    points = grid.index_to_physical(np.stack([xx, yy, zz], -1).reshape(-1, 3))
    ramp = grid.with_array((2.0 * points[:, 0] - 0.5 * points[:, 2]).reshape(grid.shape).astype(np.float32))
    g = segment.gradient_magnitude(ramp, sigma=1.0)
    inner = g[3:-3, 5:-5, 5:-5]
    assert np.allclose(inner, np.hypot(2.0, 0.5), rtol=0.02)


def test_thresholds_record_their_levels():
    rng = np.random.default_rng(0)
    arr = np.concatenate([rng.normal(10, 2, 3000), rng.normal(50, 2, 3000), rng.normal(90, 2, 3000)])
    img = Image(arr.reshape(9, 1000).astype(np.float32))
    otsu = segment.otsu_threshold(img)
    assert 10 < otsu.metadata["thresholds"][0] < 90
    multi = segment.multi_otsu_threshold(img, classes=3)
    t1, t2 = multi.metadata["thresholds"]
    assert 14 < t1 < 46 and 54 < t2 < 86
    # thresholds are histogram bin centres (as scikit-image gives them): a voxel in a threshold's bin
    # may fall on the other side
    assert np.allclose(np.bincount(multi.array.ravel()), 3000, atol=3)
    assert sorted(multi.labels) == [1, 2] and "and above" in multi.labels[2].name
    below = segment.li_threshold(img, side="below")
    assert below.array.sum() + segment.li_threshold(img).array.sum() == img.array.size
    manual = segment.threshold(img, mode="between", lower=40, upper=60)
    assert int(manual.array.sum()) == 3000 and manual.metadata["thresholds"] == (40.0, 60.0)


def test_ct_presets_use_hounsfield_ranges():
    ct = Image(np.array([[-1000.0, -700.0, -100.0, 40.0, 700.0]], np.float32), metadata={"units": "HU"})
    found = {p: segment.ct_threshold(ct, preset=p).array.ravel().tolist() for p in segment.CT_HU_RANGES}
    assert found == {"lung": [0, 1, 0, 0, 0], "fat": [0, 0, 1, 0, 0], "soft_tissue": [0, 0, 0, 1, 0],
                     "bone": [0, 0, 0, 0, 1]}
    with pytest.raises(ImageError, match="Hounsfield"):
        segment.ct_threshold(Image(np.ones((4, 4)), metadata={"modality": "MR"}))


# ---------------------------------------------------------------------------- post-processing
def test_radii_are_in_mm_per_axis():
    from medlab.segment._common import radius_voxels

    img = Image(np.zeros((10, 10, 10), np.uint8), spacing=(0.5, 1.0, 4.0))
    assert radius_voxels(img, 2.0) == (0, 2, 4)   # z, y, x
    slab = Image(np.zeros((1, 10, 10), np.uint8), spacing=(0.5, 1.0, 0.5))
    assert radius_voxels(slab, 2.0) == (0, 2, 4)   # nothing to reach along a one-voxel axis


def test_opening_closing_and_holes():
    arr = np.zeros((9, 30, 30), np.uint8)
    arr[:, 5:25, 5:25] = 1
    arr[4, 12:18, 12:18] = 0      # a cavity in 3D
    arr[:, 14, 5:9] = 0           # a notch from the side, through every slice
    arr[4, 1, 1] = 1              # a speck
    labels = Image(arr, spacing=(1.0, 1.0, 1.0), kind="label", labels={1: "organ"})
    assert segment.opening(labels, radius=1.0).array[4, 1, 1] == 0
    assert segment.closing(labels, radius=2.0).array[:, 14, 5:9].all()
    filled = segment.fill_holes(labels)
    assert filled.array[4, 12:18, 12:18].all() and not filled.array[:, 14, 5:9].any()
    assert filled.labels[1].name == "organ"
    open_tube = arr.copy()
    open_tube[:, 12:18, 12:18] = 0     # a channel through all slices: no 3D cavity, but a hole in each slice
    tube = labels.with_array(open_tube)
    assert not segment.fill_holes(tube).array[:, 12:18, 12:18].any()
    assert segment.fill_holes(tube, mode="slices").array[:, 12:18, 12:18].all()


def test_holes_take_the_label_around_them_and_labels_never_overwrite():
    arr = np.zeros((20, 40), np.uint8)
    arr[2:18, 2:18] = 1
    arr[8:12, 8:12] = 0          # hole in label 1
    arr[2:18, 22:38] = 2
    arr[8:12, 28:32] = 0         # hole in label 2
    labels = Image(arr, kind="label", labels={1: "a", 2: "b"})
    filled = segment.fill_holes(labels).array
    assert (filled[8:12, 8:12] == 1).all() and (filled[8:12, 28:32] == 2).all()
    closed = segment.closing(labels, radius=3.0).array
    assert np.array_equal(closed[arr != 0], arr[arr != 0])


def test_keep_largest_and_seeded_components(scene):
    mask = scene["mask"]
    largest = segment.keep_largest_component(mask)
    assert largest.array[scene["b1"] & (scene["image"].array > 50)].all() and not largest.array[scene["b2"]].any()
    small = tuple(mask.index_to_physical((33, 18, 6)))
    seeded = segment.keep_seeded_component(mask, seeds=[small])
    assert np.array_equal(seeded.array.astype(bool), scene["b2"] & (mask.array > 0))
    with pytest.raises(ParameterError, match="background"):
        segment.keep_seeded_component(mask, seeds=[scene["outside"]])


def test_component_table_volumes_centroids_and_boxes(scene):
    mask = scene["mask"]
    pieces, table = segment.connected_components(mask)
    voxel_ml = np.prod(SPACING) / 1000.0
    assert len(table) == int(pieces.array.max())
    vols = table.column("volume")
    assert vols == sorted(vols, reverse=True) and table.units["volume"] == "mL"
    for row in table.rows:
        k = row["component"]
        sel = pieces.array == k
        assert row["voxels"] == int(sel.sum())
        assert row["volume"] == pytest.approx(sel.sum() * voxel_ml, rel=1e-12)
        zz, yy, xx = np.nonzero(sel)
        centre = mask.index_to_physical((xx.mean(), yy.mean(), zz.mean()))   # oblique: through the direction
        assert (row["centroid_x"], row["centroid_y"], row["centroid_z"]) == pytest.approx(tuple(centre), abs=1e-6)
        assert row["bbox_start"] == (xx.min(), yy.min(), zz.min())
        assert row["bbox_size"] == (xx.max() - xx.min() + 1, yy.max() - yy.min() + 1, zz.max() - zz.min() + 1)
        assert pieces.labels[k].name.startswith("blob ")
    assert sum(table.column("voxels")) == int((mask.array > 0).sum())
    big = segment.connected_components(mask, min_volume=float(vols[0] * 1000 - 1))[1]
    assert len(big) == 1


def test_post_processing_names_unnamed_labels():
    arr = np.zeros((10, 10), np.uint8)
    arr[2:8, 2:8] = 3
    out = segment.fill_holes(Image(arr, kind="label"))
    assert out.labels[3].name == "label 3"
    named = segment.fill_holes(Image(arr, kind="label", labels={3: ("liver", (1, 2, 3))}))
    assert named.labels[3].name == "liver" and named.labels[3].color == (1, 2, 3)


def test_touching_labels_are_separate_components():
    arr = np.zeros((10, 10), np.uint8)
    arr[2:8, 2:5] = 1
    arr[2:8, 5:8] = 2
    pieces, table = segment.connected_components(Image(arr, kind="label", labels={1: "left", 2: "right"}))
    assert sorted(table.column("name")) == ["left", "right"] and int(pieces.array.max()) == 2


# ---------------------------------------------------------------------------- refusals
def test_bad_seeds_are_refused_with_clear_messages(scene):
    img, seed = scene["image"], scene["seed"]
    far = (1000.0, 1000.0, 1000.0)
    for func in (segment.connected_threshold, segment.confidence_connected, segment.neighbourhood_connected,
                 segment.watershed, segment.fast_marching):
        with pytest.raises(ParameterError, match="seeds point 1 of 'seeds'.*outside"):
            func(img, seeds=[far])
        with pytest.raises(ParameterError, match="background point 1 of 'background'.*outside"):
            func(img, seeds=[seed], background=[far])
        with pytest.raises(ParameterError, match="at least 1"):
            func(img, seeds=[])
        with pytest.raises(ParameterError, match="same voxel"):
            func(img, seeds=[seed], background=[seed])


def test_a_seed_in_the_background_is_refused():
    arr = np.full((20, 20), 20.0, np.float32)
    arr[5:15, 5:15] = 100
    arr[2, 2] = 55
    arr[2, 17] = 70
    img = Image(arr)
    # the background point's intensity lies between the two seeds': no interval separates them
    with pytest.raises(ParameterError, match="background point 1 has intensity 70, inside the range of the seeds"):
        segment.connected_threshold(img, seeds=[(10, 10), (2, 2)], background=[(17, 2)], tolerance=5.0)
    # confidence connected: the cap halfway between the region (100) and the background (20) leaves out
    # the second seed at 55
    with pytest.raises(ParameterError, match="seed 2 .* lies in what counts as background"):
        segment.confidence_connected(img, seeds=[(10, 10), (2, 2)], background=[(17, 17)], radius=1.0)
    with pytest.raises(ParameterError, match="cannot start there"):
        segment.neighbourhood_connected(img, seeds=[(5, 5)], tolerance=5.0, radius=1.0)


@pytest.mark.parametrize("call", [
    lambda img, s: segment.connected_threshold(img, seeds=s, tolerance=0.0),
    lambda img, s: segment.connected_threshold(img, seeds=s, tolerance=float("nan")),
    lambda img, s: segment.confidence_connected(img, seeds=s, multiplier=50.0),
    lambda img, s: segment.confidence_connected(img, seeds=s, iterations=2.5),
    lambda img, s: segment.neighbourhood_connected(img, seeds=s, radius=-1.0),
    lambda img, s: segment.watershed(img, seeds=s, sigma=100.0),
    lambda img, s: segment.fast_marching(img, seeds=s, distance=0.0),
    lambda img, s: segment.threshold(img, mode="between", lower=10.0, upper=5.0),
    lambda img, s: segment.threshold(img, mode="inside"),
    lambda img, s: segment.multi_otsu_threshold(img, classes=9),
    lambda img, s: segment.connected_threshold(img, seeds=s, colour="red"),
    lambda img, s: segment.connected_threshold(img, seeds="centre"),
], ids=["tolerance0", "tolerance-nan", "multiplier", "iterations", "radius", "sigma", "distance",
        "levels-swapped", "mode", "classes", "unknown", "seeds-text"])
def test_bad_parameters_are_refused(scene, call):
    with pytest.raises(ParameterError):
        call(scene["image"], [scene["seed"]])


def test_bad_images_are_refused(scene):
    nan = scene["image"].with_array(np.where(scene["b2"], np.nan, scene["image"].array).astype(np.float32))
    with pytest.raises(ImageError, match="NaN"):
        segment.otsu_threshold(nan)
    with pytest.raises(ImageError, match="constant"):
        segment.otsu_threshold(Image(np.ones((5, 5), np.float32)))
    with pytest.raises(ImageError, match="label"):
        segment.fill_holes(scene["image"])           # an intensity image where a label map belongs
    with pytest.raises(ImageError, match="intensity"):
        segment.otsu_threshold(scene["mask"])        # and the other way round
    with pytest.raises(MedlabError):
        segment.multi_otsu_threshold(Image(np.repeat([0.0, 1.0], 50).reshape(10, 10).astype(np.float32)),
                                     classes=4)
