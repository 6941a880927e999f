"""Images that carry their geometry: :class:`ScalarImage` and :class:`LabelMap`.

An image is an array of shape ``(channels, x, y, z)`` plus a 4×4 affine that maps
voxel indices ``(i, j, k, 1)`` to RAS+ world coordinates in millimetres, plus a
metadata dictionary. A 2D image is the ``z = 1`` case. Whether intensities may be
interpolated linearly or normalised is decided by the type: a :class:`LabelMap`
holds integer labels and is always resampled with nearest neighbour.

Example:
    >>> import numpy as np
    >>> img = ScalarImage(np.zeros((1, 4, 4, 2)), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> img.spacing
    (2.0, 2.0, 3.0)
    >>> img.orientation
    ('R', 'A', 'S')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import nibabel as nib
import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Image", "LabelMap", "ScalarImage"]


def _as_4d(array: ArrayLike) -> NDArray[Any]:
    data = np.asarray(array)
    if data.ndim == 2:
        return data[np.newaxis, :, :, np.newaxis]
    if data.ndim == 3:
        return data[np.newaxis]
    if data.ndim == 4:
        return data
    raise ValueError(
        f"array must have 2 (x, y), 3 (x, y, z) or 4 (channels, x, y, z) dimensions; "
        f"got shape {data.shape}"
    )


def _as_affine(affine: ArrayLike | None) -> NDArray[np.float64]:
    if affine is None:
        return np.eye(4)
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix; got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("affine must hold finite numbers; it contains NaN or infinity")
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"affine's last row must be [0, 0, 0, 1]; got {matrix[3].tolist()}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero spacing or collinear axes); check the header")
    return matrix


class Image:
    """Voxel data with a RAS+ millimetre affine and metadata.

    Args:
        array: ``(x, y)``, ``(x, y, z)`` or ``(channels, x, y, z)`` values.
        affine: 4×4 voxel-to-RAS+ matrix in millimetres; identity when omitted.
        meta: Free metadata (source path, DICOM UIDs, channel names, ...).

    Raises:
        ValueError: If the array's shape or the affine is invalid.
    """

    def __init__(
        self,
        array: ArrayLike,
        affine: ArrayLike | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.array: NDArray[Any] = _as_4d(array)
        self.affine: NDArray[np.float64] = _as_affine(affine)
        self.meta: dict[str, Any] = dict(meta or {})
        self._validate()

    def _validate(self) -> None:
        if self.array.size == 0:
            raise ValueError(f"array is empty (shape {self.array.shape}); an image needs voxels")

    # -- geometry -----------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(x, y, z)``."""
        x, y, z = self.array.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def num_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along each array axis."""
        sizes = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(sizes[0]), float(sizes[1]), float(sizes[2]))

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS+ position (mm) of the centre of voxel ``(0, 0, 0)``."""
        o = self.affine[:3, 3]
        return (float(o[0]), float(o[1]), float(o[2]))

    @property
    def direction(self) -> NDArray[np.float64]:
        """3×3 matrix whose columns are the unit RAS+ directions of the array axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def orientation(self) -> tuple[str, str, str]:
        """Axis codes, e.g. ``('R', 'A', 'S')``: where each array axis points."""
        codes = nib.orientations.aff2axcodes(self.affine)
        return (str(codes[0]), str(codes[1]), str(codes[2]))

    @property
    def is_2d(self) -> bool:
        return self.shape[2] == 1

    def world_to_voxel(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map ``(n, 3)`` RAS+ millimetre points to continuous voxel indices."""
        pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
        inverse = np.linalg.inv(self.affine)
        return pts @ inverse[:3, :3].T + inverse[:3, 3]

    def same_grid(self, other: Image, *, atol: float = 1e-4) -> bool:
        """True when both images share spatial shape and affine (to ``atol`` mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    # -- derived copies -----------------------------------------------------------
    def with_array(self, array: ArrayLike) -> Self:
        """A new image of the same type, geometry and metadata holding ``array``."""
        return type(self)(array, self.affine.copy(), meta=self.meta)

    def channel(self, index: int) -> Self:
        """One channel as a single-channel image of the same type."""
        if not 0 <= index < self.num_channels:
            raise ValueError(f"channel index {index} out of range 0..{self.num_channels - 1}")
        return self.with_array(self.array[index : index + 1])

    def numpy3d(self) -> NDArray[Any]:
        """The spatial ``(x, y, z)`` array of a single-channel image."""
        if self.num_channels != 1:
            raise ValueError(
                f"image has {self.num_channels} channels; pick one with .channel(i) first"
            )
        return self.array[0]

    def __repr__(self) -> str:
        spacing = ", ".join(f"{s:.3g}" for s in self.spacing)
        return (
            f"{type(self).__name__}(channels={self.num_channels}, shape={self.shape}, "
            f"spacing=({spacing}), orientation={''.join(self.orientation)}, "
            f"dtype={self.array.dtype})"
        )


class ScalarImage(Image):
    """Intensities (MR, CT, probabilities): interpolated linearly, may be normalised."""


class LabelMap(Image):
    """Integer labels (segmentations): resampled with nearest neighbour, never normalised.

    Raises:
        TypeError: If the array holds non-integer values.
    """

    def _validate(self) -> None:
        super()._validate()
        data = self.array
        if data.dtype == np.bool_:
            self.array = data.astype(np.uint8)
        elif not np.issubdtype(data.dtype, np.integer):
            if not np.issubdtype(data.dtype, np.floating):
                raise TypeError(f"label map needs integer values; got dtype {data.dtype}")
            if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
                raise TypeError(
                    "label map needs integer values; the array holds fractions or NaN "
                    "(was an intensity image passed as labels?)"
                )
            self.array = data.astype(np.int16 if np.abs(data).max() < 32768 else np.int32)

    @property
    def labels(self) -> tuple[int, ...]:
        """The label values present, background included, sorted."""
        return tuple(int(v) for v in np.unique(self.array))
