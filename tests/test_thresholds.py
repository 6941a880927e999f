"""Decision thresholds chosen on validation data, and the operating point they give."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from medai.evaluation import (
    ConfidenceInterval,
    Threshold,
    ThresholdPolicy,
    choose_threshold,
    compute_balanced_accuracy,
    compute_npv,
    compute_ppv,
    compute_sensitivity,
    compute_specificity,
    operating_point,
)

# y = 0, 0, 1, 1 with scores 0.1, 0.4, 0.35, 0.8: distinct scores 0.1 < 0.35 < 0.4 < 0.8,
# candidates 0.225 (sens 1, spec 0.5), 0.375 (0.5, 0.5), 0.6 (0.5, 1).
Y4 = np.array([0, 0, 1, 1])
S4 = np.array([0.1, 0.4, 0.35, 0.8])


def _brute_force(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = np.unique(s)
    candidates = (u[:-1] + u[1:]) / 2
    sens = np.array([compute_sensitivity(y, (s >= t).astype(int)) for t in candidates])
    spec = np.array([compute_specificity(y, (s >= t).astype(int)) for t in candidates])
    return candidates, sens, spec


def _imbalanced(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """95:5 labels; the positives' logits are only 2 SD above the negatives', below 0."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    logits = np.where(y == 1, rng.normal(-1.0, 1.0, n), rng.normal(-3.0, 1.0, n))
    return y, expit(logits)


# -- closed forms ------------------------------------------------------------------------
def test_youden_on_four_cases_keeps_the_lower_of_two_tied_candidates() -> None:
    t = choose_threshold(Y4, S4, policy="youden")
    assert t.value == pytest.approx(0.225)
    assert (t.sensitivity, t.specificity) == (1.0, 0.5)
    assert t.policy is ThresholdPolicy.YOUDEN
    assert t.target is None


def test_f1_on_four_cases() -> None:
    # F1 = 0.8, 0.5, 2/3 at the three candidates
    t = choose_threshold(Y4, S4, policy=ThresholdPolicy.F1)
    assert t.value == pytest.approx(0.225)


def test_targeted_policies_on_four_cases() -> None:
    sens = choose_threshold(Y4, S4, policy="sensitivity", target=0.9)
    assert sens.value == pytest.approx(0.225)
    assert sens.specificity == 0.5
    spec = choose_threshold(Y4, S4, policy="specificity", target=0.9)
    assert spec.value == pytest.approx(0.6)
    assert (spec.sensitivity, spec.specificity) == (0.5, 1.0)
    assert spec.target == 0.9


def test_a_plateau_is_broken_towards_its_middle() -> None:
    # one negative at 0.1, positives at 0.2..0.5: for sensitivity >= 0.5 the candidates
    # 0.15, 0.25, 0.35 all give specificity 1; the middle one is kept.
    y = np.array([0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    t = choose_threshold(y, s, policy="sensitivity", target=0.5)
    assert t.value == pytest.approx(0.25)
    assert (t.sensitivity, t.specificity) == (0.75, 1.0)


def test_a_rate_equal_to_the_target_counts_as_reached() -> None:
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    s = np.r_[np.linspace(0.0, 0.45, 10), np.linspace(0.05, 0.95, 10)]
    t = choose_threshold(y, s, policy="sensitivity", target=0.9)  # 9/10 == 0.9
    _, sens, spec = _brute_force(y, s)
    assert t.sensitivity >= 0.9
    assert t.specificity == pytest.approx(spec[sens >= 0.9].max())


# -- cross-checks against a brute-force scan ---------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_matches_a_brute_force_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 80)
    s = np.round(rng.random(80) + 0.3 * y, 2)  # rounded: ties between scores
    t = choose_threshold(y, s, policy="youden")
    candidates, sens, spec = _brute_force(y, s)
    assert t.sensitivity + t.specificity == pytest.approx((sens + spec).max())
    assert t.value in candidates
    pred = (s >= t.value).astype(int)
    assert compute_sensitivity(y, pred) == pytest.approx(t.sensitivity)
    assert compute_specificity(y, pred) == pytest.approx(t.specificity)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_target_sensitivity_is_reached_on_validation_with_the_best_specificity(
    target: float,
) -> None:
    y, s = _imbalanced(1000, seed=3)
    t = choose_threshold(y, s, policy="sensitivity", target=target)
    pred = (s >= t.value).astype(int)
    assert compute_sensitivity(y, pred) >= target
    assert compute_sensitivity(y, pred) == pytest.approx(t.sensitivity)
    _, sens, spec = _brute_force(y, s)
    assert t.specificity == pytest.approx(spec[sens >= target].max())


def test_youden_beats_argmax_on_an_imbalanced_problem() -> None:
    y_val, p_val = _imbalanced(2000, seed=10)
    y_test, p_test = _imbalanced(2000, seed=11)
    argmax = compute_balanced_accuracy(y_test, (p_test >= 0.5).astype(int))
    t = choose_threshold(y_val, p_val, policy="youden")
    youden = compute_balanced_accuracy(y_test, (p_test >= t.value).astype(int))
    assert argmax <= 0.6
    assert youden >= 0.75
    assert t.value < 0.5


# -- storing a threshold -----------------------------------------------------------------
def test_threshold_round_trips_through_json() -> None:
    t = choose_threshold(Y4, S4, policy="specificity", target=0.9)
    stored = json.loads(json.dumps(t.to_dict()))
    assert stored["policy"] == "specificity"
    assert Threshold.from_dict(stored) == t
    youden = choose_threshold(Y4, S4, policy="youden")
    assert Threshold.from_dict(json.loads(json.dumps(youden.to_dict()))) == youden


def test_threshold_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="exactly the keys"):
        Threshold.from_dict({"value": 0.5, "policy": "youden"})
    with pytest.raises(ValueError, match="policy must be one of"):
        Threshold(0.5, "auto", None, 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a target"):
        Threshold(0.5, ThresholdPolicy.SENSITIVITY, None, 1.0, 1.0)
    with pytest.raises(ValueError, match="specificity must lie in"):
        Threshold(0.5, ThresholdPolicy.YOUDEN, None, 1.0, float("nan"))
    with pytest.raises(ValueError, match="finite"):
        Threshold(float("inf"), ThresholdPolicy.YOUDEN, None, 1.0, 1.0)


# -- errors ------------------------------------------------------------------------------
def test_choose_threshold_errors() -> None:
    with pytest.raises(ValueError, match="only class 0"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3], policy="youden")
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold(Y4, [0.1, np.nan, 0.3, 0.4], policy="youden")
    with pytest.raises(ValueError, match="constant"):
        choose_threshold(Y4, [0.3] * 4, policy="youden")
    with pytest.raises(ValueError, match="0/1"):
        choose_threshold([0, 1, 2, 1], S4, policy="youden")
    with pytest.raises(ValueError, match="policy must be one of"):
        choose_threshold(Y4, S4, policy="auto")
    with pytest.raises(ValueError, match="shape"):
        choose_threshold(Y4, np.c_[1 - S4, S4], policy="youden")


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.1])
def test_target_outside_the_open_unit_interval_is_refused(target: float) -> None:
    with pytest.raises(ValueError, match=r"target must lie in \(0, 1\)"):
        choose_threshold(Y4, S4, policy="sensitivity", target=target)


def test_target_missing_or_unused_or_unreachable_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a target sensitivity"):
        choose_threshold(Y4, S4, policy="sensitivity")
    with pytest.raises(ValueError, match="takes no target"):
        choose_threshold(Y4, S4, policy="youden", target=0.9)
    # a positive holds the lowest score: no midpoint keeps every positive
    with pytest.raises(ValueError, match=r"no threshold reaches sensitivity 0\.9"):
        choose_threshold([1, 0, 1], [0.1, 0.5, 0.9], policy="sensitivity", target=0.9)


# -- operating point ---------------------------------------------------------------------
def test_operating_point_estimates_equal_the_metrics_and_lie_in_their_intervals() -> None:
    y, s = _imbalanced(400, seed=5)
    y[:20] = 1  # enough positives that every resample has some
    result = operating_point(y, s, 0.1, n_resamples=300, seed=1)
    assert list(result) == ["sensitivity", "specificity", "ppv", "npv", "balanced_accuracy"]
    pred = (s >= 0.1).astype(int)
    expected = {
        "sensitivity": compute_sensitivity(y, pred),
        "specificity": compute_specificity(y, pred),
        "ppv": compute_ppv(y, pred),
        "npv": compute_npv(y, pred),
        "balanced_accuracy": compute_balanced_accuracy(y, pred),
    }
    for name, ci in result.items():
        assert isinstance(ci, ConfidenceInterval)
        assert ci.estimate == pytest.approx(expected[name])
        assert ci.low <= ci.estimate <= ci.high
        assert ci.high - ci.low > 0.0
        assert ci.n_clusters == y.size
    again = operating_point(y, s, 0.1, n_resamples=300, seed=1)
    assert again["ppv"] == result["ppv"]


def test_operating_point_resamples_patients_and_checks_inputs() -> None:
    y = np.tile([0, 1, 0, 1, 0, 0], 20)
    s = np.tile([0.2, 0.7, 0.4, 0.3, 0.1, 0.6], 20)
    patients = np.repeat(np.arange(60), 2)
    result = operating_point(y, s, 0.5, clusters=patients, n_resamples=200, method="percentile")
    assert result["sensitivity"].n_clusters == 60
    assert result["sensitivity"].estimate == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one entry per case"):
        operating_point(y, s, 0.5, clusters=patients[:-1], n_resamples=200)
    with pytest.raises(ValueError, match="finite"):
        operating_point(y, s, float("nan"), n_resamples=200)
    with pytest.raises(ValueError, match="only class 1"):
        operating_point(np.ones(5, int), np.linspace(0, 1, 5), 0.5, n_resamples=200)


def test_argmax_policy_is_one_half() -> None:
    chosen = choose_threshold(Y4, S4, policy="argmax")
    assert chosen.value == 0.5
    assert chosen.sensitivity == float(np.mean(np.asarray(S4)[np.asarray(Y4) == 1] >= 0.5))
