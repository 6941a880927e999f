"""DeLong's test for correlated ROC AUCs (fast mid-rank algorithm of Sun & Xu, 2014).

For positives ``X`` (m cases) and negatives ``Y`` (n cases), each case gets a
structural component: ``V10(x) = P(Y < x) + ½ P(Y = x)`` for a positive and
``V01(y) = P(X > y) + ½ P(X = y)`` for a negative. The AUC is their mean and its
variance is ``S10/m + S01/n`` with ``S10``, ``S01`` the (co)variances of the
components across models. All components come from mid-ranks, in O((m+n) log(m+n)).
DeLong treats cases as independent: with several cases per patient prefer
:func:`~medai.evaluation.paired_bootstrap` with ``clusters``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import ndtr, ndtri
from scipy.stats import rankdata

from medai.evaluation._validate import as_labels, as_scores
from medai.evaluation.bootstrap import CIMethod, ConfidenceInterval, PairedComparison

__all__ = ["delong_ci", "delong_components", "delong_test"]


def delong_components(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """AUCs and structural components of ``k`` models scored on the same cases.

    Args:
        y_true: Binary labels ``(n,)``.
        scores: ``(k, n)`` positive-class scores, one row per model.

    Returns:
        ``(auc (k,), v10 (k, m), v01 (k, n_neg))``.
    """
    truth = as_labels(y_true, name="y_true")
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    for row in s:
        as_scores(row, name="scores", n=truth.size)
    if truth.max() > 1:
        raise ValueError("DeLong needs binary labels 0/1")
    pos, neg = s[:, truth == 1], s[:, truth == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positive and >= 2 negative cases; got {m} and {n}")
    rank_pos = rankdata(pos, axis=1)
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    auc = (rank_all[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return auc, v10, v01


def _covariance(v10: NDArray[np.float64], v01: NDArray[np.float64]) -> NDArray[np.float64]:
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return np.asarray(s10 / v10.shape[1] + s01 / v01.shape[1], dtype=np.float64)


def delong_ci(
    y_true: ArrayLike, y_score: ArrayLike, *, confidence: float = 0.95
) -> ConfidenceInterval:
    """AUC with DeLong's asymptotic (Wald) interval, clipped to [0, 1]."""
    auc, v10, v01 = delong_components(y_true, np.asarray(y_score)[None, :])
    se = float(np.sqrt(_covariance(v10, v01)[0, 0]))
    z = float(ndtri(0.5 + confidence / 2.0))
    est = float(auc[0])
    return ConfidenceInterval(
        est,
        max(0.0, est - z * se),
        min(1.0, est + z * se),
        confidence,
        CIMethod.DELONG,
        0,
        int(v10.shape[1] + v01.shape[1]),
    )


def delong_test(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, *, confidence: float = 0.95
) -> PairedComparison:
    """DeLong's test of ``AUC_A = AUC_B`` for two models on the same cases.

    Returns:
        The AUCs, their difference with a Wald interval and the two-sided p-value.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    auc, v10, v01 = delong_components(y_true, np.stack([np.asarray(score_a), np.asarray(score_b)]))
    cov = _covariance(v10, v01)
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    if var <= 0:
        p_value = 1.0 if diff == 0 else 0.0
        se = 0.0
    else:
        se = float(np.sqrt(var))
        p_value = float(2.0 * ndtr(-abs(diff) / se))
    z = float(ndtri(0.5 + confidence / 2.0))
    return PairedComparison(
        float(auc[0]),
        float(auc[1]),
        diff,
        diff - z * se,
        diff + z * se,
        p_value,
        confidence,
        CIMethod.DELONG,
        0,
    )
