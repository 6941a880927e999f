"""``medai io``: look inside image files and DICOM folders, convert between formats."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.errors import ConfigError, ImageReadError
from medai.image import Image
from medai.io import find_series, read_image, write_dicom_series, write_image
from medai.io.dicom import SeriesInfo

io_app = typer.Typer(
    help="Inspect and convert medical images (DICOM, NIfTI, NRRD/MHA, PNG/JPEG/TIFF).",
    no_args_is_help=True,
)


@io_app.callback()
def _quiet_pydicom() -> None:
    """pydicom logs every odd attribute value at WARNING; show them only with --verbose."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pydicom").setLevel(logging.ERROR)


_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".png")


def _fmt_spacing(spacing: tuple[float, float, float] | None) -> str:
    return "—" if spacing is None else " × ".join(f"{s:.4g}" for s in spacing)


def _fmt_size(size: tuple[int, int, int] | None) -> str:
    return "—" if size is None else " × ".join(str(s) for s in size)


def _series_tables(folder: Path, series: list[SeriesInfo]) -> tuple[Table, Table]:
    """One table of series (geometry) and one of their identifiers, row ``n`` ↔ row ``n``."""
    main = Table(title=f"{folder}: {len(series)} series")
    for name in ("", "Series #", "Modality", "Description", "Files", "Size (x×y×z)"):
        main.add_column(name, overflow="fold")
    for name in ("Spacing (mm)", "Orientation"):
        main.add_column(name, overflow="fold")
    ids = Table(title="Identifiers")
    for name in ("", "Patient", "Study UID", "Series UID"):
        ids.add_column(name, overflow="fold")
    for n, s in enumerate(series, start=1):
        main.add_row(
            str(n),
            "" if s.series_number is None else str(s.series_number),
            s.modality,
            s.description,
            str(s.num_files),
            _fmt_size(s.size),
            _fmt_spacing(s.spacing),
            s.orientation or f"[red]{s.problem}[/]",
        )
        ids.add_row(str(n), s.patient_id, s.study_uid, s.uid)
    return main, ids


def _image_table(path: Path, image: Image) -> Table:
    table = Table(title=str(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    meta: dict[str, Any] = image.meta
    rows = [
        ("Size (x×y×z)", _fmt_size(image.shape)),
        ("Channels", str(image.num_channels)),
        ("Spacing (mm)", _fmt_spacing(image.spacing)),
        ("Orientation", "".join(image.orientation)),
        ("Origin (RAS mm)", ", ".join(f"{v:.4g}" for v in image.origin)),
        ("Data type", str(image.array.dtype)),
    ]
    keys = ("Modality", "SeriesDescription", "SeriesInstanceUID", "StudyInstanceUID", "PatientID")
    rows += [(key, str(meta[key])) for key in keys if key in meta]
    if meta.get("geometry_from_patient") is False:
        rows.append(("Geometry", "[yellow]none in file; default plane, 1 mm unless given[/]"))
    for field, value in rows:
        table.add_row(field, value)
    return table


@io_app.command("info")
def info(
    path: Path = typer.Argument(..., help="An image file or a folder of DICOM files."),
) -> None:
    """Show size, spacing, orientation and DICOM identifiers; a folder series by series."""
    with user_errors():
        if path.is_dir():
            with progress() as bar:
                task = bar.add_task("Reading DICOM headers", total=None)
                series = find_series(
                    path, on_file=lambda done, total: bar.update(task, completed=done, total=total)
                )
            if not series:
                raise ImageReadError(path, "no DICOM image series found in this folder")
            for table in _series_tables(path, series):
                console.print(table)
        else:
            console.print(_image_table(path, read_image(path)))


def _is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(_IMAGE_SUFFIXES)


@io_app.command("convert")
def convert(
    source: Path = typer.Argument(..., help="Image file or DICOM series folder to read."),
    target: Path = typer.Argument(
        ..., help="Output .nii/.nii.gz/.nrrd/.mha/.png file, or a folder for a DICOM series."
    ),
    series_uid: str | None = typer.Option(
        None, help="Series to read when SOURCE holds several (see `medai io info`)."
    ),
    modality: str = typer.Option("MR", help="DICOM output: MR or CT."),
    patient_id: str | None = typer.Option(None, help="DICOM output: PatientID."),
    patient_name: str | None = typer.Option(None, help="DICOM output: PatientName."),
    series_description: str = typer.Option("", help="DICOM output: SeriesDescription."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing TARGET."),
) -> None:
    """Convert between formats: DICOM series → NIfTI, NIfTI → DICOM series folder, ..."""
    with user_errors():
        with console.status(f"Reading {source}"):
            image: Image = read_image(source, series_uid=series_uid)
        if _is_image_file(target):
            if target.exists() and not overwrite:
                raise ConfigError(f"{target} exists; pass --overwrite to replace it")
            write_image(image, target)
            console.print(f"[green]wrote[/] {target} ({image!r})")
            return
        pid = patient_id or str(image.meta.get("PatientID", "ANONYMOUS"))
        name = patient_name or str(image.meta.get("PatientName", "Anonymous"))
        with console.status(f"Writing DICOM series to {target}"):
            files = write_dicom_series(
                image,
                target,
                modality=modality.upper(),
                patient_id=pid,
                patient_name=name,
                series_description=series_description,
                overwrite=overwrite,
            )
        console.print(f"[green]wrote[/] {len(files)} {modality.upper()} files to {target}")
