"""Broken input gives a specific medai error naming the file and the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from medai.errors import GeometryError, ImageReadError
from medai.image import ScalarImage
from medai.io import find_series, read_dicom, read_dicom_series, read_image, write_dicom_series


def _series(folder: Path, *, nz: int = 5, desc: str = "", spacing: float = 2.0) -> list[Path]:
    data = np.arange(4 * 3 * nz, dtype=np.float32).reshape(4, 3, nz)
    image = ScalarImage(data, np.diag([0.5, 0.5, spacing, 1.0]))
    return write_dicom_series(
        image, folder, patient_id="P1", patient_name="A^B", series_description=desc
    )


def _edit(path: Path, **attributes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_truncated_file(tmp_path: Path) -> None:
    path = _series(tmp_path / "s")[0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ImageReadError, match=r"slice_0001\.dcm: pixel data is truncated"):
        read_dicom(path)


def test_truncated_inside_header(tmp_path: Path) -> None:
    path = _series(tmp_path / "s")[0]
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageReadError, match=r"slice_0001\.dcm: .*(truncated|no image)"):
        read_dicom(path)


def test_non_dicom_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=r"noise\.dcm: not a DICOM file"):
        read_image(path)


def test_missing_pixel_data(tmp_path: Path) -> None:
    path = _series(tmp_path / "s")[0]
    _edit(path, PixelData=None)
    with pytest.raises(ImageReadError, match=r"slice_0001\.dcm: DICOM file has no pixel data"):
        read_dicom(path)


def test_inconsistent_slice_spacing(tmp_path: Path) -> None:
    files = _series(tmp_path / "s", nz=6)
    _edit(files[3], ImagePositionPatient=[0, 0, 6.9])  # 2 mm steps, one gap of 2.9 mm
    with pytest.raises(
        GeometryError,
        match=r"inconsistent slice spacing: gap of 2\.9 mm between slice_0003\.dcm and "
        r"slice_0004\.dcm",
    ):
        read_dicom_series(tmp_path / "s")


def test_missing_slice(tmp_path: Path) -> None:
    files = _series(tmp_path / "s", nz=6)
    files[2].unlink()
    with pytest.raises(
        GeometryError, match=r"missing slice: gap of 4 mm between slice_0002\.dcm and slice_0004"
    ):
        read_dicom_series(tmp_path / "s")


def test_two_series_mixed_in_one_folder(tmp_path: Path) -> None:
    a = _series(tmp_path / "a", desc="T1")
    b = _series(tmp_path / "b", nz=3, desc="T2", spacing=3.0)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in a + b:
        shutil.copy(path, mixed / f"{path.parent.name}_{path.name}")
    with pytest.raises(ImageReadError, match=r"mixed: folder holds 2 image series"):
        read_image(mixed)
    found = find_series(mixed)
    assert sorted((s.description, s.num_files, s.spacing) for s in found) == [
        ("T1", 5, (0.5, 0.5, 2.0)),
        ("T2", 3, (0.5, 0.5, 3.0)),
    ]
    t2 = next(s for s in found if s.description == "T2")
    assert t2.size == (4, 3, 3)
    assert t2.orientation == "RAS"
    assert t2.patient_id == "P1"
    assert t2.uid == pydicom.dcmread(b[0]).SeriesInstanceUID
    assert read_image(mixed, series_uid=t2.uid).shape == (4, 3, 3)


def test_mixed_orientation_in_one_series(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    _edit(files[1], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(GeometryError, match=r"slice_0002\.dcm has orientation .* localizer"):
        read_dicom_series(tmp_path / "s")
    (info,) = find_series(tmp_path / "s")
    assert info.size is None
    assert info.problem is not None
    assert "orientation" in info.problem


def test_duplicate_slice_position(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    _edit(files[1], ImagePositionPatient=[0, 0, 0])
    with pytest.raises(GeometryError, match="same slice position"):
        read_dicom_series(tmp_path / "s")


def test_folder_and_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "x.xyz").write_text("hello")
    with pytest.raises(ImageReadError, match=r"unknown image format '\.xyz'"):
        read_image(tmp_path / "x.xyz")
    _series(tmp_path / "s")
    with pytest.raises(ImageReadError, match=r"series 9\.9\.9 not found"):
        read_image(tmp_path / "s", series_uid="9.9.9")


def test_non_dicom_files_in_a_series_folder_are_skipped(tmp_path: Path) -> None:
    _series(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("scanner notes")
    assert read_image(tmp_path / "s").shape == (4, 3, 5)


def test_truncated_file_inside_a_series_folder(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    files[2].write_bytes(files[2].read_bytes()[:-7])
    with pytest.raises(ImageReadError, match=r"slice_0003\.dcm: pixel data is truncated"):
        read_dicom_series(tmp_path / "s")


# --- failures found by tests/test_fuzz_readers.py, kept as exact regressions ----------

PYDICOM_DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"
PYDICOM_TESTS = Path(pydicom.__file__).parent / "data" / "test_files"


def _damaged(source: Path, folder: Path, edits: list[tuple[int, bytes | int]]) -> Path:
    """A copy of ``source`` with bytes written at offsets (bytes) or deleted (int count)."""
    data = bytearray(source.read_bytes())
    for at, change in edits:
        if isinstance(change, int):
            del data[at : at + change]
        else:
            data[at : at + len(change)] = change
    path = folder / source.name
    path.write_bytes(bytes(data))
    return path


def test_rle_decoder_panic_names_file_and_frame(tmp_path: Path) -> None:
    """pylibjpeg-rle panics on this stream; pyo3's PanicException is a BaseException."""
    path = _damaged(PYDICOM_DATA / "emri_small_RLE.dcm", tmp_path, [(43055, 1636)])
    with pytest.raises(
        ImageReadError,
        match=r"emri_small_RLE\.dcm: frame 8 of the pixel data cannot be decoded "
        r"\(PanicException: index out of bounds",
    ):
        read_dicom(path)


def test_rle_decoder_panic_in_a_single_frame_file(tmp_path: Path) -> None:
    edit = (5819, bytes.fromhex("833c4ebb624a03c827eb399ab30967ddede46636"))
    path = _damaged(PYDICOM_TESTS / "MR_small_RLE.dcm", tmp_path, [edit])
    with pytest.raises(
        ImageReadError,
        match=r"MR_small_RLE\.dcm: pixel data cannot be decoded \(PanicException",
    ):
        read_image(path)


def test_damaged_series_number_does_not_break_find_series(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    raw = pydicom.dcmread(files[1]).get_item(0x00200011)  # SeriesNumber, IS "1 "
    _damaged(files[1], tmp_path / "s", [(raw.value_tell, b"1\x85")])
    (info,) = find_series(tmp_path / "s")
    assert info.num_files == 5
    assert info.size == (4, 3, 5)


def test_nifti_with_a_singular_affine(tmp_path: Path) -> None:
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4)), path)
    _damaged(path, tmp_path, [(312, bytes(16))])  # srow_z = 0: the sform has no z axis
    with pytest.raises(
        ImageReadError, match=r"flat\.nii: NIfTI header or data unusable: affine is singular"
    ):
        read_image(path)


def test_damaged_frame_in_a_compressed_series_is_named(tmp_path: Path) -> None:
    """Frames of a compressed series are decoded in threads; a bad one names its file."""
    files = _series(tmp_path / "s", nz=6)
    expected = read_dicom_series(tmp_path / "s").numpy3d()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(path)
    for threads in (1, 3):
        back = read_dicom_series(tmp_path / "s", threads=threads).numpy3d()
        np.testing.assert_array_equal(back, expected)
    raw = pydicom.dcmread(files[4]).get_item(0x7FE00010)
    offsets = int.from_bytes(raw.value[4:8], "little")  # basic offset table length
    header = raw.value_tell + 8 + offsets + 8  # RLE header: segment count, then offsets
    _damaged(files[4], tmp_path / "s", [(header + 4, (0xFFFF).to_bytes(4, "little"))])
    with pytest.raises(
        ImageReadError, match=r"slice_0005\.dcm: pixel data cannot be decoded \(RuntimeError"
    ):
        read_dicom_series(tmp_path / "s", threads=3)
