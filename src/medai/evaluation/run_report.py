"""Score a segmentation run's predictions on a split and write the report.

:func:`evaluate_predictions` reads the predicted label maps of every case of a split
(and of the dataset's external split, which is always reported apart) from
``predictions/<split>/<case_id>.nii.gz``, scores each case and region in millimetres,
averages with 95 % bootstrap intervals that resample patients, analyses subgroups by
clinical column, and writes ``report.html`` and ``metrics.json`` (default
``RUN/evaluation/``). It consumes predictions and never loads a model: predicting the
split first is :func:`medai.pipeline.evaluate_run`'s job (``medai evaluate``).

Empty masks follow the BraTS convention: both empty gives Dice 1 and HD95 0; one empty
gives Dice 0 and HD95 = ASSD = 373.13 mm (the diagonal of the BraTS volume).

The run names its dataset in ``RUN/run.json`` (``{"dataset": "<manifest or folder>"}``,
relative paths resolved from the run folder); ``dataset=`` overrides or replaces it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data import Dataset, Split, import_dataset
from medai.data.manifest import Case
from medai.errors import ConfigError, DatasetError
from medai.evaluation.bootstrap import ConfidenceInterval, bootstrap_mean_ci
from medai.evaluation.report import Answer, ChecklistItem, ReportSection
from medai.evaluation.segmentation import compute_segmentation_metrics
from medai.evaluation.subgroups import SubgroupAnalysis, age_bands, analyse_subgroups
from medai.fsutil import atomic_write_text
from medai.image import LabelMap
from medai.preprocess.plan import Plan

__all__ = [
    "BRATS_EMPTY_DISTANCE_MM",
    "RUN_POINTER",
    "SEGMENTATION_METRICS",
    "EvaluationResult",
    "check_evaluation_options",
    "evaluate_predictions",
    "evaluation_splits",
    "prediction_path",
    "region_metrics",
    "resolve_run_dataset",
]

log = logging.getLogger(__name__)

BRATS_EMPTY_DISTANCE_MM = 373.13
RUN_POINTER = "run.json"
SEGMENTATION_METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "hd95",
    "assd",
    "nsd",
    "abs_volume_error_mm3",
    "rel_volume_error",
)
SUBGROUP_CANDIDATES: tuple[str, ...] = ("site", "vendor", "sex", "age_band", "grade")
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate_predictions` computed and wrote.

    Attributes:
        out_dir: Folder holding the report, metrics and predictions.
        report_path: ``report.html``.
        metrics_path: ``metrics.json``.
        per_case: One row per evaluated case: ids, ``split``, clinical columns and
            ``region/metric`` columns plus ``mean_dice``.
        aggregates: Split → ``region/metric`` (and ``mean_dice``) → interval of the mean.
        subgroups: Subgroup analysis of ``mean_dice`` (None without clinical columns).
        checklist: The answered Radiology checklist.
        splits: Splits evaluated, internal first.
    """

    out_dir: Path
    report_path: Path
    metrics_path: Path
    per_case: pd.DataFrame
    aggregates: dict[str, dict[str, ConfidenceInterval]]
    subgroups: SubgroupAnalysis | None
    checklist: list[ChecklistItem]
    splits: list[str] = field(default_factory=list)


def resolve_run_dataset(
    run_dir: str | Path, dataset: Dataset | str | Path | None = None
) -> tuple[Dataset, Path | None]:
    """The dataset a run was trained on: ``dataset`` if given, else ``RUN/run.json``.

    Raises:
        DatasetError: If neither names a dataset.
    """
    if isinstance(dataset, Dataset):
        return dataset, None
    if dataset is None:
        pointer = Path(run_dir) / RUN_POINTER
        entry = None
        if pointer.is_file():
            entry = json.loads(pointer.read_text(encoding="utf-8")).get("dataset")
        if not entry:
            raise DatasetError(
                f"{run_dir}: the run does not name its dataset (no {RUN_POINTER} with a "
                "'dataset' entry); pass dataset= (CLI: --dataset PATH)"
            )
        dataset = Path(run_dir) / str(entry)  # an absolute entry replaces run_dir
    path = Path(dataset)
    return import_dataset(path), path


def evaluation_splits(dataset: Dataset, split: str) -> dict[str, list[Case]]:
    """The cases evaluated for ``split``: its own, then the external split's (if any).

    Raises:
        DatasetError: If ``split`` has no case.
    """
    cases = dataset.split_cases(split)
    if not cases:
        raise DatasetError(
            f"dataset {dataset.name!r} has no case in split {split!r}; split it first "
            "(medai data split) or choose another --split"
        )
    splits = {split: cases}
    if split != "external" and dataset.splits.external:
        splits["external"] = dataset.split_cases("external")
    return splits


def prediction_path(predictions_dir: str | Path, split: str, case_id: str) -> Path:
    """Where a case's predicted label map lives: ``predictions_dir/<split>/<case_id>.nii.gz``."""
    return Path(predictions_dir) / split / f"{case_id}.nii.gz"


def region_metrics(
    pred: LabelMap,
    ref: LabelMap,
    regions: Mapping[str, Sequence[int]],
    *,
    tolerance_mm: float = 1.0,
    empty_distance: float = BRATS_EMPTY_DISTANCE_MM,
) -> dict[str, float]:
    """Every segmentation metric per region (a region is a union of label values).

    Returns:
        ``region/metric`` → value (see
        :func:`~medai.evaluation.compute_segmentation_metrics`) plus ``mean_dice``, the
        mean of the regions' Dice.
    """
    row: dict[str, float] = {}
    for region, members in regions.items():
        ids = np.asarray(list(members))
        p = pred.with_array(np.isin(pred.array, ids).astype(np.uint8))
        r = ref.with_array(np.isin(ref.array, ids).astype(np.uint8))
        values = compute_segmentation_metrics(
            p, r, tolerance_mm=tolerance_mm, empty_distance=empty_distance
        )
        row.update({f"{region}/{k}": v for k, v in values.items()})
    row["mean_dice"] = float(np.mean([row[f"{r}/dice"] for r in regions]))
    return row


@dataclass(frozen=True)
class _Scoring:
    regions: dict[str, list[int]]
    pred_dir: Path
    tolerance_mm: float
    empty_distance: float


def _score_case(dataset: Dataset, case: Case, split: str, scoring: _Scoring) -> dict[str, Any]:
    from medai.io import read_nifti

    ref = dataset.load_case_label(case)
    if ref is None:
        raise DatasetError(
            f"case {case.case_id!r} of split {split!r} has no reference label; "
            "evaluation needs one for every case"
        )
    path = prediction_path(scoring.pred_dir, split, case.case_id)
    if not path.is_file():
        raise DatasetError(
            f"no prediction for case {case.case_id!r} of split {split!r} at {path}; "
            "predict the split first (medai evaluate RUN predicts it, then scores)"
        )
    pred = read_nifti(path, kind=LabelMap)
    row: dict[str, Any] = {"case_id": case.case_id, "patient_id": case.patient_id, "split": split}
    row.update({str(k): v for k, v in case.clinical.items()})
    row.update(
        region_metrics(
            pred,
            ref,
            scoring.regions,
            tolerance_mm=scoring.tolerance_mm,
            empty_distance=scoring.empty_distance,
        )
    )
    return row


def _score_splits(
    dataset: Dataset,
    splits: Mapping[str, list[Case]],
    scoring: _Scoring,
    progress: Progress | None,
) -> pd.DataFrame:
    total = sum(len(cases) for cases in splits.values())
    rows, done = [], 0
    for split, cases in splits.items():
        for case in cases:
            rows.append(_score_case(dataset, case, split, scoring))
            done += 1
            if progress is not None:
                progress(done, total)
    frame = pd.DataFrame(rows)
    if "age" in frame.columns:
        ages = pd.to_numeric(frame["age"], errors="coerce")
        frame["age_band"] = age_bands(ages.to_numpy()).to_numpy() if ages.notna().any() else pd.NA
    return frame


def _aggregate(
    frame: pd.DataFrame, regions: Sequence[str], *, n_resamples: int, seed: int
) -> dict[str, ConfidenceInterval]:
    """Interval of the mean of every region metric, resampling patients."""
    clusters = frame["patient_id"].to_numpy()
    columns = [f"{r}/{m}" for r in regions for m in SEGMENTATION_METRICS] + ["mean_dice"]
    out: dict[str, ConfidenceInterval] = {}
    for column in columns:
        values = frame[column].to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        out[column] = bootstrap_mean_ci(
            values, clusters=clusters, n_resamples=n_resamples, seed=seed
        )
    return out


def _subgroups(
    frame: pd.DataFrame, *, min_cases: int, n_resamples: int, seed: int
) -> SubgroupAnalysis | None:
    columns = [
        c
        for c in SUBGROUP_CANDIDATES
        if c in frame.columns and frame.groupby("split")[c].nunique().max() >= 2
    ]
    if not columns:
        return None
    return analyse_subgroups(
        frame,
        by=columns,
        value="mean_dice",
        metric_name="mean Dice",
        patient="patient_id",
        split="split",
        min_cases=min_cases,
        n_resamples=n_resamples,
        seed=seed,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if value is pd.NA:
        return None
    return value


def _ci_json(ci: ConfidenceInterval) -> dict[str, Any]:
    return {
        "estimate": _finite(ci.estimate),
        "low": _finite(ci.low),
        "high": _finite(ci.high),
        "confidence": ci.confidence,
        "method": str(ci.method),
        "n_patients": ci.n_clusters,
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _finite(v) for k, v in row.items()} for row in frame.to_dict("records")]


def _metrics_document(
    run_dir: Path,
    frame: pd.DataFrame,
    aggregates: Mapping[str, Mapping[str, ConfidenceInterval]],
    subgroups: SubgroupAnalysis | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    splits: dict[str, Any] = {}
    for split, intervals in aggregates.items():
        part = frame[frame["split"] == split]
        splits[split] = {
            "n_cases": len(part),
            "n_patients": int(part["patient_id"].nunique()),
            "aggregate": {name: _ci_json(ci) for name, ci in intervals.items()},
        }
    return {
        "run": str(run_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": dict(settings),
        "splits": splits,
        "subgroups": {
            "metric": "mean_dice",
            "overall": _records(subgroups.overall),
            "groups": _records(subgroups.table),
        }
        if subgroups is not None
        else None,
        "cases": _records(frame),
    }


def _write_json(path: Path, document: Mapping[str, Any]) -> Path:
    text = json.dumps(document, indent=2, allow_nan=False, default=str)
    atomic_write_text(path, text + "\n")
    return path


def check_evaluation_options(
    split: str, n_resamples: int, tolerance_mm: float, n_worst: int
) -> None:
    """Refuse options :func:`evaluate_predictions` cannot honour (before any predicting).

    Raises:
        ConfigError: If ``split`` is ``train`` or unknown, or a number is out of range.
    """
    if Split.parse(split) is Split.TRAIN:
        raise ConfigError("split='train' would score the model on its own training cases; "
                          "use 'test', 'validation' or 'external'")  # fmt: skip
    if n_resamples < 100:
        raise ConfigError(f"n_resamples must be >= 100 for a stable interval; got {n_resamples}")
    if tolerance_mm < 0:
        raise ConfigError(f"tolerance_mm must be >= 0; got {tolerance_mm}")
    if n_worst < 0:
        raise ConfigError(f"n_worst must be >= 0; got {n_worst}")


def evaluate_predictions(
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
    progress: Progress | None = None,
    tolerance_mm: float = 1.0,
    empty_distance: float = BRATS_EMPTY_DISTANCE_MM,
    min_subgroup_cases: int = 10,
    n_worst: int = 3,
    ci_width_target: float = 0.1,
    extra_sections: Sequence[ReportSection] = (),
) -> EvaluationResult:
    """Score a run's predicted label maps on a split; write ``report.html`` + ``metrics.json``.

    Cases predicted with TTA members have an uncertainty sidecar beside their label map
    (:mod:`medai.evaluation.uncertainty_report`); with any, the report and
    ``metrics.json`` get an uncertainty section (referral curve, Spearman's rho).

    Args:
        run_dir: Training run folder (its records and ``model.pt`` checksum go in the
            report; the model is not loaded).
        plan: The run's final plan (regions, preprocessing, network, as it predicted).
        split: Dataset split to evaluate; the ``external`` split, when the dataset has
            one, is evaluated too and reported in its own section.
        out_dir: Output folder (default ``run_dir/evaluation``).
        predictions_dir: Folder of ``<split>/<case_id>.nii.gz`` label maps (default
            ``out_dir/predictions``).
        dataset: Dataset (or manifest / folder path) the run was trained on; default
            from ``run_dir/run.json``.
        dataset_path: Where a ``dataset`` given as an object was read from (recorded).
        n_resamples: Bootstrap replicates for every interval.
        seed: Bootstrap seed (recorded in ``metrics.json``).
        progress: Called as ``progress(cases_done, cases_total)`` after each scored case.
        tolerance_mm: Normalised surface Dice tolerance.
        empty_distance: HD95 / ASSD when exactly one mask is empty (BraTS: 373.13 mm).
        min_subgroup_cases: Smaller subgroups get no interval and are never flagged.
        n_worst: Worst cases (by mean Dice) shown with overlays, per split.
        ci_width_target: Interval width of mean Dice counted as a justified set size.
        extra_sections: Further report sections (e.g. radiomics / survival), appended.

    Raises:
        ConfigError: If an option is out of range or ``split`` is unknown or ``train``.
        DatasetError: If the dataset cannot be found, the split is empty, or a case
            lacks its reference label or its prediction.
    """
    from medai.evaluation.run_sections import RunContext, build_report
    from medai.evaluation.uncertainty_report import attach_uncertainty, uncertainty_section

    check_evaluation_options(split, n_resamples, tolerance_mm, n_worst)
    run = Path(run_dir)
    data, data_path = resolve_run_dataset(run, dataset)
    data_path = data_path or dataset_path
    splits = evaluation_splits(data, split)
    out = Path(out_dir) if out_dir is not None else run / "evaluation"
    pred_dir = Path(predictions_dir) if predictions_dir is not None else out / "predictions"
    scoring = _Scoring(dict(plan.regions), pred_dir, tolerance_mm, empty_distance)
    frame = attach_uncertainty(_score_splits(data, splits, scoring, progress), pred_dir)
    regions = list(plan.regions)
    aggregates = {
        name: _aggregate(frame[frame["split"] == name], regions, n_resamples=n_resamples, seed=seed)
        for name in splits
    }
    subgroups = _subgroups(
        frame, min_cases=min_subgroup_cases, n_resamples=min(n_resamples, 1000), seed=seed
    )
    context = RunContext(
        run_dir=run, plan=plan, dataset=data, dataset_path=data_path, split=split,
        frame=frame, aggregates=aggregates, subgroups=subgroups, pred_dir=scoring.pred_dir,
        n_worst=n_worst, ci_width_target=ci_width_target, n_resamples=n_resamples,
        tolerance_mm=tolerance_mm,
    )  # fmt: skip
    unc_section, unc_document = uncertainty_section(
        frame, list(splits), n_resamples=n_resamples, seed=seed
    )
    sections = [*([unc_section] if unc_section is not None else []), *extra_sections]
    report_path, checklist = build_report(context, out / "report.html", sections)
    settings = {
        "split": split, "dataset": str(data_path) if data_path else data.name,
        "regions": plan.regions, "tolerance_mm": tolerance_mm,
        "empty_distance_mm": empty_distance, "n_resamples": n_resamples, "seed": seed,
        "interval": "bca, patients resampled", "min_subgroup_cases": min_subgroup_cases,
    }  # fmt: skip
    document = _metrics_document(run, frame, aggregates, subgroups, settings)
    document["uncertainty"] = unc_document
    document["checklist"] = [
        {"question": c.question, "answer": Answer(c.answer).value, "how": c.how} for c in checklist
    ]
    metrics_path = _write_json(out / "metrics.json", document)
    log.info("evaluation of %s written to %s", run, out)
    return EvaluationResult(
        out, report_path, metrics_path, frame, aggregates, subgroups, checklist, list(splits)
    )
