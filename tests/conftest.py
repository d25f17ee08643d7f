"""Shared fixtures. Tests needing ``../shared/data`` skip when it is absent, unless
``MEDLAB_REQUIRE_SHARED=1`` (CI), where they fail instead."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDLAB_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(relpath: str) -> Path:
    """Path of a file in ``../shared/data``; skips (or fails under MEDLAB_REQUIRE_SHARED=1) if absent."""
    path = SHARED_DATA / relpath
    if not path.exists():
        msg = f"shared test data not found: {path}"
        if os.environ.get("MEDLAB_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " (MEDLAB_REQUIRE_SHARED=1)")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared():
    """``shared("ct_abdomen/example_ct_sm.nii.gz")`` -> Path, skipping/failing as above."""
    return shared_file


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module's tests: the machine's cores are shared, one thread is
    faster under load, and results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client():
    """An in-process Dask cluster, one worker thread (tasks run one at a time, in order): the
    scheduler API of a real cluster without process start-up, for the cohort tests."""
    distributed = pytest.importorskip("distributed")
    c = distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None)
    yield c
    c.close()
