"""Evaluate a trained run end to end: predict a split with its model, then score the files.

This module sits above both :mod:`medai.inference` (which loads a run and predicts) and
:mod:`medai.evaluation` (which scores predicted label maps and never loads a model), so
neither imports the other. :func:`evaluate_run` is what ``medai evaluate`` runs:

1. predict every evaluated case (the split and the external split) with the run's
   model and write each label map to ``OUT/predictions/<split>/<case_id>.nii.gz``;
2. score those files with :func:`medai.evaluation.evaluate_predictions`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medai.data import Dataset
from medai.data.manifest import Case
from medai.errors import DatasetError
from medai.evaluation.report import ReportSection
from medai.evaluation.run_report import (
    BRATS_EMPTY_DISTANCE_MM,
    EvaluationResult,
    Progress,
    check_evaluation_options,
    evaluate_predictions,
    evaluation_splits,
    prediction_path,
    resolve_run_dataset,
)
from medai.evaluation.segmentation import region_dice
from medai.evaluation.uncertainty_report import uncertainty_path, write_case_uncertainty
from medai.image import ScalarImage
from medai.inference.predict import LoadedRun, load_run, predict_case
from medai.io import write_nifti

__all__ = ["evaluate_cases", "evaluate_run", "predict_splits"]


def predict_splits(
    run: LoadedRun,
    dataset: Dataset,
    splits: Mapping[str, Sequence[Case]],
    predictions_dir: str | Path,
    *,
    reuse_after: float | None = None,
    progress: Progress | None = None,
    tta: bool | None = None,
) -> list[Path]:
    """Predict every case of ``splits`` and write its label map where evaluation reads it.

    With TTA each case also gets an uncertainty sidecar
    (:func:`medai.evaluation.uncertainty_report.write_case_uncertainty`).

    Args:
        run: The loaded run.
        dataset: The dataset the cases come from.
        splits: Split name → cases.
        predictions_dir: Root of ``<split>/<case_id>.nii.gz``.
        reuse_after: Keep a file written after this time (e.g. the model's mtime)
            instead of predicting the case again.
        progress: Called as ``progress(cases_done, cases_total)`` after each case.
        tta: Flip TTA (8 members: the label maps are their mean, and their
            disagreement enters the case's uncertainty score); ``None``: the plan's
            setting. Without TTA the score is the entropy of the one output.

    Returns:
        The label map paths, in case order.
    """
    total = sum(len(cases) for cases in splits.values())
    paths: list[Path] = []
    for split, cases in splits.items():
        for case in cases:
            path = prediction_path(predictions_dir, split, case.case_id)
            if reuse_after is None or not path.is_file() or path.stat().st_mtime <= reuse_after:
                sidecar = uncertainty_path(predictions_dir, split, case.case_id)
                _predict_one(run, dataset.load_case_image(case), path, sidecar, tta=tta)
            paths.append(path)
            if progress is not None:
                progress(len(paths), total)
    return paths


def _predict_one(
    run: LoadedRun, image: ScalarImage, path: Path, sidecar: Path, *, tta: bool | None
) -> None:
    """Write one case's label map and, with TTA members, its uncertainty sidecar (a stale
    sidecar from an earlier prediction is removed)."""
    pred = predict_case(run, image, tta=tta)
    write_nifti(pred.labels, path)
    if pred.uncertainty is None:
        sidecar.unlink(missing_ok=True)
        return
    write_case_uncertainty(
        sidecar, score=pred.uncertainty, volume_spread_ml=pred.volume_spread_ml,
        region=pred.uncertainty_region,
    )  # fmt: skip


def _image_task(run: Path) -> bool:
    """Whether the run predicts a label or number (its plan's task is not segmentation)."""
    from medai.preprocess.plan import TaskKind, load_plan

    path = run / "plan.yaml"
    return path.is_file() and load_plan(path).task is not TaskKind.SEGMENTATION


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    out_dir: str | Path | None = None,
    dataset: Dataset | str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    progress: Progress | None = None,
    tolerance_mm: float = 1.0,
    empty_distance: float = BRATS_EMPTY_DISTANCE_MM,
    min_subgroup_cases: int = 10,
    n_worst: int = 3,
    ci_width_target: float = 0.1,
    extra_sections: Sequence[ReportSection] = (),
    device: str | None = None,
    reuse_predictions: bool = False,
    tta: bool | None = None,
) -> EvaluationResult:
    """Predict a split with a run's model, then score it (``report.html`` + ``metrics.json``).

    A classification or regression run (its plan's task is not segmentation) goes to
    :func:`medai.pipeline_image.evaluate_image_run`; the segmentation-only options
    (tolerance, empty distance, worst cases, interval target, reuse) do not apply to it.

    Args:
        run_dir: Training run folder (``model.pt``, ``plan.yaml``, ``kpis.json`` ...).
        split: Dataset split to evaluate; the ``external`` split, when the dataset has
            one, is evaluated too and reported in its own section.
        out_dir: Output folder (default ``run_dir/evaluation``); predicted label maps go
            to its ``predictions/<split>/``.
        dataset: Dataset (or manifest / folder path) the run was trained on; default
            from ``run_dir/run.json``.
        n_resamples: Bootstrap replicates for every interval.
        seed: Bootstrap seed (recorded in ``metrics.json``).
        progress: Called as ``progress(cases_done, cases_total)`` after each predicted
            case, then again after each scored case.
        tolerance_mm: Normalised surface Dice tolerance.
        empty_distance: HD95 / ASSD when exactly one mask is empty (BraTS: 373.13 mm).
        min_subgroup_cases: Smaller subgroups get no interval and are never flagged.
        n_worst: Worst cases (by mean Dice) shown with overlays, per split.
        ci_width_target: Interval width of mean Dice counted as a justified set size.
        extra_sections: Further report sections (e.g. radiomics / survival), appended.
        device: Inference device (default CUDA when available).
        reuse_predictions: Keep a case's prediction in ``predictions/`` when it is newer
            than the model instead of predicting again (e.g. to re-render the report
            with ``extra_sections``).
        tta: Flip TTA (8 members, about 11× the time of one pass on a CPU); ``None``
            (default): the plan's setting. Either way each case gets an uncertainty
            score for the report's uncertainty section (with one pass, the entropy of
            its output inside the predicted tumour).

    Raises:
        ConfigError: If an option is out of range or ``split`` is unknown or ``train``.
        DatasetError: If the dataset cannot be found, the split is empty, or a case
            lacks its reference label.
        FileNotFoundError: If the run has no ``model.pt``.
    """
    check_evaluation_options(split, n_resamples, tolerance_mm, n_worst)
    run = Path(run_dir)
    if _image_task(run):
        from medai.pipeline_image import evaluate_image_run

        return evaluate_image_run(
            run, split=split, out_dir=out_dir, dataset=dataset, n_resamples=n_resamples,
            seed=seed, progress=progress, device=device, extra_sections=extra_sections,
            min_subgroup_cases=min_subgroup_cases,
        )  # fmt: skip
    data, data_path = resolve_run_dataset(run, dataset)
    loaded = load_run(run, device=device)
    splits = evaluation_splits(data, split)
    out = Path(out_dir) if out_dir is not None else run / "evaluation"
    reuse_after = (run / "model.pt").stat().st_mtime if reuse_predictions else None
    predict_splits(
        loaded, data, splits, out / "predictions", reuse_after=reuse_after, progress=progress,
        tta=tta,
    )  # fmt: skip
    return evaluate_predictions(
        run, loaded.plan, split=split, out_dir=out, predictions_dir=out / "predictions",
        dataset=data, dataset_path=data_path, n_resamples=n_resamples, seed=seed,
        progress=progress, tolerance_mm=tolerance_mm, empty_distance=empty_distance,
        min_subgroup_cases=min_subgroup_cases, n_worst=n_worst,
        ci_width_target=ci_width_target, extra_sections=extra_sections,
    )  # fmt: skip


def evaluate_cases(
    run: LoadedRun | str | Path,
    source: Any,
    case_ids: list[str],
    *,
    tta: bool | None = None,
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Predict labelled cases and score each region's Dice on the input grid (in memory).

    Uses the BraTS rule for an empty reference (no prediction scores 1, any scores 0).

    Args:
        run: A :class:`~medai.inference.LoadedRun` or a run folder.
        source: MSD folder, ``medai.data.Dataset`` or ``SegCohort``.
        case_ids: The (test) cases to score.
        tta: Flip test-time augmentation; default from the plan.
        on_case: Called with ``(case_id, {region: dice})`` after each case.

    Returns:
        Region → per-case Dice, in ``case_ids`` order.
    """
    from medai.preprocess.cases import as_cohort

    loaded = run if isinstance(run, LoadedRun) else load_run(run)
    cohort = as_cohort(source)
    scores: dict[str, list[float]] = {name: [] for name in loaded.plan.regions}
    for case in cohort.subset(list(case_ids)):
        label = case.load_label()
        if label is None:
            raise DatasetError(
                f"case {case.case_id!r} has no label to score against; add its label or "
                "leave it out of the scored cases"
            )
        pred = predict_case(loaded, case.load_image(), tta=tta).labels.array[0]
        ref = label.array[0]
        dice = {
            name: region_dice(np.isin(pred, ids), np.isin(ref, ids))
            for name, ids in loaded.plan.regions.items()
        }
        for name, value in dice.items():
            scores[name].append(value)
        if on_case is not None:
            on_case(case.case_id, dice)
    return scores
