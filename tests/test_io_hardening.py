"""Bad input that used to get through the I/O layer and the geometry stages (issue 7, §1).

Each test failed on the code before its fix: failed NIfTI writes that returned normally,
headers claiming terabytes, geometry read silently wrongly, values changed without a word,
and errors that named the wrong thing. Real failures are produced where the machine allows
(a file-size limit in a subprocess, a tiny tmpfs, a SIGKILL, an unprivileged user); each of
those has a variant that runs without root.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
import dicom_factory as df

import medlab
from medlab import Image, ParameterError, ReadError, WriteError
from medlab.errors import MedlabError, MedlabWarning
from medlab.preprocess import crop_to_foreground, pad, resample, resample_to

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TMP_NAMES = (".medlab-tmp", ".tmp")  # today's temporary names, and yesterday's


def _medlab_env(**extra) -> dict:
    """The environment of a child interpreter that imports the same medlab as this test."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p, "medlab").is_dir())
    return env


def _run(code: str, cwd: Path, *, as_unprivileged: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``as_unprivileged``: without root's right to read
    every file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH dropped with setpriv)."""
    command = [sys.executable, "-c", textwrap.dedent(code)]
    if as_unprivileged and IS_ROOT:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot drop the right to read every file")
        command = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(command, cwd=cwd, env=_medlab_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _no_temporary_named(message: str) -> None:
    assert not any(mark in message for mark in TMP_NAMES), message


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, *, readonly: bool = False):
    """A tiny RAM file system at ``where`` (root only: skipped otherwise)."""
    if not (IS_ROOT and shutil.which("mount")):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    where.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def _noise(shape=(40, 64, 64)) -> Image:
    return Image(np.random.default_rng(0).normal(size=shape).astype(np.float32), spacing=(0.8, 0.8, 2.0))


# ============================================================================ writes
def test_nifti_write_at_file_size_limit_raises_and_leaves_nothing(tmp_path):
    """ITK's NIfTI writer prints "wrote only N of M bytes" and returns; save() used to as well."""
    out = tmp_path / "out"
    out.mkdir()
    done = _run(f"""
        import json, os, resource, signal, numpy as np, medlab
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # get EFBIG instead of being killed
        img = medlab.Image(np.random.default_rng(0).normal(size=(40, 64, 64)).astype(np.float32))
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        result = {{}}
        for name in ("a.nii", "b.nii.gz"):
            try:
                medlab.save(img, os.path.join({str(out)!r}, name))
                result[name] = "returned normally"
            except Exception as exc:
                result[name] = [type(exc).__name__, isinstance(exc, medlab.WriteError), str(exc)]
        print(json.dumps(result))
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("a.nii", "b.nii.gz"):
        assert result[name] != "returned normally", name
        kind, is_write_error, message = result[name]
        assert is_write_error, (kind, message)
        assert name in message and "size limit" in message, message
        _no_temporary_named(message)
    assert os.listdir(out) == []


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_full_disk_gives_write_error_naming_the_destination(tmp_path, suffix):
    with _tmpfs(tmp_path / "small", "256k") as disk:
        target = disk / f"scan{suffix}"
        with pytest.raises(WriteError) as err:
            medlab.save(_noise(), target)   # 655 kB of float32 noise on a 256 kB disk
        message = str(err.value)
        assert str(target) in message and "full" in message, message
        _no_temporary_named(message)
        assert os.listdir(disk) == []


def test_short_nifti_write_is_caught_without_root(tmp_path, monkeypatch):
    """The same check without a real full disk: ITK writes part of the file and returns."""
    real_write = sitk.WriteImage

    def write_part(image, name, *args):
        real_write(image, name, *args)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(sitk, "WriteImage", write_part)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9 - 1000, 1000))
    for name in ("a.nii", "b.nii.gz"):
        with pytest.raises(WriteError, match="full") as err:
            medlab.save(_noise(), tmp_path / name)
        assert name in str(err.value)
        _no_temporary_named(str(err.value))
    assert os.listdir(tmp_path) == []


def test_read_only_folder_names_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "results"
    folder.mkdir()

    def refuse(prefix="", suffix="", dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(dir, f"{prefix}x9k2{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError) as err:
        medlab.save(_noise(), folder / "seg.nii.gz")
    message = str(err.value)
    assert f"folder {folder}" in message and "not writable" in message, message
    _no_temporary_named(message)


def test_read_only_file_system_names_the_folder(tmp_path):
    with _tmpfs(tmp_path / "ro", "64k", readonly=True) as disk:
        with pytest.raises(WriteError) as err:
            medlab.save(_noise(), disk / "seg.nrrd")
        assert f"folder {disk}" in str(err.value) and "read-only" in str(err.value)
        _no_temporary_named(str(err.value))


def test_save_to_none_is_a_parameter_error():
    with pytest.raises(ParameterError, match="path"):
        medlab.save(_noise(), None)
    with pytest.raises(ParameterError, match="path"):
        medlab.save(_noise(), 42)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".png"])
def test_save_refuses_what_load_would_refuse(tmp_path, suffix):
    """Found by the property test: a single-voxel image was written, then refused by load."""
    with pytest.raises(WriteError, match="single voxel"):
        medlab.save(Image(np.ones((1, 1), np.uint8)), tmp_path / f"dot{suffix}")
    assert os.listdir(tmp_path) == []


def _a_hidden_file_has_bytes(folder: Path) -> bool:
    for p in folder.iterdir():
        try:
            if p.name.startswith(".") and p.stat().st_size > 0:
                return True
        except FileNotFoundError:   # renamed between the listing and the stat (.medlab-new lives microseconds)
            continue
    return False


def test_killed_save_leaves_no_hidden_file_after_the_next_save(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    code = f"""
        import numpy as np, medlab
        img = medlab.Image(np.random.default_rng(0).normal(size=(192, 256, 256)).astype(np.float32))
        medlab.save(img, {str(folder / 'big.nii.gz')!r})
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=_medlab_env())
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if _a_hidden_file_has_bytes(folder):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the save finished before it could be killed mid-write"
    leftovers = [p.name for p in folder.iterdir()]
    assert leftovers and all(n.startswith(".") for n in leftovers)   # the kill left its temporary file
    medlab.save(_noise((4, 8, 8)), folder / "next.nii.gz")
    assert sorted(p.name for p in folder.iterdir()) == ["next.nii.gz"]


def test_a_save_in_progress_is_never_cleaned_away(tmp_path):
    from medlab.io.atomic import atomic_path, remove_stale_temporaries

    with atomic_path(tmp_path / "slow.nii.gz") as tmp:
        tmp.write_bytes(b"half written")
        assert remove_stale_temporaries(tmp_path) == []
        assert tmp.exists()
        medlab.save(_noise((4, 8, 8)), tmp_path / "other.nrrd")   # a save beside it cleans too
        assert tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.nrrd", "slow.nii.gz"]


# ============================================================================ headers claiming huge sizes
def _huge_nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.int16), np.eye(4)), path.with_suffix(".tmp.nii"))
    data = bytearray(path.with_suffix(".tmp.nii").read_bytes())
    path.with_suffix(".tmp.nii").unlink()
    struct.pack_into("<4h", data, 40, 3, 30000, 30000, 30000)
    head = bytes(data[:4096])                                          # a 4 kB file
    path.write_bytes(gzip.compress(head) if path.name.endswith(".gz") else head)
    return path


def _huge_itk(path: Path, encoding: str) -> Path:
    if path.suffix == ".nrrd":
        body = gzip.compress(b"\0" * 3000) if encoding == "gzip" else b"\0" * 3000
        path.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 30000 30000 30000\n"
                         + f"encoding: {encoding}\nendian: little\n\n".encode() + body)
    else:
        compressed = "True" if encoding == "zlib" else "False"
        body = (__import__("zlib").compress(b"\0" * 3000) if encoding == "zlib" else b"\0" * 3000)
        path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 30000\nElementType = MET_SHORT\n"
                         f"CompressedData = {compressed}\nElementDataFile = LOCAL\n".encode() + body)
    return path


@pytest.mark.parametrize("name, make", [
    ("huge.nii", _huge_nifti), ("huge.nii.gz", _huge_nifti),
    ("raw.nrrd", lambda p: _huge_itk(p, "raw")), ("gz.nrrd", lambda p: _huge_itk(p, "gzip")),
    ("raw.mha", lambda p: _huge_itk(p, "raw")), ("zlib.mha", lambda p: _huge_itk(p, "zlib")),
])
def test_header_claiming_30000_cubed_is_refused_before_allocating(tmp_path, name, make):
    path = make(tmp_path / name)
    assert path.stat().st_size < 5000
    tracemalloc.start()
    try:
        with pytest.raises(ReadError) as err:
            medlab.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(err.value)
    assert path.name in message and "30000×30000×30000" in message, message
    assert "corrupt or truncated" in message, message
    assert peak < 50e6   # nothing near the claimed size was asked of numpy


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("shape", [(6, 4, 6), (160, 160, 160)])
def test_the_most_compressible_files_still_load(tmp_path, suffix, shape):
    """All-zero voxels compress about 1000:1, near deflate's limit (found by the property test:
    the size check once counted a .nii.gz header offset against the compressed bytes)."""
    img = Image(np.zeros(shape, np.uint64 if shape[0] < 10 else np.uint8))
    path = medlab.save(img, tmp_path / f"zeros{suffix}")
    assert medlab.load(path).size == img.size


def test_header_larger_than_available_memory_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "ok.nii.gz"
    medlab.save(_noise((20, 30, 40)), path)
    monkeypatch.setattr("medlab.io.memory.available_memory", lambda: 10_000)
    with pytest.raises(ReadError, match=r"ok\.nii\.gz.*memory.*available"):
        medlab.load(path)
    monkeypatch.undo()
    assert medlab.load(path).size == (40, 30, 20)


# ============================================================================ NIfTI geometry rules
def _nifti(path: Path, *, pixdim=None, qcode=1, scode=0, sform=None, qform=None) -> Path:
    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), None)
    img.set_qform(np.eye(4) if qform is None else qform, code=qcode)
    img.set_sform(np.eye(4) if sform is None else sform, code=scode)
    nib.save(img, path)
    if pixdim is not None:   # nibabel refuses to write these: patch the bytes (pixdim[1:4] at offset 80)
        data = bytearray(path.read_bytes())
        struct.pack_into("<3f", data, 80, *pixdim)
        path.write_bytes(bytes(data))
    return path


def _load_warning(path: Path, match: str):
    with pytest.warns(MedlabWarning, match=match) as record:
        img = medlab.load(path)
    assert any(path.name in str(w.message) for w in record)
    return img


def test_zero_pixdim_is_1mm_flagged_unknown_with_a_warning(tmp_path):
    path = _nifti(tmp_path / "zero.nii", pixdim=(0, 1, 1))
    img = _load_warning(path, "pixdim is 0 along x")
    assert img.spacing == (1.0, 1.0, 1.0) == sitk.ReadImage(str(path)).GetSpacing()   # as ITK (and nibabel)
    assert img.metadata["spacing_unknown"] == ["x"]
    assert any("unknown" in n for n in img.metadata["notes"])


def test_negative_pixdim_is_refused_as_left_right_ambiguous(tmp_path):
    path = _nifti(tmp_path / "neg.nii", pixdim=(-2, 1, 1))
    with pytest.raises(ReadError, match=r"neg\.nii.*negative along x") as err:
        medlab.load(path)
    assert "ITK" in str(err.value) and "nibabel" in str(err.value)


def test_qform_and_sform_that_disagree_use_the_sform_with_a_note(tmp_path):
    path = _nifti(tmp_path / "both.nii", qcode=1, scode=1, sform=np.diag([2.0, 2.0, 2.0, 1.0]))
    img = _load_warning(path, "qform and sform disagree")
    assert img.spacing == (2.0, 2.0, 2.0)                                  # nibabel's rule
    assert np.allclose(img.spacing, np.diag(nib.load(path).affine)[:3])
    note = next(n for n in img.metadata["notes"] if "disagree" in n)
    assert "SimpleITK/ITK" in note and "(1, 1, 1)" in note                 # what ITK reads is said
    assert sitk.ReadImage(str(path)).GetSpacing() == (1.0, 1.0, 1.0)


def test_sheared_sform_falls_back_to_the_qform_with_a_note(tmp_path):
    shear = np.eye(4)
    shear[0, 1] = 0.5
    path = _nifti(tmp_path / "shear.nii", qcode=1, scode=1, sform=shear)
    img = _load_warning(path, "sform is sheared")
    ref = sitk.ReadImage(str(path))
    assert img.spacing == ref.GetSpacing()
    np.testing.assert_allclose(img.direction.ravel(), ref.GetDirection(), atol=1e-6)


def test_header_without_transform_says_the_orientation_is_unknown(tmp_path):
    path = _nifti(tmp_path / "analyze.nii", qcode=0, scode=0)
    img = _load_warning(path, "orientation is unknown")
    assert img.orientation == "LAS"                                        # nibabel's convention, stated


@pytest.mark.parametrize("relpath", ["noncommercial/chris_PD.nii.gz", "tiny/anatomical.nii",
                                     "ct_abdomen/example_seg_dicom.nii.gz"])
def test_consistent_real_headers_load_without_warnings(shared, relpath):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MedlabWarning)
        img = medlab.load(shared(relpath))
    assert "notes" not in img.metadata


# ============================================================================ DICOM PixelSpacing 0\0
def _cr(path: Path, *, imager=True) -> Path:
    ds = df.slice_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8), position=None, modality="CR",
                          pixel_spacing=(0.2, 0.2))
    ds.PixelSpacing = [0.0, 0.0]
    if not imager:
        del ds.ImagerPixelSpacing
    return df.save(ds, path)


def test_pixel_spacing_zero_uses_imager_pixel_spacing_like_gdcm(tmp_path):
    path = _cr(tmp_path / "cr.dcm")
    img = _load_warning(path, r"PixelSpacing is 0\\0")
    assert img.spacing == pytest.approx((0.2, 0.2))
    assert img.spacing == pytest.approx(sitk.ReadImage(str(path)).GetSpacing()[:2])
    assert "spacing_unknown" not in img.metadata


def test_pixel_spacing_zero_without_imager_spacing_is_1mm_unknown(tmp_path):
    path = _cr(tmp_path / "cr.dcm", imager=False)
    img = _load_warning(path, "unknown")
    assert img.spacing == (1.0, 1.0) and img.metadata["spacing_unknown"] == ["x", "y"]
    assert sum("PixelSpacing" in n for n in img.metadata["notes"]) == 1


def test_ct_series_with_pixel_spacing_zero_loads(tmp_path):
    paths = df.write_series(tmp_path, df.phantom_volume((3, 8, 8)), spacing=(1, 1, 2.5))
    for p in paths:
        ds = __import__("pydicom").dcmread(p)
        ds.PixelSpacing = [0, 0]
        ds.save_as(p)
    img = _load_warning(tmp_path, "unknown")
    assert img.spacing == (1.0, 1.0, 2.5) and img.metadata["spacing_unknown"] == ["x", "y"]


# ============================================================================ values that changed silently
def test_fractional_volume_index_is_refused(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([np.full((3, 4, 5), t, np.int16) for t in range(3)]), isVector=False),
                    str(path))
    for bad in (1.7, True, -1, "1"):
        with pytest.raises(ParameterError, match="volume"):
            medlab.load(path, volume=bad)
    assert np.all(medlab.load(path, volume=np.int64(2)).array == 2)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_2d_image_saved_as_nifti_comes_back_2d(tmp_path, suffix):
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    img = Image(np.arange(30, dtype=np.int16).reshape(5, 6), spacing=(0.5, 0.75), origin=(3.0, -4.0), direction=rot)
    back = medlab.load(medlab.save(img, tmp_path / f"slice{suffix}"))
    assert back.ndim == 2 and back.shape == (5, 6)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.spacing, img.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, img.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, img.direction, atol=1e-5)


def test_png_warns_about_the_origin_and_direction_it_drops(tmp_path):
    img = Image(np.zeros((4, 5), np.uint8), spacing=(0.5, 0.5), origin=(10.0, 20.0))
    with pytest.warns(MedlabWarning, match=r"a\.png.*origin"):
        medlab.save(img, tmp_path / "a.png")
    with warnings.catch_warnings():   # nothing to drop: no warning
        warnings.simplefilter("error", MedlabWarning)
        medlab.save(Image(np.zeros((4, 5), np.uint8), spacing=(0.5, 0.5)), tmp_path / "b.png")


def test_png_keeps_label_kind_and_names(tmp_path):
    seg = Image(np.array([[0, 1], [2, 1]], np.uint8), kind="label", labels={1: "lesion", 2: ("rib", (1, 2, 3))})
    back = medlab.load(medlab.save(seg, tmp_path / "seg.png"))
    assert back.kind == "label" and back.labels == seg.labels
    assert sitk.ReadImage(str(tmp_path / "seg.png")).GetSize() == (2, 2)   # still a plain PNG for others


def test_rgb_with_equal_channels_saved_by_medlab_reloads_rgb(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    img = Image(np.stack([grey] * 3, axis=-1), rgb=True)
    back = medlab.load(medlab.save(img, tmp_path / "g.png"))
    assert back.rgb
    np.testing.assert_array_equal(back.array, img.array)


def test_rgb_with_equal_channels_from_elsewhere_loads_grey_with_a_warning(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(tmp_path / "x.png"))
    with pytest.warns(MedlabWarning, match=r"x\.png.*equal channels"):
        img = medlab.load(tmp_path / "x.png")
    assert not img.rgb


# ============================================================================ geometry stages
def test_resample_to_a_tiny_spacing_is_refused_before_allocating():
    img = Image(np.zeros((30, 60, 60), np.float32), spacing=(1, 1, 3))
    with pytest.raises(ParameterError) as err:
        resample(img, spacing=0.01)
    message = str(err.value)
    assert "spacing" in message and "324,000,000,000 voxels" in message and "memory" in message, message


def test_resample_to_a_huge_reference_is_refused():
    img = Image(np.zeros((8, 8, 8), np.float32))
    huge = Image(np.broadcast_to(np.zeros((), np.uint8), (4000, 4000, 4000)), spacing=(0.002, 0.002, 0.002))
    with pytest.raises(ParameterError, match=r"reference.*4000×4000×4000.*memory"):
        resample_to(img, reference=huge)


def test_pad_checks_the_memory_it_needs(monkeypatch):
    monkeypatch.setattr("medlab.io.memory.available_memory", lambda: 10_000_000)
    with pytest.raises(ParameterError, match=r"width=100.*memory"):
        pad(Image(np.zeros((64, 64, 64), np.float32)), width=100)


def test_resample_keeps_float64_values_beyond_float32_finite():
    img = Image(np.array([[1e300, 0.0], [0.0, -1e300]]))
    out = resample(img, spacing=0.5)
    assert np.all(np.isfinite(out.array)) and out.array.max() == pytest.approx(1e300)


@pytest.mark.parametrize("values", [np.array([[[0, 6.021e306], [1, 2]], [[3, 4], [5, 6]]]),
                                    np.array([[[0, 3.4e38], [3.4e38, 0]], [[0, 0], [3.4e38, 1]]], np.float32)])
def test_bspline_near_the_float_maximum_stays_finite(values):
    """Found by the property test: B-spline coefficients overshoot, and overflowed to inf/NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for spacing in (1.0, 0.5):
            out = resample(Image(values), spacing=spacing, interpolator="bspline")
            assert out.dtype == values.dtype and np.all(np.isfinite(out.array))


def test_crop_to_foreground_of_huge_values():
    """Found by the property test: Otsu's variance sums overflowed on values of 3.9e18."""
    a = np.zeros((4, 6), np.float32)
    a[1:3, 2:4] = 3.861e18
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = crop_to_foreground(Image(a), margin=0)
    assert out.size == (2, 2) and np.all(out.array == np.float32(3.861e18))
    extremes = Image(np.array([[-9.047e300], [np.finfo(float).max]]))   # max - min overflows float64
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert crop_to_foreground(extremes, margin=0).array[0, 0] == np.finfo(float).max


# ============================================================================ paths that are not what they seem
def test_symlink_loop_is_not_called_missing(tmp_path):
    (tmp_path / "a.nii.gz").symlink_to(tmp_path / "b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    with pytest.raises(ReadError) as err:
        medlab.load(tmp_path / "a.nii.gz")
    assert "symbolic link loop" in str(err.value) and "does not exist" not in str(err.value)


def test_broken_link_says_where_it_points(tmp_path):
    (tmp_path / "scan.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(ReadError, match=r"broken symbolic link.*gone\.nii\.gz"):
        medlab.load(tmp_path / "scan.nii.gz")


def test_folder_where_a_file_is_expected(tmp_path):
    (tmp_path / "scan.nii.gz").mkdir()
    with pytest.raises(ReadError, match=r"scan\.nii\.gz is a folder, not a NIfTI file"):
        medlab.load(tmp_path / "scan.nii.gz")


def test_unreadable_files_and_folders_are_called_unreadable(tmp_path):
    """Real permissions (chmod 000); as root, the check runs without root's right to read anything."""
    base = tmp_path
    try:
        medlab.save(_noise((4, 8, 8)), base / "scan.nii")
        df.save(df.slice_dataset(np.zeros((8, 8), np.uint16), position=(0, 0, 0)), base / "slice.dcm")
        df.write_series(base / "locked_folder", df.phantom_volume((3, 8, 8)))
        df.write_series(base / "locked_files", df.phantom_volume((3, 8, 8)))
        for p in (base / "scan.nii", base / "slice.dcm", base / "locked_folder", *(base / "locked_files").iterdir()):
            os.chmod(p, 0)
        os.chmod(base / "locked_files", 0o755)
        done = _run(f"""
            import json, medlab
            out = {{}}
            for name in ("scan.nii", "slice.dcm", "locked_folder", "locked_files"):
                try:
                    medlab.load({str(base)!r} + "/" + name)
                    out[name] = "loaded"
                except Exception as exc:
                    out[name] = [type(exc).__name__, isinstance(exc, medlab.MedlabError), str(exc)]
            print(json.dumps(out))
        """, base, as_unprivileged=True)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
    finally:  # let pytest remove the files
        for p in (base / "locked_folder", *base.rglob("*")):
            with contextlib.suppress(OSError):
                os.chmod(p, 0o755)
    for name, (kind, is_medlab, message) in result.items():
        assert is_medlab and kind == "ReadError", (name, kind, message)
        assert "permission denied" in message, (name, message)
        for wrong in ("corrupt", "remove it", "empty folder", "no DICOM images", "does not exist"):
            assert wrong not in message.lower(), (name, message)


def test_unreadable_file_without_root(tmp_path, monkeypatch):
    """The same messages when the operating system refuses the open (no real permissions needed)."""
    import builtins

    nii = medlab.save(_noise((4, 8, 8)), tmp_path / "scan.nii")
    dcm = df.save(df.slice_dataset(np.zeros((8, 8), np.uint16), position=(0, 0, 0)), tmp_path / "slice.dcm")
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) in (str(nii), str(dcm)):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    for path in (nii, dcm):
        with pytest.raises(ReadError, match="permission denied") as err:
            medlab.load(path)
        assert "corrupt" not in str(err.value) and isinstance(err.value, MedlabError)
