"""Classification, regression and calibration metrics against scikit-learn and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, softmax
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.preprocessing import label_binarize

from medai.evaluation import (
    ClassificationAccumulator,
    RegressionAccumulator,
    apply_temperature,
    compute_accuracy,
    compute_average_precision,
    compute_balanced_accuracy,
    compute_bland_altman,
    compute_brier_score,
    compute_classification_metrics,
    compute_confusion_matrix,
    compute_ece,
    compute_f1,
    compute_mae,
    compute_npv,
    compute_ppv,
    compute_pr_curve,
    compute_r2,
    compute_regression_metrics,
    compute_rmse,
    compute_roc_auc,
    compute_roc_curve,
    compute_sensitivity,
    compute_specificity,
    fit_temperature,
    reliability_diagram,
)

TOL = 1e-6


@pytest.fixture(params=[0, 1, 2])
def binary(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(request.param)
    y = rng.integers(0, 2, 150)
    score = np.clip(0.3 * y + rng.random(150) * 0.7, 0, 1)
    score[:20] = np.round(score[:20], 1)  # ties
    return y, score


@pytest.fixture(params=[0, 1])
def multiclass(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 + request.param)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    return y, softmax(logits, axis=1)


def test_binary_label_metrics_match_sklearn(binary: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = binary
    pred = (score >= 0.5).astype(int)
    assert compute_accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=TOL)
    assert compute_balanced_accuracy(y, pred) == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=TOL
    )
    assert compute_sensitivity(y, pred) == pytest.approx(skm.recall_score(y, pred), abs=TOL)
    assert compute_specificity(y, pred) == pytest.approx(
        skm.recall_score(y, pred, pos_label=0), abs=TOL
    )
    assert compute_ppv(y, pred) == pytest.approx(skm.precision_score(y, pred), abs=TOL)
    assert compute_npv(y, pred) == pytest.approx(skm.precision_score(y, pred, pos_label=0), abs=TOL)
    assert compute_f1(y, pred) == pytest.approx(skm.f1_score(y, pred), abs=TOL)
    np.testing.assert_array_equal(compute_confusion_matrix(y, pred), skm.confusion_matrix(y, pred))


def test_binary_score_metrics_match_sklearn(binary: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = binary
    assert compute_roc_auc(y, score) == pytest.approx(skm.roc_auc_score(y, score), abs=TOL)
    assert compute_average_precision(y, score) == pytest.approx(
        skm.average_precision_score(y, score), abs=TOL
    )
    assert compute_brier_score(y, score) == pytest.approx(skm.brier_score_loss(y, score), abs=TOL)
    fpr, tpr, thr = compute_roc_curve(y, score)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=TOL)
    np.testing.assert_allclose(tpr, sk_tpr, atol=TOL)
    np.testing.assert_allclose(thr[1:], sk_thr[1:], atol=TOL)
    prec, rec, pthr = compute_pr_curve(y, score)
    sk_prec, sk_rec, sk_pthr = skm.precision_recall_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(prec, sk_prec, atol=TOL)
    np.testing.assert_allclose(rec, sk_rec, atol=TOL)
    np.testing.assert_allclose(pthr, sk_pthr, atol=TOL)


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_multiclass_metrics_match_sklearn(
    multiclass: tuple[np.ndarray, np.ndarray], average: str
) -> None:
    y, prob = multiclass
    pred = prob.argmax(axis=1)
    onehot = label_binarize(y, classes=range(4))
    nan0 = {"zero_division": np.nan}
    assert compute_sensitivity(y, pred, average=average) == pytest.approx(
        skm.recall_score(y, pred, average=average, **nan0), abs=TOL
    )
    assert compute_ppv(y, pred, average=average) == pytest.approx(
        skm.precision_score(y, pred, average=average, **nan0), abs=TOL
    )
    assert compute_f1(y, pred, average=average) == pytest.approx(
        skm.f1_score(y, pred, average=average, **nan0), abs=TOL
    )
    assert compute_roc_auc(y, prob, average=average) == pytest.approx(
        skm.roc_auc_score(onehot, prob, average=average), abs=TOL
    )
    assert compute_average_precision(y, prob, average=average) == pytest.approx(
        skm.average_precision_score(onehot, prob, average=average), abs=TOL
    )
    assert compute_brier_score(y, prob) == pytest.approx(skm.brier_score_loss(y, prob), abs=TOL)
    assert compute_balanced_accuracy(y, pred) == pytest.approx(
        skm.balanced_accuracy_score(y, pred), abs=TOL
    )


def test_multiclass_specificity_npv_closed_form() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    # class 0: tn=3 fp=1; class 1: tn=3 fp=1; class 2: tn=4 fp=0
    assert compute_specificity(y, pred, average="macro") == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    assert compute_specificity(y, pred, average="micro") == pytest.approx(10 / 12)
    # fn: class0 1, class1 0, class2 1 -> npv 3/4, 3/3, 4/5
    assert compute_npv(y, pred, average="macro") == pytest.approx((3 / 4 + 1 + 4 / 5) / 3)


def test_undefined_ratios_are_nan_not_zero() -> None:
    y = np.array([0, 0, 0])
    assert np.isnan(compute_sensitivity(y, [0, 1, 0]))
    assert np.isnan(compute_roc_auc(y, [0.1, 0.2, 0.3]))
    assert compute_specificity(y, [0, 1, 0]) == pytest.approx(2 / 3)


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="y_true must be 1-D"):
        compute_accuracy([[0, 1]], [0, 1])
    with pytest.raises(ValueError, match="average must be one of"):
        compute_sensitivity([0, 1], [0, 1], average="weighted")
    with pytest.raises(ValueError, match="needs labels 0/1"):
        compute_sensitivity([0, 2], [0, 1])
    with pytest.raises(ValueError, match="probabilities in"):
        compute_brier_score([0, 1], [0.2, 1.3])
    with pytest.raises(ValueError, match="NaN or infinity"):
        compute_roc_auc([0, 1], [0.2, np.nan])


def test_accumulator_equals_one_shot(binary: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = binary
    acc = ClassificationAccumulator()
    for chunk in np.array_split(np.arange(y.size), 4):
        acc.update(y[chunk], score[chunk])
    assert acc.aggregate() == pytest.approx(compute_classification_metrics(y, score))
    acc.reset()
    with pytest.raises(ValueError, match="empty"):
        acc.aggregate()


def test_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(50, 10, 80)
    pred = truth + rng.normal(1, 3, 80)
    assert compute_mae(truth, pred) == pytest.approx(skm.mean_absolute_error(truth, pred), abs=TOL)
    assert compute_rmse(truth, pred) == pytest.approx(
        skm.root_mean_squared_error(truth, pred), abs=TOL
    )
    assert compute_r2(truth, pred) == pytest.approx(skm.r2_score(truth, pred), abs=TOL)
    acc = RegressionAccumulator()
    acc.update(truth[:30], pred[:30])
    acc.update(truth[30:], pred[30:])
    assert acc.aggregate() == pytest.approx(compute_regression_metrics(truth, pred))


def test_bland_altman_closed_form() -> None:
    b = np.array([10.0, 20.0, 30.0, 40.0])
    a = b + np.array([1.0, 3.0, 1.0, 3.0])  # differences mean 2, sd sqrt(4/3)
    result = compute_bland_altman(a, b)
    sd = np.sqrt(4.0 / 3.0)
    assert (result.bias, result.sd, result.n) == (pytest.approx(2.0), pytest.approx(sd), 4)
    assert result.lower == pytest.approx(2.0 - 1.96 * sd)
    assert result.upper == pytest.approx(2.0 + 1.96 * sd)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        compute_bland_altman([1.0], [2.0])
    with pytest.raises(ValueError, match="lengths"):
        compute_mae([1.0, 2.0], [1.0])


def test_reliability_bins_match_sklearn(binary: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = binary
    diagram = reliability_diagram(y, score, n_bins=8)
    prob_true, prob_pred = calibration_curve(y, score, n_bins=8, strategy="uniform")
    used = diagram.count > 0
    np.testing.assert_allclose(diagram.observed[used], prob_true, atol=TOL)
    np.testing.assert_allclose(diagram.confidence[used], prob_pred, atol=TOL)
    assert diagram.count.sum() == y.size


def test_ece_closed_form() -> None:
    # bin (0.1,0.2]: 4 cases at 0.15, 1 positive -> gap 0.1; bin (0.8,0.9]: 6 at 0.85, all positive
    y = np.array([1, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.15] * 4 + [0.85] * 6)
    assert compute_ece(y, p, n_bins=10) == pytest.approx((4 * 0.10 + 6 * 0.15) / 10)
    # multi-class uses the top label: confidence 0.7, accuracy 1/2
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2]])
    assert compute_ece([0, 2], prob, n_bins=10) == pytest.approx(0.2)


@pytest.mark.parametrize("k", [1, 3])
def test_temperature_scaling_recovers_overconfidence(k: int) -> None:
    rng = np.random.default_rng(5)
    n = 4000
    if k == 1:
        true_logit = rng.normal(0, 2, n)
        y = (rng.random(n) < expit(true_logit)).astype(int)
    else:
        true_logit = rng.normal(0, 1.5, (n, k))
        y = np.array([rng.choice(k, p=row) for row in softmax(true_logit, axis=1)])
    temperature = fit_temperature(3.0 * true_logit, y)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = compute_ece(y, apply_temperature(3.0 * true_logit, 1.0))
    after = compute_ece(y, apply_temperature(3.0 * true_logit, temperature))
    assert after < before / 2
    with pytest.raises(ValueError, match="temperature must be a positive"):
        apply_temperature(true_logit, 0.0)
