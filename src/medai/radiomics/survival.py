"""Outcome modelling on radiomics tables: cross-validated penalised Cox models.

:func:`fit_survival` takes one row per patient (radiomic features, clinical columns,
follow-up time, event indicator) and returns a :class:`SurvivalResult`: the
cross-validated C-index with a bootstrap interval, time-dependent AUCs, a log-rank test
of predicted risk groups, the final model's hazard ratios and report figures.

Leakage control: every data-driven step (imputation, filtering, ranking, correlation
pruning, standardisation, spline knots, risk-group cut-points) is refit on each training
fold by :class:`~medai.radiomics.survival_pipeline.SurvivalPipeline`; test folds are
only predicted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.model_selection import StratifiedKFold

from medai.errors import ConfigError, DatasetError
from medai.evaluation.bootstrap import ConfidenceInterval, bootstrap_ci
from medai.fsutil import atomic_path, atomic_write_text
from medai.radiomics.survival_metrics import (
    LogRankResult,
    assign_risk_groups,
    compute_c_index,
    compute_time_dependent_auc,
    logrank_risk_groups,
    risk_group_cutpoints,
)
from medai.radiomics.survival_pipeline import SurvivalModel, SurvivalPipeline, SurvivalSettings
from medai.radiomics.survival_plots import forest_plot_png, kaplan_meier_png

__all__ = ["SurvivalResult", "fit_survival"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SurvivalResult:
    """What :func:`fit_survival` found.

    Attributes:
        settings: The settings used (seed included, so the run replays).
        c_index: Cross-validated C-index (mean over test folds) with bootstrap interval.
        fold_c_index: C-index of each test fold.
        auc_times: Horizons of the time-dependent AUC.
        time_dependent_auc: Cross-validated AUC(t) per horizon (mean over test folds).
        logrank: Log-rank test of out-of-fold risk groups (cut-points from the
            training folds).
        hazard_ratios: Final model, fit on all rows: one row per model column.
        selected_features: Radiomic features of the final model, strongest first.
        strongest: All final-model covariates ordered by |coefficient| per SD.
        selection_frequency: Share of folds that selected each radiomic feature.
        oof_risk: Out-of-fold risk per patient (row order of the input).
        risk_group: Out-of-fold risk group per patient (0 = lowest risk).
        figures: PNG bytes by name (``km_risk_groups``, ``forest``).
    """

    settings: SurvivalSettings
    c_index: ConfidenceInterval
    fold_c_index: tuple[float, ...]
    auc_times: tuple[float, ...]
    time_dependent_auc: tuple[float, ...]
    logrank: LogRankResult
    hazard_ratios: pd.DataFrame
    selected_features: tuple[str, ...]
    strongest: tuple[str, ...]
    selection_frequency: dict[str, float]
    oof_risk: NDArray[np.float64] = field(repr=False)
    risk_group: NDArray[np.int64] = field(repr=False)
    figures: dict[str, bytes] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for reports (no arrays, no figures)."""
        ci = self.c_index
        return {
            "model": str(self.settings.model),
            "folds": self.settings.folds,
            "seed": self.settings.seed,
            "c_index": {"estimate": ci.estimate, "low": ci.low, "high": ci.high},
            "c_index_text": str(ci),
            "fold_c_index": list(self.fold_c_index),
            "time_dependent_auc": dict(
                zip([f"{t:g}" for t in self.auc_times], self.time_dependent_auc, strict=True)
            ),
            "logrank": {"p_value": self.logrank.p_value, "counts": list(self.logrank.counts)},
            "selected_features": list(self.selected_features),
            "strongest": list(self.strongest),
            "hazard_ratios": self.hazard_ratios.reset_index().to_dict(orient="records"),
        }

    def save(self, folder: str | Path) -> list[Path]:
        """Write ``survival.json``, ``hazard_ratios.csv`` and the PNGs atomically."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / "survival.json", out / "hazard_ratios.csv"]
        atomic_write_text(written[0], json.dumps(self.summary(), indent=2, default=float))
        atomic_write_text(written[1], self.hazard_ratios.to_csv())
        for name, png in self.figures.items():
            path = out / f"{name}.png"
            with atomic_path(path) as tmp:
                Path(tmp).write_bytes(png)
            written.append(path)
        return written


def _check_frame(
    df: pd.DataFrame, time_col: str, event_col: str, columns: Sequence[str], folds: int
) -> None:
    """Validate the input table before any fitting."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in [time_col, event_col, *columns] if c not in df.columns]
    if missing:
        raise ConfigError(f"df lacks columns {missing}; available: {list(df.columns)[:20]}")
    if not columns:
        raise ConfigError("give at least one feature or clinical column")
    repeated = sorted({c for c in columns if list(columns).count(c) > 1})
    if repeated or time_col in columns or event_col in columns:
        raise ConfigError(
            f"columns {repeated or [time_col, event_col]} are listed twice (features, "
            "clinical, time, event must be distinct)"
        )
    time = pd.to_numeric(df[time_col], errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise DatasetError(f"{time_col!r} must be finite and non-negative in every row")
    events = df[event_col].to_numpy()
    if not np.all(np.isin(events, (0, 1, True, False))):
        raise DatasetError(f"{event_col!r} must be 0/1 (1 = event observed)")
    n_events = int(np.sum(events.astype(bool)))
    if n_events < folds or len(df) < 2 * folds:
        raise DatasetError(
            f"{len(df)} patients with {n_events} events are too few for {folds}-fold "
            "cross-validation; lower folds or add patients"
        )


@dataclass
class _CrossValidation:
    """Out-of-fold predictions and per-fold metrics."""

    risk: NDArray[np.float64]
    fold: NDArray[np.int64]
    group: NDArray[np.int64]
    fold_c: list[float]
    fold_auc: list[NDArray[np.float64]]
    selected: list[list[str]]


def _cross_validate(
    df: pd.DataFrame,
    settings: SurvivalSettings,
    cols: dict[str, Any],
    auc_times: NDArray[np.float64],
) -> _CrossValidation:
    """Refit the whole pipeline on each training fold; predict the held-out fold."""
    n = len(df)
    time = df[cols["time_col"]].to_numpy(np.float64)
    event = df[cols["event_col"]].to_numpy().astype(int)
    cv = _CrossValidation(np.zeros(n), np.zeros(n, np.int64), np.zeros(n, np.int64), [], [], [])
    splitter = StratifiedKFold(n_splits=settings.folds, shuffle=True, random_state=settings.seed)
    for k, (train, test) in enumerate(splitter.split(np.zeros(n), event)):
        pipe = SurvivalPipeline(settings).fit(df.iloc[train], **cols)
        cv.risk[test] = pipe.predict_risk(df.iloc[test])
        cuts = risk_group_cutpoints(
            pipe.predict_risk(df.iloc[train]), n_groups=settings.risk_groups
        )
        cv.group[test] = assign_risk_groups(cv.risk[test], cuts)
        cv.fold[test] = k
        cv.fold_c.append(compute_c_index(time[test], event[test], cv.risk[test]))
        cv.fold_auc.append(
            compute_time_dependent_auc(
                time[test], event[test], cv.risk[test], auc_times,
                censoring_time=time, censoring_event=event,
            )
        )  # fmt: skip
        cv.selected.append(pipe.selected_)
    return cv


def _mean_fold_c_index(truth: NDArray[np.generic], risk: NDArray[np.generic]) -> float:
    """Mean over folds of the test-fold C-index; ``truth`` columns: time, event, fold."""
    values = [
        compute_c_index(truth[m, 0], truth[m, 1], risk[m])
        for m in (truth[:, 2] == f for f in np.unique(truth[:, 2]))
    ]
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _nanmean_columns(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Column means ignoring NaN; NaN where a column has no finite value."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=0)
    count = finite.sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _default_auc_times(time: NDArray[np.float64], event: NDArray[np.int64]) -> NDArray[np.float64]:
    return np.quantile(time[event == 1], (0.25, 0.5, 0.75))


def fit_survival(
    df: pd.DataFrame,
    *,
    time_col: str,
    event_col: str,
    features: Sequence[str],
    clinical: Sequence[str] = (),
    model: str | SurvivalModel | None = None,
    folds: int | None = None,
    seed: int | None = None,
    settings: SurvivalSettings | None = None,
) -> SurvivalResult:
    """Cross-validate a penalised Cox model and fit the final model on all rows.

    Args:
        df: One row per patient.
        time_col: Follow-up time column.
        event_col: Event indicator column (1 = event, 0 = censored).
        features: Radiomic feature columns (selected inside each training fold).
        clinical: Clinical columns (age, …), kept as adjustment covariates unless
            ``settings.select_clinical``.
        model: ``"cox"`` or ``"spline_cox"``; overrides ``settings.model``.
        folds: Cross-validation folds; overrides ``settings.folds``.
        seed: Seed for folds and bootstrap; overrides ``settings.seed``.
        settings: Everything else (see :class:`SurvivalSettings`).

    Raises:
        ConfigError: Missing or repeated columns.
        DatasetError: Invalid time/event values, or too few events.

    Example:
        >>> res = fit_survival(table, time_col="os_days", event_col="death",
        ...                    features=radiomic_cols, clinical=["age"])  # doctest: +SKIP
        >>> print(res.c_index)  # doctest: +SKIP
    """
    base = settings or SurvivalSettings()
    overrides = {"model": model, "folds": folds, "seed": seed}
    fields = base.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    s = SurvivalSettings.model_validate(fields)
    _check_frame(df, time_col, event_col, [*features, *clinical], s.folds)
    df = df.reset_index(drop=True)
    cols: dict[str, Any] = {
        "time_col": time_col, "event_col": event_col,
        "features": list(features), "clinical": list(clinical),
    }  # fmt: skip
    time = df[time_col].to_numpy(np.float64)
    event = df[event_col].to_numpy().astype(np.int64)
    auc_times = np.asarray(s.auc_times or _default_auc_times(time, event), dtype=np.float64)
    cv = _cross_validate(df, s, cols, auc_times)
    truth = np.column_stack([time, event, cv.fold]).astype(np.float64)
    ci = bootstrap_ci(
        _mean_fold_c_index, truth, cv.risk, n_resamples=s.n_bootstrap,
        confidence=s.confidence, method="percentile", seed=s.seed,
    )  # fmt: skip
    logrank = logrank_risk_groups(time, event, cv.group)
    final = SurvivalPipeline(s).fit(df, **cols)
    hr = final.hazard_ratios()
    counts = pd.Series([f for sel in cv.selected for f in sel], dtype=object).value_counts()
    auc = _nanmean_columns(np.vstack(cv.fold_auc))
    figures = {
        "km_risk_groups": kaplan_meier_png(time, event, cv.group, p_value=logrank.p_value),
        "forest": forest_plot_png(hr),
    }
    logger.info("survival %s: CV C-index %s", s.model, ci)
    return SurvivalResult(
        settings=s,
        c_index=ci,
        fold_c_index=tuple(cv.fold_c),
        auc_times=tuple(float(t) for t in auc_times),
        time_dependent_auc=tuple(float(a) for a in auc),
        logrank=logrank,
        hazard_ratios=hr,
        selected_features=tuple(f for f in final.strongest() if f in final.selected_),
        strongest=tuple(final.strongest()),
        selection_frequency={str(k): float(v) / s.folds for k, v in counts.items()},
        oof_risk=cv.risk,
        risk_group=cv.group,
        figures=figures,
    )
