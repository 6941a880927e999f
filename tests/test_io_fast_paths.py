"""The fast paths of DICOM reading give exactly what pydicom gives.

Header values parsed from raw bytes (``_dicom_values.header_value``) and native pixel
data read straight from the file (``dicom_pixels``) are compared with pydicom's own
conversion and decoding on every DICOM file of pydicom-data and pydicom's test files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import pixel_array
from pydicom.uid import RLELossless

from medai.image import LabelMap, ScalarImage
from medai.io import read_dicom, read_dicom_series, write_dicom_series
from medai.io._dicom_values import header_value
from medai.io.dicom_pixels import _native_frames, _syntax, decode_frames

DATA = Path(pydicom.__file__).parent.parent / "data_store" / "data"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
FILES = sorted([*DATA.iterdir(), *TEST_FILES.rglob("*.dcm")])

KEYWORDS = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RescaleSlope",
    "RescaleIntercept",
    "PhotometricInterpretation",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PlanarConfiguration",
)


def _datasets(*, defer: bool) -> Iterator[tuple[Path, Dataset]]:
    for path in FILES:
        try:
            ds = pydicom.dcmread(path, force=True, defer_size=4096 if defer else None)
        except Exception:  # a few test files are broken on purpose
            continue
        if "PixelData" in ds and "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
            yield path, ds


def _normalised(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, list | MultiValue):
        return [float(v) for v in value]
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


#: pydicom warns about the odd files of its own test set; the comparisons still hold.
quiet = pytest.mark.filterwarnings("ignore::UserWarning")


@quiet
def test_header_values_equal_pydicom() -> None:
    compared = 0
    for path, ds in _datasets(defer=True):
        reference = pydicom.dcmread(path, force=True, defer_size=4096)
        for keyword in KEYWORDS:
            mine, theirs = header_value(ds, keyword), reference.get(keyword)
            assert _normalised(mine) == _normalised(theirs), (path.name, keyword)
            compared += theirs is not None
    assert compared > 1000


@quiet
@pytest.mark.parametrize("defer", [False, True])
def test_native_pixels_equal_pydicom(defer: bool) -> None:
    fast = partial = 0
    for path, ds in _datasets(defer=defer):
        syntax = _syntax(ds)
        try:
            native = _native_frames(ds, path, syntax) if syntax is not None else None
        except ValueError:  # a header value that is not a number (badVR.dcm)
            with pytest.raises(Exception, match="invalid literal"):
                pixel_array(ds)  # pydicom cannot decode it either
            continue
        if native is None:
            continue
        expected = pixel_array(ds)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        assert native.dtype == expected.dtype.newbyteorder("="), path.name
        np.testing.assert_array_equal(native, expected.reshape(frames, *expected.shape[-2:], 1))
        fast += 1
        partial += int(ds.BitsStored) < int(ds.BitsAllocated)
    assert fast >= 25  # the fast path is taken, also with unused high bits
    assert partial >= 10


def test_compressed_data_never_takes_the_native_path(tmp_path: Path) -> None:
    """A tiny compressed image has more encoded bytes than pixels: still decoded."""
    image = ScalarImage(np.arange(12, dtype=np.float32).reshape(4, 3, 1), np.eye(4))
    (path,) = write_dicom_series(image, tmp_path / "s", patient_id="P", patient_name="A^B")
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    assert len(ds.PixelData) > 2 * 12
    assert _native_frames(ds, path, ds.file_meta.TransferSyntaxUID) is None
    np.testing.assert_array_equal(decode_frames(ds, path)[0, :, :, 0], pixel_array(ds))


def test_unused_high_bits_are_ignored_and_sign_extended(tmp_path: Path) -> None:
    """12 bits stored in 16: the top 4 bits are noise; bit 11 is the sign."""
    values = np.array([[-2048, -1, 0], [1, 2047, -7]], dtype=np.int16)
    image = LabelMap(values.T[:, :, np.newaxis].astype(np.int16), np.eye(4))
    (path,) = write_dicom_series(image, tmp_path / "s", patient_id="P", patient_name="A^B")
    ds = pydicom.dcmread(path)
    noisy = (values.astype(np.uint16) & 0x0FFF) | (np.arange(6).reshape(2, 3) << 12).astype(
        np.uint16
    )
    ds.PixelData = noisy.astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    back = read_dicom(path, kind=LabelMap)
    np.testing.assert_array_equal(back.array[0, :, :, 0].T, values)
    np.testing.assert_array_equal(back.array[0, :, :, 0].T, pixel_array(pydicom.dcmread(path)))


def test_series_read_equals_single_file_reads(tmp_path: Path) -> None:
    """Deferred series reading (pixels read from the file later) = loaded single files."""
    data = np.random.default_rng(1).integers(-1000, 3000, (5, 4, 3)).astype(np.float32)
    files = write_dicom_series(
        ScalarImage(data, np.diag([0.7, 0.8, 2.0, 1.0])),
        tmp_path / "s",
        patient_id="P",
        patient_name="A^B",
    )
    series = read_dicom_series(tmp_path / "s")
    for k, path in enumerate(files):
        np.testing.assert_array_equal(read_dicom(path).numpy3d()[:, :, 0], series.numpy3d()[..., k])
    np.testing.assert_array_equal(series.numpy3d(), data)
