"""Validation on whole preprocessed cases and the ET-volume threshold learnt from it.

The innermost-region (ET) volume threshold is chosen on the validation cases, so the
ET Dice of those same cases at that threshold is optimistic ("tuned"). The Dice a run
reports is cross-fitted instead: each case is scored with the threshold chosen on the
other validation cases (leave-one-out), which never sees the case it scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medai.evaluation.segmentation import region_dice
from medai.inference.postprocess import postprocess_regions
from medai.inference.sliding import predict_probabilities
from medai.preprocess.plan import Plan
from medai.training.data import CaseArrays

__all__ = [
    "CaseScore",
    "InnerThresholdFit",
    "choose_inner_threshold",
    "cross_fitted_inner_dice",
    "fit_inner_threshold",
    "inner_dice_at",
    "validate",
]

THRESHOLDS_ML = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DICE_PROTOCOL = (
    "best_dice: {inner} volume threshold cross-fitted (each validation case scored at the "
    "threshold chosen on the other validation cases); best_dice_tuned: {inner} with the "
    "threshold chosen on and scored on the same validation cases (optimistic)"
)


@dataclass(frozen=True)
class CaseScore:
    """Dice per region for one case plus what the innermost-region threshold needs."""

    case_id: str
    dice: dict[str, float]
    inner_volume_ml: float
    inner_dice_kept: float
    inner_ref_empty: bool


def validate(
    model: nn.Module,
    cases: Sequence[CaseArrays],
    plan: Plan,
    *,
    device: torch.device,
    overlap: float = 0.25,
) -> list[CaseScore]:
    """Sliding-window predict each case and score every region (BraTS empty rule)."""
    names = list(plan.regions)
    inner = min(names, key=lambda n: len(plan.regions[n]))
    no_inner_cut = plan.inference.model_copy(update={"et_min_volume_ml": 0.0})
    spacing = plan.preprocess.target_spacing
    voxel_ml = float(np.prod(spacing)) / 1000.0
    scores = []
    for case in cases:
        probs = predict_probabilities(
            model,
            case.image,
            patch_size=plan.train.patch_size,
            overlap=overlap,
            device=device,
            amp=plan.train.amp,
        )
        masks = postprocess_regions(probs, plan.regions, spacing=spacing, plan=no_inner_cut)
        dice = {n: region_dice(masks[i], case.regions[i]) for i, n in enumerate(names)}
        k = names.index(inner)
        scores.append(
            CaseScore(
                case.case_id,
                dice,
                float(masks[k].sum()) * voxel_ml,
                dice[inner],
                not case.regions[k].any(),
            )
        )
    return scores


def inner_dice_at(score: CaseScore, threshold_ml: float) -> float:
    """One case's innermost-region Dice when a prediction under ``threshold_ml`` is dropped."""
    if score.inner_volume_ml >= threshold_ml or score.inner_volume_ml == 0.0:
        return score.inner_dice_kept
    return 1.0 if score.inner_ref_empty else 0.0


def choose_inner_threshold(scores: Sequence[CaseScore]) -> tuple[float, float]:
    """The innermost-region (ET) volume below which to drop it, maximising its mean
    Dice on ``scores``; ties go to the smallest threshold. Returns (threshold, dice).

    The Dice returned is measured on the cases the threshold was chosen on (optimistic);
    :func:`cross_fitted_inner_dice` gives the honest figure. Without cases the threshold
    is 0 (nothing dropped) and the Dice NaN.
    """
    if not scores:
        return 0.0, float("nan")
    best = (0.0, -1.0)
    for thr in THRESHOLDS_ML:
        mean = float(np.mean([inner_dice_at(s, thr) for s in scores]))
        if mean > best[1] + 1e-9:
            best = (thr, mean)
    return best


def cross_fitted_inner_dice(scores: Sequence[CaseScore]) -> list[float]:
    """Leave-one-out innermost-region Dice: each case scored at the threshold chosen on
    the other cases (a lone case gets threshold 0, i.e. nothing dropped)."""
    out = []
    for i, score in enumerate(scores):
        threshold, _ = choose_inner_threshold([s for j, s in enumerate(scores) if j != i])
        out.append(inner_dice_at(score, threshold))
    return out


@dataclass(frozen=True)
class InnerThresholdFit:
    """The innermost-region volume threshold and its validation Dice, two ways.

    Attributes:
        region: The innermost region (fewest labels; ET for BraTS).
        min_volume_ml: Threshold chosen on all validation cases (used at inference).
        tuned_dice: Mean Dice at that threshold on the same cases (optimistic).
        cross_fitted_dice: Mean leave-one-out Dice (the honest figure).
        cross_fitted_cases: Case id → its leave-one-out Dice.
    """

    region: str
    min_volume_ml: float
    tuned_dice: float
    cross_fitted_dice: float
    cross_fitted_cases: dict[str, float]


def fit_inner_threshold(
    scores: Sequence[CaseScore], regions: dict[str, list[int]]
) -> InnerThresholdFit | None:
    """Choose the innermost-region threshold on ``scores`` and cross-fit its Dice.

    Returns:
        The fit, or None with a single region or no scored case (nothing to tune).
    """
    if len(regions) < 2 or not scores:
        return None
    region = min(regions, key=lambda n: len(regions[n]))
    threshold, tuned = choose_inner_threshold(scores)
    per_case = cross_fitted_inner_dice(scores)
    return InnerThresholdFit(
        region=region,
        min_volume_ml=threshold,
        tuned_dice=tuned,
        cross_fitted_dice=float(np.mean(per_case)),
        cross_fitted_cases={s.case_id: d for s, d in zip(scores, per_case, strict=True)},
    )
