"""Validation on whole preprocessed cases and the ET-volume threshold learnt from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medai.inference.postprocess import postprocess_regions, region_dice
from medai.inference.sliding import predict_probabilities
from medai.preprocess.plan import Plan
from medai.training.data import CaseArrays

__all__ = ["CaseScore", "choose_inner_threshold", "validate"]

THRESHOLDS_ML = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


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


def choose_inner_threshold(scores: Sequence[CaseScore]) -> tuple[float, float]:
    """The innermost-region (ET) volume below which to drop it, maximising its mean
    validation Dice; ties go to the smallest threshold. Returns (threshold, dice)."""
    if not scores:
        return 0.0, float("nan")
    best = (0.0, -1.0)
    for thr in THRESHOLDS_ML:
        values = []
        for s in scores:
            if s.inner_volume_ml >= thr or s.inner_volume_ml == 0.0:
                values.append(s.inner_dice_kept)
            else:
                values.append(1.0 if s.inner_ref_empty else 0.0)
        mean = float(np.mean(values))
        if mean > best[1] + 1e-9:
            best = (thr, mean)
    return best
