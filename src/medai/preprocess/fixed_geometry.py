"""Where a fixed-size network input lies on the image it was made from, and the way back.

:func:`fixed_input` reorients, resamples, crops, shrinks and pads an image into the
network's grid. :func:`fixed_geometry` records those steps as a :class:`FixedGeometry`,
whose ``network_affine`` places every voxel of the network's grid in the world (RAS,
mm), and :func:`to_input_grid` resamples an array on the network's grid (a saliency
map, say) back onto the input image's voxel grid.

Example:
    >>> settings = InputPlan(spatial_dims=3, size=(32, 32, 32))  # doctest: +SKIP
    >>> array, geometry = fixed_input_with_geometry(image, settings)  # doctest: +SKIP
    >>> heat = to_input_grid(map_on_network_grid, geometry)  # doctest: +SKIP
    >>> heat.shape == image.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from medai.image import ScalarImage
from medai.preprocess.fixed import (
    _centre_offsets,
    _check_image,
    _finish,
    _size3,
    _Steps,
    _steps,
)
from medai.preprocess.steps import BBox
from medai.preprocess.task_plan import InputPlan

__all__ = ["FixedGeometry", "fixed_geometry", "fixed_input_with_geometry", "to_input_grid"]

#: Mapped coordinates are rounded to this many decimals, so a voxel centre that lands on
#: the network grid's edge is not lost to floating-point noise.
_DECIMALS = 6


@dataclass(frozen=True, eq=False)
class FixedGeometry:
    """The steps :func:`~medai.preprocess.fixed.fixed_input` took on one image.

    Attributes:
        input_shape: The input image's spatial shape ``(x, y, z)`` (``z = 1`` in 2D).
        input_affine: The input image's voxel-to-RAS affine (mm).
        reoriented: Whether the axes were flipped or permuted to RAS (3D only).
        spacing: Voxel size (mm) after resampling (the input's own when not resampled).
        crop_box: The foreground box cropped to, in voxels of the resampled grid
            (``None`` without ``crop_to_foreground``).
        zoom: The factor the cropped image was shrunk by to fit (1.0: not shrunk).
        pad: Per axis, network voxel index minus shrunk-image voxel index (the centre
            padding; negative where the image was centre-cropped).
        network_shape: The network input's spatial shape (``size``).
        network_affine: Voxel-to-RAS affine of the network's grid (in 2D, of the
            ``(x, y, 1)`` grid whose slice axis the network input drops).
    """

    input_shape: tuple[int, int, int]
    input_affine: NDArray[np.float64]
    reoriented: bool
    spacing: tuple[float, float, float]
    crop_box: BBox | None
    zoom: float
    pad: tuple[int, int, int]
    network_shape: tuple[int, ...]
    network_affine: NDArray[np.float64]


def fixed_input_with_geometry(
    image: ScalarImage, settings: InputPlan, *, channels: int | None = None
) -> tuple[NDArray[np.float32], FixedGeometry]:
    """:func:`~medai.preprocess.fixed.fixed_input` and its geometry, in one pass.

    Args:
        image: The image (its geometry is recorded).
        settings: The fixed-input settings (e.g. ``plan.input``).
        channels: The channel count the image must have (``None``: any).

    Returns:
        The ``(channels, *size)`` float32 network input (the very array ``fixed_input``
        gives) and its :class:`FixedGeometry`.

    Raises:
        DatasetError: If :func:`~medai.preprocess.fixed.fixed_input` refuses the image.
    """
    if not isinstance(settings, InputPlan):
        raise TypeError(f"settings must be a InputPlan; got {type(settings).__name__}")
    _check_image(image, settings.spatial_dims, channels)
    steps = _steps(image, settings)
    return _finish(steps.image, settings), _geometry(image, settings, steps)


def fixed_geometry(image: ScalarImage, settings: InputPlan) -> FixedGeometry:
    """The :class:`FixedGeometry` of ``image`` under ``settings`` (see
    :func:`fixed_input_with_geometry`, which also returns the network input)."""
    return fixed_input_with_geometry(image, settings)[1]


def _geometry(image: ScalarImage, settings: InputPlan, steps: _Steps) -> FixedGeometry:
    size3 = _size3(settings.size)
    offsets = _centre_offsets(steps.image.shape, size3)
    pad = tuple(before - lo for lo, before in offsets)
    shift = np.eye(4)
    shift[:3, 3] = [-p for p in pad]  # network voxel j is shrunk-image voxel j - pad
    return FixedGeometry(
        input_shape=image.shape,
        input_affine=image.affine.copy(),
        reoriented=steps.reoriented,
        spacing=steps.resampled.spacing,
        crop_box=steps.box,
        zoom=max(1.0, steps.factor),
        pad=(pad[0], pad[1], pad[2]),
        network_shape=tuple(settings.size),
        network_affine=steps.image.affine @ shift,
    )


def to_input_grid(array: ArrayLike, geometry: FixedGeometry) -> NDArray[np.float32]:
    """Resample an array on the network's grid onto the input image's voxel grid.

    Linear interpolation through world coordinates; input voxels outside the network's
    field of view (farther than half a network voxel beyond its outer voxel centres)
    are 0.

    Args:
        array: Values on the network's spatial grid, shape ``geometry.network_shape``
            (no channel axis).
        geometry: From :func:`fixed_geometry` or :func:`fixed_input_with_geometry`.

    Returns:
        A float32 array of shape ``geometry.input_shape`` (``(x, y, 1)`` for a 2D image).

    Raises:
        ValueError: If ``array`` is not of the network's shape or is not finite.
    """
    values = np.asarray(array, dtype=np.float32)
    if values.shape != geometry.network_shape:
        raise ValueError(
            f"array shape {values.shape} is not the network's grid {geometry.network_shape}; "
            "give one spatial map, without batch or channel axes"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("array holds NaN or infinity; only finite values can be resampled")
    grid = values if values.ndim == 3 else values[..., np.newaxis]
    mapping = np.linalg.inv(geometry.network_affine) @ geometry.input_affine
    upper = (np.asarray(grid.shape, dtype=np.float64) - 0.5)[:, np.newaxis]
    nx, ny, nz = geometry.input_shape
    plane = np.indices((nx, ny)).reshape(2, -1).astype(np.float64)
    out = np.zeros(geometry.input_shape, dtype=np.float32)
    for k in range(nz):  # one input slice at a time: coordinates of a whole volume are large
        ijk = np.vstack([plane, np.full((1, plane.shape[1]), float(k))])
        coords = np.round(mapping[:3, :3] @ ijk + mapping[:3, 3:4], _DECIMALS)
        inside = np.all((coords >= -0.5) & (coords <= upper), axis=0)
        sampled = ndimage.map_coordinates(grid, coords, order=1, mode="nearest")
        out[..., k] = np.where(inside, sampled, 0.0).reshape(nx, ny)
    return out
