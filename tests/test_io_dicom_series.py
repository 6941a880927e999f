"""DICOM series written by medai: read back by medai and by SimpleITK, and round trips."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from medai.cli.console import console
from medai.cli.main import app
from medai.image import ScalarImage
from medai.io import (
    read_dicom_series,
    read_image,
    read_nifti,
    write_dicom_series,
    write_image,
    write_nifti,
)


def _rotation(ax: float, ay: float, az: float) -> NDArray[np.float64]:
    cx, sx, cy, sy, cz, sz = (f(np.radians(a)) for a in (ax, ay, az) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique_affine() -> NDArray[np.float64]:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(20, -15, 30) @ np.diag([0.8, 1.1, 2.5])
    affine[:3, 3] = [10.5, -20.25, 35.0]
    return affine


def _integer_image(affine: NDArray[np.float64], shape: tuple[int, int, int]) -> ScalarImage:
    data = np.random.default_rng(0).integers(-1000, 3000, shape).astype(np.float32)
    return ScalarImage(data, affine)


def _sitk_affine(image: sitk.Image) -> NDArray[np.float64]:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _read_sitk(folder: Path) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), _sitk_affine(image)


def _write(image: ScalarImage, folder: Path, **kw: object) -> list[Path]:
    return write_dicom_series(image, folder, patient_id="P001", patient_name="Doe^Jane", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_series_geometry_matches_medai_and_simpleitk(tmp_path: Path, modality: str) -> None:
    image = _integer_image(_oblique_affine(), (12, 9, 7))
    files = _write(image, tmp_path / "s", modality=modality)
    assert [f.name for f in files] == [f"slice_{k:04d}.dcm" for k in range(1, 8)]
    back = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(back.numpy3d(), image.numpy3d())
    ref_pixels, ref_affine = _read_sitk(tmp_path / "s")
    np.testing.assert_allclose(ref_affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(ref_pixels, image.numpy3d())


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_float_data_within_half_a_rescale_step(tmp_path: Path, modality: str) -> None:
    data = np.random.default_rng(1).normal(0, 100, (10, 8, 5)).astype(np.float32)
    image = ScalarImage(data, _oblique_affine())
    _write(image, tmp_path / "f", modality=modality)
    back = read_dicom_series(tmp_path / "f").numpy3d()
    step = float(pydicom.dcmread(tmp_path / "f" / "slice_0001.dcm").RescaleSlope)
    assert step == pytest.approx((data.max() - data.min()) / 65534, rel=1e-6)
    assert np.abs(back - data).max() <= step / 2 + 1e-4
    ref_pixels, _ = _read_sitk(tmp_path / "f")
    np.testing.assert_allclose(ref_pixels, back, atol=1e-3)


def test_written_attributes(tmp_path: Path) -> None:
    image = _integer_image(np.diag([0.5, 0.7, 3.0, 1.0]), (6, 4, 3))
    files = _write(
        image,
        tmp_path / "a",
        modality="MR",
        study_uid="1.2.3.4",
        series_uid="1.2.3.4.5",
        series_number=7,
        series_description="T1 synthetic",
        study_description="Brain",
        study_date="2024-03-01",
        extra={"PatientSex": "F"},
    )
    ds = pydicom.dcmread(files[2])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == ("1.2.3.4", "1.2.3.4.5")
    assert (ds.SeriesNumber, ds.InstanceNumber, ds.StudyDate) == (7, 3, "20240301")
    assert ds.PatientSex == "F"
    lo, hi = image.numpy3d().min(), image.numpy3d().max()
    assert float(ds.WindowCenter) == pytest.approx((lo + hi) / 2)
    assert float(ds.WindowWidth) == pytest.approx(hi - lo)
    assert ds.Rows == 4
    assert ds.Columns == 6
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.5]
    assert float(ds.SliceThickness) == 3.0
    assert float(ds.SpacingBetweenSlices) == 3.0
    # RAS (0,0,6) mm is LPS (-0,-0,6): the third slice of a 3 mm series from the origin.
    assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, 6.0]
    assert [float(v) for v in ds.ImageOrientationPatient] == [-1, 0, 0, 0, -1, 0]
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == 3
    back = read_image(tmp_path / "a")
    assert back.meta["PatientID"] == "P001"
    assert back.meta["SeriesDescription"] == "T1 synthetic"
    assert back.meta["SeriesInstanceUID"] == "1.2.3.4.5"


def test_nifti_dicom_nifti_round_trip_oblique_anisotropic(tmp_path: Path) -> None:
    image = _integer_image(_oblique_affine(), (11, 8, 6))
    write_nifti(image, tmp_path / "in.nii.gz")
    _write(read_image(tmp_path / "in.nii.gz"), tmp_path / "dicom")
    write_image(read_image(tmp_path / "dicom"), tmp_path / "out.nii.gz")
    out = read_nifti(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(out.affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(out.numpy3d(), image.numpy3d())


def test_left_handed_affine_comes_back_as_the_same_voxels_in_space(tmp_path: Path) -> None:
    """A left-handed grid (LAS) is stored as slices along the normal; read back, z is
    reversed but every voxel keeps its world position and value."""
    affine = np.diag([-0.9, 1.2, 2.0, 1.0])
    image = _integer_image(affine, (5, 4, 6))
    _write(image, tmp_path / "las")
    back = read_dicom_series(tmp_path / "las")
    np.testing.assert_array_equal(back.numpy3d(), image.numpy3d()[:, :, ::-1])
    flip = np.eye(4)
    flip[2, 2], flip[2, 3] = -1, 5
    np.testing.assert_allclose(back.affine @ flip, image.affine, atol=1e-4)
    assert nib.orientations.aff2axcodes(back.affine) == ("L", "A", "I")


def test_cli_convert_both_ways_and_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "width", 250)
    image = _integer_image(_oblique_affine(), (7, 6, 5))
    write_nifti(image, tmp_path / "in.nii")
    runner = CliRunner()
    to_dicom = ["io", "convert", str(tmp_path / "in.nii"), str(tmp_path / "d")]
    result = runner.invoke(app, [*to_dicom, "--modality", "CT", "--patient-id", "X9"])
    assert result.exit_code == 0, result.output
    assert "5 CT files" in result.output
    result = runner.invoke(app, ["io", "convert", str(tmp_path / "d"), str(tmp_path / "o.nii.gz")])
    assert result.exit_code == 0, result.output
    out = read_nifti(tmp_path / "o.nii.gz")
    np.testing.assert_allclose(out.affine, image.affine, atol=1e-4)
    np.testing.assert_array_equal(out.numpy3d(), image.numpy3d())
    result = runner.invoke(app, ["io", "info", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "CT" in result.output
    assert "X9" in result.output
    assert "0.8 × 1.1 × 2.5" in result.output
    again = runner.invoke(app, ["io", "convert", str(tmp_path / "d"), str(tmp_path / "o.nii.gz")])
    assert again.exit_code == 2
    assert "--overwrite" in again.output


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"hello, not dicom" * 20)
    result = CliRunner().invoke(app, ["io", "info", str(tmp_path / "junk.dcm")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich wraps at the terminal width
    assert "junk.dcm: not a DICOM file" in text
    assert "Traceback" not in text


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    image = _integer_image(np.eye(4), (4, 4, 2))
    with pytest.raises(ValueError, match="modality must be one of"):
        _write(image, tmp_path / "x", modality="US")
    with pytest.raises(ValueError, match="one channel"):
        _write(ScalarImage(np.zeros((2, 4, 4, 2))), tmp_path / "x")
    with pytest.raises(ValueError, match="NaN"):
        _write(ScalarImage(np.full((4, 4, 2), np.nan)), tmp_path / "x")
    with pytest.raises(ValueError, match="not a DICOM attribute keyword"):
        _write(image, tmp_path / "x", extra={"NoSuchKeyword": 1})
    with pytest.raises(ValueError, match="study_date"):
        _write(image, tmp_path / "x", study_date="March")
    assert not (tmp_path / "x").exists()
    _write(image, tmp_path / "x")
    with pytest.raises(ValueError, match="not empty"):
        _write(image, tmp_path / "x")
    _write(image.with_array(image.array + 1), tmp_path / "x", overwrite=True)
    assert read_dicom_series(tmp_path / "x").numpy3d().min() == image.numpy3d().min() + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no staging leftovers


def test_files_without_geometry_stack_by_instance_number(tmp_path: Path) -> None:
    data = np.arange(4 * 3 * 4, dtype=np.float32).reshape(4, 3, 4)
    files = _write(ScalarImage(data, np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "s")
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(path)
        path.rename(path.with_name(f"IM{10 - k}.dcm"))  # name order is reversed
    image = read_dicom_series(tmp_path / "s")
    assert image.meta["geometry_from_patient"] is False
    np.testing.assert_array_equal(image.numpy3d(), data)
    assert image.spacing == pytest.approx((0.5, 0.5, 2.0))


def _enhanced_mr(path: Path, positions: list[float], shared_spacing: bool) -> None:
    """An Enhanced MR file (from pydicom-data's emri_small pixels) with functional groups:
    orientation shared, position per frame, pixel measures shared or per frame."""
    source = Path(pydicom.__file__).parent.parent / "data_store" / "data" / "emri_small.dcm"
    ds = pydicom.dcmread(source)
    ds.NumberOfFrames = len(positions)
    frame_bytes = int(ds.Rows) * int(ds.Columns) * 2
    ds.PixelData = ds.PixelData[: frame_bytes * len(positions)]
    measures = Dataset()
    measures.PixelSpacing = ["0.9", "0.6"]
    measures.SliceThickness = "3"
    orientation = Dataset()
    orientation.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = "2", "-10"
    shared = Dataset()
    shared.PlaneOrientationSequence = [orientation]
    shared.PixelValueTransformationSequence = [transform]
    if shared_spacing:
        shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for x in positions:
        position = Dataset()
        position.ImagePositionPatient = [x, -50.0, 20.0]
        item = Dataset()
        item.PlanePositionSequence = [position]
        if not shared_spacing:
            item.PixelMeasuresSequence = [measures]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(path)


@pytest.mark.parametrize("shared_spacing", [True, False])
def test_enhanced_multiframe_orders_frames_and_applies_groups(
    tmp_path: Path, shared_spacing: bool
) -> None:
    positions = [6.0, 0.0, 9.0, 3.0]  # LPS x of each frame, stored out of order
    _enhanced_mr(tmp_path / "e.dcm", positions, shared_spacing)
    image = read_image(tmp_path / "e.dcm")
    raw = pydicom.dcmread(tmp_path / "e.dcm").pixel_array.astype(np.float64)
    # Slice normal = row (0,1,0) × column (0,0,-1) = (-1,0,0) in LPS: frames go by
    # decreasing LPS x (9, 6, 3, 0), i.e. increasing RAS x in 3 mm steps from x = -9.
    order = np.argsort(-np.asarray(positions))
    np.testing.assert_array_equal(image.numpy3d(), (raw[order] * 2 - 10).transpose(2, 1, 0))
    expected = np.eye(4)
    expected[:3, 0] = [0, -0.6, 0]  # along a row: LPS +y = RAS -y, PixelSpacing[1]
    expected[:3, 1] = [0, 0, -0.9]  # down a column: LPS -z = RAS -z, PixelSpacing[0]
    expected[:3, 2] = [3.0, 0, 0]
    expected[:3, 3] = [-9.0, 50, 20]
    np.testing.assert_allclose(image.affine, expected, atol=1e-6)
    assert image.meta["Modality"] == "MR"


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _integer_image(np.eye(4), (4, 4, 5))
    _write(image, tmp_path / "keep")
    before = sorted(p.read_bytes() for p in (tmp_path / "keep").iterdir())
    calls = {"n": 0}
    original = pydicom.dataset.Dataset.save_as

    def failing_save(self: Dataset, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom.dataset.Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _write(image.with_array(image.array * 2), tmp_path / "keep", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    assert sorted(p.read_bytes() for p in (tmp_path / "keep").iterdir()) == before
