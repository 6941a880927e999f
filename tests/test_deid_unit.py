"""De-identification rules on small synthetic datasets: closed-form expectations."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import re
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage

from medai.io import deidentify_path, read_dicom
from medai.io.deid import (
    KEY_ENV_VAR,
    deidentify_dataset,
    deidentify_uid,
    load_key,
    profile_action,
)

KEY = "unit-test-key-0123456789abcdef"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
_UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


def _patient(pid: str, study_date: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = pid
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.StudyTime = "101010"
    ds.AcquisitionDateTime = f"{study_date}101010.5"
    ds.AccessionNumber = "ACC123"
    ds.InstitutionName = "General Hospital"
    ds.OperatorsName = "Smith^Anna"
    ds.StudyDescription = "Brain MRI for Mr Doe"
    ds.Modality = "MR"
    ds.SOPClassUID = MRImageStorage
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.3"
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.4"
    ds.ReferencedImageSequence = Sequence([ref])
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = Sequence([request])
    observer = Dataset()
    observer.VerifyingObserverName = "Jones^Bob"
    ds.VerifyingObserverSequence = Sequence([observer])
    ds.PixelData = bytes(range(16))
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 4, 4, 8, 8
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 7, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def test_profile_table_rows_match_the_dicom_dictionary() -> None:
    text = resources.files("medai.io").joinpath("deid_profile.csv").read_text("utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    allowed = {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    assert len(rows) >= 390
    for row in rows:
        assert row["action"] in allowed, row
        if "x" not in row["tag"]:
            assert keyword_for_tag(int(row["tag"], 16)) == row["keyword"], row
    assert len({row["tag"] for row in rows}) == len(rows)


@pytest.mark.parametrize(
    ("tag", "action"),
    [
        (0x00100010, "Z"),  # Patient's Name
        (0x0020000D, "U"),  # Study Instance UID
        (0x00081140, "X/Z/U*"),  # Referenced Image Sequence
        (0x00080080, "X/Z/D"),  # Institution Name
        (0x00081030, "X"),  # Study Description
        (0x60003000, "X"),  # Overlay Data, first overlay group
        (0x601E4000, "X"),  # Overlay Comments, last overlay group
        (0x50020010, "X"),  # a curve attribute
        (0x00280010, None),  # Rows: not listed, kept
        (0x60000010, None),  # Overlay Rows: kept
    ],
)
def test_profile_action(tag: int, action: str | None) -> None:
    assert profile_action(tag) == action


def test_uid_replacement_is_a_valid_keyed_uid() -> None:
    uids = [f"1.2.3.{i}" for i in range(50)]
    new = [deidentify_uid(u, key=KEY) for u in uids]
    assert len(set(new)) == len(uids)
    for value in new:
        assert _UID_RE.match(value)
        assert len(value) <= 64
        assert UID(value).is_valid
    assert new == [deidentify_uid(u, key=KEY) for u in uids]
    assert new[0] != deidentify_uid(uids[0], key=KEY + "x")


def test_every_action_on_a_synthetic_dataset() -> None:
    ds = _patient("PID-42", "20200115")
    before = copy.deepcopy(ds)
    out, changes = deidentify_dataset(ds, key=KEY)
    assert ds == before  # the input dataset is not changed
    assert out.PatientName == out.PatientID != "PID-42"
    assert out.PatientID.startswith("ANON")
    assert out.PatientBirthDate == ""
    assert out.PatientSex == ""
    assert out.AccessionNumber == ""
    assert out.InstitutionName == "ANONYMIZED"
    assert out.OperatorsName == "ANONYMOUS"
    assert "StudyDescription" not in out
    assert "RequestAttributesSequence" not in out
    assert len(out.VerifyingObserverSequence) == 0
    assert out.StudyInstanceUID == deidentify_uid(ds.StudyInstanceUID, key=KEY)
    ref = out.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == deidentify_uid("1.2.826.0.1.3680043.2.1125.4", key=KEY)
    assert ref.ReferencedSOPClassUID == MRImageStorage  # a class UID is no identifier
    assert out.PixelData == ds.PixelData
    assert out.Modality == "MR"
    assert out.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    by_keyword = {c.keyword: c for c in changes}
    assert by_keyword["StudyDescription"].action == "X"
    assert by_keyword["StudyDescription"].old.startswith("hmac:")
    assert "Doe" not in repr(changes)
    assert "General Hospital" not in repr(changes)


def test_dates_shift_per_patient_and_keep_intervals() -> None:
    a1, _ = deidentify_dataset(_patient("PID-1", "20200101"), key=KEY)
    a2, _ = deidentify_dataset(_patient("PID-1", "20200111"), key=KEY)
    b, _ = deidentify_dataset(_patient("PID-2", "20200101"), key=KEY)
    shift_a = _day(a1.StudyDate) - _day("20200101")
    assert -3650 <= shift_a.days <= -1
    assert _day(a2.StudyDate) - _day(a1.StudyDate) == dt.timedelta(days=10)
    assert _day(b.StudyDate) - _day("20200101") != shift_a
    assert a1.AcquisitionDateTime == a1.StudyDate + "101010.5"  # time part kept
    assert a1.StudyTime == "101010"


def test_private_elements_dropped_unless_allow_listed() -> None:
    ds = _patient("PID-7", "20200101")
    block = ds.private_block(0x0009, "MEDAI TEST", create=True)
    block.add_new(0x01, "LO", "keep me")
    block.add_new(0x02, "LO", "Doe^John")
    other = ds.private_block(0x0011, "OTHER VENDOR", create=True)
    other.add_new(0x01, "LO", "secret")
    ds.ReferencedImageSequence[0].add_new(0x00191000 | 0x10, "LO", "NESTED CREATOR")
    out, _ = deidentify_dataset(ds, key=KEY)
    assert not [e for e in out.iterall() if e.tag.is_private]
    out, _ = deidentify_dataset(ds, key=KEY, allow_private=[("MEDAI TEST", 0x01)])
    private = {e.tag: e.value for e in out.iterall() if e.tag.is_private}
    assert private == {0x00090010: "MEDAI TEST", 0x00091001: "keep me"}
    assert "113111" in {c.CodeValue for c in out.DeidentificationMethodCodeSequence}


def test_key_is_required_and_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="--key-file"):
        load_key()
    with pytest.raises(FileNotFoundError, match="--generate-key"):
        load_key(tmp_path / "missing.key")
    monkeypatch.setenv(KEY_ENV_VAR, "short")
    with pytest.raises(ValueError, match="too short"):
        load_key()
    monkeypatch.setenv(KEY_ENV_VAR, KEY)
    assert load_key() == KEY.encode()
    with pytest.raises(ValueError, match="too short"):
        deidentify_dataset(Dataset(), key="abc")


def _dicom_file(path: Path, pid: str) -> None:
    ds = _patient(pid, "20200101")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_folder_run_mirrors_skips_and_reports(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _dicom_file(src / "p1" / "s1" / "a.dcm", "PID-1")
    (src / "p1" / "notes.txt").write_text("patient John Doe", encoding="utf-8")
    shutil.copy(TEST_FILES / "MR_truncated.dcm", src / "cut.dcm")
    cut = (src / "p1" / "s1" / "a.dcm").read_bytes()[:700]
    (src / "p1" / "half.dcm").write_bytes(cut)
    report = deidentify_path(src, tmp_path / "out", key=KEY)
    assert report.written == [tmp_path / "out" / "p1" / "s1" / "a.dcm"]
    assert [(p.name, r) for p, r in report.skipped] == [
        ("notes.txt", "not a DICOM file (no 'DICM' marker and no parsable SOP instance)")
    ]
    failed = {p.name: r for p, r in report.failed}
    assert set(failed) == {"cut.dcm", "half.dcm"}
    assert all("truncated" in r for r in failed.values())
    assert not report.ok
    assert report.audit_csv == tmp_path / "out" / "deid_audit.csv"
    audit = report.audit_csv.read_text(encoding="utf-8")
    assert "p1/s1/a.dcm" in audit
    assert "Doe" not in audit
    assert "PID-1" not in audit
    assert not (tmp_path / "out" / "p1" / "notes.txt").exists()


def test_single_file_and_refusals(tmp_path: Path) -> None:
    src = tmp_path / "in" / "a.dcm"
    _dicom_file(src, "PID-9")
    report = deidentify_path(src, tmp_path / "a_deid.dcm", key=KEY)
    assert report.written == [tmp_path / "a_deid.dcm"]
    assert report.audit_csv == tmp_path / "a_deid.dcm.audit.csv"
    assert pydicom.dcmread(tmp_path / "a_deid.dcm").PatientIdentityRemoved == "YES"
    with pytest.raises(ValueError, match="inside input"):
        deidentify_path(tmp_path / "in", tmp_path / "in" / "out", key=KEY)
    with pytest.raises(ValueError, match="is the input file"):
        deidentify_path(src, src, key=KEY)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deidentify_path(tmp_path / "nope", tmp_path / "out", key=KEY)


def test_preamble_zeroed_and_stale_group_lengths_dropped(tmp_path: Path) -> None:
    src = tmp_path / "a.dcm"
    _dicom_file(src, "PID-3")
    ds = pydicom.dcmread(src)
    ds.preamble = b"II*\x00" + b"\x01" * 124  # e.g. a TIFF header of a dual-format file
    ds.add_new(0x00080000, "UL", 1234)  # retired group length, wrong after removals
    ds.save_as(src, enforce_file_format=False)
    deidentify_path(src, tmp_path / "b.dcm", key=KEY)
    out = pydicom.dcmread(tmp_path / "b.dcm")
    assert out.preamble == bytes(128)
    assert 0x00080000 not in out
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm"])
def test_deidentified_image_reads_back_identically(name: str, tmp_path: Path) -> None:
    deidentify_path(TEST_FILES / name, tmp_path / name, key=KEY)
    before, after = read_dicom(TEST_FILES / name), read_dicom(tmp_path / name)
    np.testing.assert_array_equal(after.array, before.array)
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-9)
