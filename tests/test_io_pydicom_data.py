"""medai.io against the real DICOM files shipped by pydicom-data (and pydicom's own test files).

Every file either reads (pixels + geometry) or fails with a medai error naming the file
and the reason; every losslessly compressed twin decodes to exactly the pixels of its
uncompressed file; lossy JPEG 2000 (``*_J2KI``) stays within a stated tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk  # noqa: N813
from typer.testing import CliRunner

from medai.cli.main import app
from medai.errors import ImageReadError
from medai.image import ScalarImage
from medai.io import find_series, read_dicom, read_image

DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: Files of pydicom-data that are broken on purpose, and the reason medai must give.
BROKEN = {"emri_small_jpeg_2k_lossless_too_short.dcm": "truncated"}

#: Lossless twins: (compressed or re-encoded file, reference file). J2KR = JPEG 2000
#: reversible; RLE; JPEG-LS lossless; big-endian and implicit-VR re-encodings.
LOSSLESS = [
    ("693_J2KR.dcm", "693_UNCR.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),
    ("US1_J2KR.dcm", "US1_UNCR.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ("emri_small_big_endian.dcm", "emri_small.dcm"),
    ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm"),
    ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm"),
    ("OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_2frame.dcm"),
    ("OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_2frame.dcm"),
    ("SC_rgb_expb.dcm", "SC_rgb.dcm"),
    ("SC_rgb_expb_16bit.dcm", "SC_rgb_16bit.dcm"),
    ("SC_rgb_expb_32bit_2frame.dcm", "SC_rgb_32bit_2frame.dcm"),
    ("SC_rgb_gdcm2k_uncompressed.dcm", "SC_rgb.dcm"),
    ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm"),
    ("liver_expb.dcm", "liver.dcm"),
    ("color-pl.dcm", "color-px.dcm"),
    (TEST_FILES / "MR_small_RLE.dcm", TEST_FILES / "MR_small.dcm"),
    (TEST_FILES / "MR_small_jp2klossless.dcm", TEST_FILES / "MR_small.dcm"),
    (TEST_FILES / "MR_small_jpeg_ls_lossless.dcm", TEST_FILES / "MR_small.dcm"),
    (TEST_FILES / "MR_small_bigendian.dcm", TEST_FILES / "MR_small.dcm"),
    (TEST_FILES / "MR_small_implicit.dcm", TEST_FILES / "MR_small.dcm"),
    (TEST_FILES / "SC_rgb_rle.dcm", "SC_rgb.dcm"),
    (TEST_FILES / "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_16bit_2frame.dcm"),
    (TEST_FILES / "rtdose_rle.dcm", TEST_FILES / "rtdose.dcm"),
]

#: Lossy JPEG 2000 (irreversible): the decoded pixels must equal the vendor's own
#: decompressed copy (``*_UNCI``) exactly, and differ from the original (``*_UNCR``)
#: by at most this mean absolute error, as a fraction of the original's value range.
LOSSY_MEAN_ABS_TOL = 0.02
LOSSY = [("MR2", DATA), ("RG1", DATA), ("RG3", DATA), ("US1", DATA)]


def _path(name: str | Path) -> Path:
    return name if isinstance(name, Path) else DATA / name


def test_pydicom_data_is_installed() -> None:
    assert len(list(DATA.iterdir())) >= 60


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.iterdir()))
def test_every_file_reads_or_fails_clearly(name: str) -> None:
    path = DATA / name
    if name in BROKEN:
        with pytest.raises(ImageReadError, match=BROKEN[name]) as info:
            read_image(path)
        assert name in str(info.value)
        return
    image = read_image(path)  # every other file must read: pixels and geometry
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    assert isinstance(image, ScalarImage)
    assert image.shape == (int(ds.Columns), int(ds.Rows), frames)
    assert image.num_channels in (1, 3)
    assert np.all(np.isfinite(image.array))
    assert abs(np.linalg.det(image.affine[:3, :3])) > 0
    assert image.meta["source"] == str(path)


@pytest.mark.parametrize(("twin", "reference"), LOSSLESS, ids=lambda v: Path(v).name)
def test_lossless_twin_decodes_exactly(twin: str | Path, reference: str | Path) -> None:
    a, b = read_image(_path(twin)), read_image(_path(reference))
    assert a.array.shape == b.array.shape
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)


@pytest.mark.parametrize(("stem", "folder"), LOSSY, ids=lambda v: str(v)[-6:])
def test_lossy_j2k_within_tolerance(stem: str, folder: Path) -> None:
    lossy = read_image(folder / f"{stem}_J2KI.dcm").array
    np.testing.assert_array_equal(lossy, read_image(folder / f"{stem}_UNCI.dcm").array)
    original = read_image(folder / f"{stem}_UNCR.dcm").array.astype(np.float64)
    error = np.abs(lossy - original).mean()
    value_range = original.max() - original.min()
    assert 0 < error <= LOSSY_MEAN_ABS_TOL * value_range


@pytest.mark.parametrize(
    "name", ["693_UNCR.dcm", "MR2_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
)
def test_single_file_geometry_and_pixels_match_simpleitk(name: str) -> None:
    image = read_dicom(DATA / name)
    ref = sitk.ReadImage(str(DATA / name))
    ref_pixels = sitk.GetArrayFromImage(ref)[0].T  # (x, y)
    np.testing.assert_allclose(image.numpy3d()[..., 0], ref_pixels, atol=1e-3)
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(ref.GetSpacing())
    lps[:3, 3] = ref.GetOrigin()
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    # In-plane axes and origin; a lone slice's thickness is a convention, not geometry.
    np.testing.assert_allclose(image.affine[:3, [0, 1, 3]], ras[:3, [0, 1, 3]], atol=1e-4)


def test_enhanced_ct_takes_geometry_from_functional_groups() -> None:
    image = read_dicom(DATA / "eCT_Supplemental.dcm")
    ds = pydicom.dcmread(DATA / "eCT_Supplemental.dcm", stop_before_pixels=True)
    frames = ds.PerFrameFunctionalGroupsSequence
    ipp = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in frames]
    shared = ds.SharedFunctionalGroupsSequence[0]
    spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
    assert image.meta["geometry_from_patient"] is True
    origin_lps = min(ipp, key=lambda p: p @ np.cross([-1, 0, 0], [0, 1, 0]))
    np.testing.assert_allclose(image.origin, origin_lps * [-1, -1, 1], atol=1e-4)
    np.testing.assert_allclose(image.spacing[:2], spacing[::-1], atol=1e-6)
    np.testing.assert_allclose(image.spacing[2], np.linalg.norm(ipp[1] - ipp[0]), atol=1e-4)
    raw = pydicom.dcmread(DATA / "eCT_Supplemental.dcm").pixel_array.astype(np.float64)
    slope = float(shared.PixelValueTransformationSequence[0].RescaleSlope)
    intercept = float(shared.PixelValueTransformationSequence[0].RescaleIntercept)
    order = np.argsort([p @ np.cross([-1, 0, 0], [0, 1, 0]) for p in ipp])
    expected = (raw[order] * slope + intercept).transpose(2, 1, 0)
    np.testing.assert_array_equal(image.numpy3d(), expected)


def test_rescale_slope_intercept_applied() -> None:
    ds = pydicom.dcmread(DATA / "693_UNCR.dcm")
    image = read_dicom(DATA / "693_UNCR.dcm")
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
        ds.RescaleIntercept
    )
    assert float(ds.RescaleIntercept) != 0
    np.testing.assert_array_equal(image.numpy3d()[..., 0], expected.T)


def test_dicom_metadata_kept() -> None:
    image = read_dicom(DATA / "MR2_UNCR.dcm")
    ds = pydicom.dcmread(DATA / "MR2_UNCR.dcm", stop_before_pixels=True)
    for key in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality"):
        assert image.meta[key] == str(ds.get(key))


def test_file_without_preamble_is_read() -> None:
    image = read_dicom(DATA / "OT-PAL-8-face.dcm")
    assert image.num_channels == 3  # palette colour expanded to RGB
    assert image.shape == (640, 480, 1)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR_truncated.dcm", "pixel data is truncated"),
        ("rtplan.dcm", "has no image"),
        ("README.txt", "not a DICOM file"),
        ("JPEG-lossy.dcm", "cannot be decoded"),
        ("badVR.dcm", r"unreadable DICOM content \(ValueError"),
        ("ExplVR_LitEndNoMeta.dcm", "without file preamble holds no image"),
    ],
)
def test_pydicom_broken_test_files_fail_clearly(name: str, reason: str) -> None:
    with pytest.raises(ImageReadError, match=reason) as info:
        read_dicom(TEST_FILES / name)
    assert name in str(info.value)


def test_find_series_lists_the_whole_folder_series_by_series() -> None:
    series = find_series(DATA)
    uids = {str(pydicom.dcmread(DATA / "MR2_UNCR.dcm", stop_before_pixels=True).SeriesInstanceUID)}
    assert uids <= {s.uid for s in series}
    listed = sorted(path.name for s in series for path in s.files)
    assert listed == sorted(p.name for p in DATA.iterdir())  # headers of all 68 files
    ct = next(s for s in series if s.files[0].name == "eCT_Supplemental.dcm")
    assert ct.size == (512, 512, 2)
    assert ct.modality == "CT"
    # The MR2 twins share one SeriesInstanceUID and one position: reported, not raised.
    mr2 = next(s for s in series if s.uid in uids)
    assert mr2.problem is not None
    assert "same slice position" in mr2.problem


def test_cli_info_on_the_folder() -> None:
    result = CliRunner().invoke(app, ["io", "info", str(DATA)])
    assert result.exit_code == 0, result.output
    assert "series" in result.output


@pytest.mark.parametrize(
    "path",
    [
        DATA / "JPEG-LL.dcm",  # JPEG lossless, process 14 SV1
        DATA / "JPGLosslessP14SV1_1s_1f_8b.dcm",
        DATA / "bad_sequence.dcm",
        DATA / "693_J2KR.dcm",
        DATA / "MR2_J2KR.dcm",
        DATA / "emri_small_jpeg_ls_lossless.dcm",
        DATA / "explicit_VR-UN.dcm",
        TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        TEST_FILES / "SC_rgb_jpeg_gdcm.dcm",  # JPEG baseline, RGB
        TEST_FILES / "JPEGLSNearLossless_08.dcm",
        TEST_FILES / "SC_rgb_rle.dcm",
    ],
    ids=lambda p: p.name,
)
def test_compressed_pixels_match_an_independent_decoder(path: Path) -> None:
    """pydicom + pylibjpeg (medai) and GDCM (inside SimpleITK) decode to the same values."""
    ours = read_dicom(path).array
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (z, y, x[, c])
    ref = ref.transpose(3, 2, 1, 0) if ref.ndim == 4 else ref.transpose(2, 1, 0)[np.newaxis]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-3)  # float32 rescale rounding only
