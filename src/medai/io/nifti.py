"""NIfTI-1/2 reading and writing (``.nii``, ``.nii.gz``), 3D and 4D.

NIfTI stores a voxel-to-RAS+ affine directly, so it maps onto :class:`Image`
without conversion. A 4D file holds channels on its last axis (as MSD does);
medai keeps channels first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np

from medai.errors import ImageReadError
from medai.fsutil import atomic_path
from medai.image import Image, LabelMap, ScalarImage
from medai.io._guard import file_errors

__all__ = ["is_nifti", "read_nifti", "write_nifti"]

T = TypeVar("T", bound=Image)


def is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith((".nii", ".nii.gz"))


def read_nifti(path: str | Path, *, kind: type[T] = ScalarImage) -> T:  # type: ignore[assignment]
    """Read a NIfTI file as ``kind`` (:class:`ScalarImage` or :class:`LabelMap`).

    Raises:
        ImageReadError: If the file is missing, not NIfTI, truncated, or has more than
            four dimensions.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    with file_errors(path, "not a readable NIfTI file"):  # nibabel raises many types
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    if affine is None:
        raise ImageReadError(path, "NIfTI header has no usable affine (qform and sform unset)")
    data = np.squeeze(data, axis=tuple(range(4, data.ndim))) if data.ndim > 4 else data
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    elif data.ndim not in (2, 3):
        raise ImageReadError(path, f"expected a 2D, 3D or 4D image; got {data.ndim} dimensions")
    if issubclass(kind, LabelMap):
        data = _as_label_array(path, data)
    elif not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float32)
    meta: dict[str, Any] = {"source": str(path)}
    try:
        return kind(data, affine, meta=meta)
    except (TypeError, ValueError) as exc:  # e.g. a singular or non-finite affine
        raise ImageReadError(
            path, f"NIfTI header or data unusable: {exc} (pixdim, qform and sform fields)"
        ) from exc


def _as_label_array(path: Path, data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.integer):
        return data
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ImageReadError(path, "label file holds non-integer values; is it an intensity image?")
    return data.astype(np.int16)


def write_nifti(image: Image, path: str | Path) -> Path:
    """Write ``image`` as NIfTI (gzip when the name ends in ``.gz``), atomically.

    Label maps are stored as integers, scalar images as float32 unless already
    an integer type. Channels go to the fourth axis.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"NIfTI path must end in .nii or .nii.gz; got {path.name!r}")
    data = image.array
    if isinstance(image, ScalarImage) and np.issubdtype(data.dtype, np.float64):
        data = data.astype(np.float32)
    data = data[0] if image.num_channels == 1 else np.moveaxis(data, 0, -1)
    nii = nib.Nifti1Image(np.ascontiguousarray(data), image.affine)
    nii.header.set_xyzt_units("mm", "sec")
    nii.set_qform(image.affine, code=1)
    nii.set_sform(image.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))
    return path
