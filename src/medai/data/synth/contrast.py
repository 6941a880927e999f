"""MR contrasts from tissue fractions: partial-volume mixing, texture, bias, noise, sites.

Each voxel's signal is the fraction-weighted mean of per-tissue intensities (relative
to white matter on T1 = 0.85), times a smooth multiplicative texture, blurred along
``z`` for thick slices, times a smooth bias field, plus Rician noise, then scaled to
the site's arbitrary scanner units and skull-stripped (zero outside the brain) as in
BraTS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medai.data.synth.anatomy import F32, smooth_field

__all__ = [
    "CONTRASTS",
    "TISSUE_CLASSES",
    "TISSUE_INTENSITY",
    "Site",
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


@dataclass(frozen=True)
class Site:
    """One scanner: contrast weights, noise, bias, slice thickness and intensity scale."""

    name: str
    contrast_gain: NDArray[np.float32]  # (4, 7) multiplicative change of TISSUE_INTENSITY
    noise: float  # Rician sigma relative to white matter on T1
    bias: float  # amplitude of the log bias field
    slice_mm: float  # acquired slice thickness (blur along z)
    scale: float  # arbitrary scanner units

    @property
    def intensity(self) -> NDArray[np.float32]:
        return (TISSUE_INTENSITY * self.contrast_gain).astype(np.float32)


def make_sites(count: int = 4, *, seed: int = 0) -> list[Site]:
    """``count`` sites "site-A", "site-B", ... whose properties are drawn from ``seed``.

    Raises:
        ValueError: If ``count`` is not in 1..26.
    """
    if not 1 <= count <= 26:
        raise ValueError(f"sites must be between 1 and 26; got {count}")
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7919, i])
        gain = np.exp(rng.normal(0.0, 0.07, TISSUE_INTENSITY.shape)).astype(np.float32)
        gain *= np.exp(rng.normal(0.0, 0.1, (4, 1))).astype(np.float32)  # per contrast
        out.append(
            Site(
                name=f"site-{chr(ord('A') + i)}",
                contrast_gain=gain,
                noise=float(rng.uniform(0.02, 0.05)),
                bias=float(rng.uniform(0.08, 0.3)),
                slice_mm=float(rng.choice([1.0, 1.5, 3.0, 5.0])),
                scale=float(rng.uniform(300.0, 1500.0)),
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


def _partial_volume(tissue: F32, tumour: F32, spacing: float) -> F32:
    """Stack 7 class fractions: tumour masks softened by 0.5 mm, healthy tissue scaled."""
    soft = ndimage.gaussian_filter(tumour, sigma=(0, *(3 * [0.5 / spacing])), truncate=3.0)
    soft = np.clip(soft, 0.0, 1.0)
    load = np.clip(soft.sum(axis=0), 0.0, 1.0)
    brain = np.clip(tissue.sum(axis=0), 1e-6, None)
    # Tumour replaces tissue but stays within the brain's fraction.
    soft *= np.minimum(1.0, brain / np.maximum(load, 1e-6))[None]
    healthy = tissue * np.clip(1.0 - soft.sum(axis=0) / brain, 0.0, 1.0)[None]
    return np.concatenate([healthy, soft]).astype(np.float32)


def render(
    tissue: F32,
    tumour: F32,
    *,
    site: Site,
    spacing: float,
    rng: np.random.Generator,
) -> F32:
    """Four contrasts ``(4, x, y, z)`` in :data:`CONTRASTS` order.

    Args:
        tissue: ``(3, x, y, z)`` CSF, GM, WM fractions.
        tumour: ``(4, x, y, z)`` oedema, non-enhancing, necrosis, enhancing masks (0/1).
        site: The scanner profile.
        spacing: Isotropic voxel size in mm.
        rng: Source of the texture, bias and noise.
    """
    classes = _partial_volume(tissue, tumour, spacing)
    shape = classes.shape[1:]
    vessels = _vessels(rng, classes[0], spacing)
    texture = smooth_field(rng, shape, nodes=max(4, int(60 / spacing)), channels=2)
    mean = site.intensity
    brain = np.clip(classes.sum(axis=0), 0.0, 1.0)
    out = np.empty((4, *shape), dtype=np.float32)
    sigma_z = max(site.slice_mm - spacing, 0.0) / 2.355 / spacing
    for c in range(4):
        tex = texture[c % 2] if c < 2 else texture[(c + 1) % 2]
        signal = np.tensordot(mean[c], classes, axes=1)
        signal *= 1.0 + 0.5 * np.tensordot(TEXTURE, classes, axes=1) * tex
        if CONTRASTS[c] == "t1ce":
            signal += VESSEL_ENHANCEMENT * vessels
        if sigma_z > 0.05:
            signal = ndimage.gaussian_filter1d(signal, sigma_z, axis=2)
        bias = np.exp(site.bias * smooth_field(rng, shape, nodes=3)[0])
        signal *= bias
        n1 = rng.standard_normal(shape, dtype=np.float32)
        n2 = rng.standard_normal(shape, dtype=np.float32)
        noise = site.noise * 0.85
        signal = np.sqrt((signal + noise * n1) ** 2 + (noise * n2) ** 2)
        out[c] = signal * site.scale * (brain > 0.3)
    return out
