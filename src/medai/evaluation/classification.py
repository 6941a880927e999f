"""Classification metrics: pure ``compute_*`` functions and an accumulator.

Conventions:
    * ``y_true`` holds integer labels ``0..K-1``; binary tasks use 1 as the positive class.
    * Scores are ``(n,)`` positive-class probabilities (binary) or ``(n, K)`` class
      probabilities (multi-class). A binary ``(n, 2)`` array is read as column 1.
    * Label metrics (sensitivity, PPV, ...) take ``average``: ``"binary"`` (class 1),
      ``"macro"`` (unweighted mean over classes, ignoring undefined ones) or ``"micro"``
      (pooled counts over classes, one-vs-rest).
    * A ratio with a zero denominator (no positives, no predicted positives) is NaN,
      never silently 0; ROC-AUC and average precision are NaN when a class is absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from medai.evaluation._validate import as_labels, as_scores, check_average, check_probabilities
from medai.evaluation.calibration import compute_ece

__all__ = [
    "Average",
    "ClassificationAccumulator",
    "compute_accuracy",
    "compute_average_precision",
    "compute_balanced_accuracy",
    "compute_brier_score",
    "compute_classification_metrics",
    "compute_confusion_matrix",
    "compute_f1",
    "compute_npv",
    "compute_ppv",
    "compute_pr_curve",
    "compute_roc_auc",
    "compute_roc_curve",
    "compute_sensitivity",
    "compute_specificity",
]


class Average(StrEnum):
    """How a metric is combined over classes."""

    BINARY = "binary"  # class 1 against the rest (two-class tasks)
    MACRO = "macro"  # unweighted mean over classes, undefined ones ignored
    MICRO = "micro"  # pooled one-vs-rest counts


_LABEL_AVERAGES = (Average.BINARY, Average.MACRO, Average.MICRO)
_SCORE_AVERAGES = (Average.MACRO, Average.MICRO)


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: NDArray[np.float64]) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def compute_confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, *, num_classes: int | None = None
) -> NDArray[np.int64]:
    """Counts with true classes in rows and predicted classes in columns.

    Args:
        y_true: True labels, shape ``(n,)``.
        y_pred: Predicted labels, shape ``(n,)``.
        num_classes: Matrix size; the largest label + 1 when omitted.

    Returns:
        ``(K, K)`` integer matrix (scikit-learn's layout).
    """
    truth = as_labels(y_true, name="y_true")
    pred = as_labels(y_pred, name="y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {truth.size} vs {pred.size}")
    k = int(max(truth.max(), pred.max())) + 1
    if num_classes is not None:
        if num_classes < k:
            raise ValueError(f"num_classes={num_classes} but labels go up to {k - 1}")
        k = num_classes
    counts = np.bincount(truth * k + pred, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64)


def _counts(
    y_true: ArrayLike, y_pred: ArrayLike, average: Average | str
) -> tuple[NDArray[np.float64], ...]:
    """Per-class one-vs-rest (tp, fp, fn, tn), or class 1's only for ``binary``."""
    chosen = check_average(average, _LABEL_AVERAGES)
    matrix = compute_confusion_matrix(y_true, y_pred)
    if chosen is Average.BINARY:
        if matrix.shape[0] > 2:
            raise ValueError("average='binary' needs labels 0/1; use 'macro' or 'micro' otherwise")
        matrix = np.pad(matrix, (0, 2 - matrix.shape[0]))
    m = matrix.astype(np.float64)
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    tn = m.sum() - tp - fp - fn
    if chosen is Average.BINARY:
        return tp[1:], fp[1:], fn[1:], tn[1:]
    return tp, fp, fn, tn


def _rate(num: NDArray[np.float64], den: NDArray[np.float64], average: Average | str) -> float:
    if average == Average.MICRO:
        return float(_ratio(num.sum(), den.sum()))
    return _nanmean(_ratio(num, den))


def compute_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of cases whose predicted label equals the true label."""
    matrix = compute_confusion_matrix(y_true, y_pred)
    return float(np.trace(matrix) / matrix.sum())


def compute_balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class sensitivity over the classes present in ``y_true``."""
    matrix = compute_confusion_matrix(y_true, y_pred).astype(np.float64)
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def compute_sensitivity(
    y_true: ArrayLike, y_pred: ArrayLike, *, average: Average | str = Average.BINARY
) -> float:
    """Sensitivity (recall, true-positive rate) = TP / (TP + FN)."""
    tp, _, fn, _ = _counts(y_true, y_pred, average)
    return _rate(tp, tp + fn, average)


def compute_specificity(
    y_true: ArrayLike, y_pred: ArrayLike, *, average: Average | str = Average.BINARY
) -> float:
    """Specificity (true-negative rate) = TN / (TN + FP)."""
    _, fp, _, tn = _counts(y_true, y_pred, average)
    return _rate(tn, tn + fp, average)


def compute_ppv(
    y_true: ArrayLike, y_pred: ArrayLike, *, average: Average | str = Average.BINARY
) -> float:
    """Positive predictive value (precision) = TP / (TP + FP)."""
    tp, fp, _, _ = _counts(y_true, y_pred, average)
    return _rate(tp, tp + fp, average)


def compute_npv(
    y_true: ArrayLike, y_pred: ArrayLike, *, average: Average | str = Average.BINARY
) -> float:
    """Negative predictive value = TN / (TN + FN)."""
    _, _, fn, tn = _counts(y_true, y_pred, average)
    return _rate(tn, tn + fn, average)


def compute_f1(
    y_true: ArrayLike, y_pred: ArrayLike, *, average: Average | str = Average.BINARY
) -> float:
    """F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of sensitivity and PPV."""
    tp, fp, fn, _ = _counts(y_true, y_pred, average)
    return _rate(2 * tp, 2 * tp + fp + fn, average)


# -- score-based metrics --------------------------------------------------------------
def _binary_inputs(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    truth = as_labels(y_true, name="y_true")
    score = as_scores(y_score, name="y_score", n=truth.size)
    if score.ndim == 2:
        if score.shape[1] != 2:
            raise ValueError(f"binary y_score must be (n,) or (n, 2); got {score.shape}")
        score = score[:, 1]
    if truth.max() > 1:
        raise ValueError("binary metric got labels above 1; pass (n, K) scores for K classes")
    return truth, score


def _one_vs_rest(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """One-hot truth and scores, both ``(n, K)``."""
    truth = as_labels(y_true, name="y_true")
    score = as_scores(y_score, name="y_score", n=truth.size)
    if score.ndim == 1:
        score = np.stack([1.0 - score, score], axis=1)
    k = score.shape[1]
    if truth.max() >= k:
        raise ValueError(f"y_true has label {truth.max()} but y_score has only {k} columns")
    return np.eye(k, dtype=np.int64)[truth], score


def _binary_auc(truth: NDArray[np.int64], score: NDArray[np.float64]) -> float:
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _curve_counts(
    truth: NDArray[np.int64], score: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Cumulative (tp, fp) at each distinct score, highest threshold first."""
    order = np.argsort(-score, kind="mergesort")
    sorted_score = score[order]
    sorted_truth = truth[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(sorted_score)), sorted_truth.size - 1]
    tps = np.cumsum(sorted_truth)[last]
    fps = (last + 1) - tps
    return tps, fps, sorted_score[last]


def _binary_ap(truth: NDArray[np.int64], score: NDArray[np.float64]) -> float:
    if truth.sum() == 0:
        return float("nan")
    tps, fps, _ = _curve_counts(truth, score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


_BinaryFn = Callable[[NDArray[np.int64], NDArray[np.float64]], float]


def _score_metric(
    y_true: ArrayLike, y_score: ArrayLike, average: Average | str, fn: _BinaryFn
) -> float:
    chosen = check_average(average, _SCORE_AVERAGES)
    if np.ndim(y_score) == 1:
        return fn(*_binary_inputs(y_true, y_score))
    onehot, score = _one_vs_rest(y_true, y_score)
    if chosen is Average.MICRO:
        return fn(onehot.ravel(), score.ravel())
    per_class = np.array([fn(onehot[:, c], score[:, c]) for c in range(score.shape[1])])
    return _nanmean(per_class)


def compute_roc_auc(
    y_true: ArrayLike, y_score: ArrayLike, *, average: Average | str = Average.MACRO
) -> float:
    """Area under the ROC curve (Mann–Whitney with mid-ranks for ties).

    Args:
        y_true: Labels ``(n,)``.
        y_score: ``(n,)`` positive-class scores or ``(n, K)`` class scores.
        average: Multi-class only: ``"macro"`` (mean one-vs-rest AUC) or ``"micro"``.

    Returns:
        The AUC, or NaN when a class has no positive or no negative case.
    """
    return _score_metric(y_true, y_score, average, _binary_auc)


def compute_average_precision(
    y_true: ArrayLike, y_score: ArrayLike, *, average: Average | str = Average.MACRO
) -> float:
    """PR-AUC as average precision: ``Σ (R_n − R_{n−1}) P_n`` over thresholds (no interpolation)."""
    return _score_metric(y_true, y_score, average, _binary_ap)


def compute_roc_curve(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Binary ROC curve ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf."""
    truth, score = _binary_inputs(y_true, y_score)
    tps, fps, thresholds = _curve_counts(truth, score)
    n_pos, n_neg = tps[-1], fps[-1]
    fpr = _ratio(np.r_[0.0, fps], np.full(fps.size + 1, n_neg))
    tpr = _ratio(np.r_[0.0, tps], np.full(tps.size + 1, n_pos))
    return fpr, tpr, np.r_[np.inf, thresholds]


def compute_pr_curve(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Binary precision–recall curve ``(precision, recall, thresholds)``, lowest threshold first.

    The last point is (precision 1, recall 0), as in scikit-learn.
    """
    truth, score = _binary_inputs(y_true, y_score)
    tps, fps, thresholds = _curve_counts(truth, score)
    precision = tps / (tps + fps)
    recall = _ratio(tps, np.full(tps.size, tps[-1]))
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def compute_brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared error of probabilities.

    Binary ``(n,)``: mean of ``(p − y)²``. Multi-class ``(n, K)``: mean over cases of
    ``Σ_k (p_k − 1[y = k])²`` (Brier's original form, as scikit-learn).
    """
    if np.ndim(y_prob) == 1:
        truth, prob = _binary_inputs(y_true, y_prob)
        check_probabilities(prob, name="y_prob")
        return float(np.mean((prob - truth) ** 2))
    onehot, prob = _one_vs_rest(y_true, y_prob)
    check_probabilities(prob, name="y_prob")
    return float(np.mean(np.sum((prob - onehot) ** 2, axis=1)))


def predicted_labels(y_score: ArrayLike, *, threshold: float = 0.5) -> NDArray[np.int64]:
    """Hard labels: ``score >= threshold`` for ``(n,)`` scores, arg-max for ``(n, K)``."""
    score = np.asarray(y_score, dtype=np.float64)
    if score.ndim == 1:
        return (score >= threshold).astype(np.int64)
    return np.argmax(score, axis=1).astype(np.int64)


def compute_classification_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    threshold: float = 0.5,
    average: Average | str = Average.MACRO,
) -> dict[str, float]:
    """All classification metrics at once, keyed by name.

    Args:
        y_true: Labels ``(n,)``.
        y_score: ``(n,)`` positive-class probabilities or ``(n, K)`` class probabilities.
        threshold: Operating point for binary hard labels.
        average: ``"macro"`` or ``"micro"`` for multi-class label and score metrics.
    """
    pred = predicted_labels(y_score, threshold=threshold)
    label_average = (
        Average.BINARY if np.ndim(y_score) == 1 else check_average(average, _SCORE_AVERAGES)
    )
    return {
        "accuracy": compute_accuracy(y_true, pred),
        "balanced_accuracy": compute_balanced_accuracy(y_true, pred),
        "sensitivity": compute_sensitivity(y_true, pred, average=label_average),
        "specificity": compute_specificity(y_true, pred, average=label_average),
        "ppv": compute_ppv(y_true, pred, average=label_average),
        "npv": compute_npv(y_true, pred, average=label_average),
        "f1": compute_f1(y_true, pred, average=label_average),
        "roc_auc": compute_roc_auc(y_true, y_score, average=average),
        "pr_auc": compute_average_precision(y_true, y_score, average=average),
        "brier": compute_brier_score(y_true, y_score),
        "ece": compute_ece(y_true, y_score),
    }


@dataclass
class ClassificationAccumulator:
    """Collects labels and scores batch by batch; ``aggregate`` computes every metric.

    Example:
        >>> acc = ClassificationAccumulator()
        >>> acc.update([0, 1], [0.2, 0.9]); acc.update([1, 0], [0.7, 0.4])
        >>> acc.aggregate()["accuracy"]
        1.0
    """

    threshold: float = 0.5
    average: Average | str = Average.MACRO

    def __post_init__(self) -> None:
        self.average = check_average(self.average, _SCORE_AVERAGES)
        self._truth: list[NDArray[np.int64]] = []
        self._score: list[NDArray[np.float64]] = []

    def update(self, y_true: ArrayLike, y_score: ArrayLike) -> None:
        truth = as_labels(y_true, name="y_true")
        score = as_scores(y_score, name="y_score", n=truth.size)
        if self._score and score.shape[1:] != self._score[0].shape[1:]:
            raise ValueError(
                f"y_score shape {score.shape} does not match earlier batches "
                f"({self._score[0].shape}); keep the class count fixed"
            )
        self._truth.append(truth)
        self._score.append(score)

    def aggregate(self) -> dict[str, float]:
        if not self._truth:
            raise ValueError("ClassificationAccumulator is empty; call update() first")
        return compute_classification_metrics(
            np.concatenate(self._truth),
            np.concatenate(self._score),
            threshold=self.threshold,
            average=self.average,
        )

    def reset(self) -> None:
        self._truth.clear()
        self._score.clear()
