"""Broken input gives a specific medai error naming the file and the reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

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
