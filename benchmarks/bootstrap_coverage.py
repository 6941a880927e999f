"""Coverage of 95 % AUC intervals on a simulated binormal classifier with a known AUC.

Scores of negatives ~ N(0, 1 + τ²) and positives ~ N(μ, 1 + τ²), so the true AUC is
Φ(μ / √(2(1 + τ²))). Two scenarios:

* ``independent``: one case per patient (τ = 0).
* ``clustered``: two cases per patient sharing the patient's label and a random effect
  ``u ~ N(0, τ²)``; the cases are correlated, so only resampling patients (the cluster
  bootstrap) keeps the nominal coverage. The case-level bootstrap is shown for contrast.

Each repetition draws a new data set and builds percentile and BCa cluster-bootstrap
intervals and a DeLong interval; the script prints how often each covers the truth.
Target: 93–97 % for the patient-level intervals.

Usage:
    .venv/bin/python benchmarks/bootstrap_coverage.py [--reps 200] [--resamples 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import ndtr, ndtri

from medai.evaluation import bootstrap_ci, compute_roc_auc, delong_ci


def simulate(
    rng: np.random.Generator, *, patients: int, cases_per_patient: int, mu: float, tau: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and patient ids for one simulated test set."""
    label = rng.integers(0, 2, patients)
    effect = rng.normal(0.0, tau, patients) if tau > 0 else np.zeros(patients)
    ids = np.repeat(np.arange(patients), cases_per_patient)
    y = label[ids]
    score = mu * y + effect[ids] + rng.normal(0.0, 1.0, ids.size)
    return y, score, ids


def run(
    *, scenario: str, reps: int, resamples: int, patients: int, auc: float, seed: int
) -> dict[str, float]:
    tau = 0.0 if scenario == "independent" else 1.0
    per_patient = 1 if scenario == "independent" else 2
    mu = float(np.sqrt(2.0 * (1.0 + tau**2)) * ndtri(auc))
    truth = float(ndtr(mu / np.sqrt(2.0 * (1.0 + tau**2))))
    rng = np.random.default_rng(seed)
    hits = {"percentile": 0, "bca": 0, "delong": 0, "case_level_percentile": 0}
    widths = {key: 0.0 for key in hits}
    for rep in range(reps):
        y, score, ids = simulate(
            rng, patients=patients, cases_per_patient=per_patient, mu=mu, tau=tau
        )
        intervals = {
            "percentile": bootstrap_ci(
                compute_roc_auc,
                y,
                score,
                clusters=ids,
                n_resamples=resamples,
                method="percentile",
                seed=rep,
            ),
            "bca": bootstrap_ci(
                compute_roc_auc,
                y,
                score,
                clusters=ids,
                n_resamples=resamples,
                method="bca",
                seed=rep,
            ),
            "delong": delong_ci(y, score),
            "case_level_percentile": bootstrap_ci(
                compute_roc_auc, y, score, n_resamples=resamples, method="percentile", seed=rep
            ),
        }
        for key, ci in intervals.items():
            hits[key] += int(ci.low <= truth <= ci.high)
            widths[key] += ci.high - ci.low
    result = {f"{key}_coverage": hits[key] / reps for key in hits}
    result.update({f"{key}_width": widths[key] / reps for key in widths})
    result["true_auc"] = truth
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--auc", type=float, default=0.80)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    print(
        f"binormal classifier, true AUC {args.auc:.2f}, {args.patients} patients, "
        f"{args.reps} repetitions, {args.resamples} bootstrap resamples, 95 % intervals"
    )
    print(f"{'scenario':<12} {'interval':<24} {'coverage':>9} {'mean width':>11}")
    for scenario in ("independent", "clustered"):
        start = time.perf_counter()
        res = run(
            scenario=scenario,
            reps=args.reps,
            resamples=args.resamples,
            patients=args.patients,
            auc=args.auc,
            seed=args.seed,
        )
        for key in ("percentile", "bca", "delong", "case_level_percentile"):
            label = {
                "percentile": "patient bootstrap, pct",
                "bca": "patient bootstrap, BCa",
                "delong": "DeLong (cases indep.)",
                "case_level_percentile": "case bootstrap, pct",
            }[key]
            cov, width = res[f"{key}_coverage"], res[f"{key}_width"]
            print(f"{scenario:<12} {label:<24} {100 * cov:>8.1f}% {width:>11.3f}")
        print(f"{scenario:<12} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
