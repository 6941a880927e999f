"""Subgroup analysis: per-group metrics with CIs, gaps against the whole, flagged groups.

The input is a table with one row per case: truth and score columns (or one column of
per-case values such as Dice), a patient column, clinical columns (sex, age band, site,
vendor) and optionally a split column (``internal_test`` / ``external_test``). Every
split is analysed on its own, so an external (held-out site) test set is never pooled
with the internal one.

A group is *flagged* when its interval lies entirely on the worse side of the split's
overall estimate, or when its point estimate is worse than the overall by more than
``gap_threshold``. Within each clinical column the group with the largest gap is marked.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from medai.evaluation.bootstrap import (
    CIMethod,
    ConfidenceInterval,
    Metric,
    bootstrap_ci,
    bootstrap_mean_ci,
)

__all__ = ["SubgroupAnalysis", "age_bands", "analyse_subgroups"]

_ALL = "all"


@dataclass(frozen=True)
class SubgroupAnalysis:
    """Result of :func:`analyse_subgroups`.

    Attributes:
        overall: One row per split: ``split, n_cases, n_patients, estimate, low, high``.
        table: One row per (split, column, group) with the same fields plus ``gap``
            (positive = worse than overall), ``flagged``, ``largest_gap`` and ``reason``.
        metric_name: Name of the metric shown.
        higher_is_better: Direction used for gaps.
    """

    overall: pd.DataFrame
    table: pd.DataFrame
    metric_name: str
    higher_is_better: bool

    @property
    def flagged(self) -> pd.DataFrame:
        """Only the flagged groups."""
        return self.table[self.table["flagged"]]


def age_bands(ages: ArrayLike, *, edges: Sequence[float] = (0, 40, 60, 80, 150)) -> pd.Series:
    """Age bands such as ``"40–59"`` from ages in years (left-closed bands)."""
    values = pd.Series(np.asarray(ages, dtype=np.float64))
    bounds = list(edges)
    if any(hi <= lo for lo, hi in itertools.pairwise(bounds)):
        raise ValueError(f"edges must increase strictly; got {bounds}")
    labels = [f"{int(lo)}–{int(hi) - 1}" for lo, hi in itertools.pairwise(bounds)]
    labels[-1] = f"{int(bounds[-2])}+"
    return pd.cut(values, bins=bounds, labels=labels, right=False).astype("string")


@dataclass(frozen=True)
class _Spec:
    metric: Metric | None
    y_true: str
    y_score: str | list[str]
    value: str | None
    patient: str | None
    n_resamples: int
    confidence: float
    method: CIMethod | str
    seed: int


def _interval(frame: pd.DataFrame, spec: _Spec) -> ConfidenceInterval:
    clusters = None if spec.patient is None else frame[spec.patient].to_numpy()
    options: dict[str, Any] = {
        "clusters": clusters,
        "n_resamples": spec.n_resamples,
        "confidence": spec.confidence,
        "method": spec.method,
        "seed": spec.seed,
    }
    if spec.value is not None:
        return bootstrap_mean_ci(frame[spec.value].to_numpy(dtype=np.float64), **options)
    if spec.metric is None:
        raise ValueError("give metric= (with y_true/y_score columns) or value= (a column)")
    return bootstrap_ci(
        spec.metric, frame[spec.y_true].to_numpy(), frame[spec.y_score].to_numpy(), **options
    )


def _row(frame: pd.DataFrame, spec: _Spec, min_cases: int) -> dict[str, Any]:
    n_patients = frame[spec.patient].nunique() if spec.patient else len(frame)
    row: dict[str, Any] = {"n_cases": len(frame), "n_patients": int(n_patients)}
    nan = float("nan")
    if len(frame) < min_cases:
        return {**row, "estimate": nan, "low": nan, "high": nan, "reason": "too few cases"}
    try:
        ci = _interval(frame, spec)
    except ValueError as error:
        return {**row, "estimate": nan, "low": nan, "high": nan, "reason": str(error)}
    return {**row, "estimate": ci.estimate, "low": ci.low, "high": ci.high, "reason": ""}


def _flag(row: dict[str, Any], overall: float, higher: bool, threshold: float) -> dict[str, Any]:
    sign = 1.0 if higher else -1.0
    gap = sign * (overall - row["estimate"])
    worse_bound = row["high"] if higher else row["low"]
    ci_below = bool(sign * (overall - worse_bound) > 0)
    reasons = []
    if ci_below:
        reasons.append("interval entirely worse than overall")
    if gap > threshold:
        reasons.append(f"gap {gap:.3f} > {threshold:g}")
    reason = row["reason"] or "; ".join(reasons)
    return {**row, "gap": gap, "flagged": bool(reasons), "reason": reason}


def analyse_subgroups(
    data: pd.DataFrame,
    *,
    by: str | Sequence[str],
    metric: Metric | None = None,
    metric_name: str | None = None,
    y_true: str = "y_true",
    y_score: str | Sequence[str] = "y_score",
    value: str | None = None,
    patient: str | None = None,
    split: str | None = None,
    higher_is_better: bool = True,
    gap_threshold: float = 0.05,
    min_cases: int = 10,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    method: CIMethod | str = CIMethod.PERCENTILE,
    seed: int = 0,
) -> SubgroupAnalysis:
    """Per-group metric with bootstrap CIs for each clinical column, per split.

    Args:
        data: One row per case.
        by: Clinical column(s) to split by (e.g. ``["sex", "age_band", "site"]``).
        metric: ``metric(y_true, y_score)``, e.g. ``compute_roc_auc``; or give ``value``.
        metric_name: Label for tables and plots; defaults to the metric / column name.
        y_true: Truth column.
        y_score: Score column, or a list of columns for ``(n, K)`` scores.
        value: Column of per-case values (e.g. ``"dice"``) whose mean is the metric.
        patient: Patient id column for the cluster bootstrap.
        split: Column naming the test set of each case; each value is its own section.
        higher_is_better: Direction of "worse" (False for HD95, errors).
        gap_threshold: Flag groups worse than overall by more than this.
        min_cases: Groups smaller than this get no interval and are never flagged.
        n_resamples: Bootstrap replicates per group.
        confidence: Nominal coverage.
        method: :attr:`CIMethod.PERCENTILE` or :attr:`CIMethod.BCA` (strings coerced).
        seed: Random seed.
    """
    columns = [by] if isinstance(by, str) else list(by)
    score_cols: str | list[str] = y_score if isinstance(y_score, str) else list(y_score)
    needed = [*columns, *([value] if value else [y_true])]
    needed += [] if value else ([score_cols] if isinstance(score_cols, str) else score_cols)
    needed += [c for c in (patient, split) if c]
    missing = [c for c in needed if c not in data.columns]
    if missing:
        raise ValueError(f"data lacks column(s) {missing}; it has {list(data.columns)}")
    spec = _Spec(metric, y_true, score_cols, value, patient, n_resamples, confidence, method, seed)
    name = metric_name or value or getattr(metric, "__name__", "metric").removeprefix("compute_")
    overall_rows, rows = [], []
    sections = data.groupby(split, sort=False) if split else [(_ALL, data)]
    for split_name, part in sections:
        whole = {"split": str(split_name), **_row(part, spec, 1)}
        overall_rows.append(whole)
        for column in columns:
            for group, sub in part.groupby(column, sort=True, dropna=True):
                row = {"split": str(split_name), "column": column, "group": str(group)}
                row.update(_row(sub, spec, min_cases))
                rows.append(
                    _flag(row, whole["estimate"], higher_is_better, gap_threshold)
                    if row["reason"] == ""
                    else {**row, "gap": float("nan"), "flagged": False}
                )
    table = pd.DataFrame(rows)
    if not table.empty:
        ranked = table["gap"].fillna(-np.inf)
        best = ranked.groupby([table["split"], table["column"]]).transform("max")
        table["largest_gap"] = (ranked == best) & table["gap"].notna()
    return SubgroupAnalysis(pd.DataFrame(overall_rows), table, name, higher_is_better)
