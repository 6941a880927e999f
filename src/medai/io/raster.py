"""2D raster images: PNG, JPEG (Pillow) and TIFF (tifffile).

A raster carries no patient geometry: pixels are 1 mm and the plane is the same
default axial plane medai assumes for DICOM files without geometry (column index
→ patient left, row index → posterior), so a screenshot and a secondary-capture
DICOM of it line up. Colour becomes channels; a multi-page TIFF stacks along z.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image as PILImage

from medai.errors import ImageReadError, ImageWriteError
from medai.fsutil import atomic_path
from medai.image import Image, LabelMap, ScalarImage
from medai.io._guard import file_errors
from medai.io.dicom_geometry import LPS_TO_RAS

__all__ = ["RASTER_SUFFIXES", "read_raster", "write_png"]

T = TypeVar("T", bound=Image)

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _load(path: Path) -> NDArray[Any]:
    if path.suffix.lower() in (".tif", ".tiff"):
        with file_errors(path, "not a readable TIFF file"):  # tifffile raises many types
            return np.asarray(tifffile.imread(path))
    with (
        file_errors(path, f"not a readable {path.suffix} image"),  # Pillow: many types too
        PILImage.open(path) as handle,
    ):
        handle.load()
        if handle.mode in ("P", "PA", "CMYK", "YCbCr", "LA"):
            return np.asarray(handle.convert("RGBA" if "A" in handle.mode else "RGB"))
        return np.asarray(handle)


def read_raster(path: str | Path, *, kind: type[T] = ScalarImage) -> T:  # type: ignore[assignment]
    """Read a PNG/JPEG/TIFF file as a ``z = 1`` image (RGB → 3 channels).

    Raises:
        ImageReadError: If the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    pixels = _load(path)
    if pixels.ndim == 2:
        array = pixels.T[np.newaxis, :, :, np.newaxis]
    elif pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        array = pixels.transpose(2, 1, 0)[..., np.newaxis]
    elif pixels.ndim == 3:
        array = pixels.transpose(2, 1, 0)[np.newaxis]  # pages along z
    else:
        raise ImageReadError(path, f"unsupported raster shape {pixels.shape}")
    if not issubclass(kind, LabelMap) and not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    try:
        return kind(array, LPS_TO_RAS.copy(), meta={"source": str(path)})
    except (TypeError, ValueError) as exc:
        raise ImageReadError(path, str(exc)) from exc


def write_png(image: Image, path: str | Path) -> Path:
    """Write a ``z = 1`` image with integer values as PNG (geometry is not stored).

    One channel of 0..255 becomes 8-bit grey, 0..65535 16-bit grey; three or four
    channels of 0..255 become RGB/RGBA.

    Raises:
        ValueError: If the suffix is not ``.png``.
        ImageWriteError: If the image is 3D or its values are not integers in the PNG
            range (rescale first, e.g. to 0..255).
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"PNG path must end in .png; got {path.name!r}")
    if not image.is_2d:
        raise ImageWriteError(f"PNG holds one slice; image shape is {image.shape} (pick a slice)")
    data = image.array[..., 0].transpose(2, 1, 0)  # (rows, cols, channels)
    if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
        raise ImageWriteError("PNG stores integers; round or rescale the image to 0..255 first")
    lo, hi = float(data.min()), float(data.max())
    limit = 65535 if image.num_channels == 1 else 255
    if lo < 0 or hi > limit or image.num_channels not in (1, 3, 4):
        raise ImageWriteError(
            f"PNG needs 1, 3 or 4 channels with values in 0..{limit}; got "
            f"{image.num_channels} channels, values {lo:g}..{hi:g}"
        )
    dtype = np.uint8 if hi <= 255 else np.uint16
    pixels = data.astype(dtype)
    pil = PILImage.fromarray(pixels[..., 0] if image.num_channels == 1 else pixels)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return path
