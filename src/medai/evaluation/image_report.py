"""Score an image → label / number run's prediction tables and write its report.

:func:`evaluate_image_predictions` reads ``predictions/<split>.csv`` (one row per case,
columns as :mod:`medai.pipeline_image` writes them) for the evaluated split and the
dataset's external split, adds each case's ``correct`` (classification: the decision
at the stored threshold, argmax, or every label at 0.5 agrees with the truth) or
``abs_error`` (regression), analyses each split (:mod:`medai.evaluation.image_analysis`)
and subgroups by clinical column, and writes ``report.html`` and ``metrics.json``
atomically. Like the segmentation report it consumes predictions and never loads a
model: :func:`medai.pipeline_image.evaluate_image_run` predicts first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data import Dataset
from medai.data.manifest import Case
from medai.errors import DatasetError
from medai.evaluation.image_analysis import SplitFindings, analyse_split, stored_threshold
from medai.evaluation.image_gallery import explanation_json, load_explanation
from medai.evaluation.image_sections import ImageContext, build_image_report
from medai.evaluation.report import Answer, ReportSection
from medai.evaluation.run_report import (
    SUBGROUP_CANDIDATES,
    EvaluationResult,
    _ci_json,
    _finite,
    _records,
    _write_json,
    check_evaluation_options,
    evaluation_splits,
    resolve_run_dataset,
)
from medai.evaluation.subgroups import SubgroupAnalysis, age_bands, analyse_subgroups
from medai.preprocess.plan import Plan, TaskKind

__all__ = ["evaluate_image_predictions", "read_prediction_tables", "required_columns"]

log = logging.getLogger(__name__)


def required_columns(plan: Plan) -> list[str]:
    """Columns a split's table must hold for ``plan``'s task."""
    ids = ["case_id", "patient_id"]
    if plan.task is TaskKind.SEGMENTATION:
        raise ValueError("a segmentation run is scored from label maps (evaluate_predictions)")
    if plan.task is TaskKind.MULTILABEL:
        return ids + [f"truth_{c}" for c in plan.classes] + [f"prob_{c}" for c in plan.classes]
    if plan.task is TaskKind.MULTICLASS:
        return [*ids, "truth", *(f"prob_{c}" for c in plan.classes)]
    return [*ids, "truth", "output"]


def _read_table(path: Path, split: str, plan: Plan) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(
            f"no prediction table for split {split!r} at {path}; predict the split first "
            "(medai evaluate RUN predicts it, then scores)"
        )
    table = pd.read_csv(path, dtype={"case_id": str, "patient_id": str})
    missing = [c for c in required_columns(plan) if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: the {plan.task.value} prediction table lacks column(s) {missing} "
            f"(it has {list(table.columns)}); write it with medai.pipeline_image."
            "predict_image_splits for this run's plan"
        )
    return table


def _select_cases(
    table: pd.DataFrame, cases: Sequence[Case], split: str, path: Path
) -> pd.DataFrame:
    ids = [c.case_id for c in cases]
    absent = sorted(set(ids) - set(table["case_id"]))
    if absent:
        raise DatasetError(
            f"{path} has no row for {len(absent)} case(s) of split {split!r} "
            f"(e.g. {absent[0]!r}); predict the split again"
        )
    rows = table.drop_duplicates("case_id").set_index("case_id").loc[ids].reset_index()
    rows["split"] = split
    return rows


def _check_truth(rows: pd.DataFrame, plan: Plan, split: str) -> None:
    truth = [c for c in required_columns(plan) if c.startswith("truth")]
    blank = rows.loc[rows[truth].isna().any(axis=1), "case_id"].tolist()
    if blank:
        raise DatasetError(
            f"case {blank[0]!r} of split {split!r} has no reference ({len(blank)} case(s) "
            "without one); evaluation needs a target for every case"
        )


def _add_clinical(rows: pd.DataFrame, cases: Sequence[Case]) -> pd.DataFrame:
    clinical = pd.DataFrame([{"case_id": c.case_id, **c.clinical} for c in cases])
    new = [c for c in clinical.columns if c == "case_id" or c not in rows.columns]
    return rows.merge(clinical[new], on="case_id", how="left")


def _add_outcome(frame: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    out = frame.copy()
    if plan.task is TaskKind.REGRESSION:
        out["abs_error"] = (out["output"].astype(float) - out["truth"].astype(float)).abs()
        return out
    if plan.task is TaskKind.MULTILABEL:
        labels = out[[f"truth_{c}" for c in plan.classes]].to_numpy(dtype=np.float64)
        probs = out[[f"prob_{c}" for c in plan.classes]].to_numpy(dtype=np.float64)
        out["correct"] = ((probs >= 0.5) == (labels >= 0.5)).all(axis=1).astype(np.float64)
        return out
    truth = out["truth"].to_numpy(dtype=np.float64).round()
    if plan.task is TaskKind.MULTICLASS:
        prob = out[[f"prob_{c}" for c in plan.classes]].to_numpy(dtype=np.float64)
        decision = np.argmax(prob, axis=1)
    else:
        decision = out["output"].to_numpy(dtype=np.float64) >= stored_threshold(plan)
    out["correct"] = (decision == truth).astype(np.float64)
    return out


def read_prediction_tables(
    predictions_dir: str | Path, splits: Mapping[str, Sequence[Case]], plan: Plan
) -> pd.DataFrame:
    """One frame of every split's cases: the tables, clinical columns, ``correct`` or
    ``abs_error`` (and ``age_band`` when the cases have an ``age``).

    Raises:
        DatasetError: If a table is missing, lacks a column the task needs, lacks a
            case of its split, or a case has no reference.
    """
    parts = []
    for split, cases in splits.items():
        path = Path(predictions_dir) / f"{split}.csv"
        rows = _select_cases(_read_table(path, split, plan), cases, split, path)
        _check_truth(rows, plan, split)
        parts.append(_add_clinical(rows, cases))
    frame = _add_outcome(pd.concat(parts, ignore_index=True), plan)
    if "age" in frame.columns:
        ages = pd.to_numeric(frame["age"], errors="coerce")
        frame["age_band"] = age_bands(ages.to_numpy()).to_numpy() if ages.notna().any() else pd.NA
    return frame


def _subgroups(
    frame: pd.DataFrame, plan: Plan, *, min_cases: int, n_resamples: int, seed: int
) -> SubgroupAnalysis | None:
    columns = [
        c
        for c in SUBGROUP_CANDIDATES
        if c in frame.columns and frame.groupby("split")[c].nunique().max() >= 2
    ]
    if not columns:
        return None
    regression = plan.task is TaskKind.REGRESSION
    return analyse_subgroups(
        frame,
        by=columns,
        value="abs_error" if regression else "correct",
        metric_name="absolute error" if regression else "accuracy (correct decisions)",
        patient="patient_id",
        split="split",
        higher_is_better=not regression,
        gap_threshold=0.1 * plan.target.std if regression else 0.05,
        min_cases=min_cases,
        n_resamples=n_resamples,
        seed=seed,
    )


def _findings_json(found: SplitFindings) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "n_cases": found.n_cases,
        "n_patients": found.n_patients,
        "aggregate": {name: _ci_json(ci) for name, ci in found.intervals.items()},
        "needs_review": found.n_review,
        "notes": list(found.notes),
    }
    if found.calibration is not None:
        cal = found.calibration
        doc["calibration"] = {
            "temperature": cal.temperature,
            "ece_before": cal.before.ece,
            "ece_after": cal.after.ece,
            "logits": "first pass",
        }
    if found.referral is not None:
        curve, at = found.referral, found.referral_at()
        doc["referral"] = {
            "quality": found.quality,
            "fractions": curve.fractions.tolist(),
            "n_referred": curve.n_referred.tolist(),
            "retained": [_finite(v) for v in curve.retained_quality],
            "oracle": [_finite(v) for v in curve.oracle],
            "random": [_finite(v) for v in curve.random],
            "at_10_percent": None if at is None else {"all": at[0], "kept": at[1]},
        }
    if found.baseline is not None:
        b = found.baseline
        doc["baseline"] = {
            "predictor": "training mean",
            "mae_model": b.estimate_a,
            "mae_mean": b.estimate_b,
            "difference": b.difference,
            "low": b.low,
            "high": b.high,
            "p_value": b.p_value,
        }
    return doc


def _threshold_json(run: Path, plan: Plan) -> dict[str, Any] | None:
    if plan.task is not TaskKind.BINARY:
        return None
    record = run / "validation.json"
    protocol = None
    if record.is_file():
        protocol = json.loads(record.read_text(encoding="utf-8")).get("protocol")
    return {
        "value": stored_threshold(plan),
        "learnt": plan.target.threshold is not None,
        "policy": plan.target.policy.value,
        "policy_target": plan.target.policy_target,
        "chosen_on": "validation",
        "protocol": protocol,
    }


def _document(ctx: ImageContext, settings: Mapping[str, Any]) -> dict[str, Any]:
    subgroups = ctx.subgroups
    return {
        "run": str(ctx.run_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": ctx.plan.task.value,
        "classes": list(ctx.plan.classes),
        "settings": dict(settings),
        "threshold": _threshold_json(ctx.run_dir, ctx.plan),
        "temperature": ctx.plan.target.temperature,
        "review_above": ctx.plan.target.review_above,
        "splits": {name: _findings_json(found) for name, found in ctx.findings.items()},
        "subgroups": None
        if subgroups is None
        else {
            "metric": "abs_error" if ctx.plan.task is TaskKind.REGRESSION else "correct",
            "overall": _records(subgroups.overall),
            "groups": _records(subgroups.table),
        },
        "explain": explanation_json(ctx.explanation),
        "cases": _records(ctx.frame),
    }


def evaluate_image_predictions(
    run_dir: str | Path,
    plan: Plan,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    predictions_dir: str | Path | None = None,
    dataset: Dataset | str | Path | None = None,
    dataset_path: Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    min_subgroup_cases: int = 10,
    extra_sections: Sequence[ReportSection] = (),
) -> EvaluationResult:
    """Score a classification or regression run's prediction tables; write the report.

    Args:
        run_dir: Training run folder (``validation.json``, ``kpis.json``, ``curve.png``,
            ``explain/`` are read when present; the model is not loaded).
        plan: The run's final plan (task, classes, stored threshold and temperature).
        split: Split to evaluate; the ``external`` split, when the dataset has one, is
            evaluated too and reported in its own section.
        out_dir: Output folder (default ``run_dir/evaluation``).
        predictions_dir: Folder of ``<split>.csv`` tables (default ``out_dir/predictions``).
        dataset: Dataset (or manifest / folder path); default from ``run_dir/run.json``.
        dataset_path: Where a ``dataset`` given as an object was read from (recorded).
        n_resamples: Bootstrap replicates for every interval.
        seed: Bootstrap seed (recorded in ``metrics.json``).
        min_subgroup_cases: Smaller subgroups get no interval and are never flagged.
        extra_sections: Further report sections, appended.

    Raises:
        ConfigError: If an option is out of range or ``split`` is unknown or ``train``.
        DatasetError: If the dataset cannot be found, the split is empty, or a table is
            missing, lacks a needed column or case, or a case has no reference.
        ValueError: If ``plan`` is a segmentation plan.
    """
    check_evaluation_options(split, n_resamples, 0.0, 0)
    required_columns(plan)  # refuses a segmentation plan before any reading
    run = Path(run_dir)
    data, data_path = resolve_run_dataset(run, dataset)
    data_path = data_path or dataset_path
    splits = evaluation_splits(data, split)
    out = Path(out_dir) if out_dir is not None else run / "evaluation"
    pred_dir = Path(predictions_dir) if predictions_dir is not None else out / "predictions"
    frame = read_prediction_tables(pred_dir, splits, plan)
    findings = {
        name: analyse_split(
            frame[frame["split"] == name], plan, split=name, n_resamples=n_resamples, seed=seed
        )
        for name in splits
    }
    subgroups = _subgroups(
        frame, plan, min_cases=min_subgroup_cases, n_resamples=min(n_resamples, 1000), seed=seed
    )
    ctx = ImageContext(
        run_dir=run,
        plan=plan,
        dataset=data,
        dataset_path=data_path,
        split=split,
        frame=frame,
        findings=findings,
        subgroups=subgroups,
        n_resamples=n_resamples,
        explanation=load_explanation(run / "explain"),
    )
    report_path, checklist = build_image_report(ctx, out / "report.html", extra_sections)
    settings = {
        "split": split,
        "dataset": str(data_path) if data_path else data.name,
        "n_resamples": n_resamples,
        "seed": seed,
        "interval": "bca, patients resampled",
        "min_subgroup_cases": min_subgroup_cases,
    }
    document = _document(ctx, settings)
    document["checklist"] = [
        {"question": c.question, "answer": Answer(c.answer).value, "how": c.how} for c in checklist
    ]
    metrics_path = _write_json(out / "metrics.json", document)
    log.info("evaluation of %s written to %s", run, out)
    aggregates = {name: dict(found.intervals) for name, found in findings.items()}
    return EvaluationResult(
        out, report_path, metrics_path, frame, aggregates, subgroups, checklist, list(splits)
    )
