"""Sliding-window inference in numpy, window for window what MONAI's
``sliding_window_inference(mode="gaussian")`` computes, plus flip TTA.

The window grid, the zero padding of images smaller than the window, the Gaussian
importance map (σ = 0.125 × window, floored at its minimum or 1e-3) and the weighted
average follow ``monai.inferers.utils`` and ``monai.data.utils.compute_importance_map``,
so the same network gives the same logits to float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit

__all__ = [
    "Network",
    "flip_combinations",
    "gaussian_importance_map",
    "sliding_window_logits",
    "sliding_window_probabilities",
    "window_starts",
]

Network = Callable[[NDArray[np.float32]], NDArray[np.float32]]
"""``(B, C, *window)`` float32 → ``(B, R, *window)`` float32 logits."""


def gaussian_importance_map(
    window: Sequence[int], *, sigma_scale: float = 0.125
) -> NDArray[np.float32]:
    """Separable Gaussian centred on the window, peak 1, σ = ``sigma_scale`` × size."""
    weights: NDArray[Any] = np.ones((), dtype=np.float32)
    for size in window:
        x = np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2.0)
        sigma = np.float32(size * sigma_scale)
        g = np.exp(x**2 / (np.float32(-2.0) * sigma**2)).astype(np.float32)
        weights = np.multiply.outer(weights, g)
    floor = max(float(weights.min()), 1e-3)
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis of length ``size`` (≥ ``window``).

    The step is ``int(window × (1 − overlap))`` (at least 1; one window when it fits
    exactly); the last window is moved back to end at the border.
    """
    if window > size:
        raise ValueError(f"window {window} is larger than the (padded) axis {size}")
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next((d + 1 for d in range(math.ceil(size / step)) if d * step + window >= size), 1)
    return [i * step - max(i * step + window - size, 0) for i in range(count)]


def sliding_window_logits(
    network: Network,
    image: NDArray[Any],
    *,
    window: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 2,
    sigma_scale: float = 0.125,
) -> NDArray[np.float32]:
    """Gaussian-blended logits ``(R, *spatial)`` of ``network`` over a ``(C, *spatial)`` image.

    Args:
        network: Maps a batch of windows to logits of the same spatial size.
        image: Channels-first array; axes shorter than the window are zero-padded
            (half before, half after) and cropped back afterwards.
        window: Window size per spatial axis.
        overlap: Fraction of a window shared with its neighbour, in [0, 1).
        batch_size: Windows per network call.
        sigma_scale: Gaussian σ as a fraction of the window.

    Raises:
        ValueError: If the window does not match the image's spatial dimensions or
            ``overlap`` is outside [0, 1).
    """
    spatial = image.shape[1:]
    if len(window) != len(spatial):
        raise ValueError(f"window {tuple(window)} does not fit an image of shape {image.shape}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1); got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    pads = [
        (max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2)
        for w, s in zip(window, spatial, strict=True)
    ]
    padded = np.pad(np.asarray(image, dtype=np.float32), [(0, 0), *pads])
    size = padded.shape[1:]
    starts = itertools.product(
        *(window_starts(n, w, overlap) for n, w in zip(size, window, strict=True))
    )
    boxes = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True)) for start in starts]
    weights = gaussian_importance_map(window, sigma_scale=sigma_scale)
    total: NDArray[np.float32] | None = None
    count = np.zeros(size, dtype=np.float32)
    for first in range(0, len(boxes), batch_size):
        group = boxes[first : first + batch_size]
        batch = np.stack([padded[(slice(None), *box)] for box in group])
        logits = np.asarray(network(np.ascontiguousarray(batch)), dtype=np.float32)
        if logits.shape[0] != len(group) or logits.shape[2:] != tuple(window):
            raise ValueError(f"network returned {logits.shape} for windows of {batch.shape}")
        if total is None:
            total = np.zeros((logits.shape[1], *size), dtype=np.float32)
        for out, box in zip(logits, group, strict=True):
            total[(slice(None), *box)] += out * weights
            count[box] += weights
    if total is None:  # unreachable: every image has at least one window
        raise ValueError(f"no window of {tuple(window)} fits an image of shape {image.shape}")
    total /= count
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial, strict=True))
    return np.ascontiguousarray(total[(slice(None), *crop)])


def flip_combinations(ndim: int = 3) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes ``0 … ndim−1`` (no flip first): 8 for 3D."""
    return [c for n in range(ndim + 1) for c in itertools.combinations(range(ndim), n)]


def sliding_window_probabilities(
    network: Network,
    image: NDArray[Any],
    *,
    window: Sequence[int],
    overlap: float = 0.5,
    tta_flips: bool = False,
    batch_size: int = 2,
    members: bool = False,
) -> NDArray[np.float32]:
    """Sigmoid region probabilities ``(R, *spatial)``, averaged over flip TTA if asked.

    Each flip of the image is blended into logits, passed through the sigmoid and
    flipped back, as :func:`medai.inference.predict_probabilities` does with MONAI.
    With ``members=True`` the flips are returned unaveraged, ``(M, R, *spatial)``.
    """
    flips = flip_combinations(image.ndim - 1) if tta_flips else [()]
    total = np.zeros((), dtype=np.float32)
    kept: list[NDArray[np.float32]] = []
    for axes in flips:
        channel_axes = tuple(a + 1 for a in axes)
        inp = np.flip(image, channel_axes) if axes else image
        logits = sliding_window_logits(
            network, inp, window=window, overlap=overlap, batch_size=batch_size
        )
        prob = expit(logits).astype(np.float32)
        prob = np.flip(prob, channel_axes) if axes else prob
        if members:
            kept.append(prob)
        else:
            total = total + prob
    if members:
        return np.ascontiguousarray(np.stack(kept), dtype=np.float32)
    return np.ascontiguousarray(total / np.float32(len(flips)), dtype=np.float32)
