"""``medai radiomics``: IBSI features over a dataset, and survival models on top."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import typer

from medai.cli.console import console, progress, user_errors
from medai.cli.survival_cmd import survival
from medai.errors import ConfigError

radiomics_app = typer.Typer(
    help="Radiomics: IBSI features from image + mask, then outcome models.",
    no_args_is_help=True,
)
radiomics_app.command("survival")(survival)


@radiomics_app.command("extract")
def extract(
    dataset: Path = typer.Argument(..., help="Dataset manifest or folder (dataset.yaml, MSD)."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature table to write (.csv)."),
    masks: str = typer.Option(
        "reference", "--masks", help="reference (the dataset's labels) or predicted."
    ),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Folder of predicted <case_id>.nii.gz (--masks predicted)."
    ),
    split: str | None = typer.Option(None, "--split", help="Only this split (e.g. test)."),
    regions: list[str] = typer.Option([], "--regions", help="Region (repeat); default all."),
    channels: list[str] = typer.Option([], "--channels", help="Channel (repeat); default all."),
    all_aggregations: bool = typer.Option(
        False, "--all-aggregations", help="Add 2D and 2.5D texture aggregations (482 features)."
    ),
    workers: int = typer.Option(2, "--workers", "-j", help="Parallel processes (1 = none)."),
    wide: bool = typer.Option(
        False,
        "--wide",
        help="Also write <out>.wide.csv: one row per case.",
    ),
) -> None:
    """Extract IBSI features for each case × region × channel into one tidy CSV."""
    from medai.data import import_dataset
    from medai.radiomics import Aggregation, RadiomicsSettings
    from medai.radiomics.batch import (
        STATUS_EMPTY,
        STATUS_OK,
        extract_dataset,
        wide_table,
        write_features_csv,
    )

    start = time.perf_counter()
    with user_errors():
        if out.suffix.lower() != ".csv":
            raise ConfigError(f"--out must end in .csv; got {out.name!r}")
        if masks == "predicted" and predictions is None:
            raise ConfigError(
                "--masks predicted needs --predictions DIR (the predicted label maps)"
            )
        ds = import_dataset(dataset)
        settings = RadiomicsSettings()
        if all_aggregations:
            settings = RadiomicsSettings(aggregations=tuple(Aggregation))
        with progress() as bar:
            task = bar.add_task("radiomics", total=None)

            def _advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            df = extract_dataset(
                ds,
                masks=masks,
                predictions_dir=predictions,
                split=split,
                regions=regions or None,
                channels=channels or None,
                settings=settings,
                workers=workers,
                progress=_advance,
            )
        csv_path, sidecar = write_features_csv(df, out)
        if wide:
            wide_path, _ = write_features_csv(wide_table(df), out.with_suffix(".wide.csv"))
    seconds = time.perf_counter() - start
    counts = Counter(df["status"]) if len(df) else Counter()
    ok, empty = counts.pop(STATUS_OK, 0), counts.pop(STATUS_EMPTY, 0)
    failed = sum(counts.values())
    n_features = len(df.attrs.get("features", {}))
    console.print(
        f"{df['case_id'].nunique()} cases → {len(df)} ROIs ({ok} ok, {empty} empty mask, "
        f"{failed} failed) × {n_features} features in {seconds:.1f} s; "
        f"wrote [bold]{csv_path}[/] and {sidecar.name}"
    )
    if wide:
        console.print(f"one row per case: [bold]{wide_path}[/]")
    for reason, n in counts.most_common(3):
        console.print(f"[yellow]{n} ROI(s):[/] {reason}")
