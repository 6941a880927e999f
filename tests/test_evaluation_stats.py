"""Bootstrap intervals, paired comparisons, DeLong and subgroup analysis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import ndtr, ndtri
from sklearn.metrics import roc_auc_score

from medai.evaluation import (
    age_bands,
    analyse_subgroups,
    bootstrap_ci,
    bootstrap_interval,
    bootstrap_mean_ci,
    compute_roc_auc,
    delong_ci,
    delong_components,
    delong_test,
    paired_bootstrap,
    paired_bootstrap_mean,
)

Z975 = float(ndtri(0.975))


def _mean_metric(_: np.ndarray, score: np.ndarray) -> float:
    return float(np.mean(score))


# -- the interval formulas on replicate sets with a known answer ------------------------
def test_percentile_and_bca_equal_for_symmetric_unbiased_replicates() -> None:
    boot = 5.0 + ndtri((np.arange(20000) + 0.5) / 20000)  # N(5, 1) quantiles, median = 5
    jack = np.array([-1.0, 1.0, -2.0, 2.0])  # symmetric: acceleration 0
    pct = bootstrap_interval(5.0, boot, method="percentile")
    bca = bootstrap_interval(5.0, boot, jack, method="bca")
    assert pct == pytest.approx((5 - Z975, 5 + Z975), abs=1e-3)
    assert bca == pytest.approx(pct, abs=1e-3)


def test_bca_bias_correction_closed_form() -> None:
    """Replicates centred at θ̂ + c give z0 = −c, so BCa (a = 0) is θ̂ − c ± z."""
    c = 0.3
    boot = 5.0 + c + ndtri((np.arange(40000) + 0.5) / 40000)
    low, high = bootstrap_interval(5.0, boot, np.array([-1.0, 1.0]), method="bca")
    assert (low, high) == pytest.approx((5.0 - c - Z975, 5.0 - c + Z975), abs=2e-3)


def test_bca_acceleration_closed_form() -> None:
    jack = np.array([0.0, 0.0, 0.0, 3.0])  # d = mean − jack = (.75,.75,.75,−2.25)
    d = jack.mean() - jack
    a = np.sum(d**3) / (6 * np.sum(d**2) ** 1.5)
    boot = ndtri((np.arange(40000) + 0.5) / 40000)  # N(0, 1), z0 = 0
    low, high = bootstrap_interval(0.0, boot, jack, method="bca")
    z = np.array([-Z975, Z975])
    expected = ndtri(ndtr(z / (1 - a * z)))
    assert (low, high) == pytest.approx(tuple(expected), abs=2e-3)


def test_mean_ci_matches_scipy_bootstrap() -> None:
    rng = np.random.default_rng(0)
    x = rng.exponential(2.0, 60)  # skewed, so BCa differs from percentile
    for method, scipy_method in (("percentile", "percentile"), ("bca", "BCa")):
        ours = bootstrap_mean_ci(x, n_resamples=20000, method=method, seed=1)
        ref = stats.bootstrap(
            (x,), np.mean, n_resamples=20000, method=scipy_method, rng=np.random.default_rng(2)
        ).confidence_interval
        width = ref.high - ref.low
        assert ours.low == pytest.approx(ref.low, abs=0.04 * width)
        assert ours.high == pytest.approx(ref.high, abs=0.04 * width)
        assert ours.estimate == pytest.approx(x.mean())


def test_percentile_ci_of_a_mean_is_the_normal_interval() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(10.0, 2.0, 400)
    ci = bootstrap_mean_ci(x, n_resamples=5000, method="percentile")
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert ci.low == pytest.approx(x.mean() - Z975 * se, abs=0.1 * se)
    assert ci.high == pytest.approx(x.mean() + Z975 * se, abs=0.1 * se)
    assert ci.n_clusters == 400


# -- resampling patients ------------------------------------------------------------------
def test_cluster_bootstrap_equals_patient_level_bootstrap() -> None:
    """Three identical cases per patient: resampling patients = resampling the patient values."""
    rng = np.random.default_rng(5)
    per_patient = rng.normal(size=50)
    cases = np.repeat(per_patient, 3)
    patients = np.repeat(np.arange(50), 3)
    by_patient = bootstrap_mean_ci(per_patient, n_resamples=1000, seed=3)
    clustered = bootstrap_mean_ci(cases, clusters=patients, n_resamples=1000, seed=3)
    assert (clustered.low, clustered.high) == pytest.approx((by_patient.low, by_patient.high))
    naive = bootstrap_mean_ci(cases, n_resamples=1000, seed=3)
    assert naive.high - naive.low < 0.7 * (clustered.high - clustered.low)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_generic_metric_path_equals_vectorised_mean(method: str) -> None:
    rng = np.random.default_rng(6)
    values = rng.random(40)
    patients = rng.integers(0, 15, 40)
    fast = bootstrap_mean_ci(values, clusters=patients, n_resamples=300, method=method, seed=9)
    options = {"clusters": patients, "n_resamples": 300, "method": method, "seed": 9}
    slow = bootstrap_ci(_mean_metric, np.zeros(40), values, **options)
    assert (slow.estimate, slow.low, slow.high) == pytest.approx(
        (fast.estimate, fast.low, fast.high)
    )
    assert slow.n_clusters == len(np.unique(patients))


def test_auc_ci_is_seeded_and_drops_undefined_replicates() -> None:
    rng = np.random.default_rng(7)
    y = np.r_[np.ones(3, int), np.zeros(27, int)]
    score = rng.random(30) + 0.5 * y
    one = bootstrap_ci(compute_roc_auc, y, score, n_resamples=500, seed=11)
    two = bootstrap_ci(compute_roc_auc, y, score, n_resamples=500, seed=11)
    assert one == two
    assert one.n_resamples < 500  # replicates without a positive case are dropped
    assert one.low <= one.estimate <= one.high
    assert one.estimate == pytest.approx(roc_auc_score(y, score))


def test_bootstrap_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_resamples must be >= 100"):
        bootstrap_mean_ci([1.0, 2.0], n_resamples=10)
    with pytest.raises(ValueError, match="method must be one of"):
        bootstrap_mean_ci([1.0, 2.0], method="basic")
    with pytest.raises(ValueError, match="clusters has 2 entries"):
        bootstrap_ci(_mean_metric, np.zeros(3), np.ones(3), clusters=[1, 2])
    with pytest.raises(ValueError, match="undefined in"):
        bootstrap_ci(compute_roc_auc, np.r_[1, np.zeros(30, int)], np.arange(31.0))


# -- paired comparisons ---------------------------------------------------------------------
def test_paired_bootstrap_identical_and_clearly_different_models() -> None:
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 200)
    good = y + rng.normal(0, 0.6, 200)
    bad = y + rng.normal(0, 3.0, 200)
    same = paired_bootstrap(compute_roc_auc, y, good, good.copy(), n_resamples=300)
    assert (same.difference, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    diff = paired_bootstrap(compute_roc_auc, y, good, bad, n_resamples=1000, method="bca")
    assert diff.low > 0
    assert diff.p_value < 0.01
    assert diff.difference == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, bad))


def test_paired_mean_equals_generic_and_ignores_nan_pairs() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.random(30), rng.random(30)
    fast = paired_bootstrap_mean(a, b, n_resamples=400, seed=2)
    slow = paired_bootstrap(_mean_metric, np.zeros(30), a, b, n_resamples=400, seed=2)
    assert (fast.low, fast.high, fast.p_value) == pytest.approx((slow.low, slow.high, slow.p_value))
    a_nan = np.r_[a, np.nan]
    with_nan = paired_bootstrap_mean(a_nan, np.r_[b, 0.5], n_resamples=400, seed=2)
    assert with_nan.difference == pytest.approx(fast.difference)


# -- DeLong -----------------------------------------------------------------------------------
def _brute_force_delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    k, m, n = scores.shape[0], pos.shape[1], neg.shape[1]
    v10, v01 = np.zeros((k, m)), np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                psi = 1.0 if pos[r, i] > neg[r, j] else 0.5 if pos[r, i] == neg[r, j] else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    cov = np.cov(v10) / m + np.cov(v01) / n
    return v10.mean(axis=1), np.atleast_2d(cov)


def test_delong_matches_brute_force() -> None:
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 60)
    a = np.round(y + rng.normal(0, 1, 60), 1)  # rounding makes ties
    b = np.round(y + rng.normal(0, 1.5, 60), 1)
    auc_bf, cov = _brute_force_delong(y, np.stack([a, b]))
    auc, _, _ = delong_components(y, np.stack([a, b]))
    np.testing.assert_allclose(auc, auc_bf, atol=1e-12)
    np.testing.assert_allclose(auc, [roc_auc_score(y, a), roc_auc_score(y, b)], atol=1e-12)
    result = delong_test(y, a, b)
    se = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z = (auc_bf[0] - auc_bf[1]) / se
    assert result.p_value == pytest.approx(2 * ndtr(-abs(z)), abs=1e-12)
    assert result.high - result.low == pytest.approx(2 * Z975 * se)
    single = delong_ci(y, a)
    assert single.high - single.low == pytest.approx(2 * Z975 * np.sqrt(cov[0, 0]))


def test_delong_identical_models_and_errors() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(y, s, s)
    assert (same.difference, same.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match=">= 2 positive"):
        delong_test([0, 0, 0, 1], s[:4], s[:4])


# -- subgroups ----------------------------------------------------------------------------------
def _cohort(seed: int = 0) -> pd.DataFrame:
    """600 cases; site C has a planted drop (much noisier scores)."""
    rng = np.random.default_rng(seed)
    n = 600
    site = rng.choice(["A", "B", "C"], n)
    y = rng.integers(0, 2, n)
    noise = np.where(site == "C", 3.0, 0.7)
    return pd.DataFrame(
        {
            "patient": np.arange(n) // 2,
            "y_true": y,
            "y_score": y + rng.normal(0, 1, n) * noise,
            "site": site,
            "sex": rng.choice(["F", "M"], n),
            "split": np.where(np.arange(n) < 450, "internal_test", "external_test"),
            "dice": rng.normal(0.8, 0.05, n) - 0.2 * (site == "C"),
        }
    )


def test_planted_subgroup_drop_is_flagged_per_split() -> None:
    data = _cohort()
    result = analyse_subgroups(
        data,
        by=["site", "sex"],
        metric=compute_roc_auc,
        patient="patient",
        split="split",
        n_resamples=300,
    )
    assert list(result.overall["split"]) == ["internal_test", "external_test"]
    assert result.metric_name == "roc_auc"
    for split in ("internal_test", "external_test"):
        part = result.table[result.table["split"] == split]
        site_c = part[(part["column"] == "site") & (part["group"] == "C")].iloc[0]
        assert site_c["flagged"]
        assert site_c["largest_gap"]
        assert not part[(part["column"] == "site") & (part["group"] != "C")]["flagged"].any()
    assert set(result.flagged["group"]) == {"C"}


def test_value_subgroups_respect_direction_and_min_cases() -> None:
    data = _cohort(1)
    dice = analyse_subgroups(data, by="site", value="dice", n_resamples=200)
    flagged = dice.table.set_index("group")["flagged"]
    assert bool(flagged["C"])
    assert not flagged["A"]
    data["error"] = 1.0 - data["dice"]
    err = analyse_subgroups(data, by="site", value="error", higher_is_better=False, n_resamples=200)
    assert bool(err.table.set_index("group").loc["C", "flagged"])
    tiny = analyse_subgroups(data.iloc[:40], by="site", value="dice", min_cases=100)
    assert (tiny.table["reason"] == "too few cases").all()
    assert not tiny.table["flagged"].any()
    with pytest.raises(ValueError, match="lacks column"):
        analyse_subgroups(data, by="vendor", value="dice")


def test_age_bands() -> None:
    bands = age_bands([5, 39.9, 40, 79, 80, 101])
    assert list(bands) == ["0–39", "0–39", "40–59", "60–79", "80+", "80+"]
    with pytest.raises(ValueError, match="increase strictly"):
        age_bands([1, 2], edges=(0, 50, 50))
