"""Bootstrap confidence intervals that resample patients, and paired model comparisons.

Cases from the same patient are correlated, so the resampling unit is the patient
(cluster bootstrap): each replicate draws patients with replacement and keeps all of a
drawn patient's cases. Without ``clusters`` every case is its own patient.

Two intervals are offered: ``"percentile"`` and ``"bca"`` (bias-corrected and
accelerated; Efron 1987), whose acceleration comes from a leave-one-patient-out
jackknife. Replicates where the metric is undefined (NaN, e.g. AUC of a resample with
one class) are dropped and counted; more than 10 % undefined is an error, since
the remaining replicates would no longer represent the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri

from medai.evaluation._validate import as_values, same_length

__all__ = [
    "CIMethod",
    "ConfidenceInterval",
    "PairedComparison",
    "bootstrap_ci",
    "bootstrap_interval",
    "bootstrap_mean_ci",
    "paired_bootstrap",
    "paired_bootstrap_mean",
]

logger = logging.getLogger(__name__)

Metric = Callable[[NDArray[np.generic], NDArray[np.generic]], float]


class CIMethod(StrEnum):
    """How an interval was made; the bootstrap functions take ``PERCENTILE`` or ``BCA``."""

    PERCENTILE = "percentile"
    BCA = "bca"  # bias-corrected and accelerated (Efron 1987)
    DELONG = "delong"  # DeLong's analytic variance of paired AUCs (no resampling)


_BOOTSTRAP_METHODS = (CIMethod.PERCENTILE, CIMethod.BCA)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its bootstrap interval.

    Attributes:
        estimate: Metric on the full data.
        low: Lower bound.
        high: Upper bound.
        confidence: Nominal coverage, e.g. 0.95.
        method: :attr:`CIMethod.PERCENTILE` or :attr:`CIMethod.BCA`.
        n_resamples: Valid replicates used (undefined ones dropped).
        n_clusters: Patients (resampling units).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    method: CIMethod
    n_resamples: int
    n_clusters: int

    def __str__(self) -> str:
        pct = round(100 * self.confidence)
        return f"{self.estimate:.3f} ({pct}% CI {self.low:.3f}–{self.high:.3f})"


@dataclass(frozen=True)
class PairedComparison:
    """Model A versus model B on the same cases.

    Attributes:
        estimate_a: Metric of A.
        estimate_b: Metric of B.
        difference: ``estimate_a − estimate_b``.
        low: Lower bound of the difference.
        high: Upper bound of the difference.
        p_value: Two-sided p-value for "no difference".
        confidence: Nominal coverage.
        method: How the interval was made (a :class:`CIMethod`).
        n_resamples: Valid replicates used (0 for DeLong).
    """

    estimate_a: float
    estimate_b: float
    difference: float
    low: float
    high: float
    p_value: float
    confidence: float
    method: CIMethod
    n_resamples: int


# -- resampling machinery -------------------------------------------------------------
class _Clusters:
    """Case indices grouped by patient, with a vectorised way to expand a draw."""

    def __init__(self, clusters: ArrayLike | None, n: int) -> None:
        if clusters is None:
            ids = np.arange(n)
        else:
            ids = np.unique(np.asarray(clusters), return_inverse=True)[1].ravel()
            if ids.size != n:
                raise ValueError(f"clusters has {ids.size} entries but there are {n} cases")
        self.order = np.argsort(ids, kind="stable")
        self.sizes = np.bincount(ids)
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.count = int(self.sizes.size)
        self.singletons = bool(np.all(self.sizes == 1))

    def expand(self, drawn: NDArray[np.intp]) -> NDArray[np.intp]:
        """Case indices of the drawn patients (each drawn patient contributes all cases)."""
        if self.singletons:
            return self.order[drawn]
        lengths = self.sizes[drawn]
        offsets = np.repeat(self.starts[drawn] - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        return self.order[offsets + np.arange(int(lengths.sum()))]

    def without(self, g: int) -> NDArray[np.intp]:
        """Case indices of every patient except ``g`` (jackknife)."""
        keep = np.ones(self.order.size, dtype=bool)
        keep[self.starts[g] : self.starts[g] + self.sizes[g]] = False
        return self.order[keep]


def _check(n_resamples: int, confidence: float, method: CIMethod | str) -> CIMethod:
    """The checked settings of a bootstrap; ``method`` coerced to a :class:`CIMethod`."""
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100 for a stable interval; got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    return _bootstrap_method(method)


def _bootstrap_method(method: CIMethod | str) -> CIMethod:
    if method not in _BOOTSTRAP_METHODS:
        choices = tuple(m.value for m in _BOOTSTRAP_METHODS)
        raise ValueError(f"method must be one of {choices}; got {method!r}")
    return CIMethod(method)


def _drop_invalid(replicates: NDArray[np.float64], what: str) -> NDArray[np.float64]:
    valid = (
        np.all(np.isfinite(replicates), axis=-1) if replicates.ndim > 1 else np.isfinite(replicates)
    )
    dropped = int(replicates.shape[0] - valid.sum())
    if dropped > 0.1 * replicates.shape[0]:
        raise ValueError(
            f"{what} was undefined in {dropped} of {replicates.shape[0]} bootstrap replicates "
            "(too few cases or a single class); report it without an interval"
        )
    if dropped:
        logger.info("%s undefined in %d bootstrap replicates; dropped", what, dropped)
    return replicates[valid]


def bootstrap_interval(
    estimate: float,
    replicates: ArrayLike,
    jackknife: ArrayLike | None = None,
    *,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.BCA,
) -> tuple[float, float]:
    """Interval bounds from bootstrap replicates (and jackknife values for BCa).

    BCa: ``z0 = Φ⁻¹(P*(θ* < θ̂) + ½ P*(θ* = θ̂))``, acceleration
    ``a = Σ d³ / (6 (Σ d²)^{3/2})`` with ``d = mean(θ_(i)) − θ_(i)``, and bounds at the
    replicate quantiles ``Φ(z0 + (z0 + z_α) / (1 − a (z0 + z_α)))``.
    """
    boot = np.asarray(replicates, dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    if _bootstrap_method(method) is CIMethod.PERCENTILE:
        low, high = np.quantile(boot, [alpha, 1.0 - alpha])
        return float(low), float(high)
    if jackknife is None:
        raise ValueError("method='bca' needs the jackknife values")
    if boot.min() == boot.max():
        return float(boot.min()), float(boot.max())
    below = np.count_nonzero(boot < estimate) + 0.5 * np.count_nonzero(boot == estimate)
    share = np.clip(below / boot.size, 0.5 / boot.size, 1.0 - 0.5 / boot.size)
    z0 = float(ndtri(share))
    jack = np.asarray(jackknife, dtype=np.float64)
    d = jack.mean() - jack
    denom = 6.0 * float(np.sum(d**2)) ** 1.5
    accel = float(np.sum(d**3)) / denom if denom > 0 else 0.0
    z = ndtri(np.array([alpha, 1.0 - alpha]))
    levels = ndtr(z0 + (z0 + z) / (1.0 - accel * (z0 + z)))
    low, high = np.quantile(boot, levels)
    return float(low), float(high)


def _replicates(
    statistic: Callable[[NDArray[np.intp]], NDArray[np.float64]],
    groups: _Clusters,
    n_resamples: int,
    seed: int | None,
) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, groups.count, size=(n_resamples, groups.count))
    return np.array([statistic(groups.expand(row)) for row in draws], dtype=np.float64)


def _jackknife(
    statistic: Callable[[NDArray[np.intp]], NDArray[np.float64]], groups: _Clusters
) -> NDArray[np.float64]:
    values = np.array([statistic(groups.without(g)) for g in range(groups.count)])
    return values[np.all(np.isfinite(values.reshape(groups.count, -1)), axis=1)]


def bootstrap_ci(
    metric: Metric,
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.BCA,
    seed: int | None = 0,
) -> ConfidenceInterval:
    """Confidence interval of ``metric(y_true, y_score)`` by resampling patients.

    Args:
        metric: Any function of (truth, scores) returning a float, e.g.
            :func:`~medai.evaluation.compute_roc_auc`.
        y_true: Per-case truth ``(n,)``.
        y_score: Per-case scores ``(n,)`` or ``(n, K)``.
        clusters: Patient id per case; cases of one patient are resampled together.
        n_resamples: Bootstrap replicates.
        confidence: Nominal coverage.
        method: :attr:`CIMethod.BCA` (default) or :attr:`CIMethod.PERCENTILE`
            (the strings ``"bca"`` / ``"percentile"`` are coerced).
        seed: Random seed (recorded for replay).

    Example:
        >>> ci = bootstrap_ci(compute_roc_auc, y, p, clusters=patient_ids)  # doctest: +SKIP
    """
    method = _check(n_resamples, confidence, method)
    truth, score = np.asarray(y_true), np.asarray(y_score)
    n = same_length(y_true=truth, y_score=score)
    groups = _Clusters(clusters, n)

    def statistic(idx: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.array([metric(truth[idx], score[idx])], dtype=np.float64)

    estimate = float(metric(truth, score))
    boot = _drop_invalid(_replicates(statistic, groups, n_resamples, seed)[:, 0], "metric")
    jack = _jackknife(statistic, groups)[:, 0] if method is CIMethod.BCA else None
    low, high = bootstrap_interval(estimate, boot, jack, confidence=confidence, method=method)
    return ConfidenceInterval(estimate, low, high, confidence, method, boot.size, groups.count)


def _mean_replicates(
    values: NDArray[np.float64], groups: _Clusters, n_resamples: int, seed: int | None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Vectorised replicate and jackknife means of per-case values (columns kept apart)."""
    ids = np.empty(values.shape[0], dtype=np.intp)
    ids[groups.order] = np.repeat(np.arange(groups.count), groups.sizes)
    sums = np.zeros((groups.count, values.shape[1]))
    np.add.at(sums, ids, values)
    sizes = groups.sizes.astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, groups.count, size=(n_resamples, groups.count))
    weights = np.zeros((n_resamples, groups.count))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)
    boot = (weights @ sums) / (weights @ sizes)[:, None]
    total = sums.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        jack = (total - sums) / (sizes.sum() - sizes)[:, None]
    return boot, jack[np.isfinite(jack).all(axis=1)]


def bootstrap_mean_ci(
    values: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.BCA,
    seed: int | None = 0,
) -> ConfidenceInterval:
    """Interval of the mean of per-case values (e.g. mean Dice), resampling patients.

    NaN values (e.g. HD95 where one mask is empty) are left out before resampling.
    Vectorised: thousands of replicates take milliseconds.
    """
    method = _check(n_resamples, confidence, method)
    data = as_values(values, name="values")
    keep = ~np.isnan(data)
    if not keep.any():
        raise ValueError("values are all NaN; nothing to average")
    cluster_ids = None if clusters is None else np.asarray(clusters)[keep]
    data = data[keep]
    groups = _Clusters(cluster_ids, data.size)
    boot, jack = _mean_replicates(data[:, None], groups, n_resamples, seed)
    estimate = float(data.mean())
    low, high = bootstrap_interval(
        estimate, boot[:, 0], jack[:, 0], confidence=confidence, method=method
    )
    return ConfidenceInterval(estimate, low, high, confidence, method, n_resamples, groups.count)


def _p_value(diffs: NDArray[np.float64]) -> float:
    """Two-sided bootstrap p-value: twice the smaller tail beyond zero, add-one corrected."""
    b = diffs.size
    below = (np.count_nonzero(diffs <= 0) + 1) / (b + 1)
    above = (np.count_nonzero(diffs >= 0) + 1) / (b + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap(
    metric: Metric,
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.PERCENTILE,
    seed: int | None = 0,
) -> PairedComparison:
    """Compare models A and B on the same cases: CI and p-value of ``metric(A) − metric(B)``.

    Both models are scored on the same resampled patients in every replicate, so the
    correlation between them is kept.
    """
    method = _check(n_resamples, confidence, method)
    truth, a, b = np.asarray(y_true), np.asarray(score_a), np.asarray(score_b)
    n = same_length(y_true=truth, score_a=a, score_b=b)
    groups = _Clusters(clusters, n)

    def statistic(idx: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.array([metric(truth[idx], a[idx]), metric(truth[idx], b[idx])])

    est = statistic(np.arange(n))
    boot = _drop_invalid(_replicates(statistic, groups, n_resamples, seed), "metric")
    diffs = boot[:, 0] - boot[:, 1]
    jack = None
    if method is CIMethod.BCA:
        pairs = _jackknife(statistic, groups)
        jack = pairs[:, 0] - pairs[:, 1]
    difference = float(est[0] - est[1])
    low, high = bootstrap_interval(difference, diffs, jack, confidence=confidence, method=method)
    return PairedComparison(
        float(est[0]),
        float(est[1]),
        difference,
        low,
        high,
        _p_value(diffs),
        confidence,
        method,
        diffs.size,
    )


def paired_bootstrap_mean(
    values_a: ArrayLike,
    values_b: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.PERCENTILE,
    seed: int | None = 0,
) -> PairedComparison:
    """Compare the means of paired per-case values (e.g. Dice of A and B on each case).

    Cases where either value is NaN are left out of both.
    """
    method = _check(n_resamples, confidence, method)
    a, b = as_values(values_a, name="values_a"), as_values(values_b, name="values_b")
    same_length(values_a=a, values_b=b)
    keep = ~(np.isnan(a) | np.isnan(b))
    if not keep.any():
        raise ValueError("no case has both values; nothing to compare")
    pairs = np.stack([a[keep], b[keep]], axis=1)
    groups = _Clusters(None if clusters is None else np.asarray(clusters)[keep], pairs.shape[0])
    boot, jack = _mean_replicates(pairs, groups, n_resamples, seed)
    diffs = boot[:, 0] - boot[:, 1]
    est = pairs.mean(axis=0)
    difference = float(est[0] - est[1])
    low, high = bootstrap_interval(
        difference, diffs, jack[:, 0] - jack[:, 1], confidence=confidence, method=method
    )
    return PairedComparison(
        float(est[0]),
        float(est[1]),
        difference,
        low,
        high,
        _p_value(diffs),
        confidence,
        method,
        n_resamples,
    )
