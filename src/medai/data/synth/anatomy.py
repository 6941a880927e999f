"""Healthy brain anatomy for the synthetic cohort, from the MNI ICBM152 2009 templates.

The nilearn wheel ships the 1 mm ICBM152 2009 (symmetric) T1, grey-matter and
white-matter probability maps and a brain mask. No CSF map ships, so CSF is derived:
the part of the brain mask that is neither grey nor white matter, plus the ventricles
(dark on the T1 template, deep inside the mask). The atlas is resampled once to the
requested spacing; each subject is then a smooth random deformation and a rigid pose of
it, optionally with age-related atrophy (wider sulci and ventricles).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "Atlas",
    "SubjectAnatomy",
    "Warp",
    "draw_warp",
    "load_atlas",
    "make_subject",
    "smooth_field",
    "source_coordinates",
]

F32 = NDArray[np.float32]
TISSUES = ("csf", "gm", "wm")


@dataclass(frozen=True)
class Atlas:
    """Tissue fractions (CSF, GM, WM) on a regular RAS+ grid; background = 1 - sum."""

    fractions: F32  # (3, x, y, z) in TISSUES order
    affine: NDArray[np.float64]
    ventricles: F32  # (x, y, z) fraction of CSF that is ventricular

    @property
    def shape(self) -> tuple[int, int, int]:
        x, y, z = self.fractions.shape[1:]
        return (int(x), int(y), int(z))

    @property
    def spacing(self) -> float:
        return float(self.affine[0, 0])


@dataclass(frozen=True)
class Warp:
    """Drawn parameters of one subject's spatial transform (recorded for replay)."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    deformation_mm: float
    deformation_seed: int
    atrophy: float


@dataclass(frozen=True)
class SubjectAnatomy:
    """A subject's healthy tissue fractions on the atlas grid."""

    fractions: F32  # (3, x, y, z): csf, gm, wm
    affine: NDArray[np.float64]
    warp: Warp

    @property
    def brain(self) -> F32:
        return np.clip(self.fractions.sum(axis=0), 0.0, 1.0)


_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _load_templates() -> tuple[dict[str, F32], NDArray[np.float64]]:
    """The 1 mm T1, GM and WM templates scaled to [0, 1], and their affine.

    Reads the files inside the nilearn wheel directly (importing ``nilearn.datasets``
    costs seconds); falls back to nilearn's loaders if the files moved.
    """
    import importlib.util
    from pathlib import Path

    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(roots[0]) / "datasets" / "data" if roots else Path()
    images: dict[str, Any] = {}
    if roots and all((folder / name).is_file() for name in _TEMPLATE_FILES.values()):
        images = {key: nib.load(folder / name) for key, name in _TEMPLATE_FILES.items()}
    else:  # pragma: no cover - depends on the nilearn release
        from nilearn import datasets

        images = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    out = {}
    for key, img in images.items():
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
        out[key] = np.clip(data / max(float(data.max()), 1e-6), 0.0, 1.0)
    return out, np.asarray(images["t1"].affine, dtype=np.float64)


def _derive_csf(t1: F32, gm: F32, wm: F32, spacing: float) -> tuple[F32, F32]:
    """CSF fraction (brain mask minus GM minus WM, plus ventricles) and ventricle map.

    The brain mask is the T1 template above 0.2 of its maximum (nilearn's rule);
    ventricles are dark on T1, poor in WM and more than 14 mm deep inside the mask.
    """
    inside = t1 > 0.2
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    ventricles = inside & (depth > 14.0) & (t1 < 0.42) & (wm < 0.5)
    if spacing <= 2.0:
        ventricles = ndimage.binary_opening(ventricles, iterations=1)
    vent = ndimage.gaussian_filter(ventricles.astype(np.float32), 0.7 / spacing)
    csf = np.clip(inside - gm - wm, 0.0, 1.0)
    csf = np.maximum(csf, vent) * inside
    return csf.astype(np.float32), vent.astype(np.float32)


def _resample(volume: F32, factor: float, shape: tuple[int, int, int]) -> F32:
    """Anti-aliased linear resampling from 1 mm to ``factor`` mm, corner-aligned."""
    if factor > 1.0:
        volume = ndimage.gaussian_filter(volume, sigma=0.42 * factor)
    out = ndimage.affine_transform(
        volume, np.full(3, factor), output_shape=shape, order=1, mode="constant"
    )
    return np.asarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def load_atlas(spacing: float = 2.0) -> Atlas:
    """The ICBM152 2009 tissue atlas resampled to isotropic ``spacing`` mm (cached).

    Raises:
        ValueError: If ``spacing`` is outside 1–8 mm.
    """
    if not 1.0 <= spacing <= 8.0:
        raise ValueError(f"spacing must be between 1 and 8 mm; got {spacing}")
    tpl, affine_1mm = _load_templates()
    extent = np.array(tpl["t1"].shape) - 1
    shape = tuple(int(n) for n in np.floor(extent / spacing) + 1)
    shape3 = (shape[0], shape[1], shape[2])
    t1, gm, wm = (_resample(tpl[k], spacing, shape3) for k in ("t1", "gm", "wm"))
    csf, ventricles = _derive_csf(t1, gm, wm, spacing)
    # Fractions must not exceed one: ventricles displace the GM/WM probabilities there.
    scale = np.clip((1.0 - csf) / np.maximum(gm + wm, 1e-6), 0.0, 1.0)
    gm, wm = gm * scale, wm * scale
    fractions = np.stack([csf, gm, wm])
    affine = affine_1mm.copy()
    affine[:3, :3] *= spacing
    return Atlas(np.clip(fractions, 0, 1), affine, np.clip(ventricles, 0, 1))


def draw_warp(rng: np.random.Generator, *, age: float) -> Warp:
    """Draw a subject's pose, deformation and atrophy (atrophy grows after age 40)."""
    atrophy = float(np.clip((age - 40.0) / 45.0, 0.0, 1.0) * rng.uniform(0.6, 1.0))
    return Warp(
        rotation_deg=tuple(float(a) for a in rng.normal(0.0, [4.0, 3.0, 5.0])),  # type: ignore[arg-type]
        translation_mm=tuple(float(t) for t in rng.normal(0.0, 3.0, 3)),  # type: ignore[arg-type]
        deformation_mm=float(rng.uniform(2.0, 5.0)),
        deformation_seed=int(rng.integers(2**31)),
        atrophy=atrophy,
    )


def _rotation(deg: tuple[float, float, float]) -> NDArray[np.float64]:
    a, b, c = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _bspline_matrix(length: int, nodes: int) -> F32:
    """``(length, nodes)`` cubic B-spline weights, rows normalised to unit energy."""
    pos = np.linspace(0.0, length - 1.0, nodes)
    step = (length - 1.0) / max(nodes - 1, 1) if length > 1 else 1.0
    t = np.abs(np.arange(length, dtype=np.float64)[:, None] - pos[None, :]) / step
    w = np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], *, nodes: int, channels: int = 1
) -> F32:
    """Smooth random fields of unit variance: cubic B-splines on a coarse normal grid."""
    coarse = rng.standard_normal((channels, nodes, nodes, nodes)).astype(np.float32)
    mx, my, mz = (_bspline_matrix(n, nodes) for n in shape[:3])
    field = np.einsum("cabd,xa->cxbd", coarse, mx)
    field = np.einsum("cxbd,yb->cxyd", field, my)
    field = np.einsum("cxyd,zd->cxyz", field, mz)
    return np.ascontiguousarray(field, dtype=np.float32)


def source_coordinates(atlas: Atlas, warp: Warp) -> F32:
    """Atlas voxel coordinates sampled by each subject voxel: rigid pose + deformation."""
    shape = atlas.shape
    spacing = atlas.spacing
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    grid = np.indices(shape, dtype=np.float32)
    rot = _rotation(warp.rotation_deg).astype(np.float32)
    rel = grid.reshape(3, -1) - centre[:, None]
    coords = (rot @ rel).reshape(3, *shape) + centre[:, None, None, None]
    coords += (np.asarray(warp.translation_mm, dtype=np.float32) / spacing)[:, None, None, None]
    field_rng = np.random.default_rng(warp.deformation_seed)
    field = smooth_field(field_rng, shape, nodes=5, channels=3)
    coords += field * (warp.deformation_mm / spacing)
    return coords.astype(np.float32)


def _atrophy(fractions: F32, ventricles: F32, amount: float, spacing: float) -> F32:
    """Widen sulci and ventricles: move GM/WM fraction next to CSF into CSF."""
    if amount <= 0.0:
        return fractions
    csf, gm, wm = fractions
    sigma = 2.0 / spacing
    near_csf = ndimage.gaussian_filter(csf, sigma)
    near_vent = ndimage.gaussian_filter(ventricles, 2.5 * sigma)
    sulcal = np.clip(0.9 * amount * near_csf, 0, 1) * gm
    vent = np.clip(1.6 * amount * near_vent, 0, 1) * (wm + gm - sulcal)
    take_gm = sulcal + vent * gm / np.maximum(gm + wm, 1e-6)
    take_wm = vent * wm / np.maximum(gm + wm, 1e-6)
    out = np.stack([csf + take_gm + take_wm, gm - take_gm, wm - take_wm])
    return np.clip(out, 0, 1).astype(np.float32)


def make_subject(
    atlas: Atlas,
    warp: Warp,
    *,
    coords: F32 | None = None,
    extra_displacement: F32 | None = None,
) -> SubjectAnatomy:
    """Apply ``warp`` (and optionally a tumour's mass-effect displacement) to the atlas.

    Args:
        atlas: Output of :func:`load_atlas`.
        warp: Drawn by :func:`draw_warp`.
        coords: Precomputed :func:`source_coordinates` of ``warp`` (saves time), or ``None``.
        extra_displacement: ``(3, x, y, z)`` voxel offsets added to the sampling
            coordinates (the tumour's mass effect), or ``None``.
    """
    base = _atrophy(atlas.fractions, atlas.ventricles, warp.atrophy, atlas.spacing)
    coords = source_coordinates(atlas, warp) if coords is None else coords.copy()
    if extra_displacement is not None:
        coords += extra_displacement
    warped = np.stack(
        [ndimage.map_coordinates(b, coords, order=1, mode="constant", cval=0.0) for b in base]
    ).astype(np.float32)
    return SubjectAnatomy(np.clip(warped, 0, 1), atlas.affine.copy(), warp)
