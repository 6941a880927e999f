"""Intensity-volume histogram features (IBSI family P88C).

The IVH gives, for each discretised intensity ``i`` on a grid spanning the total
range ``G``, the fraction ``ν_i`` of the intensity mask at intensity ``i`` or above.
Grid points absent from the ROI still count (the phantom's levels 2 and 5).
The discretisation follows IBSI's per-modality recommendation, chosen with
``RadiomicsSettings.ivh_mode``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from medai.radiomics.roi import Roi, lower_bound
from medai.radiomics.settings import Discretisation, RadiomicsSettings

__all__ = ["ivh_features", "ivh_grid"]


def _range(values: NDArray[np.float64], settings: RadiomicsSettings) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    if settings.resegment_range is not None:
        r_low, r_high = settings.resegment_range
        low = low if r_low is None else float(r_low)
        high = high if r_high is None else float(r_high)
    return low, high


def _centres(
    values: NDArray[np.float64], width: float, settings: RadiomicsSettings
) -> tuple[NDArray[np.int64], NDArray[np.float64], tuple[float, float]]:
    """Fixed-bin-size indices with bin-centre intensities; G = [min + w/2, max − w/2]."""
    low = lower_bound(values, settings)
    _, high = _range(values, settings)
    index = np.maximum(np.floor((values - low) / width + 1e-9).astype(np.int64), 0)
    grid = np.asarray(low + (np.arange(int(index.max()) + 1) + 0.5) * width, dtype=np.float64)
    return np.asarray(index, dtype=np.int64), grid, (low + 0.5 * width, high - 0.5 * width)


def ivh_grid(
    roi: Roi, settings: RadiomicsSettings
) -> tuple[NDArray[np.int64], NDArray[np.float64], tuple[float, float]]:
    """Grid index of every ROI voxel, the grid intensities and the total range ``G``."""
    values = roi.values
    mode = settings.ivh_mode
    if mode == "texture" and settings.discretisation is Discretisation.FIXED_BIN_SIZE:
        return _centres(values, settings.bin_width, settings)
    if mode == "bin_width":
        return _centres(values, settings.ivh_bin_width, settings)
    if mode == "discrete":
        low, high = _range(values, settings)
        low, high = math.floor(low), math.ceil(high)
        index = np.round(values).astype(np.int64) - low
        grid = np.arange(low, max(high, int(index.max()) + low) + 1, dtype=np.float64)
        return index, grid, (float(low), float(high))
    if mode == "texture":
        n_bins, index = roi.n_levels, roi.grey[roi.int_mask] - 1
    else:
        n_bins = settings.ivh_bin_number
        lo, hi = float(values.min()), float(values.max())
        scaled = n_bins * (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        index = np.clip(np.floor(scaled).astype(np.int64), 0, n_bins - 1)
    return index, np.arange(1, n_bins + 1, dtype=np.float64), (1.0, float(n_bins))


def ivh_features(roi: Roi, *, settings: RadiomicsSettings) -> dict[str, float]:
    """Volume fraction at 10/90 % intensity, intensity at 10/90 % volume, differences."""
    index, grid, (g_min, g_max) = ivh_grid(roi, settings)
    counts = np.bincount(index, minlength=len(grid)).astype(np.float64)
    step = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
    # one grid point beyond the top, where no voxel remains (ν = 0)
    levels = np.append(grid, grid[-1] + step)
    fraction = np.append(np.cumsum(counts[::-1])[::-1] / counts.sum(), 0.0)
    gamma = (levels - g_min) / (g_max - g_min) if g_max > g_min else None

    def volume_at(x: float) -> float:
        if gamma is None:
            return math.nan
        hit = np.nonzero(gamma >= x - 1e-12)[0]
        return float(fraction[hit[0]]) if hit.size else 0.0

    def intensity_at(x: float) -> float:
        return float(levels[np.nonzero(fraction <= x + 1e-12)[0][0]])

    out = {"v10": volume_at(0.10), "v90": volume_at(0.90)}
    out["i10"], out["i90"] = intensity_at(0.10), intensity_at(0.90)
    out["diff_v10_v90"] = out["v10"] - out["v90"]
    out["diff_i10_i90"] = out["i10"] - out["i90"]
    return out
