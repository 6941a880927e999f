"""Grey level co-occurrence matrix (IBSI family LFYI): symmetric, Chebyshev distance δ.

Matrices are counted with one ``np.bincount`` per direction over all voxel pairs at
once; the slice index is folded into the bin so every 2D slice matrix comes out of
the same call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from medai.radiomics._texture import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    aggregate_directional,
    texture_grid,
)
from medai.radiomics._util import safe_divide
from medai.radiomics.roi import Roi
from medai.radiomics.settings import Aggregation

__all__ = ["glcm_features", "glcm_matrices", "glcm_matrix_features"]


def _pair_counts(
    grey: NDArray[np.int64], offset: tuple[int, int, int], n_levels: int
) -> NDArray[np.float64]:
    """Per-slice co-occurrence counts ``(slices, Ng, Ng)`` for one offset, symmetrised."""
    neighbour = np.roll(grey, shift=tuple(-o for o in offset), axis=(0, 1, 2))
    valid = (grey > 0) & (neighbour > 0)
    z = np.nonzero(valid)[2]
    a, b = grey[valid] - 1, neighbour[valid] - 1
    n_slices = grey.shape[2]
    flat = (z * n_levels + a) * n_levels + b
    counts = np.bincount(flat, minlength=n_slices * n_levels * n_levels).astype(np.float64)
    counts = counts.reshape(n_slices, n_levels, n_levels)
    return counts + counts.transpose(0, 2, 1)


def glcm_matrices(
    roi: Roi, *, distance: int = 1
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-slice in-plane matrices ``(slices, 4, Ng, Ng)`` and 3D ones ``(13, Ng, Ng)``."""
    grey = texture_grid(roi, pad=distance)
    n = roi.n_levels
    keep = np.nonzero((grey > 0).any(axis=(0, 1)))[0]
    per_dir = []
    per_slice = []
    for d in DIRECTIONS_3D:
        counts = _pair_counts(grey, (d[0] * distance, d[1] * distance, d[2] * distance), n)
        per_dir.append(counts.sum(axis=0))
        if d in DIRECTIONS_2D:
            per_slice.append(counts[keep])
    return np.stack(per_slice, axis=1), np.stack(per_dir)


def _diagonal_sums(
    p: NDArray[np.float64], index: NDArray[np.int64], size: int
) -> NDArray[np.float64]:
    """Sum ``p`` (m, Ng, Ng) over cells sharing ``index`` (Ng, Ng) → (m, size)."""
    order = np.argsort(index.ravel(), kind="stable")
    starts = np.searchsorted(index.ravel()[order], np.arange(size))
    return np.add.reduceat(p.reshape(p.shape[0], -1)[:, order], starts, axis=1)


def _entropy(p: NDArray[np.float64], axis: int | tuple[int, ...]) -> NDArray[np.float64]:
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return np.asarray(-(p * logs).sum(axis=axis))


def _marginals(p: NDArray[np.float64], lv: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
    """Row/column marginals, their means and variances of a stack ``(m, Ng, Ng)``."""
    row, col = p.sum(axis=2), p.sum(axis=1)
    mu_i, mu_j = row @ lv, col @ lv
    var_i = ((lv[None] - mu_i[:, None]) ** 2 * row).sum(axis=1)
    var_j = ((lv[None] - mu_j[:, None]) ** 2 * col).sum(axis=1)
    return row, col, mu_i, mu_j, var_i, var_j


def _information(
    p: NDArray[np.float64], row: NDArray[np.float64], col: NDArray[np.float64]
) -> dict[str, NDArray[np.float64]]:
    """Joint entropy and the two information correlations."""
    hxy = _entropy(p, (1, 2))
    outer = row[:, :, None] * col[:, None, :]
    log_outer = np.log2(outer, out=np.zeros_like(outer), where=outer > 0)
    hxy1 = -(p * log_outer).sum(axis=(1, 2))
    hxy2 = -(outer * log_outer).sum(axis=(1, 2))
    hx, hy = _entropy(row, 1), _entropy(col, 1)
    return {
        "joint_entr": hxy,
        "info_corr1": safe_divide(hxy - hxy1, np.maximum(hx, hy)),
        "info_corr2": np.sqrt(np.clip(1.0 - np.exp(-2.0 * (hxy2 - hxy)), 0.0, None)),
    }


def glcm_matrix_features(counts: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    """The 25 IBSI GLCM features of a stack of matrices ``(m, Ng, Ng)`` (NaN if empty)."""
    total = counts.sum(axis=(1, 2))
    p = counts / np.where(total > 0, total, np.nan)[:, None, None]
    n = p.shape[1]
    lv = np.arange(1, n + 1, dtype=np.float64)
    i, j = lv[:, None], lv[None, :]
    diff = np.abs(i - j)
    p_minus = _diagonal_sums(p, diff.astype(np.int64), n)
    p_plus = _diagonal_sums(p, (i + j).astype(np.int64) - 2, 2 * n - 1)
    k_minus, k_plus = np.arange(n, dtype=np.float64), np.arange(2, 2 * n + 1, dtype=np.float64)
    row, col, mu_i, mu_j, var_i, var_j = _marginals(p, lv)
    d_avg, s_avg = p_minus @ k_minus, p_plus @ k_plus
    cluster = i[None] + j[None] - mu_i[:, None, None] - mu_j[:, None, None]

    def wsum(weight: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray((p * weight).sum(axis=(1, 2)))

    info = _information(p, row, col)
    return {
        "joint_max": p.max(axis=(1, 2)),
        "joint_avg": mu_i,
        "joint_var": var_i,
        "joint_entr": info["joint_entr"],
        "diff_avg": d_avg,
        "diff_var": ((k_minus[None] - d_avg[:, None]) ** 2 * p_minus).sum(axis=1),
        "diff_entr": _entropy(p_minus, 1),
        "sum_avg": s_avg,
        "sum_var": ((k_plus[None] - s_avg[:, None]) ** 2 * p_plus).sum(axis=1),
        "sum_entr": _entropy(p_plus, 1),
        "energy": wsum(p),
        "contrast": wsum(diff**2),
        "dissimilarity": wsum(diff),
        "inv_diff": wsum(1.0 / (1.0 + diff)),
        "inv_diff_norm": wsum(1.0 / (1.0 + diff / n)),
        "inv_diff_mom": wsum(1.0 / (1.0 + diff**2)),
        "inv_diff_mom_norm": wsum(1.0 / (1.0 + diff**2 / n**2)),
        "inv_var": p_minus[:, 1:] @ (1.0 / k_minus[1:] ** 2),
        "corr": safe_divide(wsum(i * j) - mu_i * mu_j, np.sqrt(var_i * var_j)),
        "auto_corr": wsum(i * j),
        "clust_tend": wsum(cluster**2),
        "clust_shade": wsum(cluster**3),
        "clust_prom": wsum(cluster**4),
        "info_corr1": info["info_corr1"],
        "info_corr2": info["info_corr2"],
    }


def glcm_features(
    roi: Roi, *, aggregations: tuple[Aggregation, ...], distance: int = 1
) -> dict[str, float]:
    """GLCM features for the requested aggregation methods, keyed ``name_aggregation``."""
    per_slice, per_dir = glcm_matrices(roi, distance=distance)
    return aggregate_directional(glcm_matrix_features, per_slice, per_dir, aggregations)
