"""Predict the splits of an image → label / number run into one table per split.

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

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data import Dataset
from medai.data.manifest import Case
from medai.fsutil import atomic_write_text
from medai.inference.classify import ImagePrediction, predict_images
from medai.inference.predict import LoadedRun
from medai.preprocess.fixed import FixedInput, preprocess_fixed
from medai.preprocess.plan import Plan, TaskKind
from medai.training.tasks.classification import encode_target

__all__ = ["predict_image_splits", "prediction_rows"]


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
    settings = FixedInput(**plan.input.model_dump())
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
