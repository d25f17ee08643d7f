"""Hostile pass, session 6: bugs found in this session's new code, each with the test that
failed before its fix (cohort planning and cancel; occlusion; the classifier's training CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from cohort_factory import phantom_cohort

import medlab
from medlab.cohort import CASES_DIR, read_record, run_cohort

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """Six small phantom T1 images in a folder, and a smoothing + Otsu recipe."""
    return phantom_cohort(tmp_path_factory.mktemp("hostile_cohort"), [f"sub{i}" for i in range(6)])


def test_a_cancelled_run_accounts_for_every_case(small_cohort, client, tmp_path):
    """Cancelled after the first case with batches in flight: the result named only the 2 cases
    read back ("2 case(s) ... (cancelled)"), while cases.csv had a third done in this run and the
    rest "not run"; every case is now in the result: done (computed) or cancelled, as on disk."""
    folder, recipe = small_cohort

    def stop(record, run):
        raise KeyboardInterrupt

    result = run_cohort(recipe, folder, tmp_path / "out", client, batch=2, progress=False, on_update=stop)
    assert result.cancelled
    ids = [f"sub{i}" for i in range(6)]
    assert list(result.records) == ids                                   # every case, in listed order
    table = dict(zip(result.cases["case"], result.cases["status"]))
    for cid, record in result.records.items():
        assert record["status"] in ("done", "cancelled"), cid
        if record["status"] == "done":        # a task in flight may still commit a case after the cancel
            assert read_record(tmp_path / "out" / CASES_DIR / cid)["status"] == "done" == table[cid], cid
    assert result.counts["computed"] == sum(r["status"] == "done" for r in result.records.values()) >= 1
    assert f"{len(ids)} case(s)" in result.summary()


def test_result_records_follow_the_listing_not_the_completion_order(small_cohort, client, tmp_path):
    """Large cases now run first (and batches finish in any order): ``result.records`` and
    ``result.failures`` followed completion order, so two runs of one cohort listed them
    differently; they follow the cases' listed order, as cases.csv does."""
    folder, recipe = small_cohort
    from medlab.cohort import CohortRun

    run = CohortRun(recipe, folder, tmp_path / "out", client, batch=1)
    run.start()
    for _ in run.as_completed():
        pass
    run.records = dict(reversed(list(run.records.items())))              # as if they finished backwards
    result = run.finish()
    assert list(result.records) == list(pd.read_csv(tmp_path / "out" / "cases.csv")["case"]) == \
        [f"sub{i}" for i in range(6)]


@pytest.mark.slow
def test_a_local_cluster_leaves_the_callers_environment_as_it_was(monkeypatch):
    """Dask's nanny copies its pre-spawn variables into the caller's os.environ: after a cohort
    run the notebook's kernel held MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ (and every
    later subprocess or Dask cluster inherited them). The workers still get them."""
    import os

    from medlab.cohort.engine import WORKER_MALLOC, local_cluster

    for name in WORKER_MALLOC:
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    client, cluster = local_cluster(1, dashboard=False)
    try:
        seen = next(iter(client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC}).values()))
        here = {k: os.environ.get(k) for k in WORKER_MALLOC}
    finally:
        client.close()
        cluster.close()
    assert seen == {k: str(v) for k, v in WORKER_MALLOC.items()}
    assert here == {k: None for k in WORKER_MALLOC} and os.environ["PYTHONHASHSEED"] == "0"


@pytest.mark.parametrize("address", ["not an address", "http://127.0.0.1:8787", ""])
def test_a_malformed_scheduler_address_is_a_parameter_error(small_cohort, tmp_path, address):
    """``client="http://127.0.0.1:8787"`` (the dashboard's link) or a typo raised Dask's bare
    ValueError ("missing port number", "unknown address scheme"); it names the parameter now."""
    from medlab.errors import ParameterError

    folder, recipe = small_cohort
    with pytest.raises(ParameterError, match="scheduler address"):
        run_cohort(recipe, folder, tmp_path / "out", address, progress=False)
    assert not (tmp_path / "out" / "cases.csv").exists()


@pytest.mark.parametrize("kw", [{"threads": 0}, {"threads": -2}, {"threads": 2.7}, {"threads": True},
                                {"workers": 0}, {"workers": -1}, {"workers": 2.5}, {"workers": True}])
def test_absurd_threads_or_workers_are_refused_before_any_work(small_cohort, client, tmp_path, kw):
    """``threads=-2`` failed every case with SimpleITK's OverflowError ("argument 1 of type
    'unsigned int'"), ``threads=0`` every case in torch.set_num_threads; ``workers=0`` silently
    started one worker per core. Both are refused up front now."""
    from medlab.cohort import CohortRun
    from medlab.errors import ParameterError

    folder, recipe = small_cohort
    name = next(iter(kw))
    with pytest.raises(ParameterError, match=name):
        CohortRun(recipe, folder, tmp_path / "out", None if name == "workers" else client, **kw)
    assert not (tmp_path / "out").exists()


def test_a_case_committed_by_a_batch_whose_worker_died_counts_as_computed(small_cohort, client, tmp_path):
    """A batch's worker died after one of its cases committed: the case, sent again alone, was
    found done on disk and reported "skipped (done before)" although this run computed it.
    (Which run wrote a record is its ``run_id`` since session 7, no longer the file's time.)"""
    from types import SimpleNamespace

    from medlab.cohort import CohortRun

    folder, recipe = small_cohort
    first = run_cohort(recipe, folder, tmp_path / "out", client, progress=False)
    skipped = dict(read_record(tmp_path / "out" / CASES_DIR / "sub1"), run="skipped")   # what the worker returns
    done = SimpleNamespace(medlab_cases=["sub1"], status="finished", result=lambda: skipped)
    run = CohortRun(recipe, folder, tmp_path / "out", client)
    run.run_id = first.records["sub1"]["run_id"]            # the record was written during this run
    assert run._records_of(done)[0]["run"] == "computed"
    run = CohortRun(recipe, folder, tmp_path / "out", client)   # written by an earlier run: skipped indeed
    assert run._records_of(done)[0]["run"] == "skipped"


# ---------------------------------------------------------------------------- occlusion
def _image():
    rng = np.random.default_rng(0)
    return medlab.Image(rng.random((10, 12, 11)).astype(np.float32), spacing=(2.0, 2.0, 3.0))


def _bn_net(track: bool = True):
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4, track_running_stats=track), nn.ReLU(),
                        nn.Conv3d(4, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    if track:
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def test_occlusion_evaluates_a_model_left_in_training_mode():
    """The image's own score came from evaluation mode, every occluded copy from the caller's
    training mode (batch norm on the batch's statistics): the map was 221x off its peak."""
    from medlab.explain import occlusion

    net = _bn_net().train()
    kw = {"mask_size": 6, "target_class": 0, "sign": "signed", "normalise": "none"}
    trained = occlusion(_image(), net, **kw)[0].array
    assert net.training and net[1].training                     # the caller's flags restored
    evaluated = occlusion(_image(), net.eval(), **kw)[0].array
    np.testing.assert_allclose(trained, evaluated, atol=1e-5 * np.abs(evaluated).max())


def test_occlusion_of_a_model_normalising_by_its_batch_scores_each_copy_alone():
    """Batch norm without running statistics normalises by the batch even in evaluation mode:
    the incremental map (groups of 8) was 0.45 of the peak off the full forwards' (batches of 32),
    and both were off the image's own score (a batch of one). Each copy now runs alone."""
    from medlab.explain._common import prepare
    from medlab.explain.perturbation import occlusion_drop

    ctx = prepare("occlusion", _image(), _bn_net(track=False).eval(), None, target_class=0, region=(),
                  region_radius=10.0, sign="signed")
    maps = {(inc, b): occlusion_drop(ctx, (3, 3, 3), 0.5, "mean", b, 0.0, "logit", incremental=inc)[0]
            for inc in (True, False) for b in (1, 32)}
    peak = np.abs(maps[(False, 1)]).max()
    for m in maps.values():
        np.testing.assert_allclose(m, maps[(False, 1)], atol=1e-5 * peak)


@pytest.mark.parametrize("graph", [False, True])
def test_incremental_occlusion_leaves_a_layer_whose_forward_was_replaced(graph):
    """A convolution whose instance ``forward`` was replaced (as accelerate's hooks and some
    adapters do) was recomputed with its weights as a plain convolution: 2 % of the peak off."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from medlab.explain.incremental import IncrementalOcclusion
    from medlab.explain.incremental_graph import GraphIncrementalOcclusion
    from medlab.explain.perturbation import window_starts

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body = nn.Conv3d(1, 4, 3, padding=1), nn.Conv3d(4, 4, 3, padding=1)
            self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))

        def forward(self, x):
            y = torch.relu(self.stem(x))
            return self.head(y + self.body(y))

    torch.manual_seed(0)
    net = Residual().eval() if graph else nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
                                                        nn.Conv3d(4, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1),
                                                        nn.Flatten(), nn.Linear(4, 2)).eval()
    conv = net.body if graph else net[2]
    conv.forward = lambda t: F.conv3d(t, conv.weight * 2, conv.bias, padding=1)
    x = torch.rand(1, 1, 10, 12, 11)
    box = (4, 4, 4)
    starts = window_starts(tuple(x.shape[2:]), box, 0.5)
    engine = (GraphIncrementalOcclusion if graph else IncrementalOcclusion)(net, x)
    occluded = x.repeat(len(starts), 1, 1, 1, 1)
    for i, s in enumerate(starts):
        occluded[(i, slice(None), *[slice(int(a), int(a) + m) for a, m in zip(s, box)])] = 0.0
    with torch.no_grad():
        expected = net(occluded)
    got = engine.outputs(starts, box, 0.0)
    assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))


# ---------------------------------------------------------------------------- training CLI
@pytest.mark.parametrize("args, message", [
    (["--channels", "0"], "channels"), (["--downsample", "7"], "downsample"), (["--convs-per-block", "0"], "convs_per_block"),
    (["--batch", "0"], "--batch"), (["--threads", "0"], "--threads"), (["--epochs", "-1"], "--epochs"),
    (["--lr", "nan"], "--lr"), (["--n-train", "0"], "--n-train"), ("exists", "exists"),
])
def test_training_cli_refuses_bad_options_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    """The options were checked only after making 96 phantoms (minutes), an existing --out only
    after the whole training (14 minutes), --batch 0 and --threads 0 as bare tracebacks."""
    from medlab import data
    from medlab.explain import train_classifier

    def no_work(*a, **k):
        raise AssertionError("phantoms made before the options were checked")

    monkeypatch.setattr(data, "classification_set", no_work)
    out = tmp_path / "ck.pt"
    if args == "exists":
        out.write_bytes(b"keep")
        args = []
    with pytest.raises(SystemExit) as info:
        train_classifier.main(["--out", str(out), *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists() or out.read_bytes() == b"keep"


def test_deletion_insertion_evaluates_a_model_left_in_training_mode():
    """Deletion/insertion ran the occluded copies in the caller's training mode (batch statistics,
    random dropout), while the image's own score came from evaluation mode: curves changed with
    the mode and between runs."""
    import torch
    from torch import nn

    from medlab import Image
    from medlab.explain import deletion_insertion, grad_cam, table_value

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout3d(0.5),
                        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    rng = np.random.default_rng(0)
    image = Image(rng.random((12, 12, 12)).astype(np.float32))
    saliency = grad_cam(image, net.eval(), target_class=1)[0]
    keys = ("deletion AUC (lower is better)", "insertion AUC (higher is better)")
    net.eval()
    want = [table_value(deletion_insertion(image, net, saliency, target_class=1, steps=4)[1], k) for k in keys]
    net.train()
    got = [table_value(deletion_insertion(image, net, saliency, target_class=1, steps=4)[1], k) for k in keys]
    assert net.training and net[1].training and net[3].training            # the caller's flags restored
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
