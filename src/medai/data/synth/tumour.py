"""Glioma phantoms: irregular tumours with necrosis, enhancing rim, non-enhancing
tumour and oedema that spreads along white matter, with optional mass effect.

Volumes are drawn first (so the cohort's statistics are controlled), then shapes are
grown to exactly those volumes: each sub-region is the set of allowed voxels with the
lowest value of a noisy "distance from the centre" cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.data.synth.anatomy import F32, smooth_field

__all__ = [
    "Grade",
    "TumourMasks",
    "TumourParams",
    "draw_tumour",
    "grow_tumour",
    "lowest_cost",
    "mass_effect_displacement",
    "pick_centre",
    "pick_satellite_centre",
    "split_satellite",
]

Bool3 = NDArray[np.bool_]


class Grade(StrEnum):
    """WHO-style grade group, as in BraTS 2018–2019: high-grade vs low-grade glioma."""

    HGG = "HGG"
    LGG = "LGG"


@dataclass(frozen=True)
class TumourParams:
    """Drawn tumour parameters (recorded so a case replays)."""

    grade: Grade
    wt_ml: float
    tc_ml: float
    ncr_ml: float
    et_ml: float
    anisotropy: tuple[float, float, float]
    mass_effect: float  # 0 = none; fraction of the core radius tissue is pushed
    shape_seed: int
    oedema_wm_preference: float = 0.8  # 0: oedema enters cortex freely; larger: spares it
    oedema_noise: float = 0.3  # irregularity of the oedema outline (larger: infiltrative)


@dataclass(frozen=True)
class TumourMasks:
    """Disjoint boolean masks on the subject grid."""

    necrosis: Bool3
    enhancing: Bool3
    non_enhancing: Bool3
    oedema: Bool3

    def msd_labels(self) -> NDArray[np.uint8]:
        """MSD Task01 labels: 1 oedema, 2 non-enhancing tumour and necrosis, 3 enhancing."""
        out = np.zeros(self.oedema.shape, dtype=np.uint8)
        out[self.oedema] = 1
        out[self.non_enhancing | self.necrosis] = 2
        out[self.enhancing] = 3
        return out


def draw_tumour(rng: np.random.Generator, *, grade: Grade) -> TumourParams:
    """Draw volumes (mL) and shape parameters for one tumour of ``grade``.

    HGG: whole tumour log-normal, median 90 mL; oedema 50–75 % of it; the core splits
    into enhancing (35–60 %), necrosis (20–45 %) and the rest non-enhancing.
    LGG: median 60 mL, oedema 30–65 %, core non-enhancing; 1 in 5 has a tiny
    enhancing focus (0.05–0.6 mL), the rest none.
    """
    if grade is Grade.HGG:
        wt = float(np.clip(rng.lognormal(np.log(90.0), 0.5), 15.0, 260.0))
        tc = wt * (1.0 - rng.uniform(0.50, 0.75))
        et_share, ncr_share = rng.uniform(0.35, 0.60), rng.uniform(0.20, 0.45)
        et, ncr = tc * et_share, tc * min(ncr_share, 0.95 - et_share)
        mass = float(rng.uniform(0.15, 0.45))
    else:
        wt = float(np.clip(rng.lognormal(np.log(60.0), 0.6), 8.0, 200.0))
        tc = wt * (1.0 - rng.uniform(0.30, 0.65))
        et = float(rng.uniform(0.05, 0.6)) if rng.random() < 0.2 else 0.0
        ncr = 0.0
        mass = float(rng.uniform(0.0, 0.25))
    aniso = rng.uniform(0.75, 1.3, 3)
    aniso /= np.prod(aniso) ** (1 / 3)
    return TumourParams(
        grade=grade,
        wt_ml=wt,
        tc_ml=float(tc),
        ncr_ml=float(ncr),
        et_ml=float(et),
        anisotropy=(float(aniso[0]), float(aniso[1]), float(aniso[2])),
        mass_effect=mass,
        shape_seed=int(rng.integers(2**31)),
    )


def _radius_mm(volume_ml: float) -> float:
    return float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0))


def pick_centre(
    rng: np.random.Generator, wm: F32, brain: F32, *, spacing: float, params: TumourParams
) -> tuple[int, int, int]:
    """A white-matter voxel deep enough in the brain to hold the tumour core."""
    depth = ndimage.distance_transform_edt(brain > 0.5) * spacing
    need = min(0.9 * _radius_mm(params.tc_ml) + 6.0, 0.6 * float(depth.max()))
    ok = (wm > 0.6) & (depth > need)
    if not ok.any():
        ok = depth >= 0.8 * float(depth.max())
    # Gliomas are mostly supratentorial and hemispheric: avoid the midline and brainstem.
    x, _, z = np.indices(wm.shape)
    mid = (wm.shape[0] - 1) / 2
    lateral = np.abs(x - mid) * spacing > 12.0
    upper = z * spacing > 0.35 * wm.shape[2] * spacing
    if (ok & lateral & upper).any():
        ok &= lateral & upper
    candidates = np.flatnonzero(ok)
    flat = int(candidates[rng.integers(candidates.size)])
    i, j, k = np.unravel_index(flat, wm.shape)
    return (int(i), int(j), int(k))


def pick_satellite_centre(
    rng: np.random.Generator,
    wm: F32,
    brain: F32,
    *,
    spacing: float,
    main: tuple[tuple[int, int, int], TumourParams],
    satellite: TumourParams,
) -> tuple[int, int, int]:
    """A centre for a second lesion, far enough from the main one to stay separate.

    The two whole tumours' radii apart (so their oedemas barely touch), else the
    candidate farthest from the main centre.
    """
    depth = ndimage.distance_transform_edt(brain > 0.5) * spacing
    need = min(0.9 * _radius_mm(satellite.tc_ml) + 4.0, 0.6 * float(depth.max()))
    ok = (wm > 0.6) & (depth > need)
    if not ok.any():
        ok = depth >= 0.8 * float(depth.max())
    centre, params = main
    rel = (
        np.indices(wm.shape, dtype=np.float32) - np.asarray(centre, np.float32)[:, None, None, None]
    )
    apart = np.sqrt((rel**2).sum(axis=0)) * spacing
    far = ok & (apart > _radius_mm(params.wt_ml) + _radius_mm(satellite.wt_ml))
    candidates = (
        np.flatnonzero(far) if far.any() else np.array([np.argmax(np.where(ok, apart, -1))])
    )
    flat = int(candidates[rng.integers(candidates.size)])
    i, j, k = np.unravel_index(flat, wm.shape)
    return (int(i), int(j), int(k))


def split_satellite(
    params: TumourParams, share: float, *, shape_seed: int
) -> tuple[TumourParams, TumourParams]:
    """The main lesion and a satellite that together hold the drawn volumes.

    The satellite takes ``share`` of every sub-region volume and pushes no tissue.
    """

    def part(fraction: float) -> TumourParams:
        return replace(
            params,
            wt_ml=params.wt_ml * fraction,
            tc_ml=params.tc_ml * fraction,
            ncr_ml=params.ncr_ml * fraction,
            et_ml=params.et_ml * fraction,
        )

    main = part(1.0 - share)
    satellite = replace(part(share), mass_effect=0.0, shape_seed=shape_seed)
    return main, satellite


def mass_effect_displacement(
    shape: tuple[int, int, int],
    centre: tuple[int, int, int],
    *,
    spacing: float,
    params: TumourParams,
) -> F32:
    """Voxel offsets that push tissue radially away from ``centre`` (zero if no mass).

    A subject voxel at radius ``r`` samples the atlas at ``r (1 - a exp(-(r/R)^2))``,
    which is monotone for ``a < 1``: tissue is compressed around the core, not folded.
    """
    out = np.zeros((3, *shape), dtype=np.float32)
    if params.mass_effect <= 0.0:
        return out
    radius = 1.3 * _radius_mm(params.tc_ml) / spacing
    rel = np.indices(shape, dtype=np.float32) - np.asarray(centre, np.float32)[:, None, None, None]
    r2 = (rel**2).sum(axis=0) / radius**2
    out = -rel * (params.mass_effect * np.exp(-r2))[None]
    return out.astype(np.float32)


def lowest_cost(cost: F32, allowed: Bool3, count: int) -> Bool3:
    """The ``count`` allowed voxels with the lowest ``cost``."""
    idx = np.flatnonzero(allowed)
    out = np.zeros(cost.shape, dtype=bool)
    if count <= 0 or idx.size == 0:
        return out
    if count >= idx.size:
        out.flat[idx] = True
        return out
    values = cost.flat[idx]
    pick = np.argpartition(values, count - 1)[:count]
    out.flat[idx[pick]] = True
    return out


def _connected_to(mask: Bool3, seed: Bool3) -> Bool3:
    """The parts of ``mask`` that touch ``seed`` (26-connectivity)."""
    if not mask.any() or not seed.any():
        return mask
    labels, _ = ndimage.label(mask | seed, structure=np.ones((3, 3, 3)))
    keep = np.unique(labels[seed])
    return mask & np.isin(labels, keep[keep > 0])


def _box(
    centre: tuple[int, int, int], shape: tuple[int, int, int], half: int
) -> tuple[slice, slice, slice]:
    lo = [max(c - half, 0) for c in centre]
    hi = [min(c + half + 1, n) for c, n in zip(centre, shape, strict=True)]
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _grow_core(
    params: TumourParams, dist: F32, noise: F32, fine: F32, tissue: Bool3, spacing: float
) -> tuple[Bool3, Bool3, Bool3]:
    """Necrosis, enhancing and non-enhancing masks of the tumour core (in the box)."""
    voxel_ml = spacing**3 / 1000.0
    n = [round(v / voxel_ml) for v in (params.tc_ml, params.ncr_ml, params.et_ml)]
    # Costs are distances in units of the target radius plus bounded noise: lobulated
    # outlines that stay centred on the centre (multiplicative noise could move them).
    core_cost = dist / _radius_mm(params.tc_ml) + 0.35 * noise[0] + 0.15 * fine
    core = lowest_cost(core_cost, tissue, n[0])
    core = ndimage.binary_closing(core, iterations=1) & tissue
    # Necrosis is the deepest part of the core; enhancement the outer rim around it,
    # broken by noise so that non-enhancing tumour fills the gaps.
    depth = ndimage.distance_transform_edt(core, sampling=spacing).astype(np.float32)
    necrosis = lowest_cost(-depth * np.exp(0.35 * noise[1]), core, n[1])
    shell = core & ~necrosis
    if params.grade is Grade.HGG:
        et_cost = depth + 2.5 * noise[2] + 1.5 * fine
    else:
        et_cost = noise[2] + 0.3 * fine
    enhancing = lowest_cost(et_cost, shell, n[2])
    return necrosis, enhancing, shell & ~enhancing


def grow_tumour(
    params: TumourParams,
    centre: tuple[int, int, int],
    *,
    wm: F32,
    brain: F32,
    csf: F32,
    spacing: float,
) -> TumourMasks:
    """Grow the sub-region masks of ``params`` around ``centre`` on the subject grid."""
    shape = (int(wm.shape[0]), int(wm.shape[1]), int(wm.shape[2]))
    voxel_ml = spacing**3 / 1000.0
    r_wt = _radius_mm(params.wt_ml)
    box = _box(centre, shape, int(np.ceil(3.0 * r_wt / spacing)) + 2)
    rng = np.random.default_rng(params.shape_seed)
    bshape = tuple(s.stop - s.start for s in box)
    noise = smooth_field(rng, bshape, nodes=5, channels=4)
    fine = smooth_field(rng, bshape, nodes=9, channels=1)[0]
    grid = np.indices(bshape, dtype=np.float32)
    offset = np.array([centre[a] - box[a].start for a in range(3)], np.float32)
    rel = (grid - offset[:, None, None, None]) * spacing
    aniso = np.asarray(params.anisotropy, np.float32)[:, None, None, None]
    dist = np.sqrt(((rel / aniso) ** 2).sum(axis=0))  # mm, ellipsoidal
    wm_b, brain_b, csf_b = wm[box], brain[box], csf[box]

    tissue = (brain_b > 0.5) & (csf_b < 0.6 * brain_b + 0.2)
    necrosis, enhancing, non_enh = _grow_core(params, dist, noise, fine, tissue, spacing)
    core = necrosis | enhancing | non_enh
    n_ed = round((params.wt_ml - params.tc_ml) / voxel_ml)
    # Oedema tracks white matter: cost is much lower in WM than in cortex, none in CSF.
    wm_share = wm_b / np.maximum(brain_b, 1e-3)
    pref = params.oedema_wm_preference
    ed_cost = dist / r_wt * (0.8 + pref - pref * wm_share) + params.oedema_noise * noise[3]
    ed_allowed = (brain_b > 0.5) & (csf_b < 0.35) & ~core & (dist < 2.7 * r_wt)
    oedema = _connected_to(lowest_cost(ed_cost, ed_allowed, int(1.1 * n_ed)), core)

    def full(mask: Bool3) -> Bool3:
        out = np.zeros(shape, dtype=bool)
        out[box] = mask
        return out

    return TumourMasks(full(necrosis), full(enhancing), full(non_enh), full(oedema))
