"""Neighbourhood matrices: NGTDM (IBSI family IPET) and NGLDM (IBSI family REK0).

Both look at the Chebyshev neighbourhood of every ROI voxel (in-plane for 2D), counting
only neighbours inside the ROI. One pass of shifted copies of the grey-level grid
accumulates neighbour sums, counts and dependences for 2D and 3D at once.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

from medai.radiomics._texture import aggregate_zonal, texture_grid, zone_like_features
from medai.radiomics.catalogue import zone_names
from medai.radiomics.roi import Roi
from medai.radiomics.settings import Aggregation, Family

__all__ = ["neighbourhood_sums", "ngldm_features", "ngtdm_features", "ngtdm_matrix_features"]


def neighbourhood_sums(
    grey: NDArray[np.int64], *, distance: int, alpha: float, planar: bool
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Sum of neighbour grey levels, neighbour count and dependent-neighbour count.

    ``grey`` must be zero-padded by ``distance``; only neighbours with grey > 0 count.
    """
    total = np.zeros(grey.shape, dtype=np.float64)
    count = np.zeros(grey.shape, dtype=np.int64)
    dependent = np.zeros(grey.shape, dtype=np.int64)
    span = range(-distance, distance + 1)
    for offset in itertools.product(span, span, (0,) if planar else span):
        if not any(offset):
            continue
        other = np.roll(grey, shift=offset, axis=(0, 1, 2))
        inside = other > 0
        total += other
        count += inside
        dependent += inside & (np.abs(other - grey) <= alpha)
    return total, count, dependent


def ngtdm_matrix_features(
    s: NDArray[np.float64], n: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Coarseness, contrast, busyness, complexity, strength of stacks ``(m, Ng)``."""
    n_vc = n.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = n / n_vc[:, None]
        lv = np.arange(1, s.shape[1] + 1, dtype=np.float64)
        present = p > 0
        pair = present[:, :, None] & present[:, None, :]
        n_gp = present.sum(axis=1)
        diff = lv[:, None] - lv[None, :]
        ps = p * s
        sum_ps, sum_s = ps.sum(axis=1), s.sum(axis=1)
        spread = (p[:, :, None] * p[:, None, :] * diff**2).sum(axis=(1, 2))
        contrast = spread / (n_gp * (n_gp - 1)) * sum_s / n_vc
        ip = lv * p
        busy_den = np.abs(ip[:, :, None] - ip[:, None, :])
        busy_den = np.where(pair, busy_den, 0.0).sum(axis=(1, 2))
        p_sum = p[:, :, None] + p[:, None, :]
        weights = np.where(pair, (ps[:, :, None] + ps[:, None, :]) / p_sum, 0.0)
        complexity = (np.abs(diff) * weights).sum(axis=(1, 2)) / n_vc
        strength_num = np.where(pair, p_sum * diff**2, 0.0).sum(axis=(1, 2))
        out = {
            "coarseness": np.where(sum_ps > 0, 1.0 / sum_ps, 1e6),
            "contrast": np.where(n_gp > 1, contrast, 0.0),
            "busyness": np.where(busy_den > 0, sum_ps / busy_den, 0.0),
            "complexity": complexity,
            "strength": np.where(sum_s > 0, strength_num / sum_s, 0.0),
        }
    empty = n_vc == 0
    return {k: np.where(empty, np.nan, v) for k, v in out.items()}


def _slice_bincount(
    z: NDArray[np.int64],
    levels: NDArray[np.int64],
    n_slices: int,
    width: int,
    weights: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    flat = z * width + levels
    out = np.bincount(flat, weights=weights, minlength=n_slices * width)
    return out.reshape(n_slices, width).astype(np.float64)


def ngtdm_features(
    roi: Roi, *, aggregations: tuple[Aggregation, ...], distance: int = 1
) -> dict[str, float]:
    """NGTDM features for the requested aggregation methods (2D, 2.5D, 3D)."""
    grey = texture_grid(roi, pad=distance)
    n = roi.n_levels
    occupied = np.nonzero((grey > 0).any(axis=(0, 1)))[0]

    def matrices(planar: bool) -> NDArray[np.float64]:
        total, count, _ = neighbourhood_sums(grey, distance=distance, alpha=0, planar=planar)
        valid = (grey > 0) & (count > 0)
        g = grey[valid]
        mean = total[valid] / count[valid]
        z = np.nonzero(valid)[2] if planar else np.zeros(len(g), dtype=np.int64)
        slices = grey.shape[2] if planar else 1
        s = _slice_bincount(z, g - 1, slices, n, np.abs(g - mean))
        cnt = _slice_bincount(z, g - 1, slices, n)
        both = np.stack([s, cnt], axis=1)
        return both[occupied] if planar else both

    def compute(stack: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        return ngtdm_matrix_features(stack[:, 0], stack[:, 1])

    return aggregate_zonal(compute, lambda: matrices(True), lambda: matrices(False), aggregations)


def ngldm_features(
    roi: Roi, *, aggregations: tuple[Aggregation, ...], distance: int = 1, alpha: float = 0.0
) -> dict[str, float]:
    """NGLDM features for the requested aggregation methods (2D, 2.5D, 3D)."""
    grey = texture_grid(roi, pad=distance)
    n = roi.n_levels
    occupied = np.nonzero((grey > 0).any(axis=(0, 1)))[0]
    names = zone_names(Family.NGLDM)
    width = (2 * distance + 1) ** 3
    columns = np.arange(1, width + 1, dtype=np.float64)

    def matrices(planar: bool) -> NDArray[np.float64]:
        _, _, dependent = neighbourhood_sums(grey, distance=distance, alpha=alpha, planar=planar)
        roi_mask = grey > 0
        g, k = grey[roi_mask], dependent[roi_mask]
        z = np.nonzero(roi_mask)[2] if planar else np.zeros(len(g), dtype=np.int64)
        slices = grey.shape[2] if planar else 1
        counts = _slice_bincount(z, (g - 1) * width + k, slices, n * width)
        counts = counts.reshape(slices, n, width)
        return counts[occupied] if planar else counts

    def compute(stack: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        feats = zone_like_features(stack, columns, stack.sum(axis=(1, 2)))
        return {names[key]: v for key, v in feats.items() if key in names}

    return aggregate_zonal(compute, lambda: matrices(True), lambda: matrices(False), aggregations)
