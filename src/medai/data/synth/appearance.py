"""How varied the tumours look: the ranges a cohort draws from, and one case's draw.

Real low-grade gliomas vary: margins may be sharp or infiltrative, the non-enhancing
core may be brighter or darker than the oedema on FLAIR, a core may hold a cyst or
calcified foci, some tumours are multifocal, and oedema may spare the cortex or
follow it. :class:`Appearance` holds the ranges a cohort draws each case's
:class:`CaseLook` from; its defaults are the documented cohort, and values outside
them make out-of-range cohorts for robustness tests (:meth:`Appearance.out_of_range`).
:meth:`Appearance.narrow` is the first generator's single look.

A case's look is drawn from its own random stream (``(seed, index, LOOK_STREAM)``),
so the anatomy, tumour volumes and scanner noise of case ``i`` are the same draws
whatever the appearance ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.data.synth.tumour import Bool3, TumourMasks, lowest_cost

__all__ = [
    "LOOK_STREAM",
    "Appearance",
    "CaseLook",
    "carve_inclusions",
    "draw_look",
    "merge_masks",
]

#: Third element of the random-stream key of a case's look.
LOOK_STREAM = 104729

#: Values of the first generator (a case drawn with :meth:`Appearance.narrow`).
NARROW_NET_FLAIR = 0.86
NARROW_WM_PREFERENCE = 0.8
SHARP_MARGIN_MM = 0.5

Range = tuple[float, float]


def _check_range(name: str, value: Range, low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"{name} must be (low, high) with {low} <= low <= high <= {high}; got {value}"
        )


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability between 0 and 1; got {value}")


@dataclass(frozen=True)
class Appearance:
    """Tumour appearance ranges; each case draws its :class:`CaseLook` from them.

    Probabilities are per case; ``(low, high)`` ranges are drawn uniformly.

    Attributes:
        multifocal: Probability of a second, separate lesion (a satellite).
        satellite_share: Share of every tumour volume that goes to the satellite
            (the total stays the drawn volume).
        infiltrative: Probability of infiltrative margins (no sharp tumour edge).
        margin_mm: Width (Gaussian sigma, mm) of an infiltrative margin; sharp
            margins are 0.5 mm.
        cyst: Probability of a cyst (CSF-like fluid) in the tumour core.
        cyst_share: Share of the non-enhancing/necrotic core that is cyst.
        calcification: Probability of calcified foci in the core.
        calcification_share: Share of the core that is calcified.
        net_flair: FLAIR signal of non-enhancing tumour relative to oedema (below 1:
            FLAIR-dark core, above 1: FLAIR-bright core).
        oedema_wm_preference: How strongly oedema keeps to white matter: 0 follows
            the cortex as readily as white matter, 0.8 was the first generator's,
            larger values spare the cortex.
    """

    multifocal: float = 0.1
    satellite_share: Range = (0.15, 0.35)
    infiltrative: float = 0.3
    margin_mm: Range = (1.5, 3.0)
    cyst: float = 0.15
    cyst_share: Range = (0.1, 0.35)
    calcification: float = 0.1
    calcification_share: Range = (0.02, 0.06)
    net_flair: Range = (0.6, 1.15)
    oedema_wm_preference: Range = (0.0, 1.4)

    def __post_init__(self) -> None:
        for name in ("multifocal", "infiltrative", "cyst", "calcification"):
            _check_probability(name, getattr(self, name))
        _check_range("satellite_share", self.satellite_share, 0.0, 0.5)
        _check_range("margin_mm", self.margin_mm, SHARP_MARGIN_MM, 10.0)
        _check_range("cyst_share", self.cyst_share, 0.0, 0.9)
        _check_range("calcification_share", self.calcification_share, 0.0, 0.5)
        _check_range("net_flair", self.net_flair, 0.05, 3.0)
        _check_range("oedema_wm_preference", self.oedema_wm_preference, -0.7, 3.0)

    @classmethod
    def narrow(cls) -> Appearance:
        """The first generator's look: one sharp lesion, no cyst or calcification."""
        return cls(
            multifocal=0.0,
            infiltrative=0.0,
            cyst=0.0,
            calcification=0.0,
            net_flair=(NARROW_NET_FLAIR, NARROW_NET_FLAIR),
            oedema_wm_preference=(NARROW_WM_PREFERENCE, NARROW_WM_PREFERENCE),
        )

    @classmethod
    def out_of_range(cls) -> Appearance:
        """Looks outside the documented ranges, for shifted test cohorts only.

        Non-enhancing cores brighter on FLAIR than any training case, margins wider,
        oedema that prefers cortex to white matter, and cysts, calcification and
        satellites far more often and larger. Never train or tune on these.
        """
        return cls(
            multifocal=0.4,
            satellite_share=(0.35, 0.5),
            infiltrative=0.8,
            margin_mm=(3.0, 5.0),
            cyst=0.5,
            cyst_share=(0.35, 0.6),
            calcification=0.4,
            calcification_share=(0.06, 0.12),
            net_flair=(1.2, 1.6),
            oedema_wm_preference=(-0.6, -0.1),
        )


@dataclass(frozen=True)
class CaseLook:
    """One case's drawn appearance (recorded in ``SyntheticCase.drawn``)."""

    net_flair: float
    oedema_wm_preference: float
    margin_mm: float
    satellite_share: float
    cyst_share: float
    calcification_share: float
    detail_seed: int  # satellite placement and shape, inclusion placement

    @property
    def infiltrative(self) -> bool:
        return self.margin_mm > SHARP_MARGIN_MM


def _maybe(rng: np.random.Generator, probability: float, span: Range, off: float) -> float:
    """A value drawn from ``span`` with ``probability``, else ``off``; always two draws."""
    hit, value = rng.random() < probability, rng.uniform(span[0], span[1])
    return float(value) if hit else off


def draw_look(rng: np.random.Generator, appearance: Appearance) -> CaseLook:
    """Draw one case's look; the number of draws does not depend on the ranges."""
    net_flair = float(rng.uniform(*appearance.net_flair))
    preference = float(rng.uniform(*appearance.oedema_wm_preference))
    margin = _maybe(rng, appearance.infiltrative, appearance.margin_mm, SHARP_MARGIN_MM)
    satellite = _maybe(rng, appearance.multifocal, appearance.satellite_share, 0.0)
    cyst = _maybe(rng, appearance.cyst, appearance.cyst_share, 0.0)
    calcification = _maybe(rng, appearance.calcification, appearance.calcification_share, 0.0)
    return CaseLook(
        net_flair=net_flair,
        oedema_wm_preference=preference,
        margin_mm=margin,
        satellite_share=satellite,
        cyst_share=cyst,
        calcification_share=calcification,
        detail_seed=int(rng.integers(2**31)),
    )


def _blob(rng: np.random.Generator, allowed: Bool3, count: int, spacing: float) -> Bool3:
    """``count`` allowed voxels nearest a random deep voxel: a roundish inclusion."""
    out = np.zeros(allowed.shape, dtype=bool)
    if count <= 0 or not allowed.any():
        return out
    # Work in the allowed voxels' box (one voxel wider, so depths are those of the grid).
    hit = np.nonzero(allowed)
    box = tuple(
        slice(max(int(h.min()) - 1, 0), min(int(h.max()) + 2, n))
        for h, n in zip(hit, allowed.shape, strict=True)
    )
    inside = allowed[box]
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    deep = np.flatnonzero(depth >= np.percentile(depth[inside], 60))
    centre = np.unravel_index(int(deep[rng.integers(deep.size)]), inside.shape)
    grid = np.indices(inside.shape, dtype=np.float32)
    rel = grid - np.asarray(centre, np.float32)[:, None, None, None]
    cost = np.sqrt((rel**2).sum(axis=0)) * spacing
    cost += rng.uniform(0.0, 0.5 * spacing, inside.shape).astype(np.float32)
    out[box] = lowest_cost(cost, inside, count)
    return out


def carve_inclusions(masks: TumourMasks, look: CaseLook, *, spacing: float) -> tuple[Bool3, Bool3]:
    """Cyst and calcification masks inside the non-enhancing/necrotic core.

    Both keep label 2 (BraTS labels cysts and calcification as tumour core); only the
    images change. Calcification comes as one to three small foci.
    """
    rng = np.random.default_rng([look.detail_seed, 1])
    core = masks.non_enhancing | masks.necrosis
    n_core = int(core.sum())
    cyst = _blob(rng, core, round(look.cyst_share * n_core), spacing)
    calcified = np.zeros(core.shape, dtype=bool)
    n_calc = round(look.calcification_share * n_core)
    foci = int(rng.integers(1, 4))
    for k in range(foci):
        share = n_calc // foci + (1 if k < n_calc % foci else 0)
        calcified |= _blob(rng, core & ~cyst & ~calcified, share, spacing)
    return cyst, calcified


def merge_masks(main: TumourMasks, satellite: TumourMasks) -> TumourMasks:
    """The union of two lesions; where they touch, the main lesion's labels win."""
    taken = main.oedema | main.non_enhancing | main.necrosis | main.enhancing
    free: NDArray[np.bool_] = ~taken
    return TumourMasks(
        necrosis=main.necrosis | (satellite.necrosis & free),
        enhancing=main.enhancing | (satellite.enhancing & free),
        non_enhancing=main.non_enhancing | (satellite.non_enhancing & free),
        oedema=main.oedema | (satellite.oedema & free),
    )
