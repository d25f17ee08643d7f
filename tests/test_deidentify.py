"""De-identification (PS3.15 Basic Application Level Confidentiality Profile): every attribute of
the profile's table checked on a file that holds them all and on real files (the shared CT
series and pydicom's test files); UIDs consistent and repeatable under a key; dates; private
tags; burned-in flags; the source never modified; bad input refused."""

from __future__ import annotations

import hashlib
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import medlab
from medlab.errors import MedlabWarning, ParameterError, ReadError, WriteError
from medlab.io import deidentify
from medlab.io.deidentify import action_for, burned_in, deidentify_dataset, profile_table

KEY = "a test key kept secret"
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm",
                 "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "nested_priv_SQ.dcm"]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tree_sha(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            return pydicom.dcmread(path, force=True)


# ---------------------------------------------------------------------------- the table
def test_table_is_the_standards_basic_profile():
    edition, actions, masked = profile_table()
    assert edition >= "2024"
    assert len(actions) + len(masked) > 600
    # spot checks against PS3.15 Table E.1-1 as published (not against the package under test)
    expected = {"PatientName": "Z", "PatientBirthDate": "Z", "PatientSex": "Z", "PatientAge": "X",
                "PatientAddress": "X", "OtherPatientIDs": "X", "StudyInstanceUID": "U", "SeriesInstanceUID": "U",
                "SOPInstanceUID": "U", "FrameOfReferenceUID": "U", "ReferencedSOPInstanceUID": "U",
                "InstitutionName": "X/Z/D", "InstitutionAddress": "X", "StationName": "X/Z/D",
                "DeviceSerialNumber": "X/Z/D", "AccessionNumber": "Z", "StudyDate": "Z", "StudyTime": "Z",
                "ReferringPhysicianName": "Z", "StudyID": "Z", "StudyDescription": "X", "SeriesDescription": "X",
                "ReferencedImageSequence": "X/Z/U*", "SourceImageSequence": "X/Z/U*",
                "RequestAttributesSequence": "X", "PerformingPhysicianName": "X", "OperatorsName": "X/Z/D"}
    for kw, action in expected.items():
        assert action_for(pydicom.datadict.tag_for_keyword(kw)) == action, kw
    assert action_for(0x00100020) in ("Z", "Z/D")           # Patient ID: Z before 2024, Z/D since
    assert action_for(0x60003000) == "X" and action_for(0x60024000) == "X"   # overlay data, comments
    assert action_for(0x50100010) == "X"                    # curve data (50xx)
    assert action_for(0x00280010) is None                   # Rows: not in the table, kept


# ---------------------------------------------------------------------------- checking one file
def _walk(ds, path=()):
    """(path, element) of every element, path = ((tag, item index), ...) of its enclosing sequences."""
    for elem in ds:
        yield path, elem
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                yield from _walk(item, path + ((elem.tag, i),))


def _find(ds, path, tag):
    for seq_tag, i in path:
        if seq_tag not in ds or ds[seq_tag].VR != "SQ" or len(ds[seq_tag].value) <= i:
            return "gone"
        ds = ds[seq_tag].value[i]
    return ds.get(tag)


def _empty(value) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0) or (isinstance(value, str) and not value.strip())


def _uids_in(elem) -> list[str]:
    if elem.VR == "UI":
        return [str(v) for v in (elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) else [elem.value])]
    if elem.VR == "SQ":
        return [u for item in elem.value or () for e in item.iterall()   # instance UIDs, not class UIDs
                if e.VR == "UI" and action_for(e.tag) == "U" for u in _uids_in(e)]
    return []


def check_profile(before: Dataset, after: Dataset, *, dates: str = "remove", pseudonyms: bool = True) -> dict[str, int]:
    """Check every attribute of the profile's table found in ``before`` against ``after``;
    returns how many were checked per action."""
    checked: dict[str, int] = {}
    for path, elem in _walk(before):
        action = action_for(elem.tag)
        if action is None or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        if dates != "remove" and elem.VR in ("DA", "DT", "TM") and elem.tag != 0x00100030:
            continue
        out = _find(after, path, elem.tag)
        if isinstance(out, str):  # an enclosing sequence was removed or emptied: nothing left
            checked[action] = checked.get(action, 0) + 1
            continue
        where = f"{elem.keyword or elem.tag} at {path} ({action})"
        original = elem.value
        if pseudonyms and not path and elem.tag in (0x00100010, 0x00100020) and not _empty(original):
            assert re.fullmatch(r"ANON[0-9A-F]{12}", str(out.value)), f"{where}: expected a pseudonym"
        elif action == "X":
            assert out is None, f"{where} should be removed"
        elif action in ("Z", "X/Z"):
            assert (out is None and action == "X/Z") or (out is not None and _empty(out.value)), f"{where} should be empty"
        elif action == "U" or (elem.VR == "UI" and action != "X"):
            if action in ("X/Z", "Z"):
                continue
            assert out is not None, f"{where} should be present"
            for old, new in zip(_uids_in(elem), _uids_in(out)):
                assert new != old or not old.strip(), f"{where}: UID kept"
                assert not old.strip() or new.startswith("2.25."), f"{where}: {new} is not a remapped UID"
        elif action == "X/Z/U*" or elem.VR == "SQ":
            if out is not None:
                olds = {u for u in _uids_in(elem) if u.strip()}
                news = set(_uids_in(out))
                assert not olds & news, f"{where}: an original instance UID survives in the sequence"
        else:  # D, Z/D, X/D, X/Z/D: removed, emptied, or replaced by a dummy
            if out is not None and not _empty(original):
                assert out.value != original or elem.VR in ("US", "SS", "UL", "SL", "FL", "FD") and original == 0, \
                    f"{where}: value {original!r} kept"
            if action in ("D", "Z/D"):
                assert out is not None, f"{where} should be present"
        checked[action] = checked.get(action, 0) + 1
    for _, elem in _walk(after):
        assert not elem.tag.is_private, f"private {elem.tag} left"
    assert after.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100"
    return checked


# ---------------------------------------------------------------------------- every attribute of the table
def _value_for(vr: str, n: int):
    text = f"SECRET{n}"
    values = {"AE": text[:16], "AS": "042Y", "AT": 0x00100010, "CS": text[:16], "DA": "20200102", "DS": "7.5",
              "DT": "20200102030405", "FL": 7.5, "FD": 7.5, "IS": "7", "SL": 7, "SS": 7, "UL": 7, "US": 7,
              "UV": 7, "SV": 7, "TM": "030405", "UI": f"1.2.826.0.1.3680043.2.1125.1.{n}"}
    if vr in values:
        return values[vr]
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        return (text + " " * (8 - len(text) % 8)).encode()
    if vr == "SQ":
        item = Dataset()
        item.CodeMeaning = f"SECRET{n}S"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.2.{n}"
        return Sequence([item])
    return text  # LO, LT, PN, SH, ST, UC, UT, UR


def full_table_file(folder: Path) -> tuple[Path, int, list[str]]:
    """CT_small.dcm with every attribute of the table added (and curve, overlay and private ones)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert not ds.file_meta.TransferSyntaxUID.is_implicit_VR
    _, actions, _ = profile_table()
    added, missing = 0, []
    for n, tag in enumerate(sorted(actions)):
        group = tag >> 16
        if group in (0x0000, 0x0002):  # command group (never in files); file meta set below
            continue
        try:
            vr = pydicom.datadict.dictionary_VR(tag).split(" or ")[0]
        except KeyError:  # newer than this pydicom's dictionary: written with an explicit VR
            missing.append(f"({group:04X},{tag & 0xFFFF:04X})")
            vr = "UI" if actions[tag] == "U" else "LO"
        ds.add_new(tag, vr, _value_for(vr, n))
        added += 1
    ds.add_new(0x50000005, "US", 2)                     # curve dimensions
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)      # overlay data
    ds.add_new(0x60004000, "LT", "SECRET overlay")     # overlay comments
    block = ds.private_block(0x0011, "SECRET CREATOR", create=True)
    block.add_new(0x01, "LO", "SECRET private")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / "everything.dcm"
    ds.save_as(path)
    return path, added, missing


def test_every_attribute_of_the_table(tmp_path):
    (tmp_path / "src").mkdir()
    src, added, missing = full_table_file(tmp_path / "src")
    assert added > 600 and len(missing) < 40, missing
    before = pydicom.dcmread(src)
    report = deidentify(src, tmp_path / "out", key=KEY, pseudonyms=False)
    after = pydicom.dcmread(report.written[0]["output"])
    checked = check_profile(before, after, pseudonyms=False)
    assert sum(checked.values()) >= added
    assert set(checked) == {"X", "Z", "D", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    raw = Path(report.written[0]["output"]).read_bytes()
    assert b"SECRET" not in raw                                  # no identifying value survives anywhere
    assert b"1.2.826.0.1.3680043.2.1125.1." not in raw           # nor any original instance UID
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID != before.SOPInstanceUID
    assert after.PixelData == before.PixelData


# ---------------------------------------------------------------------------- real files
@pytest.fixture
def ct_series(shared):
    return shared("ct_abdomen/example_ct_dicom")


def test_shared_ct_series(tmp_path, ct_series):
    src_sha = _tree_sha(ct_series)
    report = deidentify(ct_series, tmp_path / "a", key=KEY)
    assert len(report.written) == 20 and not report.flagged
    assert _tree_sha(ct_series) == src_sha                        # the source is never modified
    outputs = sorted((tmp_path / "a").rglob("*.dcm"))
    assert len(outputs) == 20
    assert not any(p.name.startswith("CT.1.3.12") for p in outputs)  # no source UID in file names
    mapping: dict[str, str] = {}
    for row in report.written:
        before, after = _read(row["source"]), _read(row["output"])
        checked = check_profile(before, after)
        assert checked.get("U", 0) >= 2 and checked.get("X", 0) >= 3
        assert "InstitutionAddress" not in after and after.StationName != before.StationName
        for (_, eb), (_, ea) in zip(_walk(before.file_meta), _walk(after.file_meta)):
            if eb.tag == 0x00020003:
                assert ea.value.startswith("2.25.") and ea.value != eb.value
        for path, eb in _walk(before):
            found = _find(after, path, eb.tag)
            if eb.VR == "UI" and action_for(eb.tag) == "U" and str(eb.value).strip() and not isinstance(found, str):
                new = str(found.value)
                assert mapping.setdefault(str(eb.value), new) == new   # one original UID -> one new UID
        assert after.PixelData == before.PixelData
    assert len(set(mapping.values())) == len(mapping)            # and different UIDs stay different
    # the de-identified series is the same image (geometry and voxels)
    a, b = medlab.load(ct_series), medlab.load(tmp_path / "a")
    assert a.same_grid(b) and np.array_equal(a.array, b.array)
    # a re-run with the same key gives the same UIDs; another key other UIDs
    again = deidentify(ct_series, tmp_path / "b", key=KEY)
    other = deidentify(ct_series, tmp_path / "c", key="another secret key")
    names = lambda rep: sorted(Path(r["output"]).name for r in rep.written)
    assert names(again) == names(report) and not set(names(other)) & set(names(report))
    frame = {_read(r["output"]).FrameOfReferenceUID for r in again.written}
    assert len(frame) == 1 and frame == {_read(r["output"]).FrameOfReferenceUID for r in report.written}


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_test_files(tmp_path, name):
    src = Path(get_testdata_file(name))
    sha = _sha(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = deidentify(src, tmp_path / "out", key=KEY)
    assert _sha(src) == sha
    before, after = _read(src), _read(report.written[0]["output"])
    checked = check_profile(before, after)
    assert sum(checked.values()) >= 1 or name == "nested_priv_SQ.dcm"
    if "PixelData" in before:
        assert after.PixelData == before.PixelData


def test_private_tags_removed_in_nested_sequences(tmp_path):
    src = Path(get_testdata_file("nested_priv_SQ.dcm"))
    before = _read(src)
    assert any(e.tag.is_private for _, e in _walk(before))
    report = deidentify(src, tmp_path / "o", key=KEY)
    assert not any(e.tag.is_private for _, e in _walk(_read(report.written[0]["output"])))
    kept = deidentify(src, tmp_path / "k", key=KEY, remove_private=False)
    assert any(e.tag.is_private for _, e in _walk(_read(kept.written[0]["output"])))


# ---------------------------------------------------------------------------- dates, pseudonyms, burned-in
def _two_studies(folder: Path) -> list[Path]:
    """Two studies of one patient, 35 days apart, and one of another patient."""
    folder.mkdir()
    paths = []
    for i, (pid, date) in enumerate([("P1", "20200101"), ("P1", "20200205"), ("P2", "20200101")]):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientName, ds.PatientBirthDate = pid, f"Doe^{pid}", "19700101"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyInstanceUID = f"1.2.3.4.{i}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.5.{i}"
        paths.append(folder / f"s{i}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_dates_shift_keep_remove(tmp_path):
    paths = _two_studies(tmp_path / "src")
    out = {}
    for mode in ("shift", "keep", "remove"):
        rep = deidentify(tmp_path / "src", tmp_path / mode, key=KEY, dates=mode)
        out[mode] = {Path(r["source"]).name: _read(r["output"]) for r in rep.written}
    import datetime as dt

    day = lambda s: dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))
    s0, s1, s2 = (out["shift"][p.name] for p in paths)
    assert (day(s1.StudyDate) - day(s0.StudyDate)).days == 35            # intervals of one patient kept
    shift = (day(s0.StudyDate) - dt.date(2020, 1, 1)).days
    assert -3650 <= shift <= -30 and s0.AcquisitionDate == s0.StudyDate
    assert (day(s2.StudyDate) - dt.date(2020, 1, 1)).days != shift       # another patient, another shift
    assert s0.LongitudinalTemporalInformationModified == "MODIFIED" and s0.PatientBirthDate == ""
    assert [c.CodeValue for c in s0.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    k0 = out["keep"][paths[0].name]
    assert k0.StudyDate == "20200101" and k0.PatientBirthDate == ""
    assert k0.LongitudinalTemporalInformationModified == "UNMODIFIED"
    r0 = out["remove"][paths[0].name]
    assert r0.StudyDate == "" and r0.LongitudinalTemporalInformationModified == "REMOVED"
    again = deidentify(tmp_path / "src", tmp_path / "shift2", key=KEY, dates="shift")
    assert {_read(r["output"]).StudyDate for r in again.written} == {s.StudyDate for s in (s0, s1, s2)}


def test_pseudonyms_link_one_patients_studies(tmp_path):
    _two_studies(tmp_path / "src")
    rep = deidentify(tmp_path / "src", tmp_path / "o", key=KEY)
    ids = [_read(r["output"]).PatientID for r in rep.written]
    assert ids[0] == ids[1] != ids[2] and ids[0].startswith("ANON") and "P1" not in ids[0]
    assert _read(rep.written[0]["output"]).PatientName == ids[0]
    plain = deidentify(tmp_path / "src", tmp_path / "p", key=KEY, pseudonyms=False)
    assert {str(_read(r["output"]).PatientName) for r in plain.written} == {""}


def test_burned_in_annotation_flagged(tmp_path):
    sc = Path(get_testdata_file("SC_rgb_small_odd.dcm"))
    assert burned_in(_read(sc)) == "possible"
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert burned_in(ds) == "unknown"
    ds.BurnedInAnnotation = "YES"
    assert burned_in(ds) == "YES"
    ds.BurnedInAnnotation = "NO"
    assert burned_in(ds) == "NO"
    (tmp_path / "src").mkdir()
    shutil.copy(sc, tmp_path / "src" / "sc.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "src" / "ct.dcm")
    flagged = deidentify(tmp_path / "src", tmp_path / "f", key=KEY)
    assert len(flagged.written) == 2 and [Path(r["source"]).name for r in flagged.flagged] == ["sc.dcm"]
    skipped = deidentify(tmp_path / "src", tmp_path / "s", key=KEY, on_burned_in="skip")
    assert len(skipped.written) == 1 and len(list((tmp_path / "s").rglob("*.dcm"))) == 1
    assert "flagged" in repr(skipped)


def test_in_memory_dataset():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    counts = deidentify_dataset(ds, key=KEY)
    assert ds.PatientIdentityRemoved == "YES" and str(ds.StudyInstanceUID).startswith("2.25.") and counts


# ---------------------------------------------------------------------------- bad input
def test_bad_input_refused(tmp_path):
    with pytest.raises(ReadError, match="does not exist"):
        deidentify(tmp_path / "nothing", tmp_path / "o", key=KEY)
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), src / "good.dcm")
    (src / "broken.dcm").write_bytes(b"\x00" * 10)
    (src / "notes.txt").write_text("hello")
    with pytest.raises(ReadError, match="broken.dcm"):
        deidentify(src, tmp_path / "o", key=KEY)
    assert not (tmp_path / "o").exists()                   # nothing written
    (src / "broken.dcm").unlink()
    with pytest.raises(ParameterError, match="dates"):
        deidentify(src, tmp_path / "o", key=KEY, dates="blur")
    with pytest.raises(ParameterError, match="on_burned_in"):
        deidentify(src, tmp_path / "o", key=KEY, on_burned_in="ignore")
    with pytest.raises(ParameterError, match="key"):
        deidentify(src, tmp_path / "o", key="short")
    rep = deidentify(src, tmp_path / "o", key=KEY)
    assert [r["status"] for r in rep.rows] == ["written", "not copied (not DICOM)"] or \
        sorted(r["status"] for r in rep.rows) == ["not copied (not DICOM)", "written"]
    with pytest.raises(WriteError, match="exists"):
        deidentify(src, tmp_path / "o", key=KEY)
    deidentify(src, tmp_path / "o", key=KEY, overwrite=True)
    with pytest.warns(MedlabWarning, match="random"):
        deidentify(src, tmp_path / "r", key=None)
    with pytest.raises(ReadError, match="no DICOM"):
        deidentify(tmp_path / "o" / ".." / "src" / "notes.txt", tmp_path / "x", key=KEY)
