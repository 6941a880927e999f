"""Image → label or number with PyTorch: logits, several passes for uncertainty, and
the plan's learnt output settings (temperature, threshold, target scale).

Every task's outputs go through :func:`outputs_from_logits`, so training's validation,
evaluation and the exported bundle read a model's output the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import expit, softmax
from torch import nn

from medai.preprocess.plan import Plan, TaskKind, UncertaintyMethod

__all__ = [
    "ImagePrediction",
    "case_uncertainty",
    "decide",
    "forward_logits",
    "member_logits",
    "outputs_from_logits",
    "predict_images",
    "tta_shifts",
]

F32 = NDArray[np.float32]


def forward_logits(
    net: nn.Module, images: F32, *, device: torch.device, batch_size: int = 8
) -> F32:
    """Logits ``(N, out)`` of ``images`` ``(N, C, *spatial)`` in eval mode, no gradient."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(images[start : start + batch_size], device=device)
            out.append(net(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 1), np.float32)


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


@contextmanager
def _dropout_on(net: nn.Module) -> Iterator[None]:
    """Eval mode everywhere except dropout layers (Monte Carlo dropout)."""
    net.eval()
    drops = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not drops:
        raise ValueError(
            "MC dropout needs dropout layers, and this network has none: train with "
            "network.dropout > 0, or use target.uncertainty=tta"
        )
    for m in drops:
        m.train()
    try:
        yield
    finally:
        net.eval()


def member_logits(net: nn.Module, images: F32, plan: Plan, *, device: torch.device) -> F32:
    """Logits ``(M, N, out)`` from the plan's uncertainty method (M passes; M = 1 for
    ``none``). MC dropout is seeded from the plan's seed, so it replays."""
    method, passes = plan.target.uncertainty, plan.target.uncertainty_passes
    if method is UncertaintyMethod.NONE:
        return forward_logits(net, images, device=device)[None]
    if method is UncertaintyMethod.MC_DROPOUT:
        torch.manual_seed(plan.train.seed)
        with _dropout_on(net), torch.no_grad():
            members = []
            for _ in range(passes):
                x = torch.as_tensor(images, device=device)
                members.append(net(x).float().cpu().numpy())
        net.eval()
        return np.stack(members).astype(np.float32)
    dims = plan.input.spatial_dims
    axes = tuple(range(2, 2 + dims))
    shifted = [
        np.roll(images, shift, axis=axes)
        for shift in tta_shifts(dims, tuple(images.shape[2:]), passes)
    ]
    return np.stack([forward_logits(net, s, device=device) for s in shifted])


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


def predict_images(
    net: nn.Module, images: F32, plan: Plan, case_ids: list[str], *, device: torch.device
) -> list[ImagePrediction]:
    """Predict preprocessed inputs ``(N, C, *size)`` with the plan's output settings."""
    first = forward_logits(net, images, device=device)
    members = outputs_from_logits(member_logits(net, images, plan, device=device), plan)
    mean = members.mean(axis=0)
    passes = members.shape[0] > 1
    spread = case_uncertainty(members, plan) if passes else np.full(len(images), np.nan)
    review = plan.target.review_above
    if plan.task is TaskKind.REGRESSION:
        decisions = np.full(len(images), -1, dtype=np.int64)
    else:
        decisions = decide(mean, plan)
    out = []
    for i, case_id in enumerate(case_ids):
        value = mean[i]
        output: float | tuple[float, ...] = (
            float(value) if np.ndim(value) == 0 else tuple(float(v) for v in value)
        )
        decision = decisions[i]
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
