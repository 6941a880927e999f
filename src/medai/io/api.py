"""One entry point for every format: :func:`read_image`, :func:`read_label`, :func:`write_image`.

The format is chosen from the suffix (or, for a folder, DICOM series); files
without a known suffix are tried as DICOM.

Example:
    >>> image = read_image("t1.nii.gz")  # doctest: +SKIP
    >>> mask = read_label("seg.nrrd")  # doctest: +SKIP
    >>> write_image(image, "t1.mha")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from medai.errors import ImageReadError
from medai.image import Image, LabelMap, ScalarImage
from medai.io.dicom import is_dicom_file, read_dicom, read_dicom_series
from medai.io.itk import ITK_SUFFIXES, read_itk, write_itk
from medai.io.nifti import is_nifti, read_nifti, write_nifti
from medai.io.raster import RASTER_SUFFIXES, read_raster, write_png

__all__ = ["read_image", "read_label", "write_image"]

T = TypeVar("T", bound=Image)

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_FORMATS = "NIfTI (.nii/.nii.gz), NRRD/MetaImage (.nrrd/.nhdr/.mha/.mhd), DICOM, PNG/JPEG/TIFF"


def read_image(
    path: str | Path,
    *,
    kind: type[T] = ScalarImage,  # type: ignore[assignment]
    series_uid: str | None = None,
) -> T:
    """Read an image file, or a DICOM series folder, as ``kind``.

    Args:
        path: A NIfTI/NRRD/MHA/MHD/DICOM/PNG/JPEG/TIFF file or a DICOM folder.
        kind: :class:`ScalarImage` (default) or :class:`LabelMap`.
        series_uid: For a folder holding several DICOM series, which one to read.

    Raises:
        ImageReadError: If the path is missing, of an unknown format, or unreadable.
        GeometryError: If DICOM slices do not form a regular volume.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, kind=kind, series_uid=series_uid)
    if not path.exists():
        raise ImageReadError(path, "file or folder not found")
    name = path.name.lower()
    if is_nifti(path):
        return read_nifti(path, kind=kind)
    if name.endswith(ITK_SUFFIXES):
        return read_itk(path, kind=kind)
    if name.endswith(RASTER_SUFFIXES):
        return read_raster(path, kind=kind)
    if name.endswith(_DICOM_SUFFIXES) or not path.suffix or is_dicom_file(path):
        return read_dicom(path, kind=kind)
    raise ImageReadError(path, f"unknown image format {path.suffix!r}; medai reads {_FORMATS}")


def read_label(path: str | Path, *, series_uid: str | None = None) -> LabelMap:
    """Read a segmentation as a :class:`LabelMap`; accepts every format of :func:`read_image`."""
    return read_image(path, kind=LabelMap, series_uid=series_uid)


def write_image(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI, NRRD, MHA or PNG, chosen by suffix, atomically.

    For a DICOM series use :func:`medai.io.write_dicom_series`.

    Raises:
        ValueError: If the suffix is not one of ``.nii``, ``.nii.gz``, ``.nrrd``,
            ``.mha``, ``.png``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if is_nifti(path):
        return write_nifti(image, path)
    if suffix in (".nrrd", ".mha"):
        return write_itk(image, path)
    if suffix == ".png":
        return write_png(image, path)
    raise ValueError(
        f"cannot write {path.name!r}: use .nii, .nii.gz, .nrrd, .mha or .png "
        "(write_dicom_series for DICOM)"
    )
