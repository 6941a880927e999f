"""The parts of a :class:`~medai.preprocess.plan.Plan` that say what a run predicts.

A plan's ``task`` chooses the trainer's task (dataset, head, loss, validation score and
finalisation, :mod:`medai.training.tasks`). Image → label and image → number runs take
a fixed-size input (:class:`InputPlan`) and hold what they learn about their outputs in
:class:`TargetPlan`: the decision threshold with its policy, the temperature, and the
uncertainty above which a case goes to a person. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FixedNormalisation",
    "Imbalance",
    "InputPlan",
    "TargetPlan",
    "TaskKind",
    "ThresholdPolicy",
    "UncertaintyMethod",
]


class TaskKind(StrEnum):
    """What a run predicts."""

    SEGMENTATION = "segmentation"  # region masks (sigmoid per region)
    BINARY = "binary"  # one finding present or absent (one logit)
    MULTICLASS = "multiclass"  # exactly one of K classes (softmax)
    MULTILABEL = "multilabel"  # any of K findings (one sigmoid each)
    REGRESSION = "regression"  # one number (standardised on the training cases)

    @property
    def is_classification(self) -> bool:
        return self in (TaskKind.BINARY, TaskKind.MULTICLASS, TaskKind.MULTILABEL)


class ThresholdPolicy(StrEnum):
    """How the decision threshold of a binary model is chosen on validation."""

    YOUDEN = "youden"  # maximise sensitivity + specificity − 1
    SENSITIVITY = "sensitivity"  # reach a target sensitivity, then the best specificity
    SPECIFICITY = "specificity"  # reach a target specificity, then the best sensitivity
    F1 = "f1"  # maximise F1 of the positive class
    ARGMAX = "argmax"  # 0.5 on the probability: no policy (for ablations)


class Imbalance(StrEnum):
    """How training counters unequal class frequencies."""

    NONE = "none"
    WEIGHTED_LOSS = "weighted_loss"  # inverse-frequency class weights in the loss
    BALANCED_SAMPLING = "balanced_sampling"  # each class drawn equally often


class UncertaintyMethod(StrEnum):
    """How a run's per-case uncertainty is estimated at prediction."""

    NONE = "none"
    TTA = "tta"  # flips of the input
    MC_DROPOUT = "mc_dropout"  # dropout left on, several passes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FixedNormalisation(StrEnum):
    """Intensity normalisation of a fixed-size input."""

    ZSCORE = "zscore"  # per channel over the foreground
    NONE = "none"


class InputPlan(_Strict):
    """The fixed-size network input of an image → label or number run (the steps:
    :mod:`medai.preprocess.fixed`)."""

    spatial_dims: int = Field(default=3, ge=2, le=3)
    size: tuple[int, ...] = (64, 64, 64)
    spacing: tuple[float, ...] | None = Field(
        default=None, description="resample to this (mm) first; None keeps the image's grid"
    )
    crop_to_foreground: bool = True
    normalise: FixedNormalisation = FixedNormalisation.ZSCORE

    @model_validator(mode="after")
    def _dims(self) -> InputPlan:
        if len(self.size) != self.spatial_dims or min(self.size) < 1:
            raise ValueError(f"input.size {self.size} must give {self.spatial_dims} positive sides")
        if self.spacing is not None and (
            len(self.spacing) != self.spatial_dims or min(self.spacing) <= 0
        ):
            raise ValueError(
                f"input.spacing {self.spacing} must give {self.spatial_dims} positive millimetres"
            )
        return self

    def digest(self) -> str:
        """Short hash of these settings: the cache key's settings part."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class TargetPlan(_Strict):
    """How the output is trained and what finalisation learnt about it."""

    imbalance: Imbalance = Imbalance.NONE
    policy: ThresholdPolicy = ThresholdPolicy.YOUDEN
    policy_target: float | None = Field(
        default=None, gt=0, lt=1, description="sensitivity or specificity to reach"
    )
    class_weights: list[float] | None = Field(default=None, description="learnt: loss weights")
    threshold: float | None = Field(default=None, description="learnt: binary decision threshold")
    temperature: float = Field(default=1.0, gt=0, description="learnt: logit temperature")
    mean: float = Field(default=0.0, description="learnt: regression target mean")
    std: float = Field(default=1.0, gt=0, description="learnt: regression target scale")
    uncertainty: UncertaintyMethod = UncertaintyMethod.TTA
    uncertainty_passes: int = Field(default=4, ge=2, le=64)
    review_above: float | None = Field(
        default=None, description="learnt: uncertainty above which a case needs review"
    )

    @model_validator(mode="after")
    def _policy(self) -> TargetPlan:
        needs = self.policy in (ThresholdPolicy.SENSITIVITY, ThresholdPolicy.SPECIFICITY)
        if needs and self.policy_target is None:
            raise ValueError(
                f"target.policy {self.policy.value!r} needs target.policy_target, e.g. 0.9"
            )
        return self
