"""Morphological features (IBSI family HCUG): mesh, voxel, PCA, hull, spatial autocorrelation.

The mesh is a marching-cubes surface (level 0.5) of the zero-padded morphological mask
in millimetres. Moran's I and Geary's C come from :mod:`medai.radiomics.autocorrelation`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import spatial, special
from skimage import measure

from medai.radiomics._util import bbox_crop, safe_div
from medai.radiomics.autocorrelation import moran_geary
from medai.radiomics.roi import Roi

__all__ = ["morphology_features"]


def _mesh(
    mask: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    padded = np.pad(mask.astype(np.float64), 1)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.5, spacing=spacing)
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def _mesh_volume_area(verts: NDArray[np.float64], faces: NDArray[np.int64]) -> tuple[float, float]:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.einsum("ij,ij->", a, np.cross(b, c)))) / 6.0
    area = float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()) / 2.0
    return volume, area


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface of an ellipsoid with semi-axes a ≥ b ≥ c (Legendre series, 20 terms)."""
    if a <= 0:
        return math.nan
    alpha, beta = math.sqrt(max(1 - (b / a) ** 2, 0.0)), math.sqrt(max(1 - (c / a) ** 2, 0.0))
    if alpha * beta < 1e-6:
        p = 1.6075  # Knud Thomsen's formula where the series' argument degenerates
        return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    x = (alpha**2 + beta**2) / (2 * alpha * beta)
    nu = np.arange(21)
    terms = (alpha * beta) ** nu / (1 - 4 * nu**2) * special.eval_legendre(nu, x)
    return float(4 * math.pi * a * b * terms.sum())


def _positions(mask: NDArray[np.bool_], spacing: tuple[float, float, float]) -> NDArray[np.float64]:
    return np.argwhere(mask).astype(np.float64) * np.asarray(spacing)


def morphology_features(roi: Roi) -> dict[str, float]:
    """Morphological features of ``roi`` keyed by short IBSI-derived names."""
    spacing = roi.spacing
    morph = bbox_crop(roi.morph_mask, pad=0)[0]
    verts, faces = _mesh(morph, spacing)
    volume, area = _mesh_volume_area(verts, faces)
    voxel_volume = float(morph.sum()) * float(np.prod(spacing))
    out = {
        "volume": volume,
        "vol_approx": voxel_volume,
        "area_mesh": area,
        "av": safe_div(area, volume),
        "comp_1": safe_div(volume, math.sqrt(math.pi) * area**1.5),
        "comp_2": safe_div(36 * math.pi * volume**2, area**3),
        "sph_dispr": safe_div(area, (36 * math.pi * volume**2) ** (1 / 3)),
        "sphericity": safe_div((36 * math.pi * volume**2) ** (1 / 3), area),
        "asphericity": safe_div(area, (36 * math.pi * volume**2) ** (1 / 3)) - 1.0,
    }
    out.update(_centre_shift(roi))
    out.update(_hull_and_boxes(verts, faces, volume, area))
    out.update(_pca_features(morph, spacing, volume, area))
    out["integ_int"] = volume * float(roi.values.mean())
    out["moran_i"], out["geary_c"] = moran_geary(roi)
    return out


def _centre_shift(roi: Roi) -> dict[str, float]:
    geometric = _positions(roi.morph_mask, roi.spacing).mean(axis=0)
    pos = _positions(roi.int_mask, roi.spacing)
    weights = roi.image[roi.int_mask]
    total = float(weights.sum())
    if total == 0:
        return {"com": math.nan}
    weighted = (pos * weights[:, None]).sum(axis=0) / total
    return {"com": float(np.linalg.norm(geometric - weighted))}


def _hull_and_boxes(
    verts: NDArray[np.float64], faces: NDArray[np.int64], volume: float, area: float
) -> dict[str, float]:
    extent = verts.max(axis=0) - verts.min(axis=0)
    box_volume = float(np.prod(extent))
    box_area = 2.0 * float(extent[0] * extent[1] + extent[1] * extent[2] + extent[0] * extent[2])
    out = {
        "v_dens_aabb": safe_div(volume, box_volume),
        "a_dens_aabb": safe_div(area, box_area),
    }
    try:
        hull = spatial.ConvexHull(verts)
    except spatial.QhullError:  # flat mesh: no 3D hull
        out.update({"diam": math.nan, "v_dens_conv_hull": math.nan, "a_dens_conv_hull": math.nan})
        return out
    corners = verts[hull.vertices]
    out["diam"] = float(spatial.distance.pdist(corners).max()) if len(corners) > 1 else 0.0
    out["v_dens_conv_hull"] = safe_div(volume, float(hull.volume))
    out["a_dens_conv_hull"] = safe_div(area, float(hull.area))
    return out


def _pca_features(
    morph: NDArray[np.bool_], spacing: tuple[float, float, float], volume: float, area: float
) -> dict[str, float]:
    pos = _positions(morph, spacing)
    if len(pos) < 2:
        lam = np.zeros(3)
    else:
        cov = np.cov(pos, rowvar=False)  # sample covariance (n - 1), as IBSI
        lam = np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0.0, None)
    major, minor, least = (4.0 * math.sqrt(float(v)) for v in lam)
    a, b, c = (2.0 * math.sqrt(float(v)) for v in lam)
    return {
        "pca_major": major,
        "pca_minor": minor,
        "pca_least": least,
        "pca_elongation": safe_div(math.sqrt(lam[1]), math.sqrt(lam[0])),
        "pca_flatness": safe_div(math.sqrt(lam[2]), math.sqrt(lam[0])),
        "v_dens_aee": safe_div(volume, 4.0 * math.pi * a * b * c / 3.0),
        "a_dens_aee": safe_div(area, _ellipsoid_area(a, b, c)),
    }
