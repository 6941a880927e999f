"""Regression and agreement metrics: MAE, RMSE, R², Bland–Altman."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medai.evaluation._validate import as_values, same_length

__all__ = [
    "BlandAltman",
    "RegressionAccumulator",
    "compute_bland_altman",
    "compute_mae",
    "compute_r2",
    "compute_regression_metrics",
    "compute_rmse",
]


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    truth = as_values(y_true, name="y_true")
    pred = as_values(y_pred, name="y_pred")
    same_length(y_true=truth, y_pred=pred)
    if not (np.all(np.isfinite(truth)) and np.all(np.isfinite(pred))):
        raise ValueError("y_true and y_pred must be finite; drop cases with missing values first")
    return truth, pred


def compute_mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error."""
    truth, pred = _pair(y_true, y_pred)
    return float(np.mean(np.abs(pred - truth)))


def compute_rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error."""
    truth, pred = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((pred - truth) ** 2)))


def compute_r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Coefficient of determination ``1 − SS_res / SS_tot`` (NaN when ``y_true`` is constant)."""
    truth, pred = _pair(y_true, y_pred)
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    if ss_tot == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((truth - pred) ** 2)) / ss_tot


@dataclass(frozen=True)
class BlandAltman:
    """Bland–Altman agreement of two measurements (differences are ``a − b``).

    Attributes:
        bias: Mean difference.
        sd: Sample standard deviation of the differences (ddof = 1).
        lower: ``bias − z·sd``, the lower limit of agreement.
        upper: ``bias + z·sd``, the upper limit of agreement.
        n: Number of pairs.
    """

    bias: float
    sd: float
    lower: float
    upper: float
    n: int


def compute_bland_altman(a: ArrayLike, b: ArrayLike, *, z: float = 1.96) -> BlandAltman:
    """Bias and limits of agreement between method ``a`` (e.g. model) and ``b`` (reference).

    Args:
        a: Measurements of the first method ``(n,)``.
        b: Measurements of the second method ``(n,)``.
        z: Normal quantile of the limits (1.96 → 95 % limits).
    """
    ref, test = _pair(b, a)
    if test.size < 2:
        raise ValueError("Bland–Altman needs at least 2 pairs to estimate the spread")
    diff = test - ref
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1))
    return BlandAltman(bias=bias, sd=sd, lower=bias - z * sd, upper=bias + z * sd, n=diff.size)


def compute_regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """MAE, RMSE, R² and Bland–Altman bias / limits (prediction − truth), keyed by name."""
    agreement = compute_bland_altman(y_pred, y_true)
    return {
        "mae": compute_mae(y_true, y_pred),
        "rmse": compute_rmse(y_true, y_pred),
        "r2": compute_r2(y_true, y_pred),
        "bias": agreement.bias,
        "loa_lower": agreement.lower,
        "loa_upper": agreement.upper,
    }


class RegressionAccumulator:
    """Collects targets and predictions batch by batch; ``aggregate`` computes the metrics."""

    def __init__(self) -> None:
        self._truth: list[NDArray[np.float64]] = []
        self._pred: list[NDArray[np.float64]] = []

    def update(self, y_true: ArrayLike, y_pred: ArrayLike) -> None:
        truth, pred = _pair(y_true, y_pred)
        self._truth.append(truth)
        self._pred.append(pred)

    def aggregate(self) -> dict[str, float]:
        if not self._truth:
            raise ValueError("RegressionAccumulator is empty; call update() first")
        return compute_regression_metrics(np.concatenate(self._truth), np.concatenate(self._pred))

    def reset(self) -> None:
        self._truth.clear()
        self._pred.clear()
