"""NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK.

ITK stores geometry as origin + spacing + direction in LPS; medai converts to and
from a RAS+ affine by flipping the first two world axes. Vector pixels (RGB) become
channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk  # noqa: N813
from numpy.typing import NDArray

from medai.errors import ImageReadError
from medai.fsutil import atomic_path
from medai.image import Image, LabelMap, ScalarImage
from medai.io._guard import file_errors
from medai.io.dicom_geometry import LPS_TO_RAS

__all__ = ["ITK_SUFFIXES", "read_itk", "write_itk"]

T = TypeVar("T", bound=Image)

ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_WRITABLE = (".nrrd", ".mha")


def _affine(image: Any) -> NDArray[np.float64]:
    dim = image.GetDimension()
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(spacing)
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def read_itk(path: str | Path, *, kind: type[T] = ScalarImage) -> T:  # type: ignore[assignment]
    """Read a 2D or 3D NRRD/MetaImage file as ``kind``.

    Raises:
        ImageReadError: If the file is missing, unreadable or not 2D/3D.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ImageReadError(path, f"not a readable NRRD/MetaImage file ({first})") from exc
    with file_errors(path, "NRRD/MetaImage pixel data unreadable"):
        return _to_image(image, path, kind)


def _to_image(image: Any, path: Path, kind: type[T]) -> T:
    if image.GetDimension() not in (2, 3):
        raise ImageReadError(path, f"expected a 2D or 3D image; got {image.GetDimension()}D")
    data = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) or (y, x[, c])
    vector = image.GetNumberOfComponentsPerPixel() > 1
    if image.GetDimension() == 2:
        data = data[np.newaxis]
    if not vector:
        data = data[..., np.newaxis]
    array = data.transpose(3, 2, 1, 0)  # (c, x, y, z)
    if not issubclass(kind, LabelMap) and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    try:
        return kind(array, _affine(image), meta={"source": str(path)})
    except (TypeError, ValueError) as exc:
        raise ImageReadError(path, str(exc)) from exc


def write_itk(image: Image, path: str | Path) -> Path:
    """Write ``image`` as ``.nrrd`` or ``.mha`` (single file), atomically.

    Raises:
        ValueError: If the suffix is not ``.nrrd``/``.mha``.
    """
    path = Path(path)
    if path.suffix.lower() not in _WRITABLE:
        raise ValueError(f"NRRD/MetaImage path must end in .nrrd or .mha; got {path.name!r}")
    data = image.array.transpose(3, 2, 1, 0)  # (z, y, x, c)
    if isinstance(image, ScalarImage) and data.dtype == np.float64:
        data = data.astype(np.float32)
    if image.num_channels == 1:
        out = sitk.GetImageFromArray(np.ascontiguousarray(data[..., 0]))
    else:
        out = sitk.GetImageFromArray(np.ascontiguousarray(data), isVector=True)
    lps = LPS_TO_RAS @ image.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out.SetSpacing([float(s) for s in spacing])
    out.SetOrigin([float(v) for v in lps[:3, 3]])
    out.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    with atomic_path(path) as tmp:
        sitk.WriteImage(out, str(tmp), useCompression=True)
    return path
