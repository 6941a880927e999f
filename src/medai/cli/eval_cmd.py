"""``medai evaluate RUN``: score a trained run on a split, write report.html + metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.cli.options import parse_device, parse_eval_split

if TYPE_CHECKING:
    from medai.evaluation.bootstrap import ConfidenceInterval
    from medai.evaluation.run_report import EvaluationResult

__all__ = ["evaluate_cmd", "show_evaluation"]


def _dice_table(result: EvaluationResult) -> Table:
    table = Table(title="Dice (mean, 95 % CI, patients resampled)")
    table.add_column("region")
    for split in result.splits:
        n = int((result.per_case["split"] == split).sum())
        table.add_column(f"{split} (n={n})", justify="right")
    regions = [c.removesuffix("/dice") for c in result.per_case.columns if c.endswith("/dice")]
    for region in [*regions, "mean"]:
        key = "mean_dice" if region == "mean" else f"{region}/dice"
        cells = []
        for split in result.splits:
            ci = result.aggregates[split].get(key)
            cells.append("—" if ci is None else f"{ci.estimate:.3f} ({ci.low:.3f}–{ci.high:.3f})")
        table.add_row(region, *cells)
    return table


def _ci_cell(ci: ConfidenceInterval | None) -> str:
    return "—" if ci is None else f"{ci.estimate:.3f} ({ci.low:.3f}–{ci.high:.3f})"


def _image_tables(result: EvaluationResult) -> list[Table]:
    """Per split: ROC-AUC (or MAE, or per-label AUC) and sensitivity / specificity at the
    stored threshold, each with its 95 % CI."""
    tables = []
    for split in result.splits:
        intervals = result.aggregates[split]
        n = int((result.per_case["split"] == split).sum())
        table = Table(title=f"{split} (n={n}) — 95 % CI, patients resampled")
        table.add_column("metric")
        table.add_column("estimate (95 % CI)", justify="right")
        names = {"roc_auc": "ROC-AUC", "mae": "MAE", "sensitivity": "sensitivity",
                 "specificity": "specificity"}  # fmt: skip
        for key, ci in intervals.items():
            if key in names or key.startswith("roc_auc/"):
                table.add_row(names.get(key, key.replace("roc_auc/", "ROC-AUC ")), _ci_cell(ci))
        tables.append(table)
    return tables


def _threshold_line(result: EvaluationResult) -> str | None:
    document = json.loads(result.metrics_path.read_text(encoding="utf-8"))
    found = document.get("threshold")
    if not found:
        return None
    goal = f", target {found['policy_target']:g}" if found.get("policy_target") else ""
    return (f"threshold {found['value']:.4g} (policy {found['policy']}{goal}, chosen on "
            "validation)")  # fmt: skip


def evaluate_cmd(
    run: Path = typer.Argument(..., help="Training run folder (holds model.pt)."),
    split: str = typer.Option("test", help="Split to evaluate: test, validation, external."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (RUN/evaluation)."),
    dataset: Path | None = typer.Option(
        None, help="Dataset manifest or folder (default: named in RUN/run.json)."
    ),
    n_resamples: int = typer.Option(2000, help="Bootstrap replicates per interval."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    tolerance: float = typer.Option(1.0, help="Surface Dice tolerance (mm)."),
    min_subgroup: int = typer.Option(10, help="Smallest subgroup given an interval."),
    device: str | None = typer.Option(None, help="cpu, cuda"),
) -> None:
    """Evaluate a run (segmentation, classification, regression): metrics with CIs, report."""
    from medai.pipeline import evaluate_run

    with user_errors(), progress() as bar:
        chosen, device = parse_eval_split(split), parse_device(device)
        task = bar.add_task("predicting and scoring", total=None)
        result = evaluate_run(
            run, split=chosen.value, out_dir=out, dataset=dataset, n_resamples=n_resamples,
            seed=seed, tolerance_mm=tolerance, min_subgroup_cases=min_subgroup, device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    show_evaluation(result)


def show_evaluation(result: EvaluationResult) -> None:
    """Print the Dice table (image runs: AUC or MAE, sensitivity and specificity at the
    stored threshold), flagged subgroups and where the report went."""
    if {"correct", "abs_error"} & set(result.per_case.columns):
        for table in _image_tables(result):
            console.print(table)
        line = _threshold_line(result)
        if line:
            console.print(line)
    else:
        console.print(_dice_table(result))
    if result.subgroups is not None and not result.subgroups.flagged.empty:
        for _, row in result.subgroups.flagged.iterrows():
            console.print(
                f"[yellow]flagged[/] {row['split']}: {row['column']} = {row['group']} "
                f"({row['reason']})"
            )
    console.print(f"report → [bold]{result.report_path}[/] · metrics → {result.metrics_path}")
