"""Clinical variables and survival for the synthetic cohort, from a documented model.

Survival follows a Weibull proportional-hazards model

    h(t | x) = (rho / lam) (t / lam)^(rho - 1) exp(beta · x)

with covariates ``x`` = (log whole-tumour volume in mL minus log 60, enhancing
fraction ET / WT, (age - 50) / 10). A Cox model fitted to the table recovers ``beta``.
Follow-up ends at an administrative censoring time drawn uniformly, so ``event`` is 1
when death was observed and 0 when the patient was censored alive.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medai.data.synth.tumour import Grade

__all__ = ["SurvivalModel", "draw_age_sex", "draw_survival", "survival_covariates"]


@dataclass(frozen=True)
class SurvivalModel:
    """True parameters of the survival model (written to ``survival_model.json``)."""

    rho: float = 1.4  # Weibull shape (> 1: hazard rises with time)
    lam_days: float = 1100.0  # Weibull scale at x = 0
    beta: dict[str, float] = field(
        default_factory=lambda: {
            "log_volume_ml_minus_log60": 0.5,
            "enhancing_fraction": 3.0,
            "age_decades_minus_50": 0.45,
        }
    )
    censor_min_days: float = 180.0
    censor_max_days: float = 2500.0

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "model": "Weibull proportional hazards",
            "hazard": "h(t|x) = (rho/lam) * (t/lam)**(rho-1) * exp(sum(beta[k] * x[k]))",
            "covariates": {
                "log_volume_ml_minus_log60": "ln(whole tumour volume in mL) - ln(60)",
                "enhancing_fraction": "enhancing tumour volume / whole tumour volume",
                "age_decades_minus_50": "(age in years - 50) / 10",
            },
            "censoring": "administrative, uniform between censor_min_days and censor_max_days",
            **asdict(self),
        }
        return json.dumps(doc, indent=2) + "\n"


def survival_covariates(
    wt_ml: ArrayLike, et_ml: ArrayLike, age: ArrayLike
) -> dict[str, NDArray[np.float64]]:
    """The model's covariates from tumour volumes (mL) and age (years)."""
    wt = np.asarray(wt_ml, dtype=np.float64)
    if np.any(wt <= 0):
        raise ValueError("wt_ml must be positive (a case without tumour has no survival model)")
    return {
        "log_volume_ml_minus_log60": np.log(wt) - np.log(60.0),
        "enhancing_fraction": np.asarray(et_ml, dtype=np.float64) / wt,
        "age_decades_minus_50": (np.asarray(age, dtype=np.float64) - 50.0) / 10.0,
    }


def draw_survival(
    rng: np.random.Generator,
    covariates: dict[str, NDArray[np.float64]],
    *,
    model: SurvivalModel | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Draw ``(time_days, event)`` by inverting the Weibull survival function.

    ``T = lam * (-ln U / exp(beta · x)) ** (1 / rho)``; observed time is
    ``min(T, C)`` rounded up to whole days, ``event = T <= C``.
    """
    model = model or SurvivalModel()
    missing = set(model.beta) - set(covariates)
    if missing:
        raise ValueError(f"covariates lack {sorted(missing)}; use survival_covariates()")
    lin = sum(model.beta[k] * np.asarray(covariates[k], np.float64) for k in model.beta)
    lin = np.atleast_1d(np.asarray(lin, dtype=np.float64))
    u = rng.uniform(1e-12, 1.0, lin.shape)
    t = model.lam_days * (-np.log(u) / np.exp(lin)) ** (1.0 / model.rho)
    c = rng.uniform(model.censor_min_days, model.censor_max_days, lin.shape)
    time = np.maximum(np.ceil(np.minimum(t, c)), 1).astype(np.int64)
    return time, (t <= c).astype(np.int64)


def draw_age_sex(rng: np.random.Generator, *, grade: Grade) -> tuple[float, str]:
    """Age at diagnosis (HGG ~ N(61, 12), LGG ~ N(43, 13) years) and sex (58 % male)."""
    if grade is Grade.HGG:
        age = float(np.clip(rng.normal(61.0, 12.0), 20.0, 88.0))
    else:
        age = float(np.clip(rng.normal(43.0, 13.0), 18.0, 80.0))
    sex = "M" if rng.random() < 0.58 else "F"
    return round(age, 1), sex
