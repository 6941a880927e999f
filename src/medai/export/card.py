"""The bundle's model card and reference distribution, from the run's own records.

The card states intended use, the training data (cases, channels, labels, regions),
the validation figures the trainer recorded, the evaluation's metrics with their
bootstrap intervals and subgroups when the run was evaluated (``RUN/evaluation/
metrics.json``), the export's parity figures and known limitations. Nothing is
invented: a section without a record says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medai.preprocess.plan import Plan

__all__ = ["build_model_card", "reference_distribution", "render_model_card"]

LIMITATIONS = (
    "Research use only; not a medical device and not validated for clinical decisions.",
    "Expects the channels listed, in that order, co-registered on one voxel grid, from "
    "the kind of scanners and protocols in the training data.",
    "Figures come from the training run's own cases; performance on another site, "
    "scanner or population is unknown until evaluated there.",
    "Volumes below the post-processing thresholds are not reported (see thresholds).",
)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def _evaluation(run_dir: Path | None) -> dict[str, Any] | None:
    doc = _read_json(run_dir / "evaluation" / "metrics.json") if run_dir else None
    if not isinstance(doc, dict):
        return None
    keep = ("dice", "hd95", "nsd", "mean_dice")
    splits = {
        split: {
            "n_cases": part.get("n_cases"),
            "n_patients": part.get("n_patients"),
            "metrics": {
                name: ci
                for name, ci in part.get("aggregate", {}).items()
                if name.split("/")[-1] in keep
            },
        }
        for split, part in doc.get("splits", {}).items()
    }
    subgroups = doc.get("subgroups") or None
    return {"created": doc.get("created"), "splits": splits, "subgroups": subgroups}


def run_records(run_dir: Path | None) -> tuple[Any, Any, Any, Any]:
    """A training run's ``split.json``, ``validation.json``, ``kpis.json`` and
    ``run.json`` (each None when missing, or all None without a run folder)."""
    names = ("split.json", "validation.json", "kpis.json", "run.json")
    split, validation, kpis, run = (_read_json(run_dir / n) if run_dir else None for n in names)
    return split, validation, kpis, run


def build_model_card(
    plan: Plan,
    *,
    name: str,
    version: str,
    run_dir: Path | None,
    parity: Mapping[str, Any],
    reference_cases: int,
) -> dict[str, Any]:
    """The model card as a JSON document (``model_card.json``)."""
    split, validation, kpis, run = run_records(run_dir)
    regions = ", ".join(plan.regions)
    return {
        "name": name,
        "version": version,
        "intended_use": (
            f"Research segmentation of {regions} on {len(plan.channels)}-channel 3D studies "
            f"({', '.join(plan.channels)}), to measure region volumes and to rank studies "
            "for human review. Not for diagnosis or treatment decisions."
        ),
        "training_data": {
            "dataset": (run or {}).get("dataset"),
            "training_cases": len(split["train"]) if isinstance(split, dict) else None,
            "validation_cases": len(split["validation"]) if isinstance(split, dict) else None,
            "channels": plan.channels,
            "labels": {str(k): v for k, v in plan.labels.items()},
            "regions": plan.regions,
            "target_spacing_mm": list(plan.preprocess.target_spacing),
        },
        "validation": (
            {
                "best_epoch": validation.get("best_epoch"),
                "best_dice": validation.get("best_dice"),
                "note": "inner-region volume threshold cross-fitted on the validation cases",
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


def _ci_text(ci: Mapping[str, Any]) -> str:
    est, low, high = ci.get("estimate"), ci.get("low"), ci.get("high")
    if est is None:
        return "n/a"
    if low is None or high is None:
        return f"{est:.3f}"
    return f"{est:.3f} (95 % CI {low:.3f}–{high:.3f}, {ci.get('n_patients')} patients)"


def _count(value: Any) -> str:
    return "not recorded" if value is None else str(value)


SUBGROUP_NOTE = "Subgroup analysis (mean Dice) is in model_card.json."
NOT_EVALUATED = (
    "The run has not been evaluated (`medai evaluate RUN`); no metrics with intervals to report."
)


def render_model_card(card: Mapping[str, Any]) -> str:
    """``model_card.md``: the same card, for people."""
    data = card["training_data"]
    lines = [
        f"# Model card: {card['name']} {card['version']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Training data",
        "",
        f"- dataset: {data['dataset'] or 'not recorded'}",
        f"- cases: {_count(data['training_cases'])} training, "
        f"{_count(data['validation_cases'])} validation",
        f"- channels: {', '.join(data['channels'])}",
        f"- regions: {', '.join(f'{k} = labels {v}' for k, v in data['regions'].items())}",
        f"- voxel grid: {' × '.join(f'{s:g}' for s in data['target_spacing_mm'])} mm",
        "",
        "## Validation (training run)",
        "",
    ]
    val = card.get("validation")
    if val and val.get("best_dice"):
        dice = ", ".join(f"{k} {v:.3f}" for k, v in val["best_dice"].items())
        lines += [f"Best epoch {val['best_epoch']}: Dice {dice} ({val['note']}).", ""]
    else:
        lines += ["No validation record.", ""]
    lines += evaluation_lines(card, subgroups=SUBGROUP_NOTE)
    par = card["export_parity"]
    check = (
        f"ONNX Runtime vs PyTorch on {par['cases']} preprocessed training case(s): max "
        f"|Δp| {par['max_abs_diff']:.2e}, lowest region Dice "
        f"{min(par['min_dice'].values()):.4f}."
    )
    return "\n".join(lines + closing_lines(card, check))


def evaluation_lines(card: Mapping[str, Any], *, subgroups: str | None = None) -> list[str]:
    """A card's "Evaluation" section: each split's metrics with their intervals (and
    ``subgroups`` when the card holds a subgroup analysis), or why there are none."""
    lines = ["## Evaluation", ""]
    ev = card.get("evaluation")
    if not (ev and ev.get("splits")):
        return [*lines, NOT_EVALUATED, ""]
    for split, part in ev["splits"].items():
        lines.append(f"**{split}** ({part['n_cases']} cases, {part['n_patients']} patients)")
        lines += [f"- {metric}: {_ci_text(ci)}" for metric, ci in part["metrics"].items()]
        lines.append("")
    if subgroups and ev.get("subgroups"):
        lines += [subgroups, ""]
    return lines


def closing_lines(card: Mapping[str, Any], check: str) -> list[str]:
    """A card's "Ensemble" (when it is one), "Export check" (the parity sentence
    ``check``) and "Limitations"."""
    limits = [f"- {item}" for item in card["limitations"]]
    ensemble = card.get("ensemble")
    lines = []
    if ensemble:
        lines = [
            "## Ensemble",
            "",
            f"An ensemble of {ensemble['members']} models: {ensemble['combination']}. "
            f"Lead {ensemble['lead']}.",
            "",
            *(f"- member {i}: run {run}" for i, run in enumerate(ensemble["runs"])),
            "",
        ]
    return [*lines, "## Export check", "", check, "", "## Limitations", "", *limits, ""]


def reference_distribution(
    volumes: Sequence[Mapping[str, float]], case_ids: Sequence[str]
) -> dict[str, Any]:
    """Per-region predicted volumes (mL) on the training cases, with quantiles, so a
    service can tell how usual a new study's prediction is."""
    regions = list(volumes[0]) if volumes else []
    per_region: dict[str, Any] = {}
    for name in regions:
        values = np.asarray([v[name] for v in volumes], dtype=np.float64)
        qs = np.quantile(values, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
        per_region[name] = {
            "values": [round(float(x), 4) for x in values],
            "quantiles": dict(
                zip(
                    ("min", "p05", "p25", "median", "p75", "p95", "max"),
                    (round(float(q), 4) for q in qs),
                    strict=True,
                )
            ),
            "empty_fraction": float(np.mean(values == 0.0)),
        }
    return {
        "measure": "predicted region volume (mL), input grid, after post-processing",
        "cases": list(case_ids),
        "regions": per_region,
    }
