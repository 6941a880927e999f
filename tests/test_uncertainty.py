"""Predictive uncertainty: entropies, BALD, segmentation volumes, referral curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

from medai.evaluation import (
    ConfidenceInterval,
    ReferralCurve,
    fit_review_threshold,
    member_variance,
    mutual_information,
    needs_review,
    plot_referral_curve,
    predictive_entropy,
    referral_curve,
    segmentation_uncertainty,
    spearman_with_ci,
    voxel_entropy,
)

LOG2 = float(np.log(2.0))


# -- per-case entropy, BALD, variance ----------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 5])
def test_uniform_probabilities_have_entropy_log_k(k: int) -> None:
    assert predictive_entropy(np.full((4, k), 1.0 / k)) == pytest.approx(np.full(4, np.log(k)))


def test_entropy_of_one_hot_and_binary_inputs() -> None:
    assert np.array_equal(predictive_entropy(np.eye(3)), np.zeros(3))
    binary = predictive_entropy([0.5, 0.0, 1.0])
    assert binary.shape == (3,)
    assert binary == pytest.approx([LOG2, 0.0, 0.0])


def test_entropy_matches_scipy_on_random_distributions() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    assert predictive_entropy(probs) == pytest.approx(stats.entropy(probs, axis=1))


def test_identical_members_have_no_mutual_information_or_variance() -> None:
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=20)
    members = np.stack([probs] * 5)
    assert mutual_information(members) == pytest.approx(np.zeros(20), abs=1e-12)
    assert member_variance(members) == pytest.approx(np.zeros(20), abs=1e-15)
    assert mutual_information(members[:, :, 1]) == pytest.approx(np.zeros(20), abs=1e-12)


def test_confident_members_that_disagree_give_log2_mutual_information() -> None:
    members = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (M=2, N=1, K=2)
    assert mutual_information(members) == pytest.approx([LOG2])
    assert member_variance(members) == pytest.approx([0.25])
    binary = np.array([[0.0, 0.3], [1.0, 0.3]])  # (M=2, N=2) positive-class
    assert mutual_information(binary) == pytest.approx([LOG2, 0.0], abs=1e-12)
    assert member_variance(binary) == pytest.approx([0.25, 0.0])


def test_mutual_information_is_total_minus_expected_entropy() -> None:
    members = np.random.default_rng(2).dirichlet(np.ones(3), size=(4, 10))
    total = stats.entropy(members.mean(axis=0), axis=1)
    expected = stats.entropy(members, axis=2).mean(axis=0)
    assert mutual_information(members) == pytest.approx(total - expected)
    assert np.all(mutual_information(members) <= predictive_entropy(members.mean(axis=0)))


def test_per_case_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        predictive_entropy([0.5, np.nan])
    with pytest.raises(ValueError, match="sum to 1"):
        predictive_entropy([[0.5, 0.6]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictive_entropy([1.5, 0.2])
    with pytest.raises(ValueError, match="shape"):
        predictive_entropy(np.full((2, 2, 2), 0.5))
    with pytest.raises(ValueError, match=">= 2"):
        mutual_information(np.full((1, 3, 2), 0.5))
    with pytest.raises(ValueError, match="shape"):
        member_variance(np.full(3, 0.5))


# -- segmentation ------------------------------------------------------------------------
def test_voxel_entropy_sums_regions_and_averages_members() -> None:
    half = np.full((3, 32, 32), 0.5)  # R=3 regions on a 32x32 slice
    assert voxel_entropy(half, spatial_ndim=2) == pytest.approx(np.full((32, 32), 3 * LOG2))
    assert voxel_entropy(half, spatial_ndim=2, region_index=1) == pytest.approx(
        np.full((32, 32), LOG2)
    )
    members = np.stack([np.zeros((2, 8, 8, 8)), np.ones((2, 8, 8, 8))])  # mean 0.5
    entropy = voxel_entropy(members)
    assert entropy.shape == (8, 8, 8)
    assert entropy == pytest.approx(np.full((8, 8, 8), 2 * LOG2))
    assert np.array_equal(voxel_entropy(np.ones((2, 4, 4, 4))), np.zeros((4, 4, 4)))


def test_voxel_entropy_errors() -> None:
    with pytest.raises(ValueError, match="2 spatial axes"):
        voxel_entropy(np.full((16, 16), 0.5), spatial_ndim=2)
    with pytest.raises(ValueError, match="out of range"):
        voxel_entropy(np.full((2, 4, 4), 0.5), spatial_ndim=2, region_index=2)
    with pytest.raises(ValueError, match="NaN"):
        voxel_entropy(np.full((1, 4, 4, 4), np.nan))


def test_segmentation_uncertainty_closed_form() -> None:
    members = np.array([[[1.0, 1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])  # (M=2, R=1, X=4)
    result = segmentation_uncertainty(members, spacing_ml=0.5)
    # mean [1, .5, 0, 0]: region = first two voxels, entropies 0 and log 2
    assert result.score == pytest.approx(LOG2 / 2)
    assert result.map == pytest.approx([0.0, LOG2, 0.0, 0.0])
    # volumes 1.0 and 0.5 mL: spread 0.25, mean 0.75
    assert result.volume_spread_ml == pytest.approx(0.25)
    assert result.volume_cv == pytest.approx(1 / 3)


def test_segmentation_uncertainty_of_agreeing_and_empty_members() -> None:
    volume = np.zeros((2, 16, 16, 16))
    volume[1, 4:8, 4:8, 4:8] = 0.9  # region 1 only
    agree = segmentation_uncertainty(np.stack([volume] * 3), region_index=1, spacing_ml=1e-3)
    assert agree.volume_spread_ml == 0.0
    assert agree.volume_cv == 0.0
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert agree.score == pytest.approx(h09)
    empty = segmentation_uncertainty(np.stack([volume] * 3), region_index=0, spacing_ml=1e-3)
    assert (empty.score, empty.volume_spread_ml, empty.volume_cv) == (0.0, 0.0, 0.0)
    assert empty.map.shape == (16, 16, 16)


def test_segmentation_uncertainty_errors() -> None:
    members = np.full((2, 1, 4, 4), 0.5)
    one = segmentation_uncertainty(members[:1], spacing_ml=1.0)  # one pass: its own entropy
    assert one.score == pytest.approx(np.log(2))
    assert one.volume_spread_ml == 0.0
    with pytest.raises(ValueError, match="spacing_ml"):
        segmentation_uncertainty(members, spacing_ml=0.0)
    with pytest.raises(ValueError, match="threshold"):
        segmentation_uncertainty(members, threshold=1.0, spacing_ml=1.0)
    with pytest.raises(ValueError, match="out of range"):
        segmentation_uncertainty(members, region_index=1, spacing_ml=1.0)
    with pytest.raises(ValueError, match="shape"):
        segmentation_uncertainty(np.full((2, 4), 0.5), spacing_ml=1.0)


# -- referral ----------------------------------------------------------------------------
def test_referral_curve_closed_form() -> None:
    u = np.array([0.9, 0.1, 0.5, 0.3])
    q = np.array([0.0, 1.0, 1.0, 0.0])
    curve = referral_curve(u, q, fractions=[0.0, 0.25, 0.5])
    assert isinstance(curve, ReferralCurve)
    assert curve.n_referred.tolist() == [0, 1, 2]
    assert curve.retained_quality == pytest.approx([0.5, 2 / 3, 0.5])
    assert curve.oracle == pytest.approx([0.5, 2 / 3, 1.0])
    assert curve.random == pytest.approx([0.5, 0.5, 0.5])


def test_referral_curve_rises_when_uncertainty_predicts_errors() -> None:
    rng = np.random.default_rng(4)
    correct = (rng.random(400) < 0.8).astype(float)
    # errors are more uncertain on average, with overlap
    u = np.where(correct == 1, rng.uniform(0.0, 0.6, 400), rng.uniform(0.3, 1.0, 400))
    curve = referral_curve(u, correct)
    assert curve.fractions == pytest.approx(np.linspace(0, 0.5, 11))
    assert np.all(np.diff(curve.retained_quality) >= 0)
    assert curve.retained_quality[-1] > curve.retained_quality[0] + 0.15
    assert np.all(curve.oracle >= curve.retained_quality - 1e-12)
    assert curve.retained_quality[0] == pytest.approx(correct.mean())


def test_referral_curve_is_flat_for_uninformative_uncertainty() -> None:
    rng = np.random.default_rng(5)
    dice = rng.beta(8, 2, 4000)
    curve = referral_curve(rng.random(4000), dice)
    assert np.max(np.abs(curve.retained_quality - dice.mean())) < 0.01
    tied = referral_curve(np.ones(4000), dice)  # ties at the cut: expectation, exactly flat
    assert tied.retained_quality == pytest.approx(np.full(11, dice.mean()))


def test_referral_curve_errors() -> None:
    with pytest.raises(ValueError, match="one entry per case"):
        referral_curve(np.ones(5), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        referral_curve([0.1, np.nan], [1.0, 0.0])
    with pytest.raises(ValueError, match="1-D"):
        referral_curve(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="fractions"):
        referral_curve(np.ones(4), np.ones(4), fractions=[0.0, 1.0])


def test_review_threshold_refers_the_requested_fraction() -> None:
    u = np.random.default_rng(6).permutation(100).astype(float)
    threshold = fit_review_threshold(u, refer_fraction=0.1)
    flagged = needs_review(u, threshold)
    assert flagged.dtype == np.bool_
    assert flagged.sum() == 10
    assert set(u[flagged]) == set(range(90, 100))
    with pytest.raises(ValueError, match="refer_fraction"):
        fit_review_threshold(u, refer_fraction=0.0)
    with pytest.raises(ValueError, match="NaN"):
        needs_review([0.1, np.nan], threshold)
    with pytest.raises(ValueError, match="finite"):
        needs_review(u, float("nan"))


# -- rank correlation --------------------------------------------------------------------
def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(7)
    x = np.round(rng.random(60), 1)
    y = x + rng.normal(0, 0.3, 60)
    ci = spearman_with_ci(x, y, n_resamples=300)
    assert isinstance(ci, ConfidenceInterval)
    assert ci.estimate == pytest.approx(stats.spearmanr(x, y).statistic)
    assert ci.low < ci.estimate < ci.high


def test_spearman_of_a_monotone_pair_is_one_and_errors() -> None:
    x = np.arange(10.0)
    assert spearman_with_ci(x, x**3, n_resamples=200).estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="constant"):
        spearman_with_ci(x, np.ones(10), n_resamples=200)
    with pytest.raises(ValueError, match=">= 3"):
        spearman_with_ci([1.0, 2.0], [2.0, 1.0], n_resamples=200)
    with pytest.raises(ValueError, match="one entry per case"):
        spearman_with_ci(x, x[:-1], n_resamples=200)


# -- figure ------------------------------------------------------------------------------
def test_plot_referral_curve_writes_a_png(tmp_path: Path) -> None:
    curve = referral_curve([0.9, 0.1, 0.5, 0.3], [0.0, 1.0, 1.0, 0.0])
    target = tmp_path / "figures" / "referral.png"
    figure = plot_referral_curve(curve, target, quality="Accuracy")
    assert isinstance(figure, Figure)
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert len(figure.axes[0].lines) == 3
    assert list(tmp_path.joinpath("figures").iterdir()) == [target]  # no temporary left
