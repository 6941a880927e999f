"""Calibration: reliability diagram bins, expected calibration error, temperature scaling.

Binary probabilities ``(n,)`` are binned on the positive-class probability and compared
with the observed fraction of positives (scikit-learn's ``calibration_curve``).
Multi-class probabilities ``(n, K)`` use the top-label form: confidence = highest class
probability, outcome = whether that class is correct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from medai.evaluation._validate import as_labels, as_scores, check_probabilities

__all__ = [
    "ReliabilityDiagram",
    "apply_temperature",
    "compute_ece",
    "fit_temperature",
    "reliability_diagram",
]


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin calibration data (empty bins have count 0 and NaN means).

    Attributes:
        edges: ``n_bins + 1`` bin edges in [0, 1].
        confidence: Mean predicted probability in each bin.
        observed: Observed frequency (fraction positive / fraction correct) in each bin.
        count: Number of cases in each bin.
    """

    edges: NDArray[np.float64]
    confidence: NDArray[np.float64]
    observed: NDArray[np.float64]
    count: NDArray[np.int64]

    @property
    def ece(self) -> float:
        """Expected calibration error: count-weighted mean of ``|observed − confidence|``."""
        used = self.count > 0
        gaps = np.abs(self.observed[used] - self.confidence[used])
        return float(np.sum(gaps * self.count[used]) / self.count.sum())


def _confidence_outcome(
    y_true: ArrayLike, y_prob: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    truth = as_labels(y_true, name="y_true")
    prob = as_scores(y_prob, name="y_prob", n=truth.size)
    check_probabilities(prob, name="y_prob")
    if prob.ndim == 1:
        if truth.max() > 1:
            raise ValueError("binary y_prob got labels above 1; pass (n, K) probabilities")
        return prob, truth.astype(np.float64)
    if truth.max() >= prob.shape[1]:
        raise ValueError(f"y_true has label {truth.max()} but y_prob has {prob.shape[1]} columns")
    top = np.argmax(prob, axis=1)
    return prob.max(axis=1), (top == truth).astype(np.float64)


def reliability_diagram(
    y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 10
) -> ReliabilityDiagram:
    """Bin cases by predicted probability into ``n_bins`` equal-width bins.

    Bins are closed on the right, ``(e_i, e_{i+1}]``, with 0 in the first bin.

    Args:
        y_true: Labels ``(n,)``.
        y_prob: ``(n,)`` positive-class or ``(n, K)`` class probabilities.
        n_bins: Number of bins (>= 1).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    conf, outcome = _confidence_outcome(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf)
    count = np.bincount(ids, minlength=n_bins).astype(np.int64)
    sum_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    sum_out = np.bincount(ids, weights=outcome, minlength=n_bins)
    mean_conf = np.full(n_bins, np.nan)
    mean_out = np.full(n_bins, np.nan)
    np.divide(sum_conf, count, out=mean_conf, where=count > 0)
    np.divide(sum_out, count, out=mean_out, where=count > 0)
    return ReliabilityDiagram(edges=edges, confidence=mean_conf, observed=mean_out, count=count)


def compute_ece(y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins (see module notes)."""
    return reliability_diagram(y_true, y_prob, n_bins=n_bins).ece


def _logits(logits: ArrayLike, n: int | None = None) -> NDArray[np.float64]:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim not in (1, 2) or (n is not None and z.shape[0] != n):
        raise ValueError(f"logits must be (n,) or (n, K) with n={n}; got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinity")
    return z


def apply_temperature(logits: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """Probabilities from logits divided by ``temperature``.

    ``(n,)`` logits → sigmoid (positive-class probability); ``(n, K)`` → softmax.
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number; got {temperature}")
    z = _logits(logits) / temperature
    return np.asarray(expit(z) if z.ndim == 1 else softmax(z, axis=1), dtype=np.float64)


def _nll(z: NDArray[np.float64], truth: NDArray[np.int64]) -> float:
    if z.ndim == 1:
        # log(1 + e^{-z}) for positives, log(1 + e^{z}) for negatives
        signed = np.where(truth == 1, z, -z)
        return float(np.mean(np.logaddexp(0.0, -signed)))
    return float(-np.mean(log_softmax(z, axis=1)[np.arange(truth.size), truth]))


def fit_temperature(
    logits: ArrayLike, y_true: ArrayLike, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    """Fit one temperature ``T`` that minimises the negative log-likelihood.

    Fit on the validation set, then apply to test with :func:`apply_temperature`;
    ``T > 1`` softens an over-confident model. The search runs on ``log T``.

    Args:
        logits: Validation logits ``(n,)`` (binary) or ``(n, K)``.
        y_true: Validation labels ``(n,)``.
        bounds: Search interval for ``T``.

    Returns:
        The fitted temperature.
    """
    truth = as_labels(y_true, name="y_true")
    z = _logits(logits, truth.size)
    if z.ndim == 1 and truth.max() > 1:
        raise ValueError("binary logits got labels above 1; pass (n, K) logits for K classes")
    if z.ndim == 2 and truth.max() >= z.shape[1]:
        raise ValueError(f"y_true has label {truth.max()} but logits have {z.shape[1]} columns")
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high; got {bounds}")
    result = minimize_scalar(
        lambda log_t: _nll(z / np.exp(log_t), truth),
        bounds=(np.log(low), np.log(high)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))
