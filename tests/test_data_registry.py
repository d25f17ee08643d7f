"""The remote registry: entries, checksums, and the real fetch code against a local server.

Nothing here touches the internet: MEDLAB_DATA_URL points every fetch at an HTTP server on
127.0.0.1 that serves a temporary copy of a few files from ../shared/data.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medlab.data import data_dir, fetch, remote_entries
from medlab.errors import ReadError

SERVED = ["mr_abdomen", "breast_mr", "breast_mr_mask", "ct_abdomen_dicom"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _entries() -> dict[str, dict]:
    return {e["name"]: e for e in remote_entries()}


class _Server:
    """A static file server on 127.0.0.1 that records each requested path."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def mirror(tmp_path, shared, monkeypatch):
    """Serve copies of the SERVED entries' files; cache in a fresh temporary folder."""
    root = tmp_path / "mirror"
    entries = _entries()
    for name in SERVED:
        for f in entries[name]["files"]:
            dest = root / f["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared(f["path"]), dest)
            dest.chmod(0o644)
    server = _Server(root)
    monkeypatch.setenv("MEDLAB_DATA_URL", server.url)
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server.root = root
    yield server
    server.stop()


def test_entries_are_complete_and_pinned():
    entries = _entries()
    assert {"ct_abdomen", "ct_abdomen_dicom", "mr_abdomen", "brain_tumour_mr", "chest_xray"} <= set(entries)
    for name, e in entries.items():
        for key in ("title", "modality", "licence", "source", "files"):
            assert e[key], f"{name} lacks {key}"
        for f in e["files"]:
            assert re.fullmatch(r"[0-9a-f]{64}", f["sha256"])
            assert re.match(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/", f["url"]), f["url"]
            assert f["url"].rsplit("/", 1)[1] == f["path"].rsplit("/", 1)[1]
    for name in ("chris_t1", "chris_pd"):
        assert entries[name]["noncommercial"] and "NC" in entries[name]["licence"]
    assert len(entries["ct_abdomen_dicom"]["files"]) == 20


def test_registry_hashes_match_the_shared_checksums(shared):
    sums = {}
    for line in shared("SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        sums[path.removeprefix("./")] = digest
    for e in remote_entries():
        for f in e["files"]:
            assert f["sha256"] == sums[f["path"]], f["path"]


def test_fetch_downloads_verifies_and_caches(mirror, tmp_path):
    path = fetch("mr_abdomen")
    assert path == tmp_path / "cache" / "mr_abdomen" / "example_mr_sm.nii.gz"
    assert _sha256(path) == _entries()["mr_abdomen"]["files"][0]["sha256"]
    assert mirror.requests == ["/mr_abdomen/example_mr_sm.nii.gz"]
    assert fetch("mr_abdomen") == path
    assert len(mirror.requests) == 1, "the cached copy is used without any request"


def test_fetch_of_a_series_returns_its_folder(mirror, tmp_path):
    folder = fetch("ct_abdomen_dicom")
    assert folder == tmp_path / "cache" / "ct_abdomen" / "example_ct_dicom"
    assert len(list(folder.iterdir())) == 20 and len(mirror.requests) == 20


def test_fetched_file_loads_as_an_image(mirror):
    import SimpleITK as sitk

    img = sitk.ReadImage(str(fetch("breast_mr_mask")))
    assert img.GetDimension() == 3 and img.GetSize()[0] > 1


def test_checksum_mismatch_raises_and_keeps_nothing(mirror, tmp_path):
    served = mirror.root / "labels" / "breast1_image.nrrd"
    data = bytearray(served.read_bytes())
    data[-10] ^= 0xFF                                     # one corrupted byte
    served.write_bytes(bytes(data))
    with pytest.raises(ReadError) as err:
        fetch("breast_mr")
    message = str(err.value)
    assert "checksum" in message and "breast1_image.nrrd" in message and "MEDLAB_DATA_URL" in message
    assert not (tmp_path / "cache" / "labels" / "breast1_image.nrrd").exists()


def test_missing_file_on_the_server_raises_read_error(mirror):
    (mirror.root / "labels" / "breast1_label.nrrd").unlink()
    with pytest.raises(ReadError, match="breast1_label.nrrd"):
        fetch("breast_mr_mask")


def test_network_failure_raises_read_error(monkeypatch, tmp_path):
    with socket.socket() as s:                            # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MEDLAB_DATA_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with pytest.raises(ReadError) as err:
        fetch("chest_xray")
    assert "00000001_000.png" in str(err.value) and "network" in str(err.value)


def test_unknown_name_lists_the_entries(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(ReadError) as err:
        fetch("ct_abdomen_typo")
    assert "ct_abdomen_typo" in str(err.value) and "mr_abdomen" in str(err.value)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    import pooch

    monkeypatch.setenv("MEDLAB_DATA_DIR", str(tmp_path / "here"))
    assert data_dir() == tmp_path / "here"
    monkeypatch.delenv("MEDLAB_DATA_DIR")
    assert data_dir() == Path(pooch.os_cache("medlab"))


def test_noncommercial_fetch_warns(mirror, tmp_path):
    f = _entries()["chris_pd"]["files"][0]
    dest = mirror.root / f["path"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"not the real file")
    with pytest.warns(UserWarning, match="CC BY-NC"), pytest.raises(ReadError, match="checksum"):
        fetch("chris_pd")
