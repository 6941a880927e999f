"""Region segmentation as a trainer task: patches, Dice + BCE, sliding-window Dice,
and the innermost region's (ET's) volume threshold learnt at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from medai.preprocess.cases import SegCohort
from medai.preprocess.pipeline import preprocess_cohort
from medai.preprocess.plan import Plan, TrainPlan
from medai.training.data import CaseArrays, PatchDataset, load_case_arrays
from medai.training.recipe import build_loss
from medai.training.tasks.base import Finalised, Task, Validation
from medai.training.validation import DICE_PROTOCOL, CaseScore, fit_inner_threshold, validate

__all__ = ["SegmentationTask"]


class SegmentationTask(Task):
    """Train on a :class:`SegCohort` (labels → the plan's regions)."""

    metric = "dice"
    score_name = "mean"

    def __init__(self, cohort: SegCohort) -> None:
        self.cohort = cohort
        self.train_ids, self.val_ids = list(cohort.train_ids), list(cohort.val_ids)

    def ids(self) -> list[str]:
        return self.cohort.ids()

    def require_targets(self, ids: Sequence[str]) -> None:
        self.cohort.require_labels(ids)

    def preprocess(self, ids: list[str], plan: Plan, cache: Path) -> dict[str, Path]:
        return preprocess_cohort(self.cohort.subset(ids), plan.preprocess, cache)

    def load(self, paths: dict[str, Path], plan: Plan) -> list[CaseArrays]:
        return load_case_arrays(paths, plan.regions)

    def dataset(
        self, items: Sequence[Any], plan: TrainPlan, *, seed: int, length: int, full: Plan
    ) -> Dataset[dict[str, torch.Tensor]]:
        return PatchDataset(items, plan, seed=seed, length=length)

    def loss(self, plan: Plan) -> nn.Module:
        return build_loss(plan.train.loss)

    def validate(
        self, net: nn.Module, items: Sequence[Any], plan: Plan, *, device: torch.device
    ) -> Validation:
        scores = validate(net, items, plan, device=device)
        dice = {n: float(np.mean([s.dice[n] for s in scores])) for n in plan.regions}
        return Validation(float(np.mean(list(dice.values()))), dice, [asdict(s) for s in scores])

    def finalise(
        self,
        plan: Plan,
        best: Validation | None,
        *,
        net: nn.Module,
        items: Sequence[Any],
        device: torch.device,
    ) -> Finalised:
        """Choose the innermost-region (ET) threshold on the best validation's cases.

        The reported Dice has that region cross-fitted (leave-one-out: honest); the
        tuned figure is scored on the cases it was chosen on (optimistic).
        """
        best_dice = dict(best.metrics) if best else {}
        cases = best.cases if best else []
        fit = fit_inner_threshold([CaseScore(**s) for s in cases], plan.regions)
        record: dict[str, Any] = {"best_dice": best_dice, "cases": cases}
        if fit is None:
            return Finalised(best_dice, {}, record)
        plan.inference.et_min_volume_ml = fit.min_volume_ml
        plan.notes["learned_inner_threshold"] = {
            "region": fit.region,
            "min_volume_ml": fit.min_volume_ml,
            "validation_cases": len(cases),
        }
        tuned = {fit.region: fit.tuned_dice}
        best_dice[fit.region] = fit.cross_fitted_dice
        record = {
            "best_dice": best_dice,
            "best_dice_tuned": tuned,
            "protocol": DICE_PROTOCOL.format(inner=fit.region),
            "inner_threshold": asdict(fit),
            "cases": cases,
        }
        return Finalised(best_dice, tuned, record)
