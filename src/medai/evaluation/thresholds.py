"""Decision thresholds for a binary score, chosen on validation, and the operating point.

A model's scores are turned into a decision with ``score >= threshold``. The threshold is
chosen on the validation set by a :class:`ThresholdPolicy` and stored (``to_dict``) with the
plan, then applied unchanged to test data; :func:`operating_point` reports what it gives,
each figure with a bootstrap interval. Arg-max (0.5) is rarely the right operating point
for an imbalanced task: at 5 % prevalence a calibrated model seldom scores a positive
above 0.5, so sensitivity collapses.

Candidate thresholds are the midpoints between consecutive distinct scores, so every
candidate splits the validation cases differently and none sits on a score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medai.evaluation._validate import as_labels, as_scores, same_length
from medai.evaluation.bootstrap import CIMethod, ConfidenceInterval, bootstrap_ci
from medai.evaluation.classification import (
    compute_npv,
    compute_ppv,
    compute_sensitivity,
    compute_specificity,
)
from medai.preprocess.task_plan import ThresholdPolicy

__all__ = ["Threshold", "ThresholdPolicy", "choose_threshold", "operating_point"]

# Rates are ratios of small counts; 9/10 must count as reaching a target of 0.9.
_TOLERANCE = 1e-12


_TARGETED = (ThresholdPolicy.SENSITIVITY, ThresholdPolicy.SPECIFICITY)


def _policy(policy: ThresholdPolicy | str) -> ThresholdPolicy:
    try:
        return ThresholdPolicy(policy)
    except ValueError:
        choices = tuple(p.value for p in ThresholdPolicy)
        raise ValueError(f"policy must be one of {choices}; got {policy!r}") from None


def _check_target(policy: ThresholdPolicy, target: float | None) -> float | None:
    if policy not in _TARGETED:
        if target is not None:
            raise ValueError(
                f"policy {policy.value!r} takes no target (got {target}); "
                "use policy 'sensitivity' or 'specificity' to aim for a rate"
            )
        return None
    if target is None:
        raise ValueError(f"policy {policy.value!r} needs a target {policy.value}, e.g. 0.9")
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"target must lie in (0, 1), e.g. 0.9; got {target}")
    return float(target)


@dataclass(frozen=True)
class Threshold:
    """A threshold chosen on validation data, with what it achieved there.

    Attributes:
        value: Cases with ``score >= value`` are called positive.
        policy: The policy that chose it (a string is coerced).
        target: The target rate of a ``sensitivity``/``specificity`` policy, else None.
        sensitivity: Validation sensitivity at ``value``.
        specificity: Validation specificity at ``value``.
    """

    value: float
    policy: ThresholdPolicy
    target: float | None
    sensitivity: float
    specificity: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", _policy(self.policy))
        object.__setattr__(self, "target", _check_target(self.policy, self.target))
        if not np.isfinite(self.value):
            raise ValueError(f"Threshold value must be a finite number; got {self.value}")
        for name in ("sensitivity", "specificity"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"Threshold {name} must lie in [0, 1]; got {rate}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields, e.g. for a plan file."""
        return {
            "value": float(self.value),
            "policy": self.policy.value,
            "target": self.target,
            "sensitivity": float(self.sensitivity),
            "specificity": float(self.specificity),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Threshold:
        """The inverse of :meth:`to_dict`; unknown or missing keys are an error."""
        expected = {"value", "policy", "target", "sensitivity", "specificity"}
        if set(data) != expected:
            raise ValueError(
                f"a stored threshold needs exactly the keys {sorted(expected)}; got {sorted(data)}"
            )
        target = data["target"]
        return cls(
            value=float(data["value"]),
            policy=_policy(data["policy"]),
            target=None if target is None else float(target),
            sensitivity=float(data["sensitivity"]),
            specificity=float(data["specificity"]),
        )


def _binary_scores(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Checked 0/1 labels with both classes present and finite 1-D scores."""
    truth = as_labels(y_true, name="y_true")
    score = as_scores(y_score, name="y_score", n=truth.size)
    if score.ndim != 1:
        raise ValueError(
            f"y_score must be (n,) positive-class scores; got shape {score.shape} "
            "(for (n, 2) probabilities pass column 1)"
        )
    if truth.max() > 1:
        raise ValueError(f"y_true must hold 0/1 labels; got label {truth.max()}")
    if np.unique(truth).size < 2:
        raise ValueError(
            f"y_true holds only class {truth[0]}; a threshold needs positive and negative cases"
        )
    return truth, score


def _rates_at(
    truth: NDArray[np.int64], score: NDArray[np.float64], thresholds: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Sensitivity, specificity and F1 of ``score >= t`` for each threshold ``t``."""
    pos = np.sort(score[truth == 1])
    neg = np.sort(score[truth == 0])
    tp = (pos.size - np.searchsorted(pos, thresholds, side="left")).astype(np.float64)
    fp = (neg.size - np.searchsorted(neg, thresholds, side="left")).astype(np.float64)
    fn = pos.size - tp
    sensitivity = tp / pos.size
    specificity = (neg.size - fp) / neg.size
    f1 = 2 * tp / (2 * tp + fp + fn)  # fn + tp = n_pos > 0, so never 0/0
    return sensitivity, specificity, f1


def _middle_of_best(objective: NDArray[np.float64]) -> int:
    """Index of the best candidate; among ties the middle one (lower middle if even)."""
    best = np.flatnonzero(objective >= np.max(objective) - _TOLERANCE)
    return int(best[(best.size - 1) // 2])


def choose_threshold(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    policy: ThresholdPolicy | str,
    target: float | None = None,
) -> Threshold:
    """Choose a decision threshold on validation data.

    Candidates are the midpoints between consecutive distinct scores. Among candidates
    that score equally, the middle one is kept (the lower middle for an even count),
    so the threshold sits away from the edge of a plateau.

    Args:
        y_true: Validation labels ``(n,)``, 0/1, both classes present.
        y_score: Validation positive-class scores ``(n,)``, finite.
        policy: A :class:`ThresholdPolicy` or its string value.
        target: The rate to reach for ``"sensitivity"`` / ``"specificity"``, in (0, 1);
            must be None for the other policies.

    Returns:
        The :class:`Threshold` with the validation sensitivity and specificity it gives.

    Raises:
        ValueError: On one-class labels, NaN scores, constant scores, a missing or
            out-of-range target, or a target no candidate reaches.

    Example:
        >>> t = choose_threshold(y_val, p_val, policy="sensitivity", target=0.9)  # doctest: +SKIP
        >>> predicted = p_test >= t.value  # doctest: +SKIP
    """
    chosen = _policy(policy)
    goal = _check_target(chosen, target)
    truth, score = _binary_scores(y_true, y_score)
    distinct = np.unique(score)
    if distinct.size < 2:
        raise ValueError(f"y_score is constant ({distinct[0]}); no threshold separates cases")
    candidates = (distinct[:-1] + distinct[1:]) / 2.0
    if chosen is ThresholdPolicy.ARGMAX:
        candidates = np.array([0.5])
    sensitivity, specificity, f1 = _rates_at(truth, score, candidates)
    if chosen is ThresholdPolicy.ARGMAX:
        objective = np.zeros(1)
    elif chosen is ThresholdPolicy.YOUDEN:
        objective = sensitivity + specificity - 1.0
    elif chosen is ThresholdPolicy.F1:
        objective = f1
    else:
        reached, other = (
            (sensitivity, specificity)
            if chosen is ThresholdPolicy.SENSITIVITY
            else (specificity, sensitivity)
        )
        feasible = reached >= cast(float, goal) - _TOLERANCE  # a targeted policy has one
        if not feasible.any():
            raise ValueError(
                f"no threshold reaches {chosen.value} {goal} on these cases (best "
                f"{reached.max():.3f} between distinct scores); lower the target or add cases"
            )
        objective = np.where(feasible, other, -np.inf)
    i = _middle_of_best(objective)
    return Threshold(
        value=float(candidates[i]),
        policy=chosen,
        target=goal,
        sensitivity=float(sensitivity[i]),
        specificity=float(specificity[i]),
    )


def _balanced_accuracy(truth: ArrayLike, pred: ArrayLike) -> float:
    """(sensitivity + specificity) / 2; NaN when a class is absent from the resample."""
    return (compute_sensitivity(truth, pred) + compute_specificity(truth, pred)) / 2.0


_OPERATING_METRICS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "sensitivity": compute_sensitivity,
    "specificity": compute_specificity,
    "ppv": compute_ppv,
    "npv": compute_npv,
    "balanced_accuracy": _balanced_accuracy,
}


def operating_point(
    y_true: ArrayLike,
    y_score: ArrayLike,
    threshold: float,
    *,
    clusters: ArrayLike | None = None,
    n_resamples: int = 2000,
    seed: int | None = 0,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.BCA,
) -> dict[str, ConfidenceInterval]:
    """Sensitivity, specificity, PPV, NPV and balanced accuracy at ``score >= threshold``.

    Each comes with a bootstrap interval from :func:`~medai.evaluation.bootstrap_ci`
    (patients resampled; every metric sees the same resamples, as they share ``seed``).
    PPV and NPV depend on the prevalence of the data they are computed on.

    Args:
        y_true: Labels ``(n,)``, 0/1, both classes present.
        y_score: Positive-class scores ``(n,)``.
        threshold: Decision threshold, e.g. ``choose_threshold(...).value``.
        clusters: Patient id per case; a patient's cases are resampled together.
        n_resamples: Bootstrap replicates.
        seed: Random seed.
        confidence: Nominal coverage.
        method: ``"bca"`` (default) or ``"percentile"``.

    Returns:
        Metric name → :class:`~medai.evaluation.ConfidenceInterval`, in the order above.

    Raises:
        ValueError: As :func:`choose_threshold` for bad labels or scores; a non-finite
            threshold; or a metric undefined in over 10 % of the resamples (too few cases
            of a class: report it without an interval).
    """
    truth, score = _binary_scores(y_true, y_score)
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number; got {threshold}")
    if clusters is not None:
        same_length(y_true=truth, clusters=np.asarray(clusters))
    pred = (score >= threshold).astype(np.int64)
    return {
        name: bootstrap_ci(
            metric,
            truth,
            pred,
            clusters=clusters,
            n_resamples=n_resamples,
            confidence=confidence,
            method=method,
            seed=seed,
        )
        for name, metric in _OPERATING_METRICS.items()
    }
