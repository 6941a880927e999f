"""Zone matrices: GLSZM (IBSI family 9SAK) and GLDZM (IBSI family VMDZ).

Zones are connected voxels of one grey level: 26-connected in 3D, 8-connected within a
slice in 2D, found with one ``scipy.ndimage.label`` call per grey level. A zone's
distance is the smallest taxicab distance of its voxels to the ROI edge (edge voxels
at 1), computed on the morphological mask; in 2D the distance stays within the slice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.radiomics._texture import aggregate_zonal, texture_grid, zone_like_features
from medai.radiomics._util import bbox_crop
from medai.radiomics.catalogue import zone_names
from medai.radiomics.roi import Roi
from medai.radiomics.settings import Aggregation, Family

__all__ = ["gldzm_features", "glszm_features", "zones"]

_CONNECT_3D = np.ones((3, 3, 3), dtype=bool)
_CONNECT_2D = np.zeros((3, 3, 3), dtype=bool)
_CONNECT_2D[:, :, 1] = True
_CROSS_2D = np.zeros((3, 3, 3), dtype=bool)
_CROSS_2D[:, :, 1] = ndimage.generate_binary_structure(2, 1)


def zones(
    grey: NDArray[np.int64], *, planar: bool
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Every zone's grey level, size, slice index, and the zone label image.

    The label image numbers zones 1..n in the order of the returned arrays.
    """
    structure = _CONNECT_2D if planar else _CONNECT_3D
    labels = np.zeros(grey.shape, dtype=np.int64)
    levels, sizes, slices = [], [], []
    offset = 0
    # each grey level is labelled inside its own bounding box only
    for g, box in enumerate(ndimage.find_objects(grey), start=1):
        if box is None:
            continue
        member = grey[box] == g
        lab, n = ndimage.label(member, structure=structure)
        inside = lab[member]
        sizes.append(np.bincount(inside, minlength=n + 1)[1:])
        z = np.zeros(n + 1, dtype=np.int64)
        z[inside] = np.nonzero(member)[2] + box[2].start
        slices.append(z[1:])
        levels.append(np.full(n, g, dtype=np.int64))
        labels[box][member] = inside + offset
        offset += n
    return np.concatenate(levels), np.concatenate(sizes), np.concatenate(slices), labels


def _edge_distance(mask: NDArray[np.bool_], *, planar: bool) -> NDArray[np.int64]:
    metric = _CROSS_2D if planar else "taxicab"
    return np.asarray(ndimage.distance_transform_cdt(mask, metric=metric), dtype=np.int64)


def _stacks(
    levels: NDArray[np.int64],
    values: NDArray[np.int64],
    slices: NDArray[np.int64],
    n_levels: int,
    n_slices: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-slice count matrices ``(slices, Ng, J)`` over the distinct ``values``."""
    columns, col = np.unique(values, return_inverse=True)
    flat = (slices * n_levels + levels - 1) * len(columns) + col
    counts = np.bincount(flat, minlength=n_slices * n_levels * len(columns))
    stack = counts.reshape(n_slices, n_levels, len(columns)).astype(np.float64)
    return stack, columns.astype(np.float64)


def _zone_family(
    roi: Roi,
    family: Family,
    aggregations: tuple[Aggregation, ...],
    column: Callable[[NDArray[np.int64], NDArray[np.int64], bool], NDArray[np.int64]],
) -> dict[str, float]:
    grey = texture_grid(roi, pad=1)
    n = roi.n_levels
    names = zone_names(Family(family))
    occupied = np.nonzero((grey > 0).any(axis=(0, 1)))[0]
    voxels_per_slice = (grey > 0).sum(axis=(0, 1))[occupied].astype(np.float64)
    matrices: dict[bool, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}

    def build(planar: bool) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        if planar not in matrices:
            key = ("zones", planar)
            if key not in roi.cache:
                roi.cache[key] = zones(grey, planar=planar)
            levels, sizes, slices, labels = roi.cache[key]
            values = column(sizes, labels, planar)
            slices = slices if planar else np.zeros_like(slices)
            stack, cols = _stacks(levels, values, slices, n, grey.shape[2] if planar else 1)
            matrices[planar] = (stack[occupied] if planar else stack, cols)
        return matrices[planar]

    state: dict[str, NDArray[np.float64]] = {}

    def per_slice() -> NDArray[np.float64]:
        stack, state["cols"] = build(True)
        state["nv"] = voxels_per_slice
        return stack

    def volume() -> NDArray[np.float64]:
        stack, state["cols"] = build(False)
        state["nv"] = np.array([voxels_per_slice.sum()])
        return stack

    def compute(stack: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        nv = state["nv"] if len(stack) == len(state["nv"]) else state["nv"].sum(keepdims=True)
        feats = zone_like_features(stack, state["cols"], nv)
        return {names[k]: v for k, v in feats.items() if k in names}

    return aggregate_zonal(compute, per_slice, volume, aggregations)


def glszm_features(roi: Roi, *, aggregations: tuple[Aggregation, ...]) -> dict[str, float]:
    """GLSZM features for the requested aggregation methods (2D, 2.5D, 3D)."""

    def sizes(
        size: NDArray[np.int64], labels: NDArray[np.int64], planar: bool
    ) -> NDArray[np.int64]:
        return size

    return _zone_family(roi, Family.GLSZM, aggregations, sizes)


def gldzm_features(roi: Roi, *, aggregations: tuple[Aggregation, ...]) -> dict[str, float]:
    """GLDZM features for the requested aggregation methods (2D, 2.5D, 3D)."""
    mask = texture_grid(roi, pad=1) > 0

    def distances(
        size: NDArray[np.int64], labels: NDArray[np.int64], planar: bool
    ) -> NDArray[np.int64]:
        # the edge is that of the morphological mask: re-segmentation holes are no edge
        full = _edge_distance(roi.morph_mask, planar=planar)
        dist = bbox_crop(roi.int_mask, full, pad=1)[1]
        out = np.full(len(size) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(out, labels[mask], dist[mask])
        return out[1:]

    return _zone_family(roi, Family.GLDZM, aggregations, distances)
