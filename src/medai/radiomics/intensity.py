"""First-order families: local intensity, intensity statistics, intensity histogram."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import signal

from medai.radiomics._util import safe_div
from medai.radiomics.roi import Roi

__all__ = [
    "histogram_features",
    "local_intensity_features",
    "statistics_features",
]


#: Intensities closer than this (relative to the largest magnitude) count as equal when
#: picking the maximum-intensity voxels and the p10–p90 range: after interpolation,
#: values that are equal in exact arithmetic differ by a few ulp.
TIE_TOLERANCE = 1e-9


def _slack(x: NDArray[np.float64]) -> float:
    return TIE_TOLERANCE * max(1.0, float(np.max(np.abs(x)))) if x.size else 0.0


def _sphere_kernel(radius_mm: float, spacing: tuple[float, float, float]) -> NDArray[np.float64]:
    half = [math.floor(radius_mm / s) for s in spacing]
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)], indexing="ij"
    )
    dist2 = sum(g**2 for g in grids)
    return (dist2 <= radius_mm**2 + 1e-9).astype(np.float64)


def local_intensity_features(roi: Roi, *, peak_volume_cc: float = 1.0) -> dict[str, float]:
    """Local and global intensity peaks: mean over a sphere of ``peak_volume_cc``.

    The sphere gathers every image voxel (inside the ROI or not) whose centre lies
    within its radius; voxels beyond the image edge are left out of the mean.
    """
    radius = (3.0 * peak_volume_cc * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    kernel = _sphere_kernel(radius, roi.spacing)
    inside = roi.inside.astype(np.float64)
    sums = signal.fftconvolve(roi.image * inside, kernel, mode="same")
    counts = signal.fftconvolve(inside, kernel, mode="same")
    means = sums[roi.int_mask] / np.maximum(np.round(counts[roi.int_mask]), 1.0)
    values = roi.values
    # IBSI: with several maximum-intensity voxels, the highest of their peaks.
    local = float(means[values >= values.max() - _slack(values)].max())
    return {"peak_loc": local, "peak_glob": float(means.max())}


def _moments(x: NDArray[np.float64]) -> dict[str, float]:
    mean = float(x.mean())
    dev = x - mean
    m2 = float(np.mean(dev**2))
    if m2 == 0:  # IBSI: skewness and kurtosis are 0 for a constant region
        return {"mean": mean, "var": 0.0, "skew": 0.0, "kurt": 0.0}
    return {
        "mean": mean,
        "var": m2,
        "skew": float(np.mean(dev**3)) / m2**1.5,
        "kurt": float(np.mean(dev**4)) / m2**2 - 3.0,
    }


def _spread(x: NDArray[np.float64]) -> dict[str, float]:
    p10, p25, median, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    mean = float(x.mean())
    slack = _slack(x)
    robust = x[(x >= p10 - slack) & (x <= p90 + slack)]
    return {
        "median": float(median),
        "min": float(x.min()),
        "p10": float(p10),
        "p90": float(p90),
        "max": float(x.max()),
        "iqr": float(p75 - p25),
        "range": float(x.max() - x.min()),
        "mad": float(np.mean(np.abs(x - mean))),
        "rmad": float(np.mean(np.abs(robust - robust.mean()))) if robust.size else math.nan,
        "medad": float(np.mean(np.abs(x - median))),
        "cov": safe_div(math.sqrt(float(np.var(x))), mean),
        "qcod": safe_div(float(p75 - p25), float(p75 + p25)),
    }


def statistics_features(roi: Roi) -> dict[str, float]:
    """Intensity statistics of the intensity mask (IBSI family UHIW)."""
    x = roi.values
    out = _moments(x)
    out.update(_spread(x))
    out["energy"] = float(np.sum(x**2))
    out["rms"] = math.sqrt(float(np.mean(x**2)))
    return out


def histogram_features(roi: Roi) -> dict[str, float]:
    """Intensity-histogram features of the discretised grey levels (IBSI family ZVCW)."""
    g = roi.grey[roi.int_mask].astype(np.float64)
    out = _moments(g)
    out.update(_spread(g))
    n_levels = roi.n_levels
    counts = np.bincount(roi.grey[roi.int_mask], minlength=n_levels + 1)[1:].astype(np.float64)
    p = counts / counts.sum()
    levels = np.arange(1, n_levels + 1, dtype=np.float64)
    modes = levels[counts == counts.max()]
    out["mode"] = float(modes[np.argmin(np.abs(modes - out["mean"]))])
    nz = p[p > 0]
    out["entropy"] = float(-(nz * np.log2(nz)).sum())
    out["uniformity"] = float((p**2).sum())
    if n_levels < 2:
        out.update(dict.fromkeys(("max_grad", "max_grad_g", "min_grad", "min_grad_g"), math.nan))
        return out
    grad = np.gradient(counts)
    out["max_grad"] = float(grad.max())
    out["max_grad_g"] = float(levels[int(np.argmax(grad))])
    out["min_grad"] = float(grad.min())
    out["min_grad_g"] = float(levels[int(np.argmin(grad))])
    return out
