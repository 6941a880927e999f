"""An image → label / number model's outputs from its logits (numpy only, no torch).

The PyTorch path (:mod:`medai.inference.classify`) and the torch-free runtime
(:mod:`medai.runtime.classify`) both read logits with these functions, so a bundle
gives the numbers the training run gives: the plan's temperature, the stored decision
threshold, the test-time shifts and the per-case uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, softmax

from medai.preprocess.plan import Plan, TaskKind

__all__ = [
    "ImagePrediction",
    "case_uncertainty",
    "decide",
    "image_predictions",
    "outputs_from_logits",
    "shifted_inputs",
    "tta_shifts",
]


def tta_shifts(spatial_dims: int, size: tuple[int, ...], passes: int) -> list[tuple[int, ...]]:
    """``passes`` rigid shifts (voxels) for test-time augmentation: the identity, then
    ± about 1/16 of each side along one axis at a time. Shifts keep left and right,
    front and back, so they suit every label (flips would not)."""
    shifts: list[tuple[int, ...]] = [(0,) * spatial_dims]
    for axis in range(spatial_dims):
        step = max(1, size[axis] // 16)
        for sign in (1, -1):
            shift = [0] * spatial_dims
            shift[axis] = sign * step
            shifts.append(tuple(shift))
    return shifts[:passes]


def shifted_inputs(
    images: NDArray[np.float32], spatial_dims: int, passes: int
) -> list[NDArray[np.float32]]:
    """``images`` ``(N, C, *size)`` rolled by each of :func:`tta_shifts` (identity first)."""
    axes = tuple(range(2, 2 + spatial_dims))
    shifts = tta_shifts(spatial_dims, tuple(images.shape[2:]), passes)
    return [np.roll(images, shift, axis=axes) for shift in shifts]


def outputs_from_logits(logits: NDArray[np.floating], plan: Plan) -> NDArray[np.float64]:
    """The task's outputs from logits ``(..., out)``: binary → positive-class
    probability ``(...)``; multi-class → softmax ``(..., K)``; multi-label → sigmoids
    ``(..., K)``; regression → the value in the target's units ``(...)``. The plan's
    learnt temperature applies to the classification outputs."""
    z = np.asarray(logits, dtype=np.float64)
    target = plan.target
    if plan.task is TaskKind.REGRESSION:
        return np.asarray(z[..., 0] * target.std + target.mean)
    z = z / target.temperature
    if plan.task is TaskKind.BINARY:
        return np.asarray(expit(z[..., 0]))
    if plan.task is TaskKind.MULTICLASS:
        return np.asarray(softmax(z, axis=-1))
    if plan.task is TaskKind.MULTILABEL:
        return np.asarray(expit(z))
    raise ValueError(f"outputs_from_logits serves classification and regression, not {plan.task}")


def decide(outputs: NDArray[np.floating], plan: Plan) -> NDArray[np.int64]:
    """Class decisions: binary at the stored threshold (0.5 when none was learnt),
    multi-class by argmax, multi-label each at 0.5."""
    if plan.task is TaskKind.BINARY:
        threshold = plan.target.threshold if plan.target.threshold is not None else 0.5
        return (np.asarray(outputs) >= threshold).astype(np.int64)
    if plan.task is TaskKind.MULTICLASS:
        return np.asarray(np.argmax(outputs, axis=-1), dtype=np.int64)
    if plan.task is TaskKind.MULTILABEL:
        return (np.asarray(outputs) >= 0.5).astype(np.int64)
    raise ValueError(f"decide serves classification, not {plan.task}")


def case_uncertainty(member_outputs: NDArray[np.floating], plan: Plan) -> NDArray[np.float64]:
    """Per-case uncertainty from the outputs of several passes ``(M, N, …)``:
    predictive entropy of the mean (classification; multi-label: mean over labels),
    the spread (standard deviation) across passes in the target's units (regression)."""
    from medai.evaluation.uncertainty import predictive_entropy

    outputs = np.asarray(member_outputs, dtype=np.float64)
    if plan.task is TaskKind.REGRESSION:
        return np.asarray(outputs.std(axis=0))
    mean = outputs.mean(axis=0)
    if plan.task is TaskKind.MULTILABEL:
        per_label = [predictive_entropy(mean[:, k]) for k in range(mean.shape[1])]
        return np.asarray(np.mean(per_label, axis=0))
    return predictive_entropy(mean)


@dataclass(frozen=True)
class ImagePrediction:
    """One case's prediction by an image → label / number run.

    Attributes:
        case_id: The case.
        logits: Raw network output ``(out,)`` (first pass, temperature 1).
        output: Binary: positive-class probability; multi-class / multi-label: one
            probability per class; regression: the value (target units). Calibrated
            with the run's temperature and averaged over the uncertainty passes.
        decision: Class index (binary: 1 = the last class) or -1 for regression.
        uncertainty: Per-case uncertainty (see :func:`case_uncertainty`), NaN without passes.
        needs_review: Uncertainty above the run's review threshold.
    """

    case_id: str
    logits: tuple[float, ...]
    output: float | tuple[float, ...]
    decision: int
    uncertainty: float
    needs_review: bool


def image_predictions(
    first: NDArray[np.floating],
    members: NDArray[np.floating],
    plan: Plan,
    case_ids: Sequence[str],
) -> list[ImagePrediction]:
    """Each case's prediction from its logits.

    Args:
        first: Logits ``(N, out)`` of the plain (first) pass.
        members: Logits ``(M, N, out)`` of the uncertainty passes (``M = 1``: none).
        plan: The run's output settings (task, temperature, threshold, review_above).
        case_ids: ``N`` case names.
    """
    outputs = outputs_from_logits(members, plan)
    mean = outputs.mean(axis=0)
    n = len(case_ids)
    passes = outputs.shape[0] > 1
    spread = case_uncertainty(outputs, plan) if passes else np.full(n, np.nan)
    review = plan.target.review_above
    if plan.task is TaskKind.REGRESSION:
        decisions = np.full(n, -1, dtype=np.int64)
    else:
        decisions = decide(mean, plan)
    out = []
    for i, case_id in enumerate(case_ids):
        value, decision = mean[i], decisions[i]
        output: float | tuple[float, ...] = (
            float(value) if np.ndim(value) == 0 else tuple(float(v) for v in value)
        )
        out.append(
            ImagePrediction(
                case_id=case_id,
                logits=tuple(float(v) for v in first[i]),
                output=output,
                decision=int(decision) if np.ndim(decision) == 0 else int(np.argmax(decision)),
                uncertainty=float(spread[i]),
                needs_review=bool(review is not None and passes and spread[i] > review),
            )
        )
    return out
