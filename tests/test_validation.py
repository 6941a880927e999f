"""The ET volume threshold: chosen on validation cases, scored honestly (leave-one-out)."""

from __future__ import annotations

import pytest

from medai.training.validation import (
    CaseScore,
    choose_inner_threshold,
    cross_fitted_inner_dice,
    fit_inner_threshold,
    inner_dice_at,
)

REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


def _score(case_id: str, volume_ml: float, kept: float, ref_empty: bool) -> CaseScore:
    dice = {"WT": 0.9, "TC": 0.8, "ET": kept}
    return CaseScore(case_id, dice, volume_ml, kept, ref_empty)


# A: real ET, 1.5 mL predicted, Dice 0.8 when kept. B, C: no ET in the reference, false
# ET of 1.4 mL and 0.3 mL. Thresholds on the grid (mL): 0 .05 .1 .25 .5 1 2 4 8.
A = _score("A", 1.5, 0.8, False)
B = _score("B", 1.4, 0.0, True)
C = _score("C", 0.3, 0.0, True)


def test_inner_dice_at_applies_the_brats_rule() -> None:
    assert inner_dice_at(A, 1.0) == 0.8  # kept
    assert inner_dice_at(A, 2.0) == 0.0  # dropped, but the reference has ET
    assert inner_dice_at(B, 2.0) == 1.0  # dropped, and the reference is empty
    assert inner_dice_at(_score("D", 0.0, 1.0, True), 8.0) == 1.0  # nothing to drop


def test_tuned_and_cross_fitted_dice_differ_by_hand() -> None:
    # tuned on all three: t ≤ .25 → (.8+0+0)/3; t = .5, 1 → (.8+0+1)/3; t ≥ 2 → (0+1+1)/3
    assert choose_inner_threshold([A, B, C]) == (2.0, pytest.approx(2 / 3))
    # leave-one-out: A at the threshold chosen on B, C (2 mL: drops A's real ET) → 0;
    # B at the one chosen on A, C (0.5 mL: keeps B's 1.4 mL) → 0; C at 2 mL → 1
    assert cross_fitted_inner_dice([A, B, C]) == [0.0, 0.0, 1.0]
    fit = fit_inner_threshold([A, B, C], REGIONS)
    assert fit is not None
    assert fit.region == "ET"
    assert fit.min_volume_ml == 2.0
    assert fit.tuned_dice == pytest.approx(2 / 3)
    assert fit.cross_fitted_dice == pytest.approx(1 / 3)
    assert fit.cross_fitted_cases == {"A": 0.0, "B": 0.0, "C": 1.0}


def test_a_lone_case_is_scored_untuned() -> None:
    # tuned on itself B scores 1 (any threshold above 1.4 mL); with no other case to
    # choose on, its honest score keeps the prediction: 0
    assert choose_inner_threshold([B]) == (2.0, 1.0)
    assert cross_fitted_inner_dice([B]) == [0.0]
    assert choose_inner_threshold([]) == (0.0, pytest.approx(float("nan"), nan_ok=True))


def test_nothing_to_fit_without_nested_regions_or_cases() -> None:
    assert fit_inner_threshold([A, B], {"FG": [1]}) is None
    assert fit_inner_threshold([], REGIONS) is None
