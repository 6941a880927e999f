"""Augmentation for shift: what changes between scanners, sites and protocols.

Each training sample first draws a :class:`ShiftDraw` (which steps fire and their
parameters, from a seeded generator) and then :func:`apply_shift` applies it, with no
randomness left: a sample replays from its seed, and a test can state what a draw
must do. The steps, in order:

1. per-label intensity redraw (domain randomisation, as in SynthSeg): every class —
   each combination of regions, and the unlabelled brain split into intensity
   classes — gets a new mean and contrast per channel;
2. gamma (a contrast curve) and a histogram warp (a monotone piecewise-linear map);
3. a smooth multiplicative bias field;
4. per channel: thick slices (down-sampled along one axis, re-up-sampled), Gibbs
   ringing (MONAI ``GibbsNoise``);
5. blur (MONAI ``GaussianSmooth``), then Rician noise;
6. channel dropout: whole channels set to zero, the value a declared missing contrast
   has after preprocessing (:mod:`medai.preprocess.contrasts`).

Images are z-scored, so multiplicative steps act on the image shifted to start at its
brain minimum. Only brain voxels (non-zero in any channel) change; zero background
stays zero and label maps are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import GaussianSmooth, GibbsNoise, Resize
from numpy.typing import NDArray

from medai.preprocess.plan import ShiftPlan

__all__ = [
    "SHIFT_STREAM",
    "ShiftDraw",
    "apply_shift",
    "class_count",
    "draw_shift",
    "intensity_classes",
]

F32 = NDArray[np.float32]
WARP_POINTS = 5
#: Second element of a sample's shift-augmentation stream ``(sample seed, SHIFT_STREAM)``.
SHIFT_STREAM = 7727


@dataclass(frozen=True)
class ShiftDraw:
    """One sample's drawn augmentation; ``None`` (or an empty tuple) means not applied.

    Attributes:
        redraw: ``(K, C, 2)`` per class and channel: offset (z units) and contrast factor.
        gamma: Per channel curve exponent.
        warp: ``(C, WARP_POINTS)`` increasing targets in [0, 1] of evenly spaced points.
        bias: ``(C, 3, 3)`` quadratic log-field coefficients per axis and power.
        lowres: Per channel ``(axis, factor)`` or ``None``.
        ringing: Per channel Gibbs alpha (0: none).
        blur: Gaussian sigma in voxels.
        noise: Rician sigma (share of the channel's brain range) and the noise seed.
        dropped: Channels set to zero.
    """

    redraw: F32 | None = None
    gamma: tuple[float, ...] | None = None
    warp: F32 | None = None
    bias: F32 | None = None
    lowres: tuple[tuple[int, float] | None, ...] = ()
    ringing: tuple[float, ...] = ()
    blur: float | None = None
    noise: tuple[float, int] | None = None
    dropped: tuple[int, ...] = ()


def draw_shift(
    rng: np.random.Generator, plan: ShiftPlan, *, channels: int, classes: int
) -> ShiftDraw:
    """Draw one sample's augmentation from ``plan`` (nothing when it is disabled)."""
    if not plan.enabled:
        return ShiftDraw()
    s = plan.strength

    def fires(p: float) -> bool:
        return bool(rng.random() < p)

    redraw = None
    if fires(plan.p_redraw):
        offset = rng.normal(0.0, 0.5 * s, (classes, channels))
        factor = np.exp(rng.normal(0.0, 0.25 * s, (classes, channels)))
        redraw = np.stack([offset, factor], axis=-1).astype(np.float32)
    gamma = None
    if fires(plan.p_gamma):
        gamma = tuple(float(g) for g in np.exp(rng.normal(0.0, 0.3 * s, channels)))
    warp = None
    if fires(plan.p_warp):
        base = np.linspace(0.0, 1.0, WARP_POINTS)
        jitter = rng.uniform(-0.08 * s, 0.08 * s, (channels, WARP_POINTS))
        jitter[:, [0, -1]] = 0.0
        warp = np.sort(np.clip(base + jitter, 0.0, 1.0), axis=1).astype(np.float32)
    bias = None
    if fires(plan.p_bias):
        bias = rng.normal(0.0, 0.3 * s, (channels, 3, 3)).astype(np.float32)
    lowres = tuple(
        (int(rng.integers(3)), float(rng.uniform(1.5, 1.0 + 3.0 * s)))
        if fires(plan.p_lowres)
        else None
        for _ in range(channels)
    )
    ringing = tuple(
        float(rng.uniform(0.2, min(0.2 + 0.5 * s, 0.9))) if fires(plan.p_ringing) else 0.0
        for _ in range(channels)
    )
    blur = float(rng.uniform(0.4, 0.4 + 0.8 * s)) if fires(plan.p_blur) else None
    noise = None
    if fires(plan.p_noise):
        noise = (float(rng.uniform(0.01, 0.01 + 0.06 * s)), int(rng.integers(2**31)))
    dropped: tuple[int, ...] = ()
    if channels > 1 and fires(plan.channel_dropout):
        count = int(rng.integers(1, channels))
        dropped = tuple(sorted(int(c) for c in rng.choice(channels, count, replace=False)))
    return ShiftDraw(redraw, gamma, warp, bias, lowres, ringing, blur, noise, dropped)


def intensity_classes(image: F32, regions: NDArray[np.uint8], *, healthy: int) -> NDArray[np.int64]:
    """Class per voxel for the redraw: -1 outside the brain, ``0..healthy-1`` for
    unlabelled brain split at quantiles of the channel mean, then ``healthy + code - 1``
    for each combination ``code`` (a bit per region) of the region masks."""
    brain = np.any(image != 0, axis=0)
    code = np.zeros(brain.shape, dtype=np.int64)
    for r, mask in enumerate(regions):
        code |= (mask > 0).astype(np.int64) << r
    out = np.full(brain.shape, -1, dtype=np.int64)
    plain = brain & (code == 0)
    if plain.any():
        mean = image.mean(axis=0)
        edges = np.quantile(mean[plain], np.linspace(0, 1, healthy + 1)[1:-1])
        out[plain] = np.searchsorted(edges, mean[plain])
    out[code > 0] = healthy + code[code > 0] - 1
    return out


def class_count(regions: int, healthy: int) -> int:
    """Number of redraw classes for ``regions`` region masks."""
    return healthy + 2**regions - 1


def _redraw(image: F32, classes: NDArray[np.int64], redraw: F32) -> None:
    inside = classes >= 0
    k = classes[inside]
    n = np.bincount(k, minlength=redraw.shape[0]).astype(np.float64)
    for c, channel in enumerate(image):
        values = channel[inside]
        mean = np.bincount(k, weights=values, minlength=redraw.shape[0]) / np.maximum(n, 1)
        offset, factor = redraw[:, c, 0], redraw[:, c, 1]
        channel[inside] = (mean[k] + factor[k] * (values - mean[k]) + offset[k]).astype(np.float32)


def _positive(channel: F32, brain: NDArray[np.bool_]) -> tuple[float, float]:
    values = channel[brain]
    low, high = float(values.min()), float(values.max())
    return low, max(high - low, 1e-6)


def _bias_field(shape: tuple[int, ...], coeff: F32) -> F32:
    log = np.zeros(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        t = np.linspace(-1.0, 1.0, n, dtype=np.float32)
        poly = coeff[axis, 0] * t + coeff[axis, 1] * (t**2 - 1 / 3) + coeff[axis, 2] * t**3
        view = [1, 1, 1]
        view[axis] = n
        log = log + poly.reshape(view)
    return np.exp(log).astype(np.float32)


def _lowres(channel: F32, axis: int, factor: float) -> F32:
    shape = channel.shape
    small = list(shape)
    small[axis] = max(2, round(shape[axis] / factor))
    down = Resize(tuple(small), mode="area")(torch.as_tensor(channel[None]))
    up = Resize(tuple(shape), mode="trilinear", align_corners=True)(down)
    return np.asarray(up, dtype=np.float32)[0]


def _per_channel(image: F32, brain: NDArray[np.bool_], draw: ShiftDraw) -> None:
    """Gamma, warp, bias and Rician noise on each channel's brain-minimum-shifted values."""
    noise_rng = np.random.default_rng(draw.noise[1]) if draw.noise else None
    for c, channel in enumerate(image):
        low, span = _positive(channel, brain)
        unit = np.clip((channel - low) / span, 0.0, None)
        if draw.gamma is not None:
            unit = unit ** draw.gamma[c]
        if draw.warp is not None:
            unit = np.interp(unit, np.linspace(0.0, 1.0, WARP_POINTS), draw.warp[c])
        if draw.bias is not None:
            unit = unit * _bias_field(channel.shape, draw.bias[c])
        if noise_rng is not None and draw.noise is not None:
            sigma = draw.noise[0]
            n1 = noise_rng.standard_normal(unit.shape, dtype=np.float32)
            n2 = noise_rng.standard_normal(unit.shape, dtype=np.float32)
            unit = np.sqrt((unit + sigma * n1) ** 2 + (sigma * n2) ** 2)
        channel[brain] = (low + span * unit[brain]).astype(np.float32)


def apply_shift(image: F32, regions: NDArray[np.uint8], draw: ShiftDraw, *, healthy: int) -> F32:
    """Apply ``draw`` to a ``(C, x, y, z)`` patch; returns a new array.

    Args:
        image: The z-scored patch (zero outside the brain).
        regions: ``(R, x, y, z)`` binary region masks of the patch (read, never changed).
        draw: From :func:`draw_shift`.
        healthy: Intensity classes of unlabelled brain (``ShiftPlan.healthy_classes``).
    """
    out = np.array(image, dtype=np.float32, copy=True)
    brain = np.any(out != 0, axis=0)
    if not brain.any():
        return out
    if draw.redraw is not None:
        _redraw(out, intensity_classes(out, regions, healthy=healthy), draw.redraw)
    if draw.gamma is not None or draw.warp is not None or draw.bias is not None:
        _per_channel(out, brain, ShiftDraw(gamma=draw.gamma, warp=draw.warp, bias=draw.bias))
    for c, spec in enumerate(draw.lowres):
        if spec is not None:
            out[c] = _lowres(out[c], spec[0], spec[1])
    for c, alpha in enumerate(draw.ringing):
        if alpha > 0:
            out[c] = np.asarray(GibbsNoise(alpha=alpha)(out[c][None]), dtype=np.float32)[0]
    if draw.blur is not None:
        out = np.asarray(GaussianSmooth(sigma=draw.blur)(out), dtype=np.float32)
    if draw.noise is not None:
        _per_channel(out, brain, ShiftDraw(noise=draw.noise))
    out[:, ~brain] = 0.0
    for c in draw.dropped:
        out[c] = 0.0
    return out
