"""Moran's I and Geary's C (IBSI morphology N365, NPT7) of the intensity mask.

Both are sums over all voxel pairs weighted by inverse distance, O(n²) when done
pair by pair. Here they are computed *exactly* as FFT convolutions with the
``1/distance`` kernel, O(n log n), for any ROI whose bounding box fits a grid of
``FFT_LIMIT`` points (a 250³ box; every tumour-sized ROI). Beyond it the memory of the
FFT grid would be the problem, so they are *estimated* from a seeded random sample of
``SAMPLE_SIZE`` voxels: ratio estimators of the pair-weighted sums, consistent for the
full-ROI values, with the sample's pairs computed directly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sp_fft

from medai.radiomics._util import bbox_crop, safe_div
from medai.radiomics.roi import Roi

__all__ = ["FFT_LIMIT", "SAMPLE_SIZE", "moran_geary"]

logger = logging.getLogger(__name__)

#: Largest FFT grid (points) for the exact computation.
FFT_LIMIT = 250**3
#: Voxels drawn for the estimate on ROIs beyond ``FFT_LIMIT``.
SAMPLE_SIZE = 4000


def _wrapped_inverse_distance(
    shape: tuple[int, ...], fft_shape: list[int], spacing: tuple[float, float, float]
) -> NDArray[np.float64]:
    """``1/distance`` kernel laid out circularly on ``fft_shape`` (0 at the origin).

    With ``fft_shape ≥ 2·shape − 1`` a circular convolution then equals the linear one
    at every voxel of the ``shape`` box.
    """
    axes = []
    for m, n, sp in zip(shape, fft_shape, spacing, strict=True):
        k = np.arange(n)
        offset = np.where(k < m, k, k - n).astype(np.float64)
        offset[(k >= m) & (k <= n - m)] = np.inf  # unused wrap-around gap
        axes.append(offset * sp)
    grids = np.meshgrid(*axes, indexing="ij")
    with np.errstate(invalid="ignore"):
        dist = np.sqrt(sum(g**2 for g in grids))
    kernel = np.zeros(dist.shape)
    np.divide(1.0, dist, out=kernel, where=(dist > 0) & np.isfinite(dist))
    return kernel


def _combine(
    n: int, weight_sum: float, cross: float, sq_weight: float, sum_sq: float
) -> tuple[float, float]:
    """Moran's I and Geary's C from the pair sums Σw, Σw·yi·yj, Σw·yi² and Σyi²."""
    moran = safe_div(n * cross, weight_sum * sum_sq)
    geary = safe_div((n - 1) * (2.0 * sq_weight - 2.0 * cross), 2.0 * weight_sum * sum_sq)
    return moran, geary


def _exact(
    mask: NDArray[np.bool_], y: NDArray[np.float64], spacing: tuple[float, float, float]
) -> tuple[float, float]:
    fft_shape = [sp_fft.next_fast_len(2 * m - 1, real=True) for m in mask.shape]
    kernel = _wrapped_inverse_distance(mask.shape, fft_shape, spacing)
    k_hat = sp_fft.rfftn(kernel, s=fft_shape)
    both = np.stack([mask.astype(np.float64), y])
    axes = (1, 2, 3)
    conv = sp_fft.irfftn(sp_fft.rfftn(both, s=fft_shape, axes=axes) * k_hat, s=fft_shape, axes=axes)
    box = tuple(slice(0, m) for m in mask.shape)
    k_mask, k_y = conv[0][box][mask], conv[1][box][mask]
    ym = y[mask]
    n = int(mask.sum())
    return _combine(
        n, float(k_mask.sum()), float((ym * k_y).sum()), float((ym**2 * k_mask).sum()),
        float((ym**2).sum()),
    )  # fmt: skip


def _sampled(
    mask: NDArray[np.bool_], y: NDArray[np.float64], spacing: tuple[float, float, float]
) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    points = np.argwhere(mask)
    n = len(points)
    pick = rng.choice(n, size=min(SAMPLE_SIZE, n), replace=False)
    pos = points[pick] * np.asarray(spacing)
    ys = y[tuple(points[pick].T)]
    w_sum = cross = sq_w = 0.0
    for start in range(0, len(pos), 512):
        d = np.linalg.norm(pos[start : start + 512, None] - pos[None], axis=2)
        w = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        w_sum += float(w.sum())
        cross += float((ys[start : start + 512, None] * w * ys[None]).sum())
        sq_w += float((ys[start : start + 512, None] ** 2 * w).sum())
    # scale the sample's pair sums to the whole ROI: pairs grow as n², voxels as n
    scale = (n * (n - 1)) / (len(pos) * (len(pos) - 1))
    sum_sq = float((ys**2).mean()) * n
    return _combine(n, w_sum * scale, cross * scale, sq_w * scale, sum_sq)


def moran_geary(roi: Roi) -> tuple[float, float]:
    """Moran's I and Geary's C of the intensity mask (NaN for fewer than 2 voxels)."""
    mask, image = bbox_crop(roi.int_mask, roi.image, pad=0)
    if int(mask.sum()) < 2:
        return math.nan, math.nan
    y = np.where(mask, image - image[mask].mean(), 0.0)
    grid_points = math.prod(2 * m - 1 for m in mask.shape)
    if grid_points <= FFT_LIMIT:
        return _exact(mask, y, roi.spacing)
    logger.info(
        "ROI box %s too large for the exact Moran/Geary FFT; estimating from %d voxels",
        mask.shape,
        SAMPLE_SIZE,
    )
    return _sampled(mask, y, roi.spacing)
