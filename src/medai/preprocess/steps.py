"""Deterministic, torch-free preprocessing steps on geometry-carrying images.

Each step takes a :class:`~medai.image.ScalarImage` or :class:`~medai.image.LabelMap`
and returns a new image of the same type whose affine still maps voxels to RAS+
millimetres. Interpolation follows the type: label maps always use nearest neighbour.
"""

from __future__ import annotations

from typing import Any, TypeVar

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.image import Image, LabelMap, ScalarImage

__all__ = [
    "BBox",
    "crop",
    "foreground_bbox",
    "foreground_mask",
    "reorient_to_ras",
    "resample_to_grid",
    "resample_to_spacing",
    "uncrop",
    "zscore_in_mask",
]

T = TypeVar("T", bound=Image)
BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def reorient_to_ras(image: T) -> T:
    """Flip/permute the array axes so they point to R, A, S (exact; no interpolation)."""
    ornt = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return image
    moved = np.stack([nib.orientations.apply_orientation(c, transform) for c in image.array])
    inv = nib.orientations.inv_ornt_aff(transform, image.shape)
    return type(image)(moved, image.affine @ inv, meta=image.meta)


def resample_to_grid(
    image: T,
    shape: tuple[int, int, int],
    affine: NDArray[np.float64],
    *,
    order: int = 1,
) -> T:
    """Resample ``image`` onto the grid ``(shape, affine)`` through world coordinates.

    Args:
        image: The image to resample; a :class:`LabelMap` always uses ``order=0``.
        shape: Target spatial shape.
        affine: Target voxel-to-RAS+ affine (mm).
        order: Spline order for scalar images (1 linear, 3 cubic).

    Returns:
        A new image of the same type on the target grid; outside the source is 0.
    """
    if order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0, 1, 2 or 3; got {order}")
    target_affine = np.asarray(affine, dtype=np.float64)
    if tuple(shape) == image.shape and np.allclose(target_affine, image.affine, atol=1e-6):
        return image.with_array(image.array.copy())
    is_label = isinstance(image, LabelMap)
    mapping = np.linalg.inv(image.affine) @ target_affine
    channels = []
    for data in image.array:
        src = data if not is_label else data.astype(np.float32)
        out = ndimage.affine_transform(
            src.astype(np.float32, copy=False),
            mapping[:3, :3],
            offset=mapping[:3, 3],
            output_shape=tuple(int(s) for s in shape),
            order=0 if is_label else order,
            mode="constant",
            cval=0.0,
            prefilter=order > 1 and not is_label,
        )
        channels.append(np.rint(out).astype(data.dtype) if is_label else out)
    return type(image)(np.stack(channels), target_affine, meta=image.meta)


def _target_grid(
    image: Image, spacing: tuple[float, float, float]
) -> tuple[tuple[int, int, int], NDArray[np.float64]]:
    old = np.asarray(image.spacing)
    new = np.asarray(spacing, dtype=np.float64)
    extent = old * np.asarray(image.shape)
    shape = tuple(int(max(1, round(e))) for e in extent / new)
    affine = image.affine.copy()
    affine[:3, :3] = image.direction * new
    # keep the field of view's outer corner fixed: voxel centres shift by half a voxel
    affine[:3, 3] = image.affine[:3, 3] + image.direction @ ((new - old) / 2.0)
    return (shape[0], shape[1], shape[2]), affine


def resample_to_spacing(image: T, spacing: tuple[float, float, float], *, order: int = 1) -> T:
    """Resample to voxel size ``spacing`` (mm), covering the same field of view."""
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive millimetre values; got {spacing}")
    if np.allclose(image.spacing, spacing, atol=1e-4):
        return image
    shape, affine = _target_grid(image, spacing)
    return resample_to_grid(image, shape, affine, order=order)


def foreground_mask(image: Image) -> NDArray[np.bool_]:
    """Voxels that are non-zero in any channel (the brain after skull stripping)."""
    return np.any(image.array != 0, axis=0)


def foreground_bbox(image: Image, *, margin: int = 0) -> BBox:
    """Half-open index box around the non-zero voxels of all channels, plus ``margin``.

    Raises:
        ValueError: If the image has no non-zero voxel.
    """
    mask = foreground_mask(image)
    if not mask.any():
        raise ValueError("image has no non-zero voxel; nothing to crop to (is it empty?)")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        lo = max(0, int(hit[0]) - margin)
        hi = min(image.shape[axis], int(hit[-1]) + 1 + margin)
        box.append((lo, hi))
    return (box[0], box[1], box[2])


def crop(image: T, bbox: BBox) -> T:
    """The sub-image inside ``bbox``; the affine moves so world positions are kept."""
    for axis, (lo, hi) in enumerate(bbox):
        if not 0 <= lo < hi <= image.shape[axis]:
            raise ValueError(f"bbox {bbox} does not fit image shape {image.shape}")
    (x0, x1), (y0, y1), (z0, z1) = bbox
    affine = image.affine.copy()
    affine[:3, 3] = (image.affine @ np.array([x0, y0, z0, 1.0]))[:3]
    return type(image)(image.array[:, x0:x1, y0:y1, z0:z1].copy(), affine, meta=image.meta)


def uncrop(image: T, bbox: BBox, shape: tuple[int, int, int], affine: NDArray[np.float64]) -> T:
    """Place a cropped image back into the full grid ``(shape, affine)``, zeros outside."""
    (x0, x1), (y0, y1), (z0, z1) = bbox
    if image.shape != (x1 - x0, y1 - y0, z1 - z0):
        raise ValueError(f"image shape {image.shape} does not match bbox {bbox}")
    full: NDArray[Any] = np.zeros((image.num_channels, *shape), dtype=image.array.dtype)
    full[:, x0:x1, y0:y1, z0:z1] = image.array
    return type(image)(full, affine, meta=image.meta)


def zscore_in_mask(image: ScalarImage, mask: NDArray[np.bool_]) -> ScalarImage:
    """Per-channel z-score using the mean and std inside ``mask``; 0 outside the mask."""
    if not isinstance(image, ScalarImage):
        raise TypeError(f"only a ScalarImage is normalised; got {type(image).__name__}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    out = np.zeros(image.array.shape, dtype=np.float32)
    if not mask.any():
        return image.with_array(out)
    for c, data in enumerate(image.array):
        values = data[mask].astype(np.float64)
        std = float(values.std())
        out[c][mask] = (values - values.mean()) / (std if std > 1e-8 else 1.0)
    return image.with_array(out)
