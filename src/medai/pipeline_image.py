"""Predict the splits of an image → label / number run into one table per split, and
evaluate it (:func:`evaluate_image_run`, what ``medai evaluate`` runs for such a run).

Like :mod:`medai.pipeline` for segmentation, this sits above inference (which loads
the run and predicts) and evaluation (which reads the tables and never loads a model).
A split's table ``OUT/predictions/<split>.csv`` has one row per case:

- ``case_id``, ``patient_id``, ``split``, ``target`` (as in the manifest);
- ``truth``: binary 0/1 (1 = the last class), multi-class index, regression value
  (multi-label: ``truth_<class>`` 0/1 columns);
- ``output`` (binary probability of the last class, or the regression value) or
  ``prob_<class>`` columns (multi-class, multi-label), calibrated by the run's
  temperature and averaged over the uncertainty passes;
- ``logit_<k>``: raw logits of the first pass (for calibration before/after);
- ``decision`` (class index at the stored threshold; -1 for regression),
  ``uncertainty`` and ``needs_review``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data import Dataset
from medai.data.manifest import Case
from medai.evaluation.image_report import evaluate_image_predictions
from medai.evaluation.report import ReportSection
from medai.evaluation.run_report import (
    EvaluationResult,
    check_evaluation_options,
    evaluation_splits,
    resolve_run_dataset,
)
from medai.fsutil import atomic_write_text
from medai.inference.classify import ImagePrediction, predict_images
from medai.inference.predict import LoadedRun, load_run
from medai.preprocess.fixed import preprocess_fixed
from medai.preprocess.plan import Plan, TaskKind
from medai.training.tasks.classification import encode_target

__all__ = ["evaluate_image_run", "predict_image_splits", "prediction_rows"]


def prediction_rows(
    predictions: Sequence[ImagePrediction], cases: Sequence[Case], plan: Plan, split: str
) -> pd.DataFrame:
    """The table of one split (see the module notes)."""
    rows: list[dict[str, Any]] = []
    for pred, case in zip(predictions, cases, strict=True):
        row: dict[str, Any] = {
            "case_id": case.case_id,
            "patient_id": case.patient_id,
            "split": split,
            "target": case.target if not isinstance(case.target, list) else "|".join(case.target),
        }
        if case.target is not None:
            truth = encode_target(case.target, plan, case_id=case.case_id)
            if plan.task is TaskKind.MULTILABEL:
                row.update({f"truth_{c}": int(v) for c, v in zip(plan.classes, truth, strict=True)})
            else:
                row["truth"] = float(truth.reshape(-1)[0])
        if isinstance(pred.output, tuple):
            row.update({f"prob_{c}": v for c, v in zip(plan.classes, pred.output, strict=True)})
        else:
            row["output"] = pred.output
        row.update({f"logit_{k}": v for k, v in enumerate(pred.logits)})
        row.update(
            decision=pred.decision, uncertainty=pred.uncertainty, needs_review=pred.needs_review
        )
        rows.append(row)
    return pd.DataFrame(rows)


def predict_image_splits(
    run: LoadedRun,
    dataset: Dataset,
    splits: Mapping[str, Sequence[Case]],
    predictions_dir: str | Path,
    *,
    cache_dir: str | Path,
) -> dict[str, Path]:
    """Predict every case of ``splits``; returns split → its ``.csv`` table."""
    plan = run.plan
    settings = plan.input
    out: dict[str, Path] = {}
    for split, cases in splits.items():
        paths = preprocess_fixed(
            list(cases), dataset=dataset, settings=settings, cache_dir=cache_dir
        )
        images = np.stack([np.load(paths[c.case_id]) for c in cases]).astype(np.float32)
        ids = [c.case_id for c in cases]
        preds = predict_images(run.model, images, plan, ids, device=run.device)
        table = prediction_rows(preds, cases, plan, split)
        path = Path(predictions_dir) / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, table.to_csv(index=False))
        out[split] = path
    return out


def evaluate_image_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    dataset: Dataset | str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    device: str | None = None,
    extra_sections: Sequence[ReportSection] = (),
    min_subgroup_cases: int = 10,
) -> EvaluationResult:
    """Predict a split (and the external split) with a classification or regression
    run, then score the tables (``report.html`` + ``metrics.json``).

    Args:
        run_dir: Training run folder (``model.pt``, ``plan.yaml``, ``validation.json`` ...).
        split: Dataset split to evaluate.
        out_dir: Output folder (default ``run_dir/evaluation``); tables go to its
            ``predictions/``, preprocessed inputs to its ``cache/``.
        dataset: Dataset (or manifest / folder path); default from ``run_dir/run.json``.
        n_resamples: Bootstrap replicates for every interval.
        seed: Bootstrap seed.
        progress: Called as ``progress(cases_done, cases_total)`` after each predicted split.
        device: Inference device (default CUDA when available).
        extra_sections: Further report sections, appended.
        min_subgroup_cases: Smaller subgroups get no interval and are never flagged.

    Raises:
        ConfigError: If an option is out of range or ``split`` is unknown or ``train``.
        DatasetError: If the dataset cannot be found or the split is empty.
        FileNotFoundError: If the run has no ``model.pt``.
    """
    check_evaluation_options(split, n_resamples, 0.0, 0)
    run = Path(run_dir)
    data, data_path = resolve_run_dataset(run, dataset)
    loaded = load_run(run, device=device)
    splits = evaluation_splits(data, split)
    out = Path(out_dir) if out_dir is not None else run / "evaluation"
    total, done = sum(len(cases) for cases in splits.values()), 0
    for name, cases in splits.items():
        predict_image_splits(loaded, data, {name: cases}, out / "predictions",
                             cache_dir=out / "cache")  # fmt: skip
        done += len(cases)
        if progress is not None:
            progress(done, total)
    return evaluate_image_predictions(
        run, loaded.plan, split=split, out_dir=out, predictions_dir=out / "predictions",
        dataset=data, dataset_path=data_path, n_resamples=n_resamples, seed=seed,
        min_subgroup_cases=min_subgroup_cases, extra_sections=extra_sections,
    )  # fmt: skip
