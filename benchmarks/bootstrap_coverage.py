"""Coverage of 95 % AUC intervals on a simulated binormal classifier with a known AUC.

Each patient has a label (positive with probability ½) and ``k`` cases. A case's score
is ``μ·label + u + e`` with a patient effect ``u ~ N(0, τ²)`` shared by the patient's
cases and ``e ~ N(0, 1)``; no positive–negative pair comes from one patient, so the true
AUC is ``Φ(μ / √(2(1 + τ²)))`` whatever ``k``. Settings: 50 and 200 patients, true AUC
0.7 and 0.9, ``independent`` (k = 1, τ = 0) and ``clustered`` (k = 3 correlated cases
per patient, τ = 1: within-patient correlation 0.5).

Intervals per simulated data set: medai's patient (cluster) bootstrap, percentile and
BCa; DeLong (which treats cases as independent); and a case-level percentile bootstrap
(what a tool that ignores patients does). Coverage is the share of repetitions whose
interval holds the true AUC, given with its Monte-Carlo standard error
``√(p(1 − p)/R)`` and a 95 % Wilson interval.

Speed: the bootstrap replicates are computed at once for all resamples: the resampling
draws are exactly those of :func:`medai.evaluation.bootstrap_ci` (same generator, same
seed, patients drawn with replacement), each resample becomes a row of case weights, and
a weighted Mann–Whitney AUC (mid-ranks for ties, integer arithmetic) is evaluated for
every row; the interval bounds come from medai's own :func:`bootstrap_interval`. The
first ``--check`` repetitions of every setting are also run through ``bootstrap_ci``
itself and must give the same bounds (else the script stops).

Usage (one dedicated core, one thread, for published figures)::

    flock /tmp/medai_bench.lock taskset -c 1 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bootstrap_coverage.py --json cov.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from medai.evaluation import bootstrap_ci, bootstrap_interval, compute_roc_auc, delong_ci

METHODS = {
    "patient_percentile": "patient bootstrap, percentile",
    "patient_bca": "patient bootstrap, BCa",
    "delong": "DeLong (cases independent)",
    "case_percentile": "case-level bootstrap, percentile",
}


@dataclass(frozen=True)
class Setting:
    """One simulation setting."""

    patients: int
    auc: float
    structure: str  # "independent" or "clustered"

    @property
    def cases_per_patient(self) -> int:
        return 1 if self.structure == "independent" else 3

    @property
    def tau(self) -> float:
        return 0.0 if self.structure == "independent" else 1.0

    @property
    def mu(self) -> float:
        return float(math.sqrt(2.0 * (1.0 + self.tau**2)) * ndtri(self.auc))

    @property
    def true_auc(self) -> float:
        return float(ndtr(self.mu / math.sqrt(2.0 * (1.0 + self.tau**2))))


def simulate(
    rng: np.random.Generator, setting: Setting
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.int64]]:
    """Labels, scores and patient ids (0..patients-1, grouped) of one simulated test set."""
    label = rng.integers(0, 2, setting.patients)
    effect = rng.normal(0.0, setting.tau, setting.patients)
    ids = np.repeat(np.arange(setting.patients), setting.cases_per_patient)
    score = setting.mu * label[ids] + effect[ids] + rng.normal(0.0, 1.0, ids.size)
    return label[ids], score, ids


# -- vectorised replicates -----------------------------------------------------------------
def weighted_auc(
    truth: NDArray[np.int64], score: NDArray[np.float64], weights: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Mann–Whitney AUC (mid-ranks for ties) for each row of integer case weights.

    Row ``b`` equals ``compute_roc_auc`` on the data set holding case ``i``
    ``weights[b, i]`` times: ``Σ w_i w_j [s_i > s_j] + ½ [s_i = s_j]`` over positive ``i``
    and negative ``j``, divided by ``W_pos · W_neg``; NaN where a class is absent.
    """
    order = np.argsort(score, kind="stable")
    s, pos = score[order], truth[order] == 1
    w = weights[:, order]
    neg_cum = np.cumsum(np.where(pos, 0, w), axis=1)
    # Tied scores form one level: [first, last] case of each case's level.
    starts = np.r_[True, s[1:] != s[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(s.size), 0))
    ends = np.r_[s[1:] != s[:-1], True]
    last = np.minimum.accumulate(np.where(ends, np.arange(s.size), s.size)[::-1])[::-1]
    below = np.where(first > 0, neg_cum[:, np.maximum(first - 1, 0)], 0)
    at = neg_cum[:, last] - below
    num2 = np.sum(np.where(pos, w * (2 * below + at), 0), axis=1)
    den2 = 2 * np.sum(np.where(pos, w, 0), axis=1) * np.sum(np.where(pos, 0, w), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den2 > 0, num2 / np.maximum(den2, 1), np.nan)


def draw_weights(
    units: NDArray[np.int64], n_units: int, n_resamples: int, seed: int
) -> NDArray[np.int64]:
    """Case weights of ``n_resamples`` bootstrap resamples of units (patients or cases).

    The draws are those of ``bootstrap_ci(..., seed=seed)``: ``n_units`` units with
    replacement per resample from ``default_rng(seed).integers``.
    """
    draws = np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))
    flat = (draws + np.arange(n_resamples)[:, None] * n_units).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n_units).reshape(n_resamples, n_units)
    return counts[:, units]


def _valid(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Finite replicates; more than 10 % undefined stops, as in ``bootstrap_ci``."""
    keep = np.isfinite(values)
    if (~keep).sum() > 0.1 * values.size:
        raise RuntimeError("AUC undefined in more than 10 % of bootstrap replicates")
    return values[keep]


def intervals(
    truth: NDArray[np.int64],
    score: NDArray[np.float64],
    ids: NDArray[np.int64],
    *,
    n_resamples: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """The four 95 % intervals of one data set."""
    n_patients, n_cases = int(ids.max()) + 1, ids.size
    estimate = float(compute_roc_auc(truth, score))
    patient = _valid(weighted_auc(truth, score, draw_weights(ids, n_patients, n_resamples, seed)))
    jack_w = (ids[None, :] != np.arange(n_patients)[:, None]).astype(np.int64)
    jack = weighted_auc(truth, score, jack_w)
    jack = jack[np.isfinite(jack)]
    case = _valid(
        weighted_auc(truth, score, draw_weights(np.arange(n_cases), n_cases, n_resamples, seed))
    )
    dl = delong_ci(truth, score)
    return {
        "patient_percentile": bootstrap_interval(estimate, patient, method="percentile"),
        "patient_bca": bootstrap_interval(estimate, patient, jack, method="bca"),
        "delong": (dl.low, dl.high),
        "case_percentile": bootstrap_interval(estimate, case, method="percentile"),
    }


def check_against_medai(
    truth: NDArray[np.int64],
    score: NDArray[np.float64],
    ids: NDArray[np.int64],
    got: dict[str, tuple[float, float]],
    *,
    n_resamples: int,
    seed: int,
) -> None:
    """Stop unless the vectorised intervals equal ``bootstrap_ci``'s own."""
    common = {"n_resamples": n_resamples, "seed": seed}
    reference = {
        "patient_percentile": bootstrap_ci(
            compute_roc_auc, truth, score, clusters=ids, method="percentile", **common
        ),
        "patient_bca": bootstrap_ci(
            compute_roc_auc, truth, score, clusters=ids, method="bca", **common
        ),
        "case_percentile": bootstrap_ci(
            compute_roc_auc, truth, score, method="percentile", **common
        ),
    }
    for key, ci in reference.items():
        if not np.allclose(got[key], (ci.low, ci.high), rtol=0, atol=1e-12):
            raise RuntimeError(f"{key}: vectorised {got[key]} != bootstrap_ci {ci.low, ci.high}")


# -- coverage --------------------------------------------------------------------------
def wilson(hits: int, reps: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    p = hits / reps
    centre = (p + z * z / (2 * reps)) / (1 + z * z / reps)
    half = z * math.sqrt(p * (1 - p) / reps + z * z / (4 * reps * reps)) / (1 + z * z / reps)
    return centre - half, centre + half


def run_setting(
    setting: Setting, *, reps: int, n_resamples: int, seed: int, check: int
) -> dict[str, dict[str, float]]:
    """Coverage, Monte-Carlo error, misses by side and mean width of each method."""
    rng = np.random.default_rng(seed)
    truth_auc = setting.true_auc
    hits = dict.fromkeys(METHODS, 0)
    below = dict.fromkeys(METHODS, 0)  # interval entirely below the truth
    width = dict.fromkeys(METHODS, 0.0)
    for rep in range(reps):
        truth, score, ids = simulate(rng, setting)
        got = intervals(truth, score, ids, n_resamples=n_resamples, seed=rep)
        if rep < check:
            check_against_medai(truth, score, ids, got, n_resamples=n_resamples, seed=rep)
        for key, (low, high) in got.items():
            hits[key] += int(low <= truth_auc <= high)
            below[key] += int(high < truth_auc)
            width[key] += high - low
    out = {}
    for key in METHODS:
        p = hits[key] / reps
        lo, hi = wilson(hits[key], reps)
        out[key] = {
            "coverage": p,
            "mc_se": math.sqrt(p * (1 - p) / reps),
            "wilson_low": lo,
            "wilson_high": hi,
            "miss_below": below[key] / reps,
            "miss_above": (reps - hits[key] - below[key]) / reps,
            "mean_width": width[key] / reps,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="repetitions per setting")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--patients", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--auc", type=float, nargs="+", default=[0.7, 0.9])
    parser.add_argument("--structure", nargs="+", default=["independent", "clustered"])
    parser.add_argument("--check", type=int, default=3, help="reps checked against bootstrap_ci")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", type=Path, help="write all figures here")
    args = parser.parse_args()
    print(
        f"binormal classifier; {args.reps} repetitions per setting, {args.resamples} bootstrap "
        f"resamples, 95 % intervals; coverage ± Monte-Carlo SE [95 % Wilson interval]"
    )
    print(f"{'setting':<28} {'interval':<34} {'coverage':>16} {'95 % MC interval':>17} "
          f"{'miss lo/hi %':>13} {'width':>7}")  # fmt: skip
    results = []
    grid = itertools.product(args.structure, args.patients, args.auc)
    for index, (structure, patients, auc) in enumerate(grid):
        setting = Setting(patients=patients, auc=auc, structure=structure)
        start = time.perf_counter()
        res = run_setting(
            setting,
            reps=args.reps,
            n_resamples=args.resamples,
            seed=args.seed + index,
            check=args.check,
        )
        seconds = time.perf_counter() - start
        name = f"{structure} n={patients} AUC={setting.true_auc:.2f}"
        for key, r in res.items():
            cov = f"{100 * r['coverage']:.1f} ± {100 * r['mc_se']:.1f} %"
            mc = f"[{100 * r['wilson_low']:.1f}–{100 * r['wilson_high']:.1f}]"
            miss = f"{100 * r['miss_below']:.1f}/{100 * r['miss_above']:.1f}"
            print(f"{name:<28} {METHODS[key]:<34} {cov:>16} {mc:>17} {miss:>13} "
                  f"{r['mean_width']:>7.3f}")  # fmt: skip
        print(f"{name:<28} ({seconds:.0f} s)", flush=True)
        results.append({**setting.__dict__, "true_auc": setting.true_auc, "seconds": seconds,
                        "methods": res})  # fmt: skip
    if args.json:
        meta = {k: getattr(args, k) for k in ("reps", "resamples", "seed", "check")}
        args.json.write_text(json.dumps({**meta, "settings": results}, indent=2))


if __name__ == "__main__":
    main()
