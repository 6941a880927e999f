"""Grey level run length matrix (IBSI family TP0I).

Runs are found without walking voxels: along direction ``d`` a voxel starts a run
when its predecessor has another grey level (or is outside the ROI) and ends one when
its successor does. Sorting starts and ends by (line, position along the line) pairs
them up, so run lengths come from one ``np.lexsort`` per direction.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from medai.radiomics._texture import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    aggregate_directional,
    texture_grid,
    zone_like_features,
)
from medai.radiomics.catalogue import zone_names
from medai.radiomics.roi import Roi
from medai.radiomics.settings import Aggregation, Family

__all__ = ["glrlm_features", "glrlm_matrices", "runs"]


def runs(
    grey: NDArray[np.int64], direction: tuple[int, int, int]
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Grey level, length and slice index of every run along ``direction``.

    ``grey`` must be zero-padded by at least one voxel on every side.
    """
    d = np.asarray(direction)
    prev = np.roll(grey, shift=tuple(d), axis=(0, 1, 2))
    nxt = np.roll(grey, shift=tuple(-d), axis=(0, 1, 2))
    roi = grey > 0
    starts = np.argwhere(roi & (prev != grey))
    ends = np.argwhere(roi & (nxt != grey))
    axis = int(np.nonzero(d)[0][0])
    shape = np.asarray(grey.shape)
    extent = int(shape.max()) + 1  # positions t along a line lie in [0, extent)

    def order(points: NDArray[np.int64]) -> NDArray[np.int64]:
        t = points[:, axis] * d[axis]
        base = points - t[:, None] * d[None, :] + shape  # non-negative line coordinates
        line = (base[:, 0] * (3 * shape[1]) + base[:, 1]) * (3 * shape[2]) + base[:, 2]
        return np.argsort(line * extent + t, kind="stable")

    s_sorted, e_sorted = starts[order(starts)], ends[order(ends)]
    t_start = s_sorted[:, axis] * d[axis]
    t_end = e_sorted[:, axis] * d[axis]
    levels = grey[s_sorted[:, 0], s_sorted[:, 1], s_sorted[:, 2]]
    return levels, t_end - t_start + 1, s_sorted[:, 2]


def glrlm_matrices(roi: Roi) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-slice in-plane matrices ``(slices, 4, Ng, L)`` and 3D ones ``(13, Ng, L)``.

    Column ``j`` holds runs of length ``j + 1``.
    """
    grey = texture_grid(roi, pad=1)
    n = roi.n_levels
    keep = np.nonzero((grey > 0).any(axis=(0, 1)))[0]
    found = {d: runs(grey, d) for d in DIRECTIONS_3D}
    longest = max(int(r[1].max()) for r in found.values())
    n_slices = grey.shape[2]
    per_dir, per_slice = [], []
    for d in DIRECTIONS_3D:
        levels, lengths, z = found[d]
        flat = (z * n + levels - 1) * longest + lengths - 1
        counts = np.bincount(flat, minlength=n_slices * n * longest).astype(np.float64)
        counts = counts.reshape(n_slices, n, longest)
        per_dir.append(counts.sum(axis=0))
        if d in DIRECTIONS_2D:
            per_slice.append(counts[keep])
    return np.stack(per_slice, axis=1), np.stack(per_dir)


def glrlm_features(roi: Roi, *, aggregations: tuple[Aggregation, ...]) -> dict[str, float]:
    """GLRLM features for the requested aggregation methods, keyed ``name_aggregation``."""
    per_slice, per_dir = glrlm_matrices(roi)
    lengths = np.arange(1, per_dir.shape[2] + 1, dtype=np.float64)
    names = zone_names(Family.GLRLM)

    def compute(stack: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        n_voxels = stack.sum(axis=1) @ lengths  # voxels covered (× merged directions)
        feats = zone_like_features(stack, lengths, n_voxels)
        return {names[k]: v for k, v in feats.items() if k in names}

    return aggregate_directional(compute, per_slice, per_dir, aggregations)
