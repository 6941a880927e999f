"""A leak-free survival pipeline: impute → filter → rank → prune → standardise → Cox.

Everything learnt from data (medians, variances, univariable concordance, Spearman
correlations, means and standard deviations, spline knots, coefficients) is learnt in
:meth:`SurvivalPipeline.fit` from the rows it is given, so inside cross-validation it
sees only the training fold.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from enum import StrEnum
from typing import TypeVar

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata

from medai.radiomics.survival_metrics import compute_c_index

__all__ = ["SurvivalModel", "SurvivalPipeline", "SurvivalSettings"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T", bound="SurvivalPipeline")
_TIME, _EVENT = "__medai_time", "__medai_event"
# Harrell's knot placements for restricted cubic splines (quantiles by knot count).
_KNOT_QUANTILES = {
    3: (0.10, 0.50, 0.90),
    4: (0.05, 0.35, 0.65, 0.95),
    5: (0.05, 0.275, 0.50, 0.725, 0.95),
}


class SurvivalModel(StrEnum):
    """Model family: linear Cox, or Cox on restricted-cubic-spline expanded covariates."""

    COX = "cox"
    SPLINE_COX = "spline_cox"


class SurvivalSettings(BaseModel):
    """Everything that changes a survival fit, in one validated object.

    Attributes:
        model: ``"cox"`` (linear log-hazard) or ``"spline_cox"`` (each continuous
            covariate expanded in a restricted cubic spline, so U- or J-shaped effects
            are captured while the model stays a penalised Cox model).
        penalizer: Strength of the elastic-net penalty on the coefficients.
        l1_ratio: Share of L1 in the penalty (0 = ridge, 1 = lasso).
        top_k: Radiomic features kept after filtering (``None`` keeps all survivors).
        max_correlation: Drop a feature whose |Spearman ρ| with a better-ranked kept
            feature exceeds this.
        max_mode_fraction: Drop a near-constant feature whose most frequent value covers
            more than this share of the training rows.
        select_clinical: Subject clinical columns to selection too (default: always
            kept, as adjustment covariates).
        spline_knots: Knots per restricted cubic spline (3–5).
        folds: Cross-validation folds (stratified on the event indicator).
        n_bootstrap: Bootstrap replicates for the C-index interval.
        confidence: Interval coverage.
        risk_groups: 2 (median split) or 3 (tertiles) for Kaplan–Meier curves.
        auc_times: Horizons for the time-dependent AUC; default the 25th, 50th and
            75th percentiles of the observed event times.
        seed: Seed for folds and bootstrap.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: SurvivalModel = SurvivalModel.COX
    penalizer: float = Field(default=0.1, ge=0.0)
    l1_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    top_k: int | None = Field(default=10, ge=1)
    max_correlation: float = Field(default=0.9, gt=0.0, le=1.0)
    max_mode_fraction: float = Field(default=0.95, gt=0.0, le=1.0)
    select_clinical: bool = False
    spline_knots: int = Field(default=4, ge=3, le=5)
    folds: int = Field(default=5, ge=2)
    n_bootstrap: int = Field(default=1000, ge=10)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    risk_groups: int = Field(default=2, ge=2, le=4)
    auc_times: tuple[float, ...] | None = None
    seed: int = 0


def _rcs_basis(x: NDArray[np.float64], knots: NDArray[np.float64]) -> NDArray[np.float64]:
    """Non-linear columns of Harrell's restricted cubic spline (linear beyond the ends)."""
    k = knots.size
    t_last, t_prev = knots[-1], knots[-2]
    scale = (knots[-1] - knots[0]) ** 2

    def cube(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.maximum(v, 0.0) ** 3

    cols = [
        (
            cube(x - knots[j])
            - cube(x - t_prev) * (t_last - knots[j]) / (t_last - t_prev)
            + cube(x - t_last) * (t_prev - knots[j]) / (t_last - t_prev)
        )
        / scale
        for j in range(k - 2)
    ]
    return np.column_stack(cols) if cols else np.empty((x.size, 0))


def _near_constant(values: NDArray[np.float64], max_mode_fraction: float) -> bool:
    """True when one value covers more than ``max_mode_fraction`` of the rows."""
    _, counts = np.unique(values, return_counts=True)
    return bool(counts.size < 2 or counts.max() / values.size > max_mode_fraction)


def _univariable_strength(
    x: NDArray[np.float64], time: NDArray[np.float64], event: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Univariable concordance ``|C − 0.5|`` per column (the Cox fit orients the sign)."""
    return np.array([abs(compute_c_index(time, event, x[:, j]) - 0.5) for j in range(x.shape[1])])


def _prune_correlated(x: NDArray[np.float64], order: NDArray[np.intp], limit: float) -> list[int]:
    """Greedy pruning in rank order: keep a column unless |Spearman ρ| > ``limit``."""
    if order.size == 0:
        return []
    ranks = rankdata(x[:, order], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.nan_to_num(np.abs(np.corrcoef(ranks, rowvar=False)), nan=0.0)
    rho = np.atleast_2d(rho)
    kept: list[int] = []
    for pos in range(order.size):
        if not kept or rho[pos, kept].max() <= limit:
            kept.append(pos)
    return [int(order[p]) for p in kept]


class SurvivalPipeline:
    """Feature selection, standardisation and a penalised Cox model in one object.

    Example:
        >>> pipe = SurvivalPipeline().fit(train, time_col="os", event_col="dead",
        ...                               features=feats, clinical=["age"])  # doctest: +SKIP
        >>> risk = pipe.predict_risk(test)  # doctest: +SKIP
    """

    def __init__(self, settings: SurvivalSettings | None = None) -> None:
        self.settings = settings or SurvivalSettings()
        self.selected_: list[str] = []
        self.columns_: list[str] = []
        self._medians: pd.Series = pd.Series(dtype=np.float64)
        self._means: NDArray[np.float64] = np.empty(0)
        self._stds: NDArray[np.float64] = np.empty(0)
        self._knots: dict[str, NDArray[np.float64]] = {}
        self._model: CoxPHFitter | None = None
        self._train_design = pd.DataFrame()

    # -- fitting ----------------------------------------------------------------------
    def fit(
        self: _T,
        df: pd.DataFrame,
        *,
        time_col: str,
        event_col: str,
        features: Sequence[str],
        clinical: Sequence[str] = (),
    ) -> _T:
        """Select covariates on ``df`` and fit the Cox model on them.

        Raises:
            ValueError: Missing columns, no events, or no covariate left after filtering.
        """
        s = self.settings
        time = df[time_col].to_numpy(np.float64)
        event = df[event_col].to_numpy().astype(bool)
        if not event.any():
            raise ValueError(f"{event_col!r} has no events in these rows; cannot fit Cox")
        candidates = list(features) + (list(clinical) if s.select_clinical else [])
        forced = [] if s.select_clinical else list(clinical)
        x = df[candidates + forced].apply(pd.to_numeric, errors="coerce").astype(np.float64)
        x = x.replace([np.inf, -np.inf], np.nan)
        self._medians = x.median()
        x = x.fillna(self._medians)
        self.selected_ = self._select(x[candidates].to_numpy(), candidates, time, event)
        self.columns_ = self.selected_ + [c for c in forced if not x[c].isna().all()]
        if not self.columns_:
            raise ValueError(
                "no covariate left after filtering (all near-constant?); "
                "relax max_mode_fraction or supply other features"
            )
        values = x[self.columns_].to_numpy()
        self._means = values.mean(axis=0)
        self._stds = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        self._knots = {}
        z = (values - self._means) / self._stds
        if s.model is SurvivalModel.SPLINE_COX:
            quantiles = _KNOT_QUANTILES[s.spline_knots]
            for j, name in enumerate(self.columns_):
                knots = np.unique(np.quantile(z[:, j], quantiles))
                if knots.size == s.spline_knots:
                    self._knots[name] = knots
        design = self._design(z)
        self._train_design = design.copy()
        design[_TIME], design[_EVENT] = time, event.astype(int)
        self._model = self._fit_cox(design)
        return self

    def _select(
        self,
        x: NDArray[np.float64],
        names: list[str],
        time: NDArray[np.float64],
        event: NDArray[np.bool_],
    ) -> list[str]:
        """Near-constant filter, univariable concordance ranking, Spearman pruning, top-k."""
        s = self.settings
        keep = np.array(
            [not _near_constant(x[:, j], s.max_mode_fraction) for j in range(x.shape[1])],
            dtype=bool,
        )
        idx = np.flatnonzero(keep)
        strength = _univariable_strength(x[:, idx], time, event)
        order = idx[np.argsort(-strength, kind="stable")]
        kept = _prune_correlated(x, order, s.max_correlation)
        if s.top_k is not None:
            kept = kept[: s.top_k]
        return [names[j] for j in kept]

    def _design(self, z: NDArray[np.float64]) -> pd.DataFrame:
        """Standardised covariates plus spline columns ``<name>__rcs<j>``."""
        parts: dict[str, NDArray[np.float64]] = {}
        for j, name in enumerate(self.columns_):
            parts[name] = z[:, j]
            if name in self._knots:
                basis = _rcs_basis(z[:, j], self._knots[name])
                for b in range(basis.shape[1]):
                    parts[f"{name}__rcs{b + 1}"] = basis[:, b]
        return pd.DataFrame(parts)

    def _fit_cox(self, design: pd.DataFrame) -> CoxPHFitter:
        """Fit lifelines' penalised Cox model; its warnings go to the log."""
        s = self.settings
        model = CoxPHFitter(penalizer=s.penalizer, l1_ratio=s.l1_ratio)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(design, duration_col=_TIME, event_col=_EVENT)
        for w in caught:
            logger.warning("lifelines: %s", w.message)
        return model

    # -- prediction -------------------------------------------------------------------
    def _require(self) -> CoxPHFitter:
        if self._model is None:
            raise RuntimeError("SurvivalPipeline is not fitted; call fit() first")
        return self._model

    def predict_risk(self, df: pd.DataFrame) -> NDArray[np.float64]:
        """Linear predictor (log partial hazard) per row; higher = higher hazard."""
        model = self._require()
        missing = [c for c in self.columns_ if c not in df.columns]
        if missing:
            raise ValueError(f"df lacks the fitted covariates {missing}")
        x = df[self.columns_].apply(pd.to_numeric, errors="coerce").astype(np.float64)
        x = x.replace([np.inf, -np.inf], np.nan).fillna(self._medians[self.columns_])
        design = self._design((x.to_numpy() - self._means) / self._stds)
        return np.asarray(model.predict_log_partial_hazard(design), dtype=np.float64).ravel()

    def hazard_ratios(self) -> pd.DataFrame:
        """Per model column: ``feature``, ``coef``, ``hr``, ``hr_low``, ``hr_high``, ``p``.

        Coefficients are per standard deviation of the training data.
        """
        summary = self._require().summary
        out = pd.DataFrame(
            {
                "feature": [str(c).split("__rcs")[0] for c in summary.index],
                "coef": summary["coef"].to_numpy(),
                "hr": summary["exp(coef)"].to_numpy(),
                "hr_low": summary["exp(coef) lower 95%"].to_numpy(),
                "hr_high": summary["exp(coef) upper 95%"].to_numpy(),
                "p": summary["p"].to_numpy(),
            },
            index=pd.Index([str(c) for c in summary.index], name="column"),
        )
        return out

    def effect_sizes(self) -> pd.Series:
        """Per covariate: SD over the training rows of its term in the log-hazard.

        For a linear term this is |coefficient| per SD; for a spline it folds all of the
        covariate's columns together, so linear and spline covariates compare fairly.
        """
        coef = self._require().params_
        sizes = {}
        for name in self.columns_:
            cols = [c for c in self._train_design.columns if c.split("__rcs")[0] == name]
            term = self._train_design[cols].to_numpy() @ coef[cols].to_numpy()
            sizes[name] = float(np.std(term))
        return pd.Series(sizes, dtype=np.float64).sort_values(ascending=False, kind="stable")

    def strongest(self, k: int | None = None) -> list[str]:
        """Covariates ordered by :meth:`effect_sizes`, strongest first."""
        names = [str(n) for n in self.effect_sizes().index]
        return names if k is None else names[:k]
