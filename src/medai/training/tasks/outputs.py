"""Validation figures and finalisation of image → label / number runs (numpy only).

Finalisation learns on the best validation's cases: the temperature (negative
log-likelihood), the binary decision threshold for the plan's policy, and the review
threshold of the uncertainty score. The figures it reports at the threshold are
cross-fitted (each case scored at the threshold chosen on the other cases), the tuned
ones beside them are optimistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, softmax

from medai.evaluation.calibration import fit_temperature
from medai.evaluation.classification import compute_balanced_accuracy, compute_roc_auc
from medai.evaluation.regression import compute_mae, compute_r2
from medai.evaluation.thresholds import choose_threshold
from medai.preprocess.plan import Plan, TaskKind
from medai.training.tasks.base import Finalised, Validation

__all__ = [
    "cross_fitted_decisions",
    "finalise_outputs",
    "learn_threshold",
    "validation_metrics",
]


def _finite_or(value: float, fallback: float) -> float:
    return value if np.isfinite(value) else fallback


def validation_metrics(
    logits: NDArray[np.floating], targets: NDArray[np.floating], plan: Plan
) -> tuple[float, dict[str, float]]:
    """(score picking the best model, figures) from raw logits (temperature 1)."""
    z = np.asarray(logits, dtype=np.float64)
    if plan.task is TaskKind.REGRESSION:
        pred = z[:, 0] * plan.target.std + plan.target.mean
        truth = np.asarray(targets, dtype=np.float64).reshape(-1)
        mae = compute_mae(truth, pred)
        return -mae, {"mae": mae, "r2": compute_r2(truth, pred) if len(truth) > 1 else 0.0}
    if plan.task is TaskKind.MULTILABEL:
        probs = expit(z)
        aucs = [compute_roc_auc(targets[:, k], probs[:, k]) for k in range(z.shape[1])]
        auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
        acc = float(((probs >= 0.5) == (targets > 0.5)).mean())
        return _finite_or(auc, acc), {"auc": auc, "label_accuracy": acc}
    if plan.task is TaskKind.BINARY:
        truth = (np.asarray(targets).reshape(-1) > 0.5).astype(int)
        prob = expit(z[:, 0])
        pred = (prob >= 0.5).astype(int)
    else:
        truth = np.asarray(targets).reshape(-1).astype(int)
        prob = softmax(z, axis=1)
        pred = prob.argmax(axis=1)
    auc = compute_roc_auc(truth, prob) if len(set(truth.tolist())) > 1 else float("nan")
    bacc = compute_balanced_accuracy(truth, pred)
    return _finite_or(auc, bacc), {"auc": auc, "balanced_accuracy_at_0.5": bacc}


def learn_threshold(truth: NDArray[np.integer], prob: NDArray[np.floating], plan: Plan) -> float:
    """The binary decision threshold of the plan's policy on ``(truth, prob)``."""
    policy = plan.target.policy
    if len(set(truth.tolist())) < 2:
        return 0.5
    return choose_threshold(
        truth, prob, policy=policy.value, target=plan.target.policy_target
    ).value


def cross_fitted_decisions(
    truth: NDArray[np.integer], prob: NDArray[np.floating], plan: Plan
) -> NDArray[np.int64]:
    """Each case decided at the threshold learnt on the other cases (leave-one-out)."""
    out = np.zeros(len(truth), dtype=np.int64)
    for i in range(len(truth)):
        keep = np.arange(len(truth)) != i
        out[i] = int(prob[i] >= learn_threshold(truth[keep], prob[keep], plan))
    return out


def _rates(truth: NDArray[np.integer], pred: NDArray[np.integer]) -> dict[str, float]:
    pos, neg = truth == 1, truth == 0
    sens = float(pred[pos].mean()) if pos.any() else float("nan")
    spec = float(1 - pred[neg].mean()) if neg.any() else float("nan")
    return {"sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2}


def finalise_outputs(plan: Plan, best: Validation | None) -> Finalised:
    """Learn the temperature and the decision threshold into ``plan``; report figures."""
    if best is None or not best.cases:
        return Finalised({}, {}, {"best_metrics": {}, "cases": []})
    logits = np.array([c["logits"] for c in best.cases], dtype=np.float64)
    targets = np.array([c["target"] for c in best.cases], dtype=np.float64)
    record: dict[str, Any] = {"best_score": best.score, "cases": best.cases}
    metrics, tuned = dict(best.metrics), {}
    if plan.task in (TaskKind.BINARY, TaskKind.MULTICLASS):
        binary = plan.task is TaskKind.BINARY
        truth = ((targets.reshape(-1) > 0.5) if binary else targets).astype(np.int64)
        if len(set(truth.tolist())) > 1:
            z = logits[:, 0] if plan.task is TaskKind.BINARY else logits
            plan.target.temperature = fit_temperature(z, truth)
    if plan.task is TaskKind.BINARY:
        prob = expit(logits[:, 0] / plan.target.temperature)
        plan.target.threshold = learn_threshold(truth, prob, plan)
        tuned = _rates(truth, (prob >= plan.target.threshold).astype(int))
        metrics.update(_rates(truth, cross_fitted_decisions(truth, prob, plan)))
        record["threshold"] = {
            "value": plan.target.threshold,
            "policy": plan.target.policy.value,
            "target": plan.target.policy_target,
        }
    record.update(
        best_metrics=metrics,
        best_metrics_tuned=tuned,
        temperature=plan.target.temperature,
        protocol=(
            "threshold figures cross-fitted: each validation case decided at the threshold "
            "chosen on the other validation cases; *_tuned: chosen and scored on the same cases"
        ),
    )
    return Finalised(metrics, tuned, record)
