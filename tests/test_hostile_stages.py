"""Bad input to the segment, deep and metrics stages as a hostile user gives it: each test
reproduces one bug found by attacking the code (a bare library exception, a hang, a silently
wrong answer, a source file overwritten) and checks the clear medlab error or the right answer
that replaced it. The earlier pass on I/O, recipes, review, cohorts and meshes is
``tests/test_hostile.py``.

What could hang on a regression (a multi-Otsu search of 4096**4 combinations) runs in a child
process with a memory cap and a time limit; allocations that would eat memory are measured
with tracemalloc or sized to be refused outright.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import medlab
from medlab import metrics, segment
from medlab.errors import ImageError, ParameterError, WriteError
from medlab.image import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TINY = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def _child(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python with at most 4 GiB of address space and ``timeout`` seconds."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False,
                          timeout=timeout, preexec_fn=limit, cwd=HERE)


def _cases(n: int = 2, value: int = 1, dtype=np.uint8):
    """``n`` small image/label pairs: a bright box labelled ``value``."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(n):
        a = rng.normal(0.0, 0.1, (8, 16, 16)).astype(np.float32)
        m = np.zeros(a.shape, dtype)
        m[2:6, 4:10, 4:10] = value
        a[m != 0] += 1.0
        images.append(Image(a, (1.5, 1.5, 2.0)))
        labels.append(Image(m, (1.5, 1.5, 2.0), kind="label"))
    return images, labels


def _model(label_values=(1,), **prep):
    """A checkpoint as train_segmenter writes one (fresh weights: what is tested is the checking)."""
    from medlab.deep import build_network, network_config
    from medlab.deep.preprocessing import intensity_record
    from medlab.outputs import Checkpoint

    cfg = network_config("unet", spatial_dims=3, in_channels=1, out_channels=len(label_values) + 1, **TINY)
    record = {"channels": ["t1"], "intensity": intensity_record("percentile"), "direction": np.eye(3).tolist(),
              "spacing": None, "patch_size": [16, 16, 8], "overlap": 0.25, "label_values": list(label_values),
              "label_colours": {}, "modality": "MR", **prep}
    return Checkpoint(build_network(cfg).state_dict(), cfg, labels={v: f"class {v}" for v in label_values},
                      preprocessing=record)


# ============================================================================ deep: training input
def test_negative_label_values_are_refused_not_mapped_onto_another_class():
    # before: classes=None took -3 as a class and wrote it at index -3 of a look-up table,
    # i.e. onto another label value's slot; training went on with the wrong targets
    images, labels = _cases()
    labels = [lab.with_array(np.where(lab.array == 1, -3, 0).astype(np.int16)) for lab in labels]
    from medlab.deep import train_segmenter

    with pytest.raises(ParameterError, match=r"negative values \[-3\]"):
        train_segmenter(images, labels, config=TINY, patch_size=(8, 8, 8), epochs=1)


@pytest.mark.parametrize("validation", [-1, -2])
def test_a_negative_validation_is_refused(validation):
    # before: validation=-1 held out -1 cases, i.e. order[-1:] trained and the rest validated
    from medlab.deep import train_segmenter

    images, labels = _cases(3)
    with pytest.raises(ParameterError, match="validation"):
        train_segmenter(images, labels, config=TINY, patch_size=(8, 8, 8), epochs=1, validation=validation)


@pytest.mark.parametrize("patch", [(16.5, 16, 8), (True, 16, 8)])
def test_patch_sizes_must_be_whole_voxel_counts(patch):
    # before: 16.5 was silently taken as 16, True as 1
    from medlab.deep import train_segmenter

    images, labels = _cases()
    with pytest.raises(ParameterError, match="whole voxel counts"):
        train_segmenter(images, labels, config=TINY, patch_size=patch, epochs=1)


def test_patches_and_steps_too_large_for_memory_are_refused_before_training():
    # before: a 1024³ patch failed deep inside MONAI (a bare RuntimeError) after the data were
    # prepared, and 64 x 64 patches of 128³ per step ran the machine out of memory
    done = _child("""
        import test_hostile_stages as t
        from medlab.deep import train_segmenter
        from medlab.errors import ParameterError
        images, labels = t._cases()
        for kwargs in ({"patch_size": (1024, 1024, 1024)},
                       {"patch_size": (128, 128, 128), "batch_size": 64, "samples_per_image": 64}):
            try:
                train_segmenter(images, labels, config=t.TINY, epochs=1, **kwargs)
                print("trained")
            except ParameterError as exc:
                print("refused:", exc)
            except BaseException as exc:
                print("failed:", type(exc).__name__)
        """)
    assert done.returncode == 0, done.stderr[-800:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and "more than 8388608" in lines[0] and "per optimiser step" in lines[1], done.stdout


def test_intensity_arguments_must_be_plain_values():
    # before: TypeError "unsupported operand type(s) for -: 'float' and 'object'" from MONAI
    from medlab.deep import train_segmenter

    images, labels = _cases()
    for args in ({"minv": object()}, {"minv": float("nan")}, {"a_min": [1, 2]}):
        with pytest.raises(ParameterError, match="intensity"):
            train_segmenter(images, labels, config=TINY, patch_size=(8, 8, 8),
                            intensity={"transform": "ScaleIntensity", "args": args})


def test_a_numpy_learning_rate_is_a_learning_rate():
    # before: learning_rate=np.float32(1e-3) (a slider's value) was refused as not a number; now the
    # error is about what is wrong in this call (a negative validation)
    from medlab.deep import train_segmenter

    images, labels = _cases(3)
    with pytest.raises(ParameterError, match="validation"):
        train_segmenter(images, labels, config=TINY, patch_size=(8, 8, 8), learning_rate=np.float32(1e-3),
                        validation=-1)


def test_a_huge_label_value_is_learnt_without_a_table_of_that_length():
    # before: classes {2**31 - 1: ...} built an int64 look-up table of 2**31 entries (16 GB; Linux
    # hands out the zeros lazily, so it "worked" until memory ran short). tracemalloc sees numpy's
    # allocations at the size asked for.
    import tracemalloc

    from medlab.deep.train import _prepare_case, _preprocessing

    images, labels = _cases(1, value=2**31 - 1, dtype=np.int64)
    marked = labels[0].array.copy()
    marked[0, 0, 0] = 5                                    # a value that is not learnt: background
    case = ([images[0]], labels[0].with_array(marked))
    classes = {2**31 - 1: "big"}
    prep = _preprocessing([case], "percentile", None, [16, 16, 8], classes, None, 1)
    import monai.transforms  # noqa: F401 - imported before tracing (slow to import under tracemalloc)

    tracemalloc.start()
    try:
        out = _prepare_case(case, prep, classes)["label"][0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert sorted(np.unique(out).tolist()) == [0, 1] and int((out == 1).sum()) == int((marked == 2**31 - 1).sum())


def test_an_image_too_large_on_the_networks_grid_is_refused_before_resampling():
    # before: a model recorded at a tiny voxel size made SimpleITK try to allocate the image on
    # that grid (here 500 TB: "Failed to allocate memory", a bare RuntimeError; a few GB would swap)
    from medlab.deep import deep_segment

    image = Image(np.zeros((10, 10, 10), np.float32), (50.0, 50.0, 50.0))
    image = image.with_array(np.random.default_rng(0).random(image.shape).astype(np.float32))
    with pytest.raises(ImageError, match="crop the image"):
        deep_segment(image, _model(spacing=[0.01, 0.01, 0.01]))


def test_ctrl_c_during_training_stays_a_keyboard_interrupt_that_keeps_the_best_model():
    """The notebook's stop button is a KeyboardInterrupt: before, minutes of training were lost."""
    pytest.importorskip("monai")
    from medlab.deep import train_segmenter
    from medlab.outputs import Checkpoint
    from medlab.stage import progress_to

    images, labels = _cases()

    def interrupt(fraction, message):
        if message.startswith("epoch 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info, progress_to(interrupt):
        train_segmenter(images, labels, config=TINY, patch_size=(8, 8, 8), epochs=5, batch_size=1,
                        samples_per_image=1, validation=0, augment=False, threads=1)
    kept = info.value.result
    assert kept.cancelled and isinstance(kept.model, Checkpoint) and kept.model.metrics["epoch"] == 1


@pytest.mark.parametrize("seeds", ["12", [1.7], [True]])
def test_phantom_seeds_must_be_whole_numbers(seeds):
    # before: "12" made the phantoms of seeds 1 and 2, 1.7 the phantom of seed 1, True of seed 1
    from medlab.deep import brain_tumour_cases

    with pytest.raises(ParameterError, match="seeds"):
        brain_tumour_cases(seeds, size=(16, 16, 8))


def test_endless_phantom_seeds_are_refused_without_hanging():
    # before: itertools.count() was read into a list for ever
    done = _child("""
        import itertools
        from medlab.deep import brain_tumour_cases
        from medlab.errors import ParameterError
        for seeds in (itertools.count(), range(10**9)):
            try:
                brain_tumour_cases(seeds)
            except ParameterError as exc:
                print("refused:", exc)
        """, timeout=30)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.count("at most 10000 phantoms") == 2


# ============================================================================ deep: checkpoints
def _edited(tmp_path, model, **prep):
    """The checkpoint saved, its preprocessing record edited in the file, and loaded again."""
    import torch

    from medlab.outputs import Checkpoint

    path = model.save(tmp_path / "model.pt", overwrite=True)
    data = torch.load(path, weights_only=True)
    data["preprocessing"] = json.dumps({**json.loads(data["preprocessing"]), **prep})
    torch.save(data, path)
    return Checkpoint.load(path)


@pytest.mark.parametrize("prep, match", [
    ({"patch_size": [0, 0, 0]}, "patch_size"),                         # before: ran (a 0-voxel window)
    ({"patch_size": [100000, 100000, 100000]}, "patch_size"),          # before: tried to allocate 4 PB
    ({"patch_size": "abc"}, "patch_size"),                             # before: TypeError
    ({"spacing": [0, 0, 0]}, "spacing"),                               # before: SimpleITK TypeError
    ({"spacing": "x"}, "spacing"),                                     # before: ValueError
    ({"direction": [[0, 0, 0], [0, 0, 0], [0, 0, 0]]}, "direction"),   # before: ITK "determinant is 0"
    ({"label_values": ["x"]}, "label_values"),                         # before: ValueError from int()
    ({"label_values": [-1]}, "label_values"),                          # before: OverflowError for uint8
    ({"overlap": 5}, "overlap"),                                       # before: silently used
])
def test_an_edited_preprocessing_record_is_refused_naming_the_key(tmp_path, prep, match):
    from medlab.deep import deep_segment

    image = _cases(1)[0][0]
    model = _edited(tmp_path, _model(), **prep)
    with pytest.raises(ParameterError, match=match):
        deep_segment(image, model)


def test_label_values_beyond_uint16_come_back_unchanged():
    # before: OverflowError "Python integer 70000 out of bounds for uint16"
    from medlab.deep import deep_segment

    image = _cases(1)[0][0]
    labels, _ = deep_segment(image, _model(label_values=(70000,)))
    assert labels.array.dtype == np.uint32 and set(np.unique(labels.array)) <= {0, 70000}
    assert labels.labels[70000].name == "class 70000"


@pytest.mark.parametrize("convert", [lambda t: t.to(__import__("torch").int32),       # before: cast, all weights 0
                                     lambda t: t.to(__import__("torch").complex64),   # before: imaginary part dropped
                                     lambda t: t.to_sparse()])                        # before: NotImplementedError
def test_weights_of_the_wrong_kind_are_refused(convert):
    from medlab.deep import deep_segment
    from medlab.outputs import Checkpoint

    model = _model()
    state = dict(model.state_dict)
    first = next(iter(state))
    state[first] = convert(state[first])
    odd = Checkpoint(state, model.config, labels=model.labels, preprocessing=model.preprocessing)
    with pytest.raises(ParameterError, match=f"wrong kind.*{first}"):
        deep_segment(_cases(1)[0][0], odd)


@pytest.mark.parametrize("card", [b"{not json", b"\xff\xfe", b"[1, 2]"])
def test_a_damaged_model_card_is_a_read_error_naming_it(tmp_path, monkeypatch, card):
    # before: a bare JSONDecodeError / UnicodeDecodeError (and a list taken for a card)
    import importlib

    from medlab.errors import ReadError

    shipped = importlib.import_module("medlab.deep.pretrained")   # the module, not the function it exports

    (tmp_path / "toy.json").write_bytes(card)
    (tmp_path / "toy.pt").write_bytes(b"")
    monkeypatch.setattr(shipped, "WEIGHTS", tmp_path)
    with pytest.raises(ReadError, match="toy.*reinstall"):
        shipped.pretrained_models()


# ============================================================================ segment
def test_multi_otsu_refuses_a_search_that_would_take_days():
    # before: 5 classes in 4096 bins searched 4096**4 combinations (killed after 10 minutes)
    img = Image(np.random.default_rng(0).normal(0, 1, (10, 30, 30)).astype(np.float32))
    done = _child("""
        import numpy as np
        from medlab import Image, segment
        from medlab.errors import ParameterError
        img = Image(np.random.default_rng(0).normal(0, 1, (10, 30, 30)).astype(np.float32))
        try:
            segment.multi_otsu_threshold(img, classes=5, bins=4096)
        except ParameterError as exc:
            print("refused:", exc)
        """, timeout=60)
    assert done.returncode == 0, done.stderr[-800:]
    assert "refused:" in done.stdout and "at most 256 bins for 5 classes" in done.stdout
    assert segment.multi_otsu_threshold(img, classes=5, bins=128).array.max() == 4   # what it allows still runs


def test_neighbourhood_connected_on_a_fine_grid_erodes_by_distance_not_by_a_huge_filter():
    # before: the radius became a footprint of (2r+1)³ voxels visited at every voxel: 0.18 mm on
    # 0.01 mm voxels ran out of 4 GiB (MemoryError) or for minutes; now one distance transform
    done = _child("""
        import numpy as np
        from medlab import Image, segment
        a = np.zeros((50, 100, 100), np.float32); a[5:45, 20:80, 20:80] = 10
        img = Image(a, (0.01, 0.01, 0.01))
        region = segment.neighbourhood_connected(img, seeds=[img.index_to_physical((50, 50, 25))], tolerance=1,
                                                 radius=0.18)
        inside = region.array.astype(bool)
        print("voxels", int(inside.sum()), "outside the box", int((inside & (a == 0)).sum()))
        """, timeout=40)
    assert done.returncode == 0, done.stderr[-800:]
    assert "outside the box 0" in done.stdout and "voxels 0 " not in done.stdout


def test_confidence_connected_on_a_fine_grid_does_not_build_a_ball_larger_than_the_image():
    # before: 20 mm on 0.01 mm voxels built a ball of 4001³ voxels to crop it (MemoryError)
    done = _child("""
        import numpy as np
        from medlab import Image, segment
        a = np.random.default_rng(0).normal(0, 1, (20, 60, 60)).astype(np.float32); a[5:15, 20:40, 20:40] += 20
        img = Image(a, (0.01, 0.01, 0.01))
        region = segment.confidence_connected(img, seeds=[img.index_to_physical((30, 30, 10))], radius=20)
        print("voxels", int(region.array.sum()))
        """, timeout=40)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.startswith("voxels") and "voxels 0" not in done.stdout


def test_a_closing_radius_of_hundreds_of_voxels_is_refused():
    # before: 3 mm on 0.01 mm voxels handed ITK a ball of 601³ voxels to visit at every voxel
    done = _child("""
        import numpy as np
        from medlab import Image, segment
        from medlab.errors import ParameterError
        m = np.zeros((20, 60, 60), np.uint8); m[5:15, 20:40, 20:40] = 1
        try:
            segment.closing(Image(m, (0.01, 0.01, 0.01), kind="label"), radius=3)
        except ParameterError as exc:
            print("refused:", exc)
        """, timeout=40)
    assert done.returncode == 0, done.stderr[-800:]
    assert "refused:" in done.stdout and "300 x 300 x 300 voxels" in done.stdout
    labels = Image(np.zeros((8, 16, 16), np.uint8), (0.5, 0.5, 2.0), kind="label")
    assert segment.closing(labels, radius=50).same_grid(labels)      # the slider's 50 mm on usual voxels runs


def test_a_wide_brush_on_a_fine_grid_paints_without_listing_every_voxels_coordinates():
    # before: the brush listed the physical coordinates of every voxel in its box (three float64
    # arrays of 64 million points here: out of 4 GiB); now per-axis squares are broadcast
    done = _child("""
        import numpy as np
        from medlab import Image, segment
        lab = Image(np.zeros((100, 800, 800), np.uint8), (0.01, 0.01, 0.01), kind="label")
        painted = segment.paint_labels(lab, strokes=[lab.index_to_physical((400, 400, 50))], radius=50)
        print("painted", int(np.count_nonzero(painted.array)))
        """, timeout=60)
    assert done.returncode == 0, done.stderr[-800:]
    assert "painted 64000000" in done.stdout                # a 50 mm ball covers the whole 8 x 8 x 1 mm grid


def test_watershed_of_values_beyond_float32_is_the_watershed_of_the_same_image_scaled():
    # before: 1e300 became inf in float32, the gradient NaN, and the region one voxel
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (10, 30, 30))
    a[3:7, 10:20, 10:20] += 20
    img = Image(a, (0.8, 0.8, 2.5))
    seed = [img.index_to_physical((15, 15, 5))]
    corner = [img.index_to_physical((1, 1, 1))]
    plain = segment.watershed(img, seeds=seed, background=corner)
    huge = segment.watershed(img.with_array(a * 1e300), seeds=seed, background=corner)
    assert plain.array.sum() > 100 and np.array_equal(huge.array, plain.array)
    assert np.isfinite(segment.gradient_magnitude(img.with_array(a * 1e300), 1.0)).all()


def test_a_float32_image_with_large_values_keeps_a_finite_gradient():
    # before: squaring a gradient of ~1e20 overflowed float32 to inf everywhere
    a = np.zeros((20, 20), np.float32)
    a[:, 10:] = 3e20
    g = segment.gradient_magnitude(Image(a), 1.0)
    assert np.isfinite(g).all() and g.max() > 1e19


def _series(tmp_path):
    import dicom_factory as df

    df.write_series(tmp_path / "ct", df.phantom_volume((3, 8, 8)))
    ct = medlab.load(tmp_path / "ct")
    mask = np.zeros(ct.shape, np.uint8)
    mask[1, 2:5, 2:5] = 1
    return ct, ct.with_array(mask, kind="label", labels={1: "lesion"})


def test_dicom_seg_export_never_overwrites_a_slice_of_its_source_series(tmp_path):
    # before: overwrite=True replaced IM0000.dcm of the source series with the SEG
    _, seg = _series(tmp_path)
    first = min((tmp_path / "ct").iterdir())
    before = first.read_bytes()
    with pytest.raises(WriteError, match="slice of the source series"):
        segment.write_dicom_seg(seg, tmp_path / "ct", first, algorithm_family="HistogramAnalysis", overwrite=True)
    assert first.read_bytes() == before


def test_dicom_seg_export_refuses_odd_arguments(tmp_path):
    _, seg = _series(tmp_path)
    common = {"algorithm_family": "HistogramAnalysis"}
    with pytest.raises(ParameterError, match="source_series_folder"):           # before: TypeError
        segment.write_dicom_seg(seg, None, tmp_path / "a.dcm", **common)
    with pytest.raises(ParameterError, match="series_number"):                  # before: written as 1
        segment.write_dicom_seg(seg, tmp_path / "ct", tmp_path / "a.dcm", series_number=True, **common)
    with pytest.raises(WriteError, match=r"\.dcm"):                             # before: a DICOM named .nii
        segment.write_dicom_seg(seg, tmp_path / "ct", tmp_path / "a.nii", **common)
    assert not list(tmp_path.glob("a.*"))


# ============================================================================ metrics
def test_a_probability_map_is_not_taken_for_a_mask():
    # before: every voxel above 0 counted, a perfect prediction scored Dice 0.04 without a word
    truth = np.zeros((6, 20, 20), np.uint8)
    truth[2:4, 5:10, 5:10] = 1
    prob = np.where(truth > 0, 0.9, 0.01)
    for score in (metrics.dice, metrics.iou, metrics.hausdorff95, metrics.segmentation_scores):
        with pytest.raises(ImageError, match="non-integer values.*> 0.5"):
            score(prob, truth)
    assert metrics.dice(prob > 0.5, truth) == 1.0 and metrics.dice(truth.astype(np.float32), truth) == 1.0


def test_an_intensity_image_scored_as_a_label_map_is_refused_not_scored_for_minutes():
    # before: a CT given as pred scored each of its 2000 HU values as a label (39 s on 32×64×64
    # voxels under load; hours on a real CT)
    ct = np.random.default_rng(0).integers(-1000, 1000, (8, 32, 32)).astype(np.int16)
    truth = np.zeros(ct.shape, np.uint8)
    truth[2:6, 10:20, 10:20] = 1
    with pytest.raises(ParameterError, match="intensity image rather than a label map"):
        metrics.segmentation_scores(ct, truth)
    assert len(metrics.segmentation_scores(ct, truth, labels=[1])) == 1    # chosen labels still score


def test_a_large_label_value_is_compared_exactly():
    # before: the label went through float, so 2**53 + 1 was read as 2**53
    truth = np.zeros((4, 8, 8), np.int64)
    truth[1:3, 2:5, 2:5] = 2**53
    pred = np.where(truth > 0, 2**53 + 1, 0)
    row = metrics.segmentation_scores(pred, truth, labels=[2**53 + 1])[0]
    assert row["volume_pred_ml"] > 0 and row["volume_truth_ml"] == 0


def test_none_among_the_labels_to_score_is_refused():
    # before: [None] scored a row labelled None (every non-zero voxel)
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    with pytest.raises(ParameterError, match="None among them"):
        metrics.segmentation_scores(a, a, labels=[1, None])


def test_a_boolean_percentile_is_refused():
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 1
    with pytest.raises(ParameterError, match="percentile"):   # before: True was the 1st percentile
        metrics.hausdorff_distance(a, a, percentile=True)


# ============================================================================ widget
def test_closing_the_segment_widget_twice_is_quiet():
    # before: the second close (ipywidgets closes again when the object is collected) raised
    # ValueError from a traitlets unlink, printed as "Exception ignored in Widget.__del__"
    pytest.importorskip("ipywidgets")
    from medlab.widgets import SegmentWidget

    brain = medlab.data.brain_mri(size=(24, 24, 12), seed=0)
    w = SegmentWidget(brain.flair, debounce=0.0)
    w.close()
    w.close()


def test_the_widgets_mesh_export_writes_every_surface_or_none(tmp_path):
    # before: with two labels, the first surface was written and the second refused (it existed),
    # leaving half an export; save_labels(None) wrote a file named "None"
    pytest.importorskip("ipywidgets")
    from medlab.widgets import SegmentWidget

    from medlab.errors import MedlabError

    image = Image(np.random.default_rng(0).random((12, 24, 24)).astype(np.float32), (1.0, 1.0, 2.0))
    w = SegmentWidget(image, debounce=0.0)
    arr = np.zeros(image.shape, np.uint8)
    arr[2:6, 3:9, 3:9] = 1
    arr[6:10, 12:20, 12:20] = 2
    w.session["pieces"] = image.with_array(arr, kind="label", labels={1: "a", 2: "b"})
    (tmp_path / "s_2.stl").write_bytes(b"mine")
    with pytest.raises(WriteError, match="s_2.stl"):
        w.save_mesh(tmp_path / "s.stl")
    assert not (tmp_path / "s_1.stl").exists() and (tmp_path / "s_2.stl").read_bytes() == b"mine"
    with pytest.raises(MedlabError, match="file name"):
        w.save_labels(None)
    assert not list(tmp_path.glob("None*")) and not Path("None").exists()
    w.close()
