"""Report sections for :func:`~medai.evaluation.run_report.evaluate_predictions`.

Each builder reads one part of the run (its plan, records, dataset, scored cases) and
returns a :class:`~medai.evaluation.report.ReportSection`; :func:`build_report` puts
them in order, answers the checklist and writes the HTML.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medai.data import Dataset
from medai.evaluation.bootstrap import ConfidenceInterval
from medai.evaluation.checklist import RunFacts, answer_checklist
from medai.evaluation.plots import plot_case_distribution, plot_overlay
from medai.evaluation.report import (
    ChecklistItem,
    ReportData,
    ReportFigure,
    ReportSection,
    ReportTable,
    write_report,
)
from medai.evaluation.sections import subgroup_sections
from medai.evaluation.subgroups import SubgroupAnalysis
from medai.fsutil import file_sha256
from medai.image import LabelMap
from medai.preprocess.plan import Plan

__all__ = ["RunContext", "build_report", "describe_preprocessing", "split_title"]

_COLUMNS = {  # metric → (header, decimals)
    "dice": ("Dice", 3),
    "iou": ("IoU", 3),
    "hd95": ("HD95 (mm)", 2),
    "assd": ("ASSD (mm)", 2),
    "nsd": ("NSD", 3),
    "abs_volume_error_mm3": ("|ΔV| (mm³)", 0),
    "rel_volume_error": ("ΔV / V", 3),
}
_SITE_COLUMNS = ("site", "vendor")


@dataclass(frozen=True)
class RunContext:
    """Everything the sections read (built by ``evaluate_predictions``)."""

    run_dir: Path
    plan: Plan
    dataset: Dataset
    dataset_path: Path | None
    split: str
    frame: pd.DataFrame
    aggregates: Mapping[str, Mapping[str, ConfidenceInterval]]
    subgroups: SubgroupAnalysis | None
    pred_dir: Path
    n_worst: int
    ci_width_target: float
    n_resamples: int
    tolerance_mm: float

    def run_json(self, name: str) -> Any:
        path = self.run_dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def split_title(split: str) -> str:
    """Section title of an evaluated split."""
    if split == "external":
        return "External test set (split 'external')"
    if split == "test":
        return "Internal test set (split 'test')"
    return f"{split.capitalize()} set (split '{split}')"


def describe_preprocessing(plan: Plan) -> str:
    """One sentence saying what the plan does to an image before the network."""
    pre = plan.preprocess
    spacing = " × ".join(f"{s:g}" for s in pre.target_spacing)
    order = {1: "linear", 2: "quadratic", 3: "cubic"}[pre.image_order]
    crop = (
        f"cropped to the non-zero foreground with a {pre.crop_margin}-voxel margin"
        if pre.crop_to_foreground
        else "not cropped"
    )
    norm = {"zscore_foreground": "z-scored per channel over foreground voxels"}.get(
        pre.normalisation, pre.normalisation
    )
    return (
        f"channels {', '.join(plan.channels)} resampled to {spacing} mm ({order} for images, "
        f"nearest neighbour for labels), {crop}, {norm}"
    )


def _fmt(ci: ConfidenceInterval | None, digits: int = 3) -> str:
    if ci is None:
        return "—"
    return f"{ci.estimate:.{digits}f} ({ci.low:.{digits}f}–{ci.high:.{digits}f})"


def _summary(ctx: RunContext) -> ReportSection:
    kpis: dict[str, str] = {}
    text = []
    for split, intervals in ctx.aggregates.items():
        part = ctx.frame[ctx.frame["split"] == split]
        text.append(
            f"{split_title(split)}: {len(part)} cases from {part['patient_id'].nunique()} patients."
        )
        for region in ctx.plan.regions:
            kpis[f"{region} Dice — {split}"] = _fmt(intervals.get(f"{region}/dice"))
    text.append(
        f"Means with 95 % BCa intervals from {ctx.n_resamples} bootstrap replicates that "
        "resample patients. Empty masks follow the BraTS convention (both empty: Dice 1, "
        "HD95 0; one empty: Dice 0, HD95 = ASSD = 373.13 mm)."
    )
    return ReportSection("Summary", paragraphs=text, kpis=kpis)


def _dataset_section(ctx: RunContext) -> ReportSection:
    data = ctx.dataset
    rows = []
    for name in ("train", "validation", "test", "external"):
        cases = data.split_cases(name)
        sites = sorted({str(c.clinical[k]) for c in cases for k in _SITE_COLUMNS
                        if k in c.clinical})  # fmt: skip
        rows.append([name, str(len(cases)), str(len({c.patient_id for c in cases})),
                     ", ".join(sites) or "—"])  # fmt: skip
    regions = [[r, ", ".join(f"{v} {data.labels.get(v, '')}" for v in m)]
               for r, m in ctx.plan.regions.items()]  # fmt: skip
    return ReportSection(
        "Dataset and splits",
        paragraphs=[
            f"Dataset {data.name!r} ({data.task.value}): {len(data.cases)} cases, "
            f"{len({c.patient_id for c in data.cases})} patients, channels "
            f"{', '.join(data.channels)}. {data.description}".strip(),
            f"Manifest: {ctx.dataset_path or 'given in memory'}.",
        ],
        tables=[
            ReportTable(["Split", "Cases", "Patients", "Sites"], rows, "Split sizes (manifest)"),
            ReportTable(["Region", "Labels"], regions, "Evaluated regions"),
        ],
    )


def _kv(mapping: Mapping[str, Any], caption: str) -> ReportTable:
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return json.dumps(value) if isinstance(value, dict | list) else str(value)

    rows = [[str(k), text(v)] for k, v in mapping.items()]
    return ReportTable(["Field", "Value"], rows, caption)


def _plan_section(ctx: RunContext) -> ReportSection:
    plan = ctx.plan
    return ReportSection(
        "Preprocessing and inference (plan)",
        paragraphs=[describe_preprocessing(plan).capitalize() + "."],
        tables=[
            _kv(plan.preprocess.model_dump(mode="json"), "Preprocessing"),
            _kv(plan.inference.model_dump(mode="json"), "Inference and post-processing"),
            _kv(plan.notes, "Planner notes"),
        ],
    )


def _training_section(ctx: RunContext) -> ReportSection:
    used = ctx.run_json("split.json") or {}
    kpis = ctx.run_json("kpis.json") or {}
    text = [
        f"Network {ctx.plan.network.architecture}; trained on {len(used.get('train', []))} "
        f"cases, validated on {len(used.get('validation', []))} (run split.json)."
    ]
    figures = []
    curve = ctx.run_dir / "curve.png"
    if curve.is_file():
        figures.append(ReportFigure(curve.read_bytes(), "Training loss and validation Dice"))
    else:
        text.append("The run has no curve.png.")
    tables = [
        _kv(ctx.plan.network.model_dump(mode="json"), "Network"),
        _kv(ctx.plan.train.model_dump(mode="json"), "Training configuration"),
    ]
    if kpis:
        tables.append(_kv(kpis, "KPIs (kpis.json)"))
    else:
        text.append("The run has no kpis.json.")
    return ReportSection("Training", paragraphs=text, tables=tables, figures=figures)


def _metrics_table(ctx: RunContext, split: str) -> ReportTable:
    intervals = ctx.aggregates[split]
    rows = [[region] + [_fmt(intervals.get(f"{region}/{m}"), d) for m, (_, d) in _COLUMNS.items()]
            for region in ctx.plan.regions]  # fmt: skip
    rows.append(["mean of regions", _fmt(intervals.get("mean_dice"))] + ["—"] * (len(_COLUMNS) - 1))
    return ReportTable(
        ["Region", *(header for header, _ in _COLUMNS.values())],
        rows,
        "Mean per-case metrics with 95 % intervals (patients resampled); NaN-valued cases left out",
    )


def _slice(mask: np.ndarray[Any, Any], axis: int) -> int:
    other = tuple(a for a in range(3) if a != axis)
    area = mask.sum(axis=other)
    return int(np.argmax(area)) if area.any() else -1


def _overlay(ctx: RunContext, row: pd.Series) -> ReportFigure:
    from medai.io import read_nifti

    case = ctx.dataset.case(str(row["case_id"]))
    image = ctx.dataset.load_case_image(case)
    ref = ctx.dataset.load_case_label(case)
    pred = read_nifti(ctx.pred_dir / str(row["split"]) / f"{case.case_id}.nii.gz", kind=LabelMap)
    ref_mask = (ref.numpy3d() if ref is not None else np.zeros(image.shape[1:])) != 0
    pred_mask = pred.numpy3d() != 0
    direction = np.abs(image.affine[2, :3]) / np.asarray(image.spacing)
    axis = int(np.argmax(direction))  # voxel axis closest to superior: axial slices
    index = _slice(ref_mask, axis)
    index = index if index >= 0 else _slice(pred_mask, axis)
    index = index if index >= 0 else image.shape[1 + axis] // 2
    take = [slice(None)] * 3
    take[axis] = slice(index, index + 1)
    a, b = (i for i in range(3) if i != axis)
    spacing = image.spacing
    scores = ", ".join(f"{r} {row[f'{r}/dice']:.2f}" for r in ctx.plan.regions)
    figure = plot_overlay(
        np.squeeze(image.array[0][tuple(take)], axis=axis),
        np.squeeze(ref_mask[tuple(take)], axis=axis),
        np.squeeze(pred_mask[tuple(take)], axis=axis),
        aspect=float(spacing[b] / spacing[a]),
        title=f"{case.case_id} · slice {index}",
    )
    site = next((str(case.clinical[k]) for k in _SITE_COLUMNS if k in case.clinical), "")
    caption = (
        f"{case.case_id}{f' (site {site})' if site else ''}: mean Dice {row['mean_dice']:.2f} "
        f"({scores}); {ctx.dataset.channels[0]}, axial slice through the reference tumour, "
        "outlines of all tumour labels: reference green, prediction red"
    )
    return ReportFigure.from_figure(figure, caption=caption)


def _split_section(ctx: RunContext, split: str) -> ReportSection:
    part = ctx.frame[ctx.frame["split"] == split]
    dice = {r: part[f"{r}/dice"].to_numpy(dtype=np.float64) for r in ctx.plan.regions}
    figures = [
        ReportFigure.from_figure(
            plot_case_distribution(dice, ylabel="Dice", title=f"Per-case Dice — {split}"),
            caption="Per-case Dice per region: box (quartiles) and every case as a point",
        )
    ]
    worst = part.sort_values("mean_dice", kind="stable").head(ctx.n_worst)
    figures += [_overlay(ctx, row) for _, row in worst.iterrows()]
    columns = ["case_id", "patient_id", "mean_dice"] + [f"{r}/dice" for r in ctx.plan.regions]
    worst_table = ReportTable.from_frame(
        worst[columns], caption=f"The {len(worst)} worst cases by mean Dice"
    )
    return ReportSection(
        split_title(split),
        paragraphs=[
            f"{len(part)} cases from {part['patient_id'].nunique()} patients; distances in "
            f"mm; NSD is the normalised surface Dice at {ctx.tolerance_mm:g} mm."
        ],
        tables=[_metrics_table(ctx, split), worst_table],
        figures=figures,
    )


def _sites_by_split(
    ctx: RunContext, split_ids: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, ids in split_ids.items():
        found = set()
        for case_id in ids:
            clinical = ctx.dataset.case(case_id).clinical
            found |= {str(clinical[k]) for k in _SITE_COLUMNS if k in clinical}
        out[name] = sorted(found)
    return out


def run_facts(ctx: RunContext) -> RunFacts:
    """Gather the checklist facts from the run folder, dataset and scores."""
    used = ctx.run_json("split.json") or {}
    split_ids: dict[str, list[str]] = {
        "train": list(used.get("train", ctx.dataset.splits.train)),
        "validation": list(used.get("validation", ctx.dataset.splits.validation)),
    }
    for split in ctx.aggregates:
        key = "external" if split == "external" else "test"
        split_ids[key] = ctx.frame.loc[ctx.frame["split"] == split, "case_id"].tolist()
    internal = ctx.aggregates.get(ctx.split, {})
    widths = {r: internal[f"{r}/dice"].high - internal[f"{r}/dice"].low
              for r in ctx.plan.regions if f"{r}/dice" in internal}  # fmt: skip
    model = ctx.run_dir / "model.pt"
    heatmaps = ctx.run_dir / "heatmaps"
    has_maps = heatmaps.is_dir() and any(heatmaps.iterdir())
    return RunFacts(
        split_ids=split_ids,
        patients={c.case_id: c.patient_id for c in ctx.dataset.cases},
        sites=_sites_by_split(ctx, split_ids),
        ci_widths=widths,
        test_patients=int(ctx.frame.loc[ctx.frame["split"] == ctx.split, "patient_id"].nunique()),
        labelled=(len(ctx.frame), len(ctx.frame)),
        label_source=ctx.dataset.description,
        preprocessing=describe_preprocessing(ctx.plan),
        heatmaps=str(heatmaps) if has_maps else "",
        heatmap_reason="the run has no heatmaps/ folder: saliency maps (Grad-CAM, occlusion) "
        "are not produced for segmentation runs yet",
        model_path=model if model.is_file() else None,
        model_sha256=file_sha256(model) if model.is_file() else "",
        ci_width_target=ctx.ci_width_target,
    )


def build_report(
    ctx: RunContext, path: Path, extra_sections: Sequence[ReportSection] = ()
) -> tuple[Path, list[ChecklistItem]]:
    """Assemble every section, answer the checklist, write the HTML report."""
    checklist = answer_checklist(run_facts(ctx))
    sections = [
        _summary(ctx),
        ReportSection("Radiology checklist", checklist=checklist),
        _dataset_section(ctx),
        _plan_section(ctx),
        _training_section(ctx),
    ]
    by_split = subgroup_sections(ctx.subgroups) if ctx.subgroups is not None else []
    for split in ctx.aggregates:
        sections.append(_split_section(ctx, split))
        sections += [s for s in by_split if s.title == f"Subgroups — {split}"]
    sections += list(extra_sections)
    report = ReportData(
        title=f"Evaluation of run {ctx.run_dir.resolve().name!r}",
        subtitle=f"segmentation · dataset {ctx.dataset.name} · split {ctx.split}",
        sections=sections,
        metadata={"Run": str(ctx.run_dir), "Dataset": str(ctx.dataset_path or ctx.dataset.name)},
    )
    return write_report(report, path), checklist
