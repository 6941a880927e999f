"""Shared machinery of the texture families: grid, directions, aggregation, matrix features.

Texture matrices are built on the discretised grey-level array (0 outside the
intensity mask) cropped to the ROI and zero-padded, so neighbour look-ups by
``np.roll`` never wrap real voxels into each other. Slices for 2D and 2.5D
aggregation are the planes of constant third array index (axial for RAS/LPS data).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray

from medai.radiomics._util import bbox_crop, safe_divide
from medai.radiomics.roi import Roi
from medai.radiomics.settings import Aggregation

__all__ = [
    "DIRECTIONS_2D",
    "DIRECTIONS_3D",
    "MatrixFeatures",
    "aggregate_directional",
    "aggregate_zonal",
    "nan_mean",
    "texture_grid",
    "zone_like_features",
]

#: The 13 unique neighbour directions in 3D (first non-zero component positive).
DIRECTIONS_3D: tuple[tuple[int, int, int], ...] = tuple(
    (a, b, c)
    for a, b, c in itertools.product((-1, 0, 1), repeat=3)
    if (a, b, c) != (0, 0, 0) and next(v for v in (a, b, c) if v != 0) > 0
)
#: The 4 in-plane directions (third component zero).
DIRECTIONS_2D: tuple[tuple[int, int, int], ...] = tuple(d for d in DIRECTIONS_3D if d[2] == 0)

_CHUNK_ELEMENTS = 1 << 21  # matrices per feature call: bounds temporaries to ~16 MB each

MatrixFeatures = Callable[[NDArray[np.float64]], dict[str, NDArray[np.float64]]]


def texture_grid(roi: Roi, pad: int = 1) -> NDArray[np.int64]:
    """Grey levels cropped to the intensity mask and zero-padded by ``pad`` voxels."""
    return bbox_crop(roi.int_mask, roi.grey, pad=pad)[1]


def nan_mean(values: NDArray[np.float64], axis: int = 0) -> NDArray[np.float64]:
    """Mean over ``axis`` ignoring NaN (empty matrices); NaN where all are NaN."""
    finite = np.isfinite(values)
    count = finite.sum(axis=axis)
    total = np.where(finite, values, 0.0).sum(axis=axis)
    return safe_divide(total, count)


def _scalarise(features: Mapping[str, NDArray[np.float64]], suffix: str) -> dict[str, float]:
    return {f"{k}_{suffix}": float(np.asarray(v).ravel()[0]) for k, v in features.items()}


def _mean_features(
    compute: MatrixFeatures, stack: NDArray[np.float64], suffix: str
) -> dict[str, float]:
    step = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod(stack.shape[1:]))))
    parts = [compute(stack[i : i + step]) for i in range(0, len(stack), step)]
    return {
        f"{k}_{suffix}": float(nan_mean(np.concatenate([p[k] for p in parts]))) for k in parts[0]
    }


def aggregate_directional(
    compute: MatrixFeatures,
    per_slice: NDArray[np.float64],
    per_direction: NDArray[np.float64],
    aggregations: tuple[Aggregation, ...],
) -> dict[str, float]:
    """GLCM/GLRLM aggregation over slice × in-plane direction and 3D direction matrices.

    Args:
        compute: Features of a stack of matrices ``(m, ...)`` → arrays of length ``m``.
        per_slice: Matrices ``(slices, 4, ...)`` of the in-plane directions.
        per_direction: Matrices ``(13, ...)`` of the 3D directions.
        aggregations: Requested methods; non-directional ones are ignored.
    """
    out: dict[str, float] = {}
    inner = per_slice.shape[2:]
    for agg in aggregations:
        if agg is Aggregation.D2_AVERAGED:
            out |= _mean_features(compute, per_slice.reshape(-1, *inner), agg.value)
        elif agg is Aggregation.D2_SLICE_MERGED:
            out |= _mean_features(compute, per_slice.sum(axis=1), agg.value)
        elif agg is Aggregation.D25_DIRECTION_MERGED:
            out |= _mean_features(compute, per_slice.sum(axis=0), agg.value)
        elif agg is Aggregation.D25_MERGED:
            out |= _scalarise(compute(per_slice.sum(axis=(0, 1))[None]), agg.value)
        elif agg is Aggregation.D3_AVERAGED:
            out |= _mean_features(compute, per_direction, agg.value)
        elif agg is Aggregation.D3_MERGED:
            out |= _scalarise(compute(per_direction.sum(axis=0)[None]), agg.value)
    return out


def aggregate_zonal(
    compute: MatrixFeatures,
    per_slice: Callable[[], NDArray[np.float64]],
    volume: Callable[[], NDArray[np.float64]],
    aggregations: tuple[Aggregation, ...],
) -> dict[str, float]:
    """GLSZM/GLDZM/NGTDM/NGLDM aggregation: 2D (slice mean), 2.5D (merged), 3D.

    ``per_slice`` and ``volume`` build the matrices lazily: ``(slices, ...)`` and
    ``(1, ...)``.
    """
    out: dict[str, float] = {}
    wanted = set(aggregations)
    if wanted & {Aggregation.D2, Aggregation.D25}:
        slices = per_slice()
        if Aggregation.D2 in wanted:
            out |= _mean_features(compute, slices, Aggregation.D2.value)
        if Aggregation.D25 in wanted:
            out |= _scalarise(compute(slices.sum(axis=0)[None]), Aggregation.D25.value)
    if Aggregation.D3 in wanted:
        out |= _scalarise(compute(volume()), Aggregation.D3.value)
    return out


def _entropy(p: NDArray[np.float64], axes: tuple[int, ...]) -> NDArray[np.float64]:
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return np.asarray(-(p * logs).sum(axis=axes))


def zone_like_features(
    counts: NDArray[np.float64],
    column_values: NDArray[np.float64],
    n_voxels: NDArray[np.float64],
) -> dict[str, NDArray[np.float64]]:
    """Features shared by GLRLM, GLSZM, GLDZM and NGLDM for a stack of matrices.

    Args:
        counts: ``(m, Ng, J)`` counts: rows are grey levels 1..Ng, columns carry
            ``column_values`` (run length, zone size, distance or dependence count).
        column_values: ``(J,)`` value of each column.
        n_voxels: ``(m,)`` voxel count ``Nv`` of each matrix (for the percentage).

    Returns:
        Generic names (``short``, ``long``, ``low``, ... ``energy``) → ``(m,)`` arrays.
    """
    total = counts.sum(axis=(1, 2))
    p = counts / np.where(total > 0, total, np.nan)[:, None, None]
    i = np.arange(1, counts.shape[1] + 1, dtype=np.float64)[None, :, None]
    j = np.asarray(column_values, dtype=np.float64)[None, None, :]
    row, col = p.sum(axis=2), p.sum(axis=1)
    mu_i = (row * i[:, :, 0]).sum(axis=1, keepdims=True)
    mu_j = (col * j[:, 0, :]).sum(axis=1, keepdims=True)

    def emphasis(weight: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray((p * weight).sum(axis=(1, 2)))

    return {
        "short": emphasis(1.0 / j**2),
        "long": emphasis(j**2),
        "low": emphasis(1.0 / i**2),
        "high": emphasis(i**2),
        "short_low": emphasis(1.0 / (i**2 * j**2)),
        "short_high": emphasis(i**2 / j**2),
        "long_low": emphasis(j**2 / i**2),
        "long_high": emphasis(i**2 * j**2),
        "glnu": (row**2).sum(axis=1) * total,
        "glnu_norm": (row**2).sum(axis=1),
        "jnu": (col**2).sum(axis=1) * total,
        "jnu_norm": (col**2).sum(axis=1),
        "perc": safe_divide(total, n_voxels) * np.where(total > 0, 1.0, math.nan),
        "gl_var": ((i[:, :, 0] - mu_i) ** 2 * row).sum(axis=1),
        "j_var": ((j[:, 0, :] - mu_j) ** 2 * col).sum(axis=1),
        "entropy": _entropy(p, (1, 2)),
        "energy": (p**2).sum(axis=(1, 2)),
    }
