"""NRRD/MHA (SimpleITK) and PNG/JPEG/TIFF reading and writing, dispatched by read_image."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import tifffile
from PIL import Image as PILImage

from medai.errors import ImageReadError
from medai.image import LabelMap, ScalarImage
from medai.io import read_image, read_label, write_image


def _oblique() -> np.ndarray:
    angle = np.radians(25)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 1.3, 2.2])
    affine[:3, 3] = [-5.0, 12.5, 40.0]
    return affine


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_round_trip(tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    image = ScalarImage(data, _oblique())
    write_image(image, tmp_path / f"a{suffix}")
    back = read_image(tmp_path / f"a{suffix}")
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)
    np.testing.assert_array_equal(back.numpy3d(), data)


def test_itk_geometry_agrees_with_nibabel_via_simpleitk(tmp_path: Path) -> None:
    """nibabel writes NIfTI (RAS); SimpleITK converts it to MHA (LPS); medai reads RAS again."""
    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    nib.save(nib.Nifti1Image(data, _oblique()), tmp_path / "n.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tmp_path / "n.nii.gz")), str(tmp_path / "n.mha"))
    back = read_image(tmp_path / "n.mha")
    np.testing.assert_allclose(back.affine, _oblique(), atol=1e-5)
    np.testing.assert_array_equal(back.numpy3d(), data)


def test_itk_vector_pixels_become_channels_and_labels_stay_integer(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (6, 5, 4, 3)).astype(np.uint8)
    vec = sitk.GetImageFromArray(rgb, isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "rgb.nrrd"))
    image = read_image(tmp_path / "rgb.nrrd")
    assert image.num_channels == 3
    assert image.shape == (4, 5, 6)
    np.testing.assert_array_equal(image.array[1], rgb[..., 1].transpose(2, 1, 0))
    labels = LabelMap(np.array([[[0, 1], [2, 3]]], dtype=np.uint8), np.eye(4))
    write_image(labels, tmp_path / "seg.nrrd")
    seg = read_label(tmp_path / "seg.nrrd")
    assert isinstance(seg, LabelMap)
    assert seg.labels == (0, 1, 2, 3)
    assert np.issubdtype(seg.array.dtype, np.integer)


def test_itk_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "bad.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\n\n")
    with pytest.raises(ImageReadError, match=r"bad\.nrrd: not a readable NRRD/MetaImage"):
        read_image(tmp_path / "bad.nrrd")


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255), (np.uint16, 4000)])
def test_png_grey_round_trip(tmp_path: Path, dtype: type, top: int) -> None:
    data = np.random.default_rng(2).integers(0, top, (7, 5)).astype(dtype)
    write_image(ScalarImage(data), tmp_path / "g.png")
    with PILImage.open(tmp_path / "g.png") as png:
        assert png.size == (7, 5)  # width = x, height = y
    back = read_image(tmp_path / "g.png")
    assert back.shape == (7, 5, 1)
    assert back.num_channels == 1
    np.testing.assert_array_equal(back.numpy3d()[..., 0], data)


def test_png_and_jpeg_rgb(tmp_path: Path) -> None:
    rgb = np.random.default_rng(3).integers(0, 255, (5, 8, 3)).astype(np.uint8)  # rows, cols
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    assert image.num_channels == 3
    assert image.shape == (8, 5, 1)
    np.testing.assert_array_equal(image.array[..., 0], rgb.transpose(2, 1, 0))
    write_image(image, tmp_path / "c2.png")
    np.testing.assert_array_equal(read_image(tmp_path / "c2.png").array, image.array)
    flat = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    PILImage.fromarray(flat).save(tmp_path / "c.jpg", quality=95)
    jpeg = read_image(tmp_path / "c.jpg")
    assert jpeg.num_channels == 3
    np.testing.assert_allclose(jpeg.array.mean(axis=(1, 2, 3)), [200, 40, 90], atol=3)


def test_tiff_grey_and_pages(tmp_path: Path) -> None:
    grey = np.arange(35, dtype=np.uint16).reshape(5, 7)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    image = read_image(tmp_path / "g.tif")
    assert image.shape == (7, 5, 1)
    np.testing.assert_array_equal(image.numpy3d()[..., 0], grey.T)
    pages = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    tifffile.imwrite(tmp_path / "p.tiff", pages)
    assert read_image(tmp_path / "p.tiff").shape == (7, 5, 2)


def test_raster_default_geometry_matches_dicom_default() -> None:
    """No patient geometry: 1 mm pixels, columns → patient left, rows → posterior."""
    image = ScalarImage(np.zeros((3, 2)), np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert image.orientation == ("L", "P", "S")


def test_png_write_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one slice"):
        write_image(ScalarImage(np.zeros((3, 3, 2))), tmp_path / "a.png")
    with pytest.raises(ValueError, match="round or rescale"):
        write_image(ScalarImage(np.full((3, 3), 0.5)), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"values in 0\.\.65535"):
        write_image(ScalarImage(np.full((3, 3), -4.0)), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"cannot write 'a\.bmp'"):
        write_image(ScalarImage(np.zeros((3, 3))), tmp_path / "a.bmp")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageReadError, match=r"bad\.png: not a readable \.png image"):
        read_image(tmp_path / "bad.png")
