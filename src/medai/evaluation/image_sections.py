"""Report sections of an image → label / number run (see :mod:`.image_report`).

Each builder turns one split's :class:`~medai.evaluation.image_analysis.SplitFindings`
(or the run's records, or its ``explain/`` heat-map gallery) into a
:class:`~medai.evaluation.report.ReportSection`; :func:`build_image_report` orders them,
answers the checklist and writes the HTML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medai.data import Dataset
from medai.evaluation.checklist import RunFacts, answer_checklist
from medai.evaluation.image_analysis import Calibration, SplitFindings, case_scores, class_names
from medai.evaluation.image_gallery import Explanation, gallery_section
from medai.evaluation.plots import plot_bland_altman, plot_referral_curve, plot_reliability
from medai.evaluation.report import (
    ChecklistItem,
    ReportData,
    ReportFigure,
    ReportSection,
    ReportTable,
    ci_table,
    write_report,
)
from medai.evaluation.run_sections import split_title
from medai.evaluation.sections import classification_section, subgroup_sections
from medai.evaluation.subgroups import SubgroupAnalysis
from medai.fsutil import file_sha256
from medai.preprocess.plan import Plan, TaskKind

__all__ = ["ImageContext", "build_image_report", "describe_input", "plot_predicted_vs_true"]

_SITE_COLUMNS = ("site", "vendor")
_NAMES = {
    "roc_auc": "ROC-AUC",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "mae": "MAE",
    "rmse": "RMSE",
    "r2": "R²",
    "spearman_uncertainty_error": "Spearman ρ (uncertainty vs error)",
}


@dataclass(frozen=True)
class ImageContext:
    """Everything the sections read (built by ``evaluate_image_predictions``)."""

    run_dir: Path
    plan: Plan
    dataset: Dataset
    dataset_path: Path | None
    split: str
    frame: pd.DataFrame
    findings: Mapping[str, SplitFindings]
    subgroups: SubgroupAnalysis | None
    n_resamples: int
    explanation: Explanation | None = None

    def run_json(self, name: str) -> Any:
        path = self.run_dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def describe_input(plan: Plan) -> str:
    """One sentence saying how an image becomes the network's fixed-size input."""
    spec = plan.input
    size = " × ".join(str(s) for s in spec.size)
    grid = (
        f"resampled to {' × '.join(f'{s:g}' for s in spec.spacing)} mm"
        if spec.spacing
        else "kept on its own grid"
    )
    crop = "cropped to the foreground" if spec.crop_to_foreground else "not cropped"
    return (
        f"{spec.spatial_dims}D input of channels {', '.join(plan.channels)}: {grid}, {crop}, "
        f"shrunk to fit and centre-padded to {size} voxels, foreground z-scored"
    )


def _fmt(found: SplitFindings, name: str, digits: int = 3) -> str:
    ci = found.intervals.get(name)
    if ci is None:
        return "—"
    return f"{ci.estimate:.{digits}f} ({ci.low:.{digits}f}–{ci.high:.{digits}f})"


def threshold_text(plan: Plan) -> str:
    """Which threshold decides, by which policy, and where it was chosen."""
    target = plan.target
    if target.threshold is None:
        return "No threshold was learnt for this run; cases are decided at 0.5."
    goal = f" (target {target.policy_target:g})" if target.policy_target is not None else ""
    return (
        f"Decision threshold {target.threshold:.4g} on the calibrated probability of "
        f"'{class_names(plan)[-1]}', policy {target.policy.value}{goal}; chosen on the "
        "validation cases at training and applied here unchanged."
    )


def _summary(ctx: ImageContext) -> ReportSection:
    kpis: dict[str, str] = {}
    text = []
    key = "mae" if ctx.plan.task is TaskKind.REGRESSION else "roc_auc"
    for split, found in ctx.findings.items():
        text.append(
            f"{split_title(split)}: {found.n_cases} cases from {found.n_patients} patients."
        )
        if ctx.plan.task is TaskKind.MULTILABEL:
            for c in ctx.plan.classes:
                kpis[f"AUC {c} — {split}"] = _fmt(found, f"roc_auc/{c}")
            continue
        kpis[f"{_NAMES[key]} — {split}"] = _fmt(found, key)
        if ctx.plan.task is TaskKind.BINARY:
            for name in ("sensitivity", "specificity"):
                kpis[f"{_NAMES[name]} — {split}"] = _fmt(found, name)
    if ctx.plan.task is TaskKind.BINARY:
        text.append(threshold_text(ctx.plan))
    text.append(
        f"95 % BCa intervals from {ctx.n_resamples} bootstrap replicates that resample patients."
    )
    return ReportSection("Summary", paragraphs=text, kpis=kpis)


def _dataset_section(ctx: ImageContext) -> ReportSection:
    data = ctx.dataset
    rows = []
    for name in ("train", "validation", "test", "external"):
        cases = data.split_cases(name)
        rows.append([name, str(len(cases)), str(len({c.patient_id for c in cases}))])
    return ReportSection(
        "Dataset and splits",
        paragraphs=[
            f"Dataset {data.name!r} ({data.task.value}), task {ctx.plan.task.value}, "
            f"classes {', '.join(class_names(ctx.plan))}. {data.description}".strip(),
            f"Manifest: {ctx.dataset_path or 'given in memory'}.",
        ],
        tables=[ReportTable(["Split", "Cases", "Patients"], rows, "Split sizes (manifest)")],
    )


def _kv(mapping: Mapping[str, Any], caption: str) -> ReportTable:
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if isinstance(value, dict | list) else str(value)

    return ReportTable(["Field", "Value"], [[str(k), text(v)] for k, v in mapping.items()], caption)


def _training_section(ctx: ImageContext) -> ReportSection:
    plan = ctx.plan
    used = ctx.run_json("split.json") or {}
    text = [
        describe_input(plan) + ".",
        f"Network {plan.network.architecture}; trained on {len(used.get('train', []))} "
        f"cases, validated on {len(used.get('validation', []))} (run split.json).",
    ]
    tables = [
        _kv(plan.input.model_dump(mode="json"), "Input"),
        _kv(plan.target.model_dump(mode="json"), "Target (learnt at training)"),
        _kv(plan.network.model_dump(mode="json"), "Network"),
        _kv(plan.train.model_dump(mode="json"), "Training configuration"),
    ]
    kpis = ctx.run_json("kpis.json")
    if kpis:
        tables.append(_kv(kpis, "KPIs (kpis.json)"))
    curve = ctx.run_dir / "curve.png"
    figures = (
        [ReportFigure(curve.read_bytes(), "Training loss and validation score")]
        if curve.is_file()
        else []
    )
    return ReportSection("Input and training", paragraphs=text, tables=tables, figures=figures)


def _notes(found: SplitFindings) -> list[str]:
    return [f"Not computed: {note}." for note in found.notes]


def _classification(ctx: ImageContext, found: SplitFindings) -> list[ReportSection]:
    part = ctx.frame[ctx.frame["split"] == found.split]
    truth, score = case_scores(part, ctx.plan)
    title = split_title(found.split)
    clusters = part["patient_id"].to_numpy()
    try:
        main = classification_section(
            title,
            truth,
            score,
            clusters=clusters,
            class_names=class_names(ctx.plan),
            threshold=found.threshold if found.threshold is not None else 0.5,
            n_resamples=ctx.n_resamples,
        )
    except ValueError as exc:  # e.g. one class only in an external split
        main = ReportSection(title, paragraphs=[f"Full metric table not computed ({exc})."])
    sections = [main]
    if ctx.plan.task is TaskKind.BINARY:
        sections.append(_operating_point(ctx, found))
    if found.calibration is not None:
        sections.append(_calibration(found.split, found.calibration))
    return sections


def _operating_point(ctx: ImageContext, found: SplitFindings) -> ReportSection:
    names = ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy")
    shown = {_NAMES[n]: found.intervals[n] for n in names if n in found.intervals}
    return ReportSection(
        f"Operating point — {found.split}",
        paragraphs=[
            threshold_text(ctx.plan),
            "PPV and NPV depend on the prevalence of this split.",
        ],
        tables=[ci_table(shown, caption="At the stored threshold, 95 % intervals")]
        if shown
        else [],
    )


def _calibration(split: str, cal: Calibration) -> ReportSection:
    return ReportSection(
        f"Calibration — {split}",
        paragraphs=[
            f"Expected calibration error {cal.before.ece:.3f} before and "
            f"{cal.after.ece:.3f} after dividing the logits by the temperature "
            f"{cal.temperature:.3g} fitted on validation (first-pass logits, "
            "10 equal-width bins)."
        ],
        figures=[
            ReportFigure.from_figure(
                plot_reliability(cal.before, title="Before temperature"),
                caption="Reliability, raw probabilities",
            ),
            ReportFigure.from_figure(
                plot_reliability(cal.after, title="After temperature"),
                caption="Reliability, calibrated probabilities",
            ),
        ],
    )


def _multilabel(ctx: ImageContext, found: SplitFindings) -> list[ReportSection]:
    shown = {
        f"ROC-AUC {c}": found.intervals[f"roc_auc/{c}"]
        for c in ctx.plan.classes
        if f"roc_auc/{c}" in found.intervals
    }
    return [
        ReportSection(
            split_title(found.split),
            paragraphs=[
                f"{found.n_cases} cases from {found.n_patients} patients; each label "
                "decided at 0.5.",
                *_notes(found),
            ],
            tables=[ci_table(shown, caption="Per-label ROC-AUC, 95 % intervals")] if shown else [],
        )
    ]


def plot_predicted_vs_true(truth: np.ndarray, pred: np.ndarray, *, name: str) -> Figure:
    """Scatter of predicted against true values with the identity line."""
    fig = Figure(figsize=(5.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(truth, pred, "o", ms=4, alpha=0.7, color="#1f4e79")
    low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([low, high], [low, high], ls="--", color="0.5", lw=1, label="identity")
    ax.set(xlabel=f"True {name}", ylabel=f"Predicted {name}", title="Predicted vs true")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _regression(ctx: ImageContext, found: SplitFindings) -> list[ReportSection]:
    part = ctx.frame[ctx.frame["split"] == found.split]
    truth, pred = part["truth"].to_numpy(float), part["output"].to_numpy(float)
    name = ctx.plan.classes[0] if ctx.plan.classes else "target"
    text = [f"{found.n_cases} cases from {found.n_patients} patients."]
    if found.baseline is not None:
        b = found.baseline
        text.append(
            f"Against predicting the training mean {ctx.plan.target.mean:.4g} for every "
            f"case: MAE {b.estimate_a:.3f} vs {b.estimate_b:.3f}, difference "
            f"{b.difference:+.3f} (95 % CI {b.low:+.3f} to {b.high:+.3f}, paired "
            f"bootstrap, p = {b.p_value:.3g}); negative favours the model."
        )
    shown = {_NAMES[n]: found.intervals[n] for n in ("mae", "rmse", "r2") if n in found.intervals}
    figures = [
        ReportFigure.from_figure(
            plot_predicted_vs_true(truth, pred, name=name), caption="Predicted against true value"
        )
    ]
    if truth.size >= 2:
        figures.append(
            ReportFigure.from_figure(
                plot_bland_altman(pred, truth, units=name), caption="Bland–Altman: predicted − true"
            )
        )
    return [
        ReportSection(
            split_title(found.split),
            paragraphs=text + _notes(found),
            tables=[ci_table(shown, caption="Metrics with 95 % intervals")] if shown else [],
            figures=figures,
        )
    ]


def _referral(ctx: ImageContext, found: SplitFindings) -> ReportSection:
    title = f"Uncertainty and referral — {found.split}"
    text = []
    if found.n_review is not None and ctx.plan.target.review_above is not None:
        text.append(
            f"{found.n_review} of {found.n_cases} cases flagged for review (uncertainty "
            f"above {ctx.plan.target.review_above:.4g}, set on validation)."
        )
    at = found.referral_at()
    if found.referral is None or at is None:
        return ReportSection(title, paragraphs=text + _notes(found))
    text.append(
        f"Referring the 10 % most uncertain cases: {found.quality} of the kept cases "
        f"{at[1]:.3f} against {at[0]:.3f} for all cases."
    )
    if found.spearman is not None:
        rho = found.spearman
        text.append(
            f"Spearman ρ of uncertainty against error {rho.estimate:.3f} (95 % CI "
            f"{rho.low:.3f}–{rho.high:.3f}); positive means the uncertain cases are the "
            "wrong ones."
        )
    figure = plot_referral_curve(
        found.referral, quality="MAE" if found.quality == "MAE" else "Accuracy"
    )
    return ReportSection(
        title,
        paragraphs=text + _notes(found),
        figures=[ReportFigure.from_figure(figure, caption="Referral curve")],
    )


def _facts(ctx: ImageContext) -> RunFacts:
    used = ctx.run_json("split.json") or {}
    split_ids: dict[str, list[str]] = {
        "train": list(used.get("train", ctx.dataset.splits.train)),
        "validation": list(used.get("validation", ctx.dataset.splits.validation)),
    }
    for split in ctx.findings:
        key = "external" if split == "external" else "test"
        split_ids[key] = ctx.frame.loc[ctx.frame["split"] == split, "case_id"].tolist()
    sites = {
        name: sorted(
            {
                str(ctx.dataset.case(i).clinical[k])
                for i in ids
                for k in _SITE_COLUMNS
                if k in ctx.dataset.case(i).clinical
            }
        )
        for name, ids in split_ids.items()
    }
    internal = ctx.findings.get(ctx.split)
    metric, label = ("r2", "R²") if ctx.plan.task is TaskKind.REGRESSION else ("roc_auc", "ROC-AUC")
    widths = {}
    for name, ci in internal.intervals.items() if internal is not None else ():
        if name == metric or name.startswith(f"{metric}/"):
            widths[name.replace(metric, label, 1).replace("/", " ")] = ci.high - ci.low
    model = ctx.run_dir / "model.pt"
    found = ctx.explanation
    uncertain = internal is not None and internal.referral is not None
    return RunFacts(
        split_ids=split_ids,
        patients={c.case_id: c.patient_id for c in ctx.dataset.cases},
        sites=sites,
        ci_widths=widths,
        ci_metric=label,
        test_patients=internal.n_patients if internal is not None else 0,
        labelled=(len(ctx.frame), len(ctx.frame)),
        label_source=ctx.dataset.description,
        preprocessing=describe_input(ctx.plan),
        heatmaps=str(found.folder / "gallery") if found is not None else "",
        heatmap_reason=f"the run has no {ctx.run_dir / 'explain' / 'gallery'} (medai explain)",
        randomisation_checked=found is not None and bool(found.randomisation),
        uncertainty=(
            f"per-case {ctx.plan.target.uncertainty.value} uncertainty with a referral "
            "curve in this report"
        )
        if uncertain
        else "",
        model_path=model if model.is_file() else None,
        model_sha256=file_sha256(model) if model.is_file() else "",
    )


def _split_sections(ctx: ImageContext, found: SplitFindings) -> list[ReportSection]:
    if ctx.plan.task is TaskKind.REGRESSION:
        sections = _regression(ctx, found)
    elif ctx.plan.task is TaskKind.MULTILABEL:
        sections = _multilabel(ctx, found)
    else:
        sections = _classification(ctx, found)
    return [*sections, _referral(ctx, found)]


def build_image_report(
    ctx: ImageContext, path: Path, extra_sections: Sequence[ReportSection] = ()
) -> tuple[Path, list[ChecklistItem]]:
    """Assemble every section, answer the checklist, write the HTML."""
    checklist = answer_checklist(_facts(ctx))
    sections = [
        _summary(ctx),
        ReportSection("Radiology checklist", checklist=checklist),
        _dataset_section(ctx),
        _training_section(ctx),
    ]
    by_split = subgroup_sections(ctx.subgroups) if ctx.subgroups is not None else []
    for split, found in ctx.findings.items():
        sections += _split_sections(ctx, found)
        sections += [s for s in by_split if s.title == f"Subgroups — {split}"]
    if ctx.explanation is not None:
        sections.append(gallery_section(ctx.explanation))
    sections += list(extra_sections)
    report = ReportData(
        title=f"Evaluation of run {ctx.run_dir.resolve().name!r}",
        subtitle=f"{ctx.plan.task.value} · dataset {ctx.dataset.name} · split {ctx.split}",
        sections=sections,
        metadata={"Run": str(ctx.run_dir), "Dataset": str(ctx.dataset_path or ctx.dataset.name)},
    )
    return write_report(report, path), checklist
