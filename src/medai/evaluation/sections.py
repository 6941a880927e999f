"""Ready-made report sections: classification, segmentation, subgroups per test set.

Each builder computes metrics with patient-level bootstrap intervals and draws the
matching figures, returning a :class:`~medai.evaluation.report.ReportSection` that
:func:`~medai.evaluation.report.render_report` can place in a report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from medai.evaluation.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_mean_ci
from medai.evaluation.calibration import reliability_diagram
from medai.evaluation.classification import (
    compute_accuracy,
    compute_average_precision,
    compute_balanced_accuracy,
    compute_brier_score,
    compute_confusion_matrix,
    compute_f1,
    compute_npv,
    compute_ppv,
    compute_roc_auc,
    compute_sensitivity,
    compute_specificity,
    predicted_labels,
)
from medai.evaluation.plots import (
    plot_case_distribution,
    plot_confusion_matrix,
    plot_forest,
    plot_pr,
    plot_reliability,
    plot_roc,
)
from medai.evaluation.report import ReportFigure, ReportSection, ci_table, subgroup_table
from medai.evaluation.subgroups import SubgroupAnalysis

__all__ = ["classification_section", "segmentation_section", "subgroup_sections"]


def _thresholded(metric: Callable[..., float], threshold: float) -> Callable[..., float]:
    """``metric(y_true, y_pred)`` turned into a function of scores at ``threshold``."""

    def scored(y_true: ArrayLike, y_score: ArrayLike) -> float:
        return metric(y_true, predicted_labels(y_score, threshold=threshold))

    return scored


def _classification_metrics(binary: bool, threshold: float) -> dict[str, Callable[..., float]]:
    average = "binary" if binary else "macro"
    label: dict[str, Callable[..., float]] = {
        "Accuracy": compute_accuracy,
        "Balanced accuracy": compute_balanced_accuracy,
        "Sensitivity": partial(compute_sensitivity, average=average),
        "Specificity": partial(compute_specificity, average=average),
        "PPV": partial(compute_ppv, average=average),
        "NPV": partial(compute_npv, average=average),
        "F1": partial(compute_f1, average=average),
    }
    metrics: dict[str, Callable[..., float]] = {
        "ROC-AUC": compute_roc_auc,
        "PR-AUC (average precision)": compute_average_precision,
    }
    metrics.update({name: _thresholded(fn, threshold) for name, fn in label.items()})
    metrics["Brier score"] = compute_brier_score
    return metrics


def classification_section(
    title: str,
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    clusters: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ReportSection:
    """Metrics with CIs plus ROC, PR, calibration and confusion-matrix figures.

    Args:
        title: Section title (e.g. ``"Internal test set"``).
        y_true: Labels ``(n,)``.
        y_score: ``(n,)`` positive-class probabilities or ``(n, K)`` probabilities.
        clusters: Patient id per case for the cluster bootstrap.
        class_names: Names of the classes, in label order.
        threshold: Binary operating point.
        n_resamples: Bootstrap replicates.
        seed: Random seed.
    """
    truth, score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    binary = score.ndim == 1
    intervals: dict[str, ConfidenceInterval] = {}
    for name, metric in _classification_metrics(binary, threshold).items():
        intervals[name] = bootstrap_ci(
            metric, truth, score, clusters=clusters, n_resamples=n_resamples, seed=seed
        )
    pred = predicted_labels(score, threshold=threshold)
    k = 2 if binary else score.shape[1]
    matrix = compute_confusion_matrix(truth, pred, num_classes=k)
    figures = [
        ReportFigure.from_figure(
            plot_reliability(reliability_diagram(truth, score)),
            caption="Reliability diagram (10 equal-width bins)",
        ),
        ReportFigure.from_figure(
            plot_confusion_matrix(matrix, class_names=class_names),
            caption=f"Confusion matrix at threshold {threshold:g}",
        ),
    ]
    if binary:
        figures[:0] = [
            ReportFigure.from_figure(plot_roc(truth, score), caption="ROC curve"),
            ReportFigure.from_figure(plot_pr(truth, score), caption="Precision–recall curve"),
        ]
    n_patients = len(np.unique(clusters)) if clusters is not None else truth.size
    return ReportSection(
        title,
        paragraphs=[
            f"{truth.size} cases from {n_patients} patients; 95 % intervals resample "
            f"patients ({n_resamples} replicates, BCa)."
        ],
        kpis={
            name: f"{intervals[name].estimate:.3f}"
            for name in ("ROC-AUC", "Sensitivity", "Specificity")
        },
        tables=[ci_table(intervals, caption="Metrics with 95 % confidence intervals")],
        figures=figures,
    )


def segmentation_section(
    title: str,
    per_case: pd.DataFrame,
    *,
    metrics: Sequence[str] = ("dice", "hd95", "assd", "nsd"),
    patient: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ReportSection:
    """Mean of per-case metrics with CIs, and per-case Dice distributions.

    Args:
        title: Section title.
        per_case: One row per case; columns named ``metric`` or ``region/metric`` (as
            :class:`~medai.evaluation.SegmentationAccumulator` gives).
        metrics: Metric names to report, matched against the column suffix.
        patient: Patient id column for the cluster bootstrap.
        n_resamples: Bootstrap replicates.
        seed: Random seed.
    """
    columns = [c for c in per_case.columns if str(c).rsplit("/", 1)[-1] in metrics]
    if not columns:
        raise ValueError(f"per_case has no column for metrics {list(metrics)}")
    clusters = per_case[patient].to_numpy() if patient else None
    ci = partial(bootstrap_mean_ci, clusters=clusters, n_resamples=n_resamples, seed=seed)
    intervals = {str(c): ci(per_case[c].to_numpy(dtype=np.float64)) for c in columns}
    dice = {
        str(c).rsplit("/", 1)[0] if "/" in str(c) else "mask": per_case[c]
        for c in columns
        if str(c).endswith("dice")
    }
    figures = []
    if dice:
        figures.append(
            ReportFigure.from_figure(
                plot_case_distribution(dice, ylabel="Dice", title="Per-case Dice"),
                caption="Per-case Dice: box (quartiles) and every case as a point",
            )
        )
    return ReportSection(
        title,
        paragraphs=[
            f"{len(per_case)} cases; distances in mm; cases with an undefined distance "
            "(one mask empty) are left out of that metric's mean."
        ],
        tables=[ci_table(intervals, caption="Mean per-case metrics with 95 % intervals")],
        figures=figures,
    )


def subgroup_sections(analysis: SubgroupAnalysis) -> list[ReportSection]:
    """One section per split (internal and external test sets stay apart)."""
    sections = []
    for _, whole in analysis.overall.iterrows():
        split = str(whole["split"])
        part = (
            analysis.table[analysis.table["split"] == split]
            if not analysis.table.empty
            else analysis.table
        )
        flagged = part[part["flagged"]] if not part.empty else part
        text = [
            f"Overall {analysis.metric_name}: {whole['estimate']:.3f} "
            f"(95 % CI {whole['low']:.3f}–{whole['high']:.3f}), {whole['n_cases']} cases."
        ]
        text += [
            f"Flagged: {r['column']} = {r['group']} ({r['reason']})." for _, r in flagged.iterrows()
        ] or ["No subgroup flagged."]
        sections.append(
            ReportSection(
                f"Subgroups — {split}",
                paragraphs=text,
                tables=[subgroup_table(analysis, split=split)],
                figures=[
                    ReportFigure.from_figure(
                        plot_forest(analysis, split=split), caption=f"Forest plot, {split}"
                    )
                ],
            )
        )
    return sections
