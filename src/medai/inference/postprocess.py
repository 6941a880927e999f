"""From region probabilities to a label map: thresholds, nesting, small blobs, labels."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.preprocess.plan import InferencePlan

__all__ = [
    "postprocess_regions",
    "region_volumes_ml",
    "regions_to_labels",
    "remove_small_components",
]


def _ordered(regions: dict[str, list[int]]) -> list[str]:
    """Region names from the largest label set to the smallest (WT, TC, ET)."""
    return sorted(regions, key=lambda name: -len(regions[name]))


def regions_to_labels(masks: NDArray[Any], regions: dict[str, list[int]]) -> NDArray[np.uint8]:
    """``(R, x, y, z)`` region masks → ``(x, y, z)`` labels.

    Each region paints its own label (its labels minus those of smaller regions),
    larger regions first, so for BraTS: WT\\TC → 1, TC\\ET → 2, ET → 3.

    Raises:
        ValueError: If a region does not own exactly one label.
    """
    names = list(regions)
    if masks.shape[0] != len(names):
        raise ValueError(f"masks has {masks.shape[0]} channels for {len(names)} regions")
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    order = _ordered(regions)
    for pos, name in enumerate(order):
        smaller = set().union(*(set(regions[n]) for n in order[pos + 1 :]))
        own = set(regions[name]) - smaller
        if len(own) != 1:
            raise ValueError(f"region {name!r} must own exactly one label; owns {sorted(own)}")
        out[masks[names.index(name)].astype(bool)] = own.pop()
    return out


def remove_small_components(mask: NDArray[Any], min_voxels: int) -> NDArray[np.bool_]:
    """``mask`` without connected components (26-connected) smaller than ``min_voxels``."""
    binary = np.asarray(mask, dtype=bool)
    if min_voxels <= 1 or not binary.any():
        return binary
    labelled, count = ndimage.label(binary, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labelled]


def postprocess_regions(
    probabilities: NDArray[Any],
    regions: dict[str, list[int]],
    *,
    spacing: tuple[float, float, float],
    plan: InferencePlan,
) -> NDArray[np.bool_]:
    """Threshold, drop small blobs, enforce nesting, drop a too-small innermost region.

    Args:
        probabilities: ``(R, x, y, z)`` sigmoid outputs in region order.
        regions: Region name → labels (declares nesting).
        spacing: Voxel size in mm (for the mL thresholds).
        plan: Threshold, ``min_component_ml`` and ``et_min_volume_ml``.
    """
    names = list(regions)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    masks = np.asarray(probabilities) >= plan.threshold
    order = _ordered(regions)
    min_vox = int(np.ceil(plan.min_component_ml / voxel_ml)) if plan.min_component_ml else 0
    outer = names.index(order[0])
    masks[outer] = remove_small_components(masks[outer], min_vox)
    for big, small in itertools.pairwise(order):
        if set(regions[small]) <= set(regions[big]):
            masks[names.index(small)] &= masks[names.index(big)]
    inner = names.index(order[-1])
    if len(order) > 1 and masks[inner].sum() * voxel_ml < plan.et_min_volume_ml:
        masks[inner] = False
    return masks


def region_volumes_ml(
    labels: NDArray[Any], regions: dict[str, list[int]], spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Volume of each region (mL) in a label map."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {name: float(np.isin(labels, ids).sum()) * voxel_ml for name, ids in regions.items()}
