"""Predictive uncertainty from probabilities: per case, per voxel, and what it is worth.

Arrays in, arrays out (numpy; no model is run here). ``member_probs`` are the
probabilities of ``M`` ensemble members or Monte-Carlo dropout samples, members first.
Entropies are in nats (natural log), so ``K`` equally likely classes give ``log K``.

* :func:`predictive_entropy` — total uncertainty of the (mean) prediction.
* :func:`mutual_information` — BALD: the part of it on which the members disagree
  (epistemic); zero when every member predicts the same.
* :func:`member_variance` — spread of the members' probabilities.
* :func:`voxel_entropy` / :func:`segmentation_uncertainty` — the same for sigmoid
  region maps (WT/TC/ET overlap, so each region is its own binary problem).
* :func:`referral_curve`, :func:`fit_review_threshold`, :func:`needs_review` — refer the
  most uncertain cases to a reader and measure the quality of the cases kept.
* :func:`spearman_with_ci` — does uncertainty rank cases by error?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from medai.evaluation._validate import check_probabilities, same_length
from medai.evaluation.bootstrap import CIMethod, ConfidenceInterval, bootstrap_ci

__all__ = [
    "ReferralCurve",
    "SegUncertainty",
    "fit_review_threshold",
    "member_variance",
    "mutual_information",
    "needs_review",
    "predictive_entropy",
    "referral_curve",
    "segmentation_uncertainty",
    "spearman_with_ci",
    "voxel_entropy",
]

_SUM_TOLERANCE = 1e-4


def _finite(values: ArrayLike, *, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty; need at least one case")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity; drop or fix those cases first")
    return array


def _probs(
    values: ArrayLike, *, name: str, ndims: tuple[int, ...], shape: str
) -> NDArray[np.float64]:
    """Finite probabilities in [0, 1] with one of the allowed numbers of axes."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shape}; got {array.shape}")
    array = _finite(array, name=name)
    check_probabilities(array, name=name)
    return array


def _class_probs(array: NDArray[np.float64], *, binary: bool, name: str) -> NDArray[np.float64]:
    """``(..., K)`` class probabilities: binary ``p`` becomes ``[1 − p, p]``; rows checked."""
    if binary:
        return np.stack([1.0 - array, array], axis=-1)
    sums = array.sum(axis=-1)
    if np.max(np.abs(sums - 1.0)) > _SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 over classes (softmax output); got sums from "
            f"{sums.min():.4g} to {sums.max():.4g}"
        )
    return array


def _entropy(probs: NDArray[np.float64]) -> NDArray[np.float64]:
    """``−Σ p log p`` over the last axis, with ``0 log 0 = 0``."""
    terms = np.zeros_like(probs)
    positive = probs > 0
    terms[positive] = -probs[positive] * np.log(probs[positive])
    return np.asarray(terms.sum(axis=-1), dtype=np.float64)


def _binary_entropy(prob: NDArray[np.float64]) -> NDArray[np.float64]:
    return _entropy(np.stack([prob, 1.0 - prob], axis=-1))


def predictive_entropy(probs: ArrayLike) -> NDArray[np.float64]:
    """Entropy of each case's class distribution, in nats.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to 1) or ``(N,)`` positive-class
            probabilities of a binary task. For an ensemble pass the members' mean.

    Returns:
        ``(N,)`` entropies in ``[0, log K]`` (``[0, log 2]`` for binary).
    """
    array = _probs(probs, name="probs", ndims=(1, 2), shape="(N, K) or (N,)")
    return _entropy(_class_probs(array, binary=array.ndim == 1, name="probs"))


def _members(member_probs: ArrayLike) -> NDArray[np.float64]:
    """``(M, N, K)`` class probabilities of at least two members (``(M, N)`` binary)."""
    array = _probs(
        member_probs, name="member_probs", ndims=(2, 3), shape="(M, N, K) or (M, N) binary"
    )
    if array.shape[0] < 2:
        raise ValueError(
            f"member_probs has {array.shape[0]} member; disagreement needs >= 2 "
            "(ensemble members or Monte-Carlo dropout samples on the first axis)"
        )
    return _class_probs(array, binary=array.ndim == 2, name="member_probs")


def mutual_information(member_probs: ArrayLike) -> NDArray[np.float64]:
    """BALD mutual information: entropy of the mean minus the mean member entropy.

    Args:
        member_probs: ``(M, N, K)`` class probabilities of ``M`` members, or ``(M, N)``
            positive-class probabilities.

    Returns:
        ``(N,)`` values in ``[0, log K]``, 0 where all members agree exactly.
    """
    probs = _members(member_probs)
    total = _entropy(probs.mean(axis=0))
    expected = _entropy(probs).mean(axis=0)
    return np.asarray(np.clip(total - expected, 0.0, None), dtype=np.float64)


def member_variance(member_probs: ArrayLike) -> NDArray[np.float64]:
    """Variance across members of each class probability, averaged over classes.

    Population variance (``ddof=0``). For binary ``(M, N)`` input this is the variance
    of the positive-class probability (both classes vary alike).

    Returns:
        ``(N,)`` variances, 0 where all members agree exactly.
    """
    probs = _members(member_probs)
    return np.asarray(probs.var(axis=0).mean(axis=-1), dtype=np.float64)


def _region(index: int, count: int) -> int:
    if not -count <= index < count:
        raise ValueError(f"region_index {index} is out of range for {count} regions")
    return index


def voxel_entropy(
    prob: ArrayLike, *, spatial_ndim: int = 3, region_index: int | None = None
) -> NDArray[np.float64]:
    """Per-voxel entropy of sigmoid region probabilities, in nats.

    Regions are independent binary problems, so the entropy of all regions together is
    the sum of their binary entropies (at most ``R log 2``).

    Args:
        prob: ``(R, *spatial)`` region probabilities, or ``(M, R, *spatial)`` of ``M``
            members (averaged first: the entropy of the mean prediction).
        spatial_ndim: Number of spatial axes (3 for volumes, 2 for slices).
        region_index: One region's entropy instead of the sum over regions.

    Returns:
        ``(*spatial)`` entropy map.
    """
    if spatial_ndim < 1:
        raise ValueError(f"spatial_ndim must be >= 1; got {spatial_ndim}")
    array = _probs(
        prob,
        name="prob",
        ndims=(spatial_ndim + 1, spatial_ndim + 2),
        shape=f"(R, *spatial) or (M, R, *spatial) with {spatial_ndim} spatial axes",
    )
    if array.ndim == spatial_ndim + 2:
        array = array.mean(axis=0)
    if region_index is not None:
        return _binary_entropy(array[_region(region_index, array.shape[0])])
    return np.asarray(_binary_entropy(array).sum(axis=0), dtype=np.float64)


@dataclass(frozen=True)
class SegUncertainty:
    """How unsure an ensemble is about one region of one case.

    Attributes:
        score: Mean voxel entropy (nats) of the mean prediction inside the region it
            predicts; 0 when that region is empty.
        volume_spread_ml: Standard deviation (``ddof=0``) of the region's volume across
            members, in mL.
        volume_cv: ``volume_spread_ml`` over the members' mean volume; 0 when every
            member predicts an empty region.
        map: ``(*spatial)`` voxel entropy of the region's mean probability.
    """

    score: float
    volume_spread_ml: float
    volume_cv: float
    map: NDArray[np.float64]


def segmentation_uncertainty(
    member_probs: ArrayLike,
    *,
    threshold: float = 0.5,
    region_index: int = 0,
    spacing_ml: float,
) -> SegUncertainty:
    """Case-level uncertainty of one region from ``M`` members' probability maps.

    Args:
        member_probs: ``(M, R, *spatial)`` sigmoid region probabilities of ``M >= 1``
            members (TTA or ensemble). With one member the score is the entropy of its
            own probabilities and the volume spread is 0.
        threshold: A voxel is in the region where ``probability >= threshold``.
        region_index: Which region (axis 1) to assess.
        spacing_ml: Volume of one voxel in mL (product of the spacing in mm / 1000).

    Returns:
        A :class:`SegUncertainty`.
    """
    probs = _probs(
        member_probs, name="member_probs", ndims=tuple(range(3, 8)), shape="(M, R, *spatial)"
    )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), e.g. 0.5; got {threshold}")
    if not (np.isfinite(spacing_ml) and spacing_ml > 0):
        raise ValueError(f"spacing_ml must be a positive voxel volume in mL; got {spacing_ml}")
    region = probs[:, _region(region_index, probs.shape[1])]
    mean = region.mean(axis=0)
    entropy_map = _binary_entropy(mean)
    inside = mean >= threshold
    score = float(entropy_map[inside].mean()) if inside.any() else 0.0
    volumes = (region >= threshold).reshape(region.shape[0], -1).sum(axis=1) * spacing_ml
    spread = float(volumes.std())
    mean_volume = float(volumes.mean())
    cv = spread / mean_volume if mean_volume > 0 else 0.0
    return SegUncertainty(score=score, volume_spread_ml=spread, volume_cv=cv, map=entropy_map)


@dataclass(frozen=True)
class ReferralCurve:
    """Quality of the cases kept when the most uncertain ones go to a reader.

    Attributes:
        fractions: Fraction of cases referred at each point.
        n_referred: Cases referred at each point (``floor(fraction · N)``).
        retained_quality: Mean quality of the kept cases, referring by uncertainty
            (cases tied at the cut count with their expected share).
        oracle: The same when the worst-quality cases are referred first (the ceiling).
        random: Expected mean quality under random referral (the overall mean).
    """

    fractions: NDArray[np.float64]
    n_referred: NDArray[np.int64]
    retained_quality: NDArray[np.float64]
    oracle: NDArray[np.float64]
    random: NDArray[np.float64]


def _paired_cases(
    a: ArrayLike, b: ArrayLike, *, names: tuple[str, str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    x, y = _finite(a, name=names[0]), _finite(b, name=names[1])
    for name, array in zip(names, (x, y), strict=True):
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D (one value per case); got shape {array.shape}")
    same_length(**{names[0]: x, names[1]: y})
    return x, y


def _kept_mean(
    uncertainty: NDArray[np.float64], quality: NDArray[np.float64], kept: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Mean quality of the ``kept`` least uncertain cases; a tie at the cut is averaged."""
    order = np.argsort(uncertainty, kind="stable")
    u, q = uncertainty[order], quality[order]
    csum = np.r_[0.0, np.cumsum(q)]
    cut = u[kept - 1]
    lo = np.searchsorted(u, cut, side="left")
    hi = np.searchsorted(u, cut, side="right")
    tied_mean = (csum[hi] - csum[lo]) / (hi - lo)
    return np.asarray((csum[lo] + (kept - lo) * tied_mean) / kept, dtype=np.float64)


def referral_curve(
    uncertainty: ArrayLike, quality: ArrayLike, *, fractions: ArrayLike | None = None
) -> ReferralCurve:
    """Mean quality of the retained cases as the most uncertain fraction is referred.

    A useful uncertainty gives a curve that rises above ``random`` towards ``oracle``.

    Args:
        uncertainty: ``(N,)`` per-case uncertainty (higher = refer first).
        quality: ``(N,)`` per-case quality: correctness 0/1 or Dice.
        fractions: Fractions referred, each in ``[0, 1)``; ``0, 0.05, …, 0.5`` if omitted.

    Returns:
        A :class:`ReferralCurve`.
    """
    u, q = _paired_cases(uncertainty, quality, names=("uncertainty", "quality"))
    grid = np.linspace(0.0, 0.5, 11) if fractions is None else np.asarray(fractions, dtype=float)
    if grid.ndim != 1 or grid.size == 0 or not np.all((grid >= 0) & (grid < 1)):
        raise ValueError(f"fractions must be a 1-D list of values in [0, 1); got {grid}")
    n = u.size
    referred = np.floor(grid * n + 1e-9).astype(np.int64)
    kept = n - referred
    best_first = np.r_[0.0, np.cumsum(np.sort(q)[::-1])]
    return ReferralCurve(
        fractions=grid,
        n_referred=referred,
        retained_quality=_kept_mean(u, q, kept),
        oracle=best_first[kept] / kept,
        random=np.full(grid.size, q.mean()),
    )


def fit_review_threshold(val_uncertainty: ArrayLike, *, refer_fraction: float = 0.1) -> float:
    """The uncertainty above which a case goes to review, fitted on validation cases.

    The ``1 − refer_fraction`` quantile (linear interpolation): on the validation cases
    :func:`needs_review` flags about ``refer_fraction`` of them (fewer when values tie).
    """
    values = _finite(val_uncertainty, name="val_uncertainty")
    if values.ndim != 1:
        raise ValueError(f"val_uncertainty must be 1-D; got shape {values.shape}")
    if not 0.0 < refer_fraction < 1.0:
        raise ValueError(f"refer_fraction must lie in (0, 1), e.g. 0.1; got {refer_fraction}")
    return float(np.quantile(values, 1.0 - refer_fraction))


def needs_review(uncertainty: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """``uncertainty > threshold`` per case (threshold from :func:`fit_review_threshold`)."""
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold}")
    return np.asarray(_finite(uncertainty, name="uncertainty") > threshold, dtype=np.bool_)


def _spearman(x: NDArray[np.generic], y: NDArray[np.generic]) -> float:
    """Spearman's rho (Pearson on mid-ranks); NaN when either side is constant."""
    a = rankdata(x) - (x.size + 1) / 2.0
    b = rankdata(y) - (y.size + 1) / 2.0
    denominator = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denominator) if denominator > 0 else float("nan")


def spearman_with_ci(
    x: ArrayLike,
    y: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    seed: int | None = 0,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.BCA,
) -> ConfidenceInterval:
    """Spearman rank correlation of paired per-case values with a bootstrap interval.

    E.g. uncertainty against error (1 − Dice): a positive rho means uncertain cases
    tend to be the bad ones. Cases (or patients, with ``clusters``) are resampled.

    Raises:
        ValueError: On NaN, unequal lengths, fewer than 3 cases or a constant input.
    """
    a, b = _paired_cases(x, y, names=("x", "y"))
    if a.size < 3:
        raise ValueError(f"spearman_with_ci needs >= 3 cases; got {a.size}")
    if np.isnan(_spearman(a, b)):
        raise ValueError("x or y is constant; a rank correlation is undefined")
    return bootstrap_ci(
        _spearman,
        a,
        b,
        clusters=clusters,
        n_resamples=n_resamples,
        confidence=confidence,
        method=method,
        seed=seed,
    )
