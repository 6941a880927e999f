"""Survival metrics: Harrell's C-index, cumulative/dynamic time-dependent AUC, risk groups.

Risk scores follow the Cox convention: a higher score means a higher hazard (shorter
survival). Every function takes plain per-patient arrays ``time``, ``event`` (1 = event
observed, 0 = censored) and ``risk``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lifelines.statistics import multivariate_logrank_test
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "LogRankResult",
    "assign_risk_groups",
    "compute_c_index",
    "compute_time_dependent_auc",
    "logrank_risk_groups",
    "risk_group_cutpoints",
]

_CHUNK = 2048


def _survival_arrays(
    time: ArrayLike, event: ArrayLike, risk: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.float64]]:
    """Validate and convert ``time``, ``event`` and (optionally) ``risk``."""
    t = np.asarray(time, dtype=np.float64).ravel()
    e_raw = np.asarray(event).ravel()
    if e_raw.size != t.size:
        raise ValueError(f"event has {e_raw.size} entries but time has {t.size}")
    if not np.all(np.isin(e_raw, (0, 1, True, False))):
        raise ValueError("event must hold only 0/1 (1 = event observed, 0 = censored)")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("time must be finite and non-negative; drop or fix those rows")
    r = np.zeros_like(t) if risk is None else np.asarray(risk, dtype=np.float64).ravel()
    if r.size != t.size:
        raise ValueError(f"risk has {r.size} entries but time has {t.size}")
    if not np.all(np.isfinite(r)):
        raise ValueError("risk contains NaN or infinite values")
    return t, e_raw.astype(bool), r


def compute_c_index(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's concordance index of a risk score.

    A pair (i, j) is comparable when ``time[i] < time[j]`` and ``i`` had the event; it is
    concordant when ``risk[i] > risk[j]``; tied risks count one half. Ties in time count
    as comparable only when ``i`` had the event and ``j`` was censored (the censored
    patient was still at risk), as in ``lifelines.utils.concordance_index``.

    Returns:
        The C-index in [0, 1], or NaN when no pair is comparable.
    """
    t, e, r = _survival_arrays(time, event, risk)
    num = 0.0
    den = 0
    cases = np.flatnonzero(e)
    for start in range(0, cases.size, _CHUNK):
        i = cases[start : start + _CHUNK]
        ti, ri = t[i, None], r[i, None]
        comparable = (ti < t[None, :]) | ((ti == t[None, :]) & ~e[None, :])
        num += float(np.sum(comparable & (ri > r[None, :])))
        num += 0.5 * float(np.sum(comparable & (ri == r[None, :])))
        den += int(np.sum(comparable))
    return num / den if den else float("nan")


def _censoring_survival(
    time: NDArray[np.float64], event: NDArray[np.bool_], at: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Kaplan–Meier estimate of the censoring survival G(t−) just before each ``at``.

    Censorings are the "events" here; at tied times, events precede censorings.
    """
    cens_times, censored = np.unique(time[~event], return_counts=True)
    at_risk = time.size - np.searchsorted(np.sort(time), cens_times, side="left")
    surv = np.r_[1.0, np.cumprod(1.0 - censored / at_risk)]
    idx = np.searchsorted(cens_times, at, side="left")  # censorings strictly before ``at``
    return surv[idx]


def compute_time_dependent_auc(
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    times: ArrayLike,
    *,
    censoring_time: ArrayLike | None = None,
    censoring_event: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Cumulative/dynamic AUC(t) with inverse-probability-of-censoring weights.

    Cases at ``t`` are patients with an event at or before ``t``; controls are patients
    still event-free after ``t``. Each case is weighted by ``1 / G(T_i−)``, with ``G``
    the Kaplan–Meier survival of the censoring times (Uno et al. 2007; Hung & Chiang
    2010); controls share the weight ``1 / G(t)``, which cancels.

    Args:
        time: Follow-up time per patient.
        event: 1 when the event was observed, 0 when censored.
        risk: Predicted risk (higher = earlier event).
        times: Horizons ``t`` at which to evaluate.
        censoring_time: Times used to estimate ``G`` (default ``time``), e.g. the whole
            cohort when ``time`` is one test fold.
        censoring_event: Events matching ``censoring_time``.

    Returns:
        AUC per horizon; NaN where there are no cases or no controls.
    """
    t, e, r = _survival_arrays(time, event, risk)
    horizons = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if not np.all(np.isfinite(horizons)):
        raise ValueError("times must be finite")
    if (censoring_time is None) != (censoring_event is None):
        raise ValueError("give both censoring_time and censoring_event, or neither")
    if censoring_time is None or censoring_event is None:
        ct, ce = t, e
    else:
        ct, ce, _ = _survival_arrays(censoring_time, censoring_event)
    g = _censoring_survival(ct, ce, t)
    weight = np.where(g > 0, 1.0 / np.where(g > 0, g, 1.0), 0.0)
    out = np.full(horizons.size, np.nan)
    for k, h in enumerate(horizons):
        cases = e & (t <= h)
        controls = t > h
        if not cases.any() or not controls.any():
            continue
        rc, rn = r[cases, None], r[None, controls]
        wins = (rc > rn).sum(axis=1) + 0.5 * (rc == rn).sum(axis=1)
        out[k] = float(np.sum(weight[cases] * wins) / (np.sum(weight[cases]) * controls.sum()))
    return out


def risk_group_cutpoints(risk: ArrayLike, *, n_groups: int = 2) -> NDArray[np.float64]:
    """Quantile cut-points that split ``risk`` into ``n_groups`` equal-sized groups.

    Compute them on training predictions and apply them to test predictions with
    :func:`assign_risk_groups`, so the split does not peek at the test patients.
    """
    if n_groups not in (2, 3, 4):
        raise ValueError(f"n_groups must be 2 (median), 3 (tertiles) or 4, got {n_groups}")
    r = np.asarray(risk, dtype=np.float64).ravel()
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError("risk must be a non-empty array of finite values")
    return np.quantile(r, np.arange(1, n_groups) / n_groups)


def assign_risk_groups(risk: ArrayLike, cutpoints: ArrayLike) -> NDArray[np.int64]:
    """Group index per patient: 0 = lowest risk, ``len(cutpoints)`` = highest."""
    r = np.asarray(risk, dtype=np.float64).ravel()
    return np.searchsorted(np.asarray(cutpoints, dtype=np.float64), r, side="right").astype(
        np.int64
    )


@dataclass(frozen=True)
class LogRankResult:
    """Log-rank test across risk groups.

    Attributes:
        statistic: Chi-squared statistic.
        p_value: Its p-value with ``n_groups − 1`` degrees of freedom.
        n_groups: Groups present.
        counts: Patients per group, lowest risk first.
        events: Events per group, lowest risk first.
    """

    statistic: float
    p_value: float
    n_groups: int
    counts: tuple[int, ...]
    events: tuple[int, ...]


def logrank_risk_groups(time: ArrayLike, event: ArrayLike, groups: ArrayLike) -> LogRankResult:
    """Log-rank test (``lifelines.statistics.multivariate_logrank_test``) between groups.

    Raises:
        ValueError: When fewer than two groups hold patients.
    """
    t, e, _ = _survival_arrays(time, event)
    g = np.asarray(groups).ravel()
    if g.size != t.size:
        raise ValueError(f"groups has {g.size} entries but time has {t.size}")
    labels = np.unique(g)
    if labels.size < 2:
        raise ValueError("log-rank test needs at least two non-empty risk groups")
    res = multivariate_logrank_test(t, g, e.astype(int))
    return LogRankResult(
        statistic=float(res.test_statistic),
        p_value=float(res.p_value),
        n_groups=int(labels.size),
        counts=tuple(int(np.sum(g == lab)) for lab in labels),
        events=tuple(int(np.sum(e[g == lab])) for lab in labels),
    )
