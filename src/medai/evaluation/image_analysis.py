"""What the report of an image → label / number run says about one split.

:func:`analyse_split` reads one split's prediction table (one row per case, see
:mod:`medai.pipeline_image`) and computes, with intervals that resample patients:

- classification: ROC-AUC, accuracy and, for a binary run, sensitivity, specificity,
  PPV and NPV at the threshold stored in the plan (chosen on validation at training);
  calibration before and after the run's temperature, from the first-pass logits;
- multi-label: one ROC-AUC per label;
- regression: MAE, RMSE, R² and the paired difference in absolute error against the
  training-mean predictor;
- every task: the referral curve of the per-case ``uncertainty`` (quality = correct
  0/1, or absolute error), Spearman of uncertainty against error and the count of
  cases flagged ``needs_review``.

A metric that cannot get an interval (one class only, too few cases) is left out and
named in :attr:`SplitFindings.notes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from medai.evaluation.bootstrap import (
    ConfidenceInterval,
    PairedComparison,
    bootstrap_ci,
    paired_bootstrap_mean,
)
from medai.evaluation.calibration import ReliabilityDiagram, apply_temperature, reliability_diagram
from medai.evaluation.classification import (
    compute_accuracy,
    compute_balanced_accuracy,
    compute_npv,
    compute_ppv,
    compute_roc_auc,
    compute_sensitivity,
    compute_specificity,
)
from medai.evaluation.regression import compute_mae, compute_r2, compute_rmse
from medai.evaluation.thresholds import operating_point
from medai.evaluation.uncertainty import ReferralCurve, referral_curve, spearman_with_ci
from medai.preprocess.plan import Plan, TaskKind

__all__ = [
    "REFERRAL_FRACTIONS",
    "Calibration",
    "SplitFindings",
    "analyse_split",
    "case_scores",
    "class_names",
    "stored_threshold",
]

log = logging.getLogger(__name__)

REFERRAL_FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(11))
_REFER_AT = 0.1


@dataclass(frozen=True)
class Calibration:
    """Reliability before (temperature 1) and after the run's temperature."""

    temperature: float
    before: ReliabilityDiagram
    after: ReliabilityDiagram


@dataclass(frozen=True)
class SplitFindings:
    """Everything computed on one split.

    Attributes:
        split: The split.
        n_cases: Cases.
        n_patients: Patients.
        intervals: Metric → interval (patients resampled).
        threshold: Binary decision threshold applied (None for other tasks).
        calibration: Before / after temperature (binary and multi-class with logits).
        referral: Referral curve (None without per-case uncertainty).
        quality: What the referral curve's quality is (``accuracy`` or ``MAE``).
        spearman: Spearman of uncertainty against error.
        n_review: Cases flagged ``needs_review`` (None without the column).
        baseline: Regression: absolute error of the model minus that of the mean.
        notes: Why something is missing.
    """

    split: str
    n_cases: int
    n_patients: int
    intervals: dict[str, ConfidenceInterval]
    threshold: float | None = None
    calibration: Calibration | None = None
    referral: ReferralCurve | None = None
    quality: str = "accuracy"
    spearman: ConfidenceInterval | None = None
    n_review: int | None = None
    baseline: PairedComparison | None = None
    notes: list[str] = field(default_factory=list)

    def referral_at(self, fraction: float = _REFER_AT) -> tuple[float, float] | None:
        """``(quality of all cases, quality of the kept cases)`` when ``fraction`` is referred."""
        if self.referral is None:
            return None
        index = int(np.argmin(np.abs(self.referral.fractions - fraction)))
        return float(self.referral.retained_quality[0]), float(
            self.referral.retained_quality[index]
        )


def class_names(plan: Plan) -> list[str]:
    """Names in label order (a binary plan naming only its positive class gets 'not X')."""
    if plan.task is TaskKind.BINARY and len(plan.classes) == 1:
        return [f"not {plan.classes[0]}", plan.classes[0]]
    return list(plan.classes)


def case_scores(part: pd.DataFrame, plan: Plan) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Truth ``(n,)`` (multi-label ``(n, K)``) and scores of a split's table."""
    if plan.task is TaskKind.MULTILABEL:
        labels = part[[f"truth_{c}" for c in plan.classes]].to_numpy(dtype=np.int64)
        return labels, part[[f"prob_{c}" for c in plan.classes]].to_numpy(dtype=np.float64)
    truth = part["truth"].to_numpy(dtype=np.float64).round().astype(np.int64)
    if plan.task is TaskKind.MULTICLASS:
        return truth, part[[f"prob_{c}" for c in plan.classes]].to_numpy(dtype=np.float64)
    return truth, part["output"].to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class _Boot:
    clusters: NDArray[np.generic]
    n_resamples: int
    seed: int


def _interval(
    name: str, metric: Callable[..., float], truth: object, score: object, settings: _Boot
) -> ConfidenceInterval | str:
    try:
        return bootstrap_ci(
            metric,
            np.asarray(truth),
            np.asarray(score),
            clusters=settings.clusters,
            n_resamples=settings.n_resamples,
            seed=settings.seed,
        )
    except ValueError as exc:
        log.info("%s: no interval (%s)", name, exc)
        return f"{name}: no interval ({exc})"


def _argmax_metric(metric: Callable[..., float]) -> Callable[..., float]:
    def scored(truth: NDArray[np.int64], score: NDArray[np.float64]) -> float:
        return metric(truth, np.argmax(score, axis=1))

    return scored


def _at_threshold(metric: Callable[..., float], threshold: float) -> Callable[..., float]:
    def scored(truth: NDArray[np.int64], score: NDArray[np.float64]) -> float:
        return metric(truth, (score >= threshold).astype(np.int64))

    return scored


def _classification_intervals(
    part: pd.DataFrame, plan: Plan, boot: _Boot, notes: list[str]
) -> dict[str, ConfidenceInterval]:
    truth, score = case_scores(part, plan)
    metrics: dict[str, Callable[..., float]] = {}
    if plan.task is TaskKind.MULTILABEL:
        for k, name in enumerate(plan.classes):
            metrics[f"roc_auc/{name}"] = partial(_label_auc, k)
    elif plan.task is TaskKind.MULTICLASS:
        metrics = {
            "roc_auc": compute_roc_auc,
            "accuracy": _argmax_metric(compute_accuracy),
            "balanced_accuracy": _argmax_metric(compute_balanced_accuracy),
            "sensitivity": _argmax_metric(partial(compute_sensitivity, average="macro")),
            "specificity": _argmax_metric(partial(compute_specificity, average="macro")),
        }
    else:
        threshold = stored_threshold(plan)
        metrics = {
            "roc_auc": compute_roc_auc,
            "accuracy": _at_threshold(compute_accuracy, threshold),
        }
    out: dict[str, ConfidenceInterval] = {}
    for name, metric in metrics.items():
        found = _interval(name, metric, truth, score, boot)
        if isinstance(found, str):
            notes.append(found)
        else:
            out[name] = found
    if plan.task is TaskKind.BINARY:
        out.update(_operating_point(truth, score, stored_threshold(plan), boot, notes))
    return out


def _label_auc(k: int, truth: NDArray[np.int64], score: NDArray[np.float64]) -> float:
    return compute_roc_auc(truth[:, k], score[:, k])


def _operating_point(
    truth: NDArray[np.int64],
    score: NDArray[np.float64],
    threshold: float,
    boot: _Boot,
    notes: list[str],
) -> dict[str, ConfidenceInterval]:
    try:
        found = operating_point(
            truth,
            score,
            threshold,
            clusters=boot.clusters,
            n_resamples=boot.n_resamples,
            seed=boot.seed,
        )
    except ValueError:  # one metric undefined too often: interval the others one by one
        single = {"sensitivity": compute_sensitivity, "specificity": compute_specificity,
                  "ppv": compute_ppv, "npv": compute_npv}  # fmt: skip
        out: dict[str, ConfidenceInterval] = {}
        for name, metric in single.items():
            ci = _interval(name, _at_threshold(metric, threshold), truth, score, boot)
            if isinstance(ci, str):
                notes.append(ci)
            else:
                out[name] = ci
        return out
    return {name.lower().replace(" ", "_"): ci for name, ci in found.items()}


def stored_threshold(plan: Plan) -> float:
    """The binary threshold the run stored (0.5 when none was learnt, as prediction does)."""
    return plan.target.threshold if plan.target.threshold is not None else 0.5


def _logits(part: pd.DataFrame) -> NDArray[np.float64] | None:
    columns = sorted(
        (c for c in part.columns if str(c).startswith("logit_")),
        key=lambda c: int(str(c).removeprefix("logit_")),
    )
    if not columns:
        return None
    return part[columns].to_numpy(dtype=np.float64)


def _calibration(part: pd.DataFrame, plan: Plan) -> Calibration | None:
    logits = _logits(part)
    if logits is None or plan.task not in (TaskKind.BINARY, TaskKind.MULTICLASS):
        return None
    z = logits[:, 0] if plan.task is TaskKind.BINARY else logits
    truth = case_scores(part, plan)[0]
    temperature = plan.target.temperature
    before = reliability_diagram(truth, apply_temperature(z, 1.0))
    after = reliability_diagram(truth, apply_temperature(z, temperature))
    return Calibration(temperature, before, after)


def _referral(
    part: pd.DataFrame, plan: Plan, boot: _Boot, notes: list[str]
) -> tuple[ReferralCurve | None, ConfidenceInterval | None]:
    if "uncertainty" not in part.columns:
        notes.append("the table has no 'uncertainty' column: no referral curve")
        return None, None
    u = part["uncertainty"].to_numpy(dtype=np.float64)
    if not np.isfinite(u).all():
        notes.append(
            "per-case uncertainty is missing (the run predicts with one pass: "
            "target.uncertainty=none): no referral curve"
        )
        return None, None
    regression = plan.task is TaskKind.REGRESSION
    error = part["abs_error"] if regression else 1.0 - part["correct"]
    error_values = error.to_numpy(dtype=np.float64)
    curve = referral_curve(
        u, -error_values if regression else 1.0 - error_values, fractions=REFERRAL_FRACTIONS
    )
    if regression:  # quality = −|error| keeps the oracle right; shown as MAE
        curve = ReferralCurve(
            curve.fractions, curve.n_referred, -curve.retained_quality, -curve.oracle, -curve.random
        )
    try:
        rho = spearman_with_ci(
            u, error_values, clusters=boot.clusters, n_resamples=boot.n_resamples, seed=boot.seed
        )
    except ValueError as exc:
        notes.append(f"Spearman of uncertainty against error: undefined ({exc})")
        rho = None
    return curve, rho


def _regression_intervals(
    part: pd.DataFrame, plan: Plan, boot: _Boot, notes: list[str]
) -> tuple[dict[str, ConfidenceInterval], PairedComparison]:
    truth = part["truth"].to_numpy(dtype=np.float64)
    pred = part["output"].to_numpy(dtype=np.float64)
    out: dict[str, ConfidenceInterval] = {}
    for name, metric in (("mae", compute_mae), ("rmse", compute_rmse), ("r2", compute_r2)):
        found = _interval(name, metric, truth, pred, boot)
        if isinstance(found, str):
            notes.append(found)
        else:
            out[name] = found
    baseline = paired_bootstrap_mean(
        np.abs(pred - truth),
        np.abs(plan.target.mean - truth),
        clusters=boot.clusters,
        n_resamples=boot.n_resamples,
        seed=boot.seed,
    )
    return out, baseline


def _count_true(column: pd.Series) -> int:
    return int(column.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"]).sum())


def analyse_split(
    part: pd.DataFrame, plan: Plan, *, split: str, n_resamples: int = 2000, seed: int = 0
) -> SplitFindings:
    """Every figure of one split (see the module notes).

    Args:
        part: The split's rows, with ``correct`` (classification) or ``abs_error``
            (regression) added to the prediction table.
        plan: The run's plan (task, classes, stored threshold, temperature, target mean).
        split: Its name.
        n_resamples: Bootstrap replicates.
        seed: Bootstrap seed.
    """
    boot = _Boot(part["patient_id"].to_numpy(), n_resamples, seed)
    notes: list[str] = []
    baseline = None
    if plan.task is TaskKind.REGRESSION:
        intervals, baseline = _regression_intervals(part, plan, boot, notes)
    else:
        intervals = _classification_intervals(part, plan, boot, notes)
    curve, rho = _referral(part, plan, boot, notes)
    if rho is not None:
        intervals["spearman_uncertainty_error"] = rho
    review = part["needs_review"] if "needs_review" in part.columns else None
    return SplitFindings(
        split=split,
        n_cases=len(part),
        n_patients=int(part["patient_id"].nunique()),
        intervals=intervals,
        threshold=stored_threshold(plan) if plan.task is TaskKind.BINARY else None,
        calibration=_calibration(part, plan),
        referral=curve,
        quality="MAE" if plan.task is TaskKind.REGRESSION else "accuracy",
        spearman=rho,
        n_review=None if review is None else _count_true(review),
        baseline=baseline,
        notes=notes,
    )
