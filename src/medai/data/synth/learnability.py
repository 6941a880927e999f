"""Does a segmentation task need learning? A tuned per-channel threshold baseline.

For each region the baseline picks, on the training cases, the single channel, the
direction (bright or dark) and the threshold that maximise mean Dice, with every case's
brain normalised by its median and inter-quartile range; it is then applied unchanged to
the test cases. A task a threshold solves needs no network; medai's synthetic cohort is
built so that it does not (tumour core overlaps healthy tissue on every contrast).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from medai.image import LabelMap, ScalarImage

__all__ = ["ThresholdRule", "normalise_brain", "threshold_baseline"]

_EDGES = np.linspace(-6.0, 12.0, 721)

Case = tuple[NDArray[np.float32], NDArray[np.integer], NDArray[np.bool_]]


@dataclass(frozen=True)
class ThresholdRule:
    """The tuned rule for one region and how it scored."""

    region: str
    channel: int
    sign: int  # +1: voxel >= threshold; -1: voxel <= threshold
    threshold: float
    train_dice: float
    test_dice: float


def normalise_brain(image: ScalarImage, label: LabelMap) -> Case:
    """Channels (C, x, y, z) scaled by the brain's median and IQR, labels, brain mask."""
    data = image.array.astype(np.float32)
    brain = np.any(data != 0, axis=0)
    q1, med, q3 = np.percentile(data[:, brain], [25, 50, 75], axis=1)
    scale = np.where(q3 > q1, q3 - q1, 1.0)
    out = (data - med[:, None, None, None]) / scale[:, None, None, None]
    out[:, ~brain] = 0.0
    return out, label.numpy3d(), brain


def _dice_curve(
    cases: Sequence[Case], channel: int, labels: Sequence[int], sign: int
) -> NDArray[np.float64]:
    """Mean Dice over cases of ``sign * x >= edge`` for every histogram edge."""
    curves = []
    for image, label, brain in cases:
        x = sign * image[channel][brain]
        truth = np.isin(label[brain], labels)
        predicted = np.histogram(x, _EDGES)[0][::-1].cumsum()[::-1]
        hits = np.histogram(x[truth], _EDGES)[0][::-1].cumsum()[::-1]
        denom = predicted + truth.sum()
        curves.append(np.where(denom > 0, 2 * hits / np.maximum(denom, 1), 1.0))
    return np.asarray(np.mean(curves, axis=0), dtype=np.float64)


def threshold_baseline(
    train: Sequence[Case], test: Sequence[Case], regions: Mapping[str, Sequence[int]]
) -> dict[str, ThresholdRule]:
    """Tune one threshold rule per region on ``train``; score it on ``test``.

    Args:
        train: Cases from :func:`normalise_brain` to tune on.
        test: Cases to score the tuned rules on.
        regions: Region name → label values, e.g. ``{"TC": [2, 3]}``.
    """
    if not train or not test:
        raise ValueError("threshold_baseline needs at least one training and one test case")
    channels = train[0][0].shape[0]
    rules = {}
    for name, labels in regions.items():
        best = (-1.0, 0, 1, 0)
        for channel in range(channels):
            for sign in (1, -1):
                curve = _dice_curve(train, channel, labels, sign)
                i = int(np.argmax(curve))
                if curve[i] > best[0]:
                    best = (float(curve[i]), channel, sign, i)
        score, channel, sign, i = best
        test_dice = float(_dice_curve(test, channel, labels, sign)[i])
        rules[name] = ThresholdRule(name, channel, sign, float(sign * _EDGES[i]), score, test_dice)
    return rules
