"""MR contrasts from tissue fractions: partial-volume mixing, texture, bias, noise, sites.

Each voxel's signal is the fraction-weighted mean of per-tissue intensities (relative
to white matter on T1 = 0.85), times a smooth multiplicative texture, through the
site's contrast curve, blurred along ``z`` for thick slices (and across ``x, y`` for
coarse in-plane resolution), times a smooth bias field, plus Rician noise, then scaled
to the site's arbitrary scanner units and skull-stripped (zero outside the brain) as in
BraTS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.data.synth.anatomy import F32, smooth_field
from medai.data.synth.appearance import SHARP_MARGIN_MM, CaseLook

__all__ = [
    "CONTRASTS",
    "TISSUE_CLASSES",
    "TISSUE_INTENSITY",
    "Site",
    "SiteRanges",
    "class_means",
    "make_sites",
    "render",
]

#: Output contrasts, in the order of :data:`TISSUE_INTENSITY` rows.
CONTRASTS = ("t1", "t1ce", "t2", "flair")
#: Tissue classes, in the order of :data:`TISSUE_INTENSITY` columns.
TISSUE_CLASSES = ("csf", "gm", "wm", "oedema", "non_enhancing", "necrosis", "enhancing")

#: Mean intensity per contrast (rows) and tissue (columns), before site changes.
#: Radiological expectations: FLAIR oedema bright, CSF dark; T2 CSF and oedema bright;
#: T1ce enhancing rim bright, necrosis dark; T1 tumour hypo-intense. Non-enhancing
#: tumour differs from oedema only by a combination (darker T1, brighter T2, a bit
#: darker FLAIR), and oedema overlaps CSF on T2 and grey matter on T1.
TISSUE_INTENSITY: NDArray[np.float32] = np.array(
    [
        # csf   gm    wm    oed   net   ncr   et
        [0.30, 0.60, 0.85, 0.56, 0.44, 0.32, 0.60],  # T1
        [0.32, 0.63, 0.86, 0.58, 0.47, 0.30, 1.35],  # T1ce
        [1.00, 0.62, 0.45, 0.86, 0.96, 1.02, 0.75],  # T2
        [0.14, 0.62, 0.50, 1.00, 0.86, 0.50, 0.82],  # FLAIR
    ],
    dtype=np.float32,
)

#: Texture amplitude (relative std of a smooth multiplicative field) per tissue.
TEXTURE = np.array([0.04, 0.06, 0.05, 0.10, 0.12, 0.15, 0.12], dtype=np.float32)


#: Mean intensity (rows: contrasts) of a fluid-filled cyst and of calcification.
#: A cyst is CSF-like but proteinaceous (FLAIR not fully suppressed); calcified foci
#: are dark on every contrast, darkest on T2.
CYST_INTENSITY = np.array([0.26, 0.27, 1.05, 0.30], dtype=np.float32)
CALCIFICATION_INTENSITY = np.array([0.40, 0.42, 0.22, 0.26], dtype=np.float32)
#: Texture amplitude of the cyst and calcification classes.
INCLUSION_TEXTURE = np.array([0.03, 0.15], dtype=np.float32)
#: At 3 T the grey/white matter contrast on T1 shrinks to this share of 1.5 T's.
T1_CONTRAST_AT_3T = 0.75
#: At 3 T the bias field's amplitude grows by this factor (stronger B1 inhomogeneity).
BIAS_AT_3T = 1.3

Range = tuple[float, float]


@dataclass(frozen=True)
class Site:
    """One scanner: contrast weights, noise, bias, resolution, field strength, scale.

    ``gamma`` is the scanner's contrast curve per contrast (signal ** gamma, a
    monotone, vendor-like change of contrast); 1 leaves the tissue means as they are.
    """

    name: str
    contrast_gain: NDArray[np.float32]  # (4, 7) multiplicative change of TISSUE_INTENSITY
    noise: float  # Rician sigma relative to white matter on T1
    bias: float  # amplitude of the log bias field
    slice_mm: float  # acquired slice thickness (blur along z)
    scale: float  # arbitrary scanner units
    field_t: float = 1.5  # field strength, tesla
    gamma: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # in CONTRASTS order
    inplane_mm: float = 1.0  # acquired in-plane resolution (blur across x and y)

    @property
    def intensity(self) -> NDArray[np.float32]:
        mean = (TISSUE_INTENSITY * self.contrast_gain).astype(np.float32)
        if self.field_t >= 3.0:  # T1 lengthens: less grey/white contrast on T1 and T1ce
            gm, wm = TISSUE_CLASSES.index("gm"), TISSUE_CLASSES.index("wm")
            for row in (0, 1):
                mean[row, gm] = mean[row, wm] - T1_CONTRAST_AT_3T * (mean[row, wm] - mean[row, gm])
        return mean


@dataclass(frozen=True)
class SiteRanges:
    """The ranges scanner sites are drawn from; the defaults are the documented cohort.

    Attributes:
        tissue_gain_sd: Log-normal SD of each tissue's gain per contrast.
        contrast_gain_sd: Log-normal SD of each contrast's overall gain.
        noise: Rician noise range, relative to white matter on T1.
        bias: Range of the log bias-field amplitude.
        slice_mm: Acquired slice thicknesses to choose from.
        scale: Range of the arbitrary scanner units.
        field_t: Field strengths to choose from (tesla).
        gamma: Range of each contrast's curve exponent (vendor-like contrast).
        inplane_mm: Acquired in-plane resolutions to choose from.
    """

    tissue_gain_sd: float = 0.07
    contrast_gain_sd: float = 0.1
    noise: Range = (0.015, 0.06)
    bias: Range = (0.05, 0.35)
    slice_mm: tuple[float, ...] = (1.0, 1.5, 3.0, 5.0, 6.0)
    scale: Range = (300.0, 1500.0)
    field_t: tuple[float, ...] = (1.5, 3.0)
    gamma: Range = (0.85, 1.2)
    inplane_mm: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        checks = {
            "noise": (self.noise, 0.0, 1.0),
            "bias": (self.bias, 0.0, 2.0),
            "scale": (self.scale, 1.0, 30000.0),
            "gamma": (self.gamma, 0.2, 5.0),
        }
        for name, (value, low, high) in checks.items():
            if len(value) != 2 or not low <= value[0] <= value[1] <= high:
                raise ValueError(
                    f"{name} must be (low, high) with {low} <= low <= high <= {high}; got {value}"
                )
        if min(self.tissue_gain_sd, self.contrast_gain_sd) < 0:
            raise ValueError("tissue_gain_sd and contrast_gain_sd must be >= 0")
        for name in ("slice_mm", "field_t", "inplane_mm"):
            value = getattr(self, name)
            if not value or min(value) <= 0:
                raise ValueError(f"{name} must list positive values; got {value}")

    @classmethod
    def narrow(cls) -> SiteRanges:
        """The first generator's sites (1.5 T, linear contrast, slices up to 5 mm)."""
        return cls(
            noise=(0.02, 0.05),
            bias=(0.08, 0.3),
            slice_mm=(1.0, 1.5, 3.0, 5.0),
            field_t=(1.5,),
            gamma=(1.0, 1.0),
        )

    @classmethod
    def out_of_range(cls) -> SiteRanges:
        """Scanners outside the documented ranges, for shifted test cohorts only.

        Twice the tissue and contrast gain spread, more noise and bias, 7 mm slices,
        coarse in-plane resolution, contrast curves steeper than any training site.
        """
        return cls(
            tissue_gain_sd=0.14,
            contrast_gain_sd=0.2,
            noise=(0.06, 0.09),
            bias=(0.35, 0.55),
            slice_mm=(7.0,),
            scale=(2000.0, 4000.0),
            field_t=(3.0,),
            gamma=(1.25, 1.5),
            inplane_mm=(3.0,),
        )


def make_sites(count: int = 4, *, seed: int = 0, ranges: SiteRanges | None = None) -> list[Site]:
    """``count`` sites "site-A", "site-B", ... whose properties are drawn from ``seed``.

    The first generator's properties come from stream ``(seed, 7919, i)``; field
    strength, contrast curve and in-plane resolution from ``(seed, 7920, i)``, so
    :meth:`SiteRanges.narrow` gives that generator's sites exactly.

    Raises:
        ValueError: If ``count`` is not in 1..26.
    """
    if not 1 <= count <= 26:
        raise ValueError(f"sites must be between 1 and 26; got {count}")
    r = ranges or SiteRanges()
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7919, i])
        gain = np.exp(rng.normal(0.0, r.tissue_gain_sd, TISSUE_INTENSITY.shape)).astype(np.float32)
        gain *= np.exp(rng.normal(0.0, r.contrast_gain_sd, (4, 1))).astype(np.float32)
        noise = float(rng.uniform(*r.noise))
        bias = float(rng.uniform(*r.bias))
        slice_mm = float(rng.choice(r.slice_mm))
        scale = float(rng.uniform(*r.scale))
        more = np.random.default_rng([seed, 7920, i])
        field_t = float(more.choice(r.field_t))
        g = more.uniform(r.gamma[0], r.gamma[1], 4)
        inplane = float(more.choice(r.inplane_mm))
        out.append(
            Site(
                name=f"site-{chr(ord('A') + i)}",
                contrast_gain=gain,
                noise=noise,
                bias=bias,
                slice_mm=slice_mm,
                scale=scale,
                field_t=field_t,
                gamma=(float(g[0]), float(g[1]), float(g[2]), float(g[3])),
                inplane_mm=inplane,
            )
        )
    return out


#: Added T1ce signal (relative to WM on T1) of fully enhancing vessel voxels.
VESSEL_ENHANCEMENT = 0.9


def _vessels(rng: np.random.Generator, csf: F32, spacing: float) -> F32:
    """Thin curved sheets in CSF that enhance on T1ce but are not tumour.

    Cortical veins, dural sinuses and the choroid plexus enhance after gadolinium; a
    T1ce threshold alone therefore also picks them up. About one CSF voxel in ten.
    """
    field = smooth_field(rng, csf.shape, nodes=max(6, int(100 / spacing)))[0]
    ridge = np.clip(1.0 - np.abs(field) / 0.12, 0.0, 1.0)
    return (ridge * np.clip((csf - 0.3) / 0.5, 0.0, 1.0)).astype(np.float32)


def _partial_volume(tissue: F32, tumour: F32, spacing: float, margin_mm: float) -> F32:
    """Stack the class fractions: healthy tissue scaled, tumour masks softened.

    Tumour edges are softened by 0.5 mm, the oedema and non-enhancing tumour of an
    infiltrative tumour by ``margin_mm`` (its outline fades into the brain).
    """
    soft = np.zeros(tumour.shape, dtype=np.float32)
    hit = np.nonzero(tumour.any(axis=0))
    if hit[0].size:  # filter inside the tumour's box, widened by the kernel's reach
        reach = int(3.0 * max(margin_mm, SHARP_MARGIN_MM) / spacing + 0.5) + 1
        spans = [
            slice(max(int(h.min()) - reach, 0), min(int(h.max()) + 1 + reach, n))
            for h, n in zip(hit, tumour.shape[1:], strict=True)
        ]
        box = (slice(None), *spans)
        for k, mask in enumerate(tumour[box]):
            width = margin_mm if k in (0, 1) else SHARP_MARGIN_MM
            soft[box][k] = ndimage.gaussian_filter(mask, sigma=width / spacing, truncate=3.0)
    soft = np.clip(soft, 0.0, 1.0)
    brain = np.clip(tissue.sum(axis=0), 1e-6, None)
    # Tumour replaces tissue but stays within the brain's fraction. With wider margins
    # the sharp classes keep their place and the blurred ones fill only the room left
    # (else a blurred oedema would stack on top of the enhancing rim).
    sharp = soft[2:] if margin_mm > SHARP_MARGIN_MM else soft
    load = np.clip(sharp.sum(axis=0), 0.0, 1.0)
    sharp *= np.minimum(1.0, brain / np.maximum(load, 1e-6))[None]
    if margin_mm > SHARP_MARGIN_MM:
        room = np.clip(brain - sharp.sum(axis=0), 0.0, None)
        blurred = soft[:2]
        blurred *= np.minimum(1.0, room / np.maximum(blurred.sum(axis=0), 1e-6))[None]
    healthy = tissue * np.clip(1.0 - soft.sum(axis=0) / brain, 0.0, 1.0)[None]
    return np.concatenate([healthy, soft]).astype(np.float32)


def class_means(site: Site, look: CaseLook | None, *, inclusions: bool) -> F32:
    """Mean intensity per contrast (rows) of every rendered class (columns).

    The seven :data:`TISSUE_CLASSES` as the site shows them, the non-enhancing
    tumour's FLAIR set to ``look.net_flair`` times oedema's (before the site's
    per-tissue gains), then cyst and calcification when ``inclusions``.
    """
    mean = site.intensity
    if look is not None:
        oedema, net = TISSUE_CLASSES.index("oedema"), TISSUE_CLASSES.index("non_enhancing")
        ratio = TISSUE_INTENSITY[3, net] / TISSUE_INTENSITY[3, oedema]
        mean[3, net] *= np.float32(look.net_flair) / ratio
    if not inclusions:
        return mean
    cyst = CYST_INTENSITY * site.contrast_gain[:, 0]
    calcification = CALCIFICATION_INTENSITY * site.contrast_gain.mean(axis=1)
    return np.concatenate([mean, cyst[:, None], calcification[:, None]], axis=1)


def _blur(signal: F32, site: Site, spacing: float) -> F32:
    """Thick slices blur along z, coarse in-plane resolution across x and y."""
    sigma_z = max(site.slice_mm - spacing, 0.0) / 2.355 / spacing
    if sigma_z > 0.05:
        signal = ndimage.gaussian_filter1d(signal, sigma_z, axis=2)
    sigma_xy = max(site.inplane_mm - spacing, 0.0) / 2.355 / spacing
    if sigma_xy > 0.05:
        signal = ndimage.gaussian_filter(signal, (sigma_xy, sigma_xy, 0.0))
    return signal


def render(
    tissue: F32,
    tumour: F32,
    *,
    site: Site,
    spacing: float,
    rng: np.random.Generator,
    look: CaseLook | None = None,
) -> F32:
    """Four contrasts ``(4, x, y, z)`` in :data:`CONTRASTS` order.

    Args:
        tissue: ``(3, x, y, z)`` CSF, GM, WM fractions.
        tumour: ``(4, x, y, z)`` oedema, non-enhancing, necrosis, enhancing masks (0/1),
            or ``(6, x, y, z)`` with cyst and calcification masks after them.
        site: The scanner profile.
        spacing: Isotropic voxel size in mm.
        rng: Source of the texture, bias and noise.
        look: The case's appearance (FLAIR of the non-enhancing tumour, margins);
            ``None`` for the first generator's.
    """
    if tumour.shape[0] not in (4, 6):
        raise ValueError(f"tumour must stack 4 or 6 masks; got {tumour.shape[0]}")
    inclusions = tumour.shape[0] == 6
    margin = look.margin_mm if look is not None else SHARP_MARGIN_MM
    classes = _partial_volume(tissue, tumour, spacing, margin)
    shape = classes.shape[1:]
    vessels = _vessels(rng, classes[0], spacing)
    texture = smooth_field(rng, shape, nodes=max(4, int(60 / spacing)), channels=2)
    mean = class_means(site, look, inclusions=inclusions)
    amplitude = np.concatenate([TEXTURE, INCLUSION_TEXTURE]) if inclusions else TEXTURE
    brain = np.clip(classes.sum(axis=0), 0.0, 1.0)
    out = np.empty((4, *shape), dtype=np.float32)
    bias_amplitude = site.bias * (BIAS_AT_3T if site.field_t >= 3.0 else 1.0)
    for c in range(4):
        tex = texture[c % 2] if c < 2 else texture[(c + 1) % 2]
        signal = np.tensordot(mean[c], classes, axes=1)
        signal *= 1.0 + 0.5 * np.tensordot(amplitude, classes, axes=1) * tex
        if CONTRASTS[c] == "t1ce":
            signal += VESSEL_ENHANCEMENT * vessels
        if site.gamma[c] != 1.0:
            signal = np.power(np.clip(signal, 0.0, None), site.gamma[c])
        signal = _blur(signal, site, spacing)
        bias = np.exp(bias_amplitude * smooth_field(rng, shape, nodes=3)[0])
        signal *= bias
        n1 = rng.standard_normal(shape, dtype=np.float32)
        n2 = rng.standard_normal(shape, dtype=np.float32)
        noise = site.noise * 0.85
        signal = np.sqrt((signal + noise * n1) ** 2 + (noise * n2) ** 2)
        out[c] = signal * site.scale * (brain > 0.3)
    return out
