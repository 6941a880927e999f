"""The model card and reference distribution of a classification / regression bundle.

Like the segmentation card (:mod:`medai.export.card`) it is built from the run's own
records only: the task, classes and the decision threshold with its policy (the plan),
the validation figures (``RUN/validation.json`` ``best_metrics``), the evaluation's
metrics with their bootstrap intervals when the run was evaluated
(``RUN/evaluation/metrics.json``) and the export's parity figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medai.export.card import _count, _read_json, closing_lines, evaluation_lines, run_records
from medai.inference.outputs import ImagePrediction
from medai.preprocess.plan import Plan, TaskKind, ThresholdPolicy

__all__ = ["build_image_model_card", "image_reference_distribution", "render_image_model_card"]

LIMITATIONS = (
    "Research use only; not a medical device and not validated for clinical decisions.",
    "Expects images like the training data (modality, channels, field of view); every "
    "input is cropped to its non-zero voxels and resized to the run's fixed input size.",
    "Figures come from the training run's own cases; performance on another site, "
    "scanner or population is unknown until evaluated there.",
)
_QUANTILES = (("min", 0.0), ("p05", 0.05), ("p25", 0.25), ("median", 0.5),
              ("p75", 0.75), ("p95", 0.95), ("max", 1.0))  # fmt: skip


def _threshold(plan: Plan) -> dict[str, Any] | None:
    """The decision rule, for people and services."""
    if plan.task is TaskKind.BINARY:
        value = plan.target.threshold if plan.target.threshold is not None else 0.5
        policy = plan.target.policy
        how = {
            ThresholdPolicy.YOUDEN: "maximises sensitivity + specificity − 1 on validation",
            ThresholdPolicy.SENSITIVITY: "reaches the target sensitivity on validation",
            ThresholdPolicy.SPECIFICITY: "reaches the target specificity on validation",
            ThresholdPolicy.F1: "maximises F1 of the positive class on validation",
            ThresholdPolicy.ARGMAX: "0.5 on the probability (no policy)",
        }[policy]
        positive = plan.classes[-1] if plan.classes else "positive"
        return {
            "value": value,
            "policy": policy.value,
            "policy_target": plan.target.policy_target,
            "rule": f"{positive!r} when its calibrated probability is >= {value:.4g} ({how})",
        }
    if plan.task is TaskKind.MULTICLASS:
        return {"value": None, "policy": "argmax", "rule": "the most probable class"}
    if plan.task is TaskKind.MULTILABEL:
        return {"value": 0.5, "policy": "per label", "rule": "each label at probability 0.5"}
    return None


def _evaluation(run_dir: Path | None) -> dict[str, Any] | None:
    doc = _read_json(run_dir / "evaluation" / "metrics.json") if run_dir else None
    if not isinstance(doc, dict):
        return None
    splits = {
        split: {
            "n_cases": part.get("n_cases"),
            "n_patients": part.get("n_patients"),
            "metrics": dict(part.get("aggregate", {})),
        }
        for split, part in doc.get("splits", {}).items()
    }
    return {"created": doc.get("created"), "splits": splits, "subgroups": doc.get("subgroups")}


def build_image_model_card(
    plan: Plan,
    *,
    name: str,
    version: str,
    run_dir: Path | None,
    parity: Mapping[str, Any],
    reference_cases: int,
) -> dict[str, Any]:
    """The model card of an image → label / number bundle (``model_card.json``)."""
    split, validation, kpis, run = run_records(run_dir)
    what = "a number" if plan.task is TaskKind.REGRESSION else ", ".join(plan.classes)
    size = " × ".join(str(s) for s in plan.input.size)
    return {
        "name": name,
        "version": version,
        "task": plan.task.value,
        "intended_use": (
            f"Research {plan.task.value} of {plan.input.spatial_dims}D images "
            f"({', '.join(plan.channels)}) into {what}, on a {size} input, to rank cases "
            "for human review. Not for diagnosis or treatment decisions."
        ),
        "classes": list(plan.classes),
        "threshold": _threshold(plan),
        "temperature": plan.target.temperature,
        "uncertainty": {
            "method": plan.target.uncertainty.value,
            "passes": plan.target.uncertainty_passes,
            "review_above": plan.target.review_above,
        },
        "training_data": {
            "dataset": (run or {}).get("dataset"),
            "training_cases": len(split["train"]) if isinstance(split, dict) else None,
            "validation_cases": len(split["validation"]) if isinstance(split, dict) else None,
            "channels": list(plan.channels),
            "input_size": list(plan.input.size),
        },
        "validation": (
            {
                "best_epoch": validation.get("best_epoch"),
                "best_metrics": validation.get("best_metrics"),
                "protocol": validation.get("protocol"),
            }
            if isinstance(validation, dict)
            else None
        ),
        "evaluation": _evaluation(run_dir),
        "training": (
            {k: kpis.get(k) for k in ("epochs", "steps", "time_to_train_s", "device", "seed")}
            if isinstance(kpis, dict)
            else None
        ),
        "export_parity": dict(parity),
        "reference_cases": reference_cases,
        "limitations": list(LIMITATIONS),
    }


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)


def render_image_model_card(card: Mapping[str, Any]) -> str:
    """``model_card.md``: the same card, for people."""
    data, rule = card["training_data"], card["threshold"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        f"- task: {card['task']}",
        f"- classes: {', '.join(card['classes']) or 'none (regression)'}",
        f"- decision: {rule['rule'] if rule else 'none (the value is the output)'}",
        f"- threshold: {rule['value'] if rule else 'n/a'}, policy "
        f"{rule['policy'] if rule else 'n/a'}; temperature {card['temperature']:.4g}",
        f"- uncertainty: {card['uncertainty']['method']} ({card['uncertainty']['passes']} "
        f"passes), review above {card['uncertainty']['review_above']}",
        "",
        "## Training data",
        "",
        f"- dataset: {data['dataset'] or 'not recorded'}",
        f"- cases: {_count(data['training_cases'])} training, "
        f"{_count(data['validation_cases'])} validation",
        f"- channels: {', '.join(data['channels'])}; input {data['input_size']}",
        "",
        "## Validation (training run)",
        "",
    ]
    val = card.get("validation")
    if val and val.get("best_metrics"):
        figures = ", ".join(f"{k} {_figure(v)}" for k, v in val["best_metrics"].items())
        lines += [f"Best epoch {val['best_epoch']}: {figures}.", ""]
    else:
        lines += ["No validation record.", ""]
    lines += evaluation_lines(card)
    par = card["export_parity"]
    agree = par["decision_agreement"]
    check = (
        f"ONNX Runtime vs PyTorch on {par['cases']} preprocessed training case(s): max "
        f"|Δlogit| {par['max_abs_diff']:.2e}, decisions agree "
        f"{'n/a' if agree is None else f'{agree:.0%}'}."
    )
    return "\n".join(lines + closing_lines(card, check))


def _summary(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"values": [], "quantiles": None}
    qs = np.quantile(arr, [q for _, q in _QUANTILES])
    return {
        "values": [round(float(x), 6) for x in arr],
        "quantiles": {k: round(float(q), 6) for (k, _), q in zip(_QUANTILES, qs, strict=True)},
    }


def image_reference_distribution(
    predictions: Sequence[ImagePrediction], plan: Plan
) -> dict[str, Any]:
    """The bundle's outputs and uncertainties on training / validation cases, with
    quantiles, so a service can tell how usual a new case's output is."""
    outputs: dict[str, Any] = {}
    if predictions and isinstance(predictions[0].output, tuple):
        for k, name in enumerate(plan.classes):
            column = [p.output[k] for p in predictions if isinstance(p.output, tuple)]
            outputs[name] = _summary(column)
    else:
        key = "value" if plan.task is TaskKind.REGRESSION else "probability"
        outputs[key] = _summary([float(p.output) for p in predictions])  # type: ignore[arg-type]
    decisions = [p.decision for p in predictions if p.decision >= 0]
    return {
        "measure": "the bundle's output (calibrated, averaged over the uncertainty passes) "
        "and its per-case uncertainty, as the runtime predicts them",
        "cases": [p.case_id for p in predictions],
        "outputs": outputs,
        "uncertainty": _summary([p.uncertainty for p in predictions]),
        "decision_counts": {str(d): decisions.count(d) for d in sorted(set(decisions))},
    }
