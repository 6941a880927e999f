"""``medai data``: import a dataset into a manifest, check it, split it, look at a case."""

from __future__ import annotations

import json
from collections import Counter
from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.data import (
    SPLIT_NAMES,
    CheckReport,
    Dataset,
    TaskType,
    check_dataset,
    import_dataset,
    render_case_png,
    slice_dataset,
    split_dataset,
    target_dataset,
    tumour_location,
)
from medai.errors import ConfigError
from medai.fsutil import atomic_write_text

data_app = typer.Typer(
    help="Datasets: import to a manifest, check for anomalies, split, show a case.",
    no_args_is_help=True,
)


def _open(source: Path) -> tuple[Dataset, Path | None]:
    """A dataset from a manifest or any importable path, plus the manifest path if any."""
    manifest = source / "dataset.yaml" if source.is_dir() else source
    if manifest.is_file() and manifest.suffix.lower() in (".yaml", ".yml", ".json"):
        ds = import_dataset(manifest)  # a medai manifest, or another format's file
        text = manifest.read_text(encoding="utf-8")
        is_manifest = manifest.name != "dataset.json" and ("cases:" in text or '"cases"' in text)
        return ds, manifest if is_manifest else None
    return import_dataset(source), None


def _summary(ds: Dataset) -> Table:
    table = Table(title=f"{ds.name}: {len(ds.cases)} cases ({ds.task.value})")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    patients = {c.patient_id for c in ds.cases}
    table.add_row("patients", str(len(patients)))
    table.add_row("channels", ", ".join(ds.channels))
    if ds.labels:
        table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in sorted(ds.labels.items())))
    if ds.regions:
        table.add_row("regions", ", ".join(f"{k} {v}" for k, v in ds.regions.items()))
    if ds.classes:
        table.add_row("classes", ", ".join(ds.classes))
    clinical = sorted({k for c in ds.cases for k in c.clinical})
    if clinical:
        table.add_row("clinical", ", ".join(clinical))
    split_counts = {s: len(getattr(ds.splits, s)) for s in SPLIT_NAMES}
    if any(split_counts.values()):
        table.add_row("splits", ", ".join(f"{k} {v}" for k, v in split_counts.items() if v))
    if ds.splits.folds:
        table.add_row("folds", ", ".join(str(len(f)) for f in ds.splits.folds))
    return table


@data_app.command("import")
def import_cmd(
    source: Path = typer.Argument(
        ..., help="Dataset folder or file (MSD, BraTS, nnU-Net, DICOM + SEG/RTSTRUCT, ...)."
    ),
    out: Path = typer.Option(Path("dataset.yaml"), "--out", "-o", help="Manifest to write."),
) -> None:
    """Import a dataset (format detected) and write a manifest (`medai data check` next).

    A DICOM folder annotated with SEG or RTSTRUCT is converted to NIfTI images and label
    maps in `<manifest stem>_images/` beside the manifest.
    """
    with user_errors():
        ds = import_dataset(source, out_dir=out.parent / f"{out.stem}_images")
        ds.save(out)
    console.print(_summary(ds))
    console.print(f"wrote [bold]{out}[/]; run `medai data check {out}` to check the files")


def _report_table(report: CheckReport) -> Table:
    table = Table(title=f"{report.dataset}: {len(report.anomalies)} anomalies")
    for name in ("kind", "case / patient", "detail"):
        table.add_column(name, overflow="fold")
    for a in report.anomalies:
        table.add_row(a.kind.value, a.case or "—", a.detail)
    return table


@data_app.command("check")
def check_cmd(
    source: Path = typer.Argument(..., help="Manifest (dataset.yaml) or importable folder/file."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    z_max: float = typer.Option(5.0, "--z-max", help="Robust-z threshold for intensity outliers."),
) -> None:
    """Check every case; print anomalies; exit 1 when any is found."""
    with user_errors():
        ds, _ = _open(source)
        with progress() as bar:
            task = bar.add_task("checking", total=len(ds.cases))
            report = check_dataset(
                ds, z_max=z_max, progress=lambda done, _total: bar.update(task, completed=done)
            )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.model_dump(mode="json"), indent=1))
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")
    if report.ok:
        console.print(f"[bold green]clean[/]: {report.cases_checked} cases, no anomaly")
        return
    console.print(_report_table(report))
    counts = Counter(a.kind.value for a in report.anomalies)
    console.print(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    raise typer.Exit(code=1)


@data_app.command("split")
def split_cmd(
    manifest: Path = typer.Argument(
        ..., help="Manifest (dataset.yaml) to split in place, or a dataset folder."
    ),
    test: float = typer.Option(0.2, help="Fraction of patients for testing."),
    validation: float = typer.Option(0.1, help="Fraction of patients for validation."),
    folds: int = typer.Option(0, help="Cross-validation folds over train (0: none)."),
    stratify: str | None = typer.Option(None, help="Clinical column to stratify by."),
    external_site: str | None = typer.Option(None, help="Site held out as external test."),
    site_column: str = typer.Option("site", help="Clinical column naming the site."),
    seed: int = typer.Option(0, help="Shuffle seed (recorded)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of in place."),
) -> None:
    """Patient-level train/validation/test (+ folds, + external site) split, saved."""
    with user_errors():
        ds, path = _open(manifest)
        ds = split_dataset(
            ds,
            test=test,
            validation=validation,
            folds=folds,
            stratify=stratify,
            external_site=external_site,
            site_column=site_column,
            seed=seed,
        )
        target = out or path or (manifest / "dataset.yaml" if manifest.is_dir() else None)
        if target is None:
            raise ConfigError(f"{manifest} is not a manifest; say where to write one with --out")
        ds.save(target)
    console.print(_summary(ds))
    console.print(f"wrote [bold]{target}[/]")


@data_app.command("show")
def show_cmd(
    manifest: Path = typer.Argument(..., help="Manifest or importable dataset."),
    case_id: str = typer.Argument(..., help="Case id to show."),
    out: Path = typer.Option(Path("case.png"), "--out", "-o", help="PNG to write."),
    slice_index: int | None = typer.Option(None, "--slice", help="Axial slice (RAS order)."),
    fill: bool = typer.Option(False, "--fill", help="Fill label regions instead of outlining."),
) -> None:
    """Write a PNG of one axial slice per channel with the label overlay."""
    with user_errors():
        ds, _ = _open(manifest)
        case = ds.case(case_id)
        image = ds.load_case_image(case)
        label = ds.load_case_label(case)
        render_case_png(
            image,
            label,
            out,
            channel_names=ds.channels,
            slice_index=slice_index,
            label_names=ds.labels,
            overlay="fill" if fill else "contour",
        )
    console.print(f"wrote [bold]{out}[/]")


class DeriveTarget(StrEnum):
    """What `medai data derive` makes of a segmentation cohort."""

    GRADE = "grade"
    AGE = "age"
    LOCATION = "location"
    SLICES = "slices"


@data_app.command("derive")
def derive_cmd(
    manifest: Path = typer.Argument(..., help="Segmentation manifest (dataset.yaml) or folder."),
    target: DeriveTarget = typer.Option(..., "--target", help="grade, age, location or slices."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the new dataset.yaml."),
    channel: str = typer.Option("flair", help="Channel of the 2D slices (slices)."),
    slices_per_case: int = typer.Option(6, help="Slices per case, half with tumour (slices)."),
    size: int | None = typer.Option(None, help="Resample slices to size × size (slices)."),
    seed: int = typer.Option(0, help="Seed of the slice draw (slices; recorded)."),
) -> None:
    """Derive a classification / regression dataset (same patients and splits).

    grade: HGG/LGG classification; age: regression; location: tumour hemisphere and
    front/back half; slices: 2D axial tumour / no-tumour slices written under --out.
    """
    with user_errors():
        ds, _ = _open(manifest)
        if target is DeriveTarget.SLICES:
            derived = slice_dataset(
                ds, out, channel=channel, slices_per_case=slices_per_case, seed=seed, size=size
            )
        else:
            if target is DeriveTarget.LOCATION:
                derived = tumour_location(ds)
            elif target is DeriveTarget.GRADE:
                derived = target_dataset(ds, column="grade", task=TaskType.CLASSIFICATION)
            else:
                derived = target_dataset(ds, column="age", task=TaskType.REGRESSION)
            out.mkdir(parents=True, exist_ok=True)
            derived.save(out / "dataset.yaml")
    console.print(_summary(derived))
    console.print(f"wrote [bold]{out / 'dataset.yaml'}[/]")
