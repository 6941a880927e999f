"""``medai demo``: the main job end to end on the embedded defaults.

Real DICOM files (the ``pydicom-data`` package) are read, one series is converted and a
copy de-identified; then a synthetic glioma cohort is generated, checked and split, a
segmentation model is trained and tested, the run is evaluated into a report, and
radiomics from the predicted tumour masks feed a survival model. Each step says what it
did; the outputs stay in the demo folder for a look.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from medai.cli.console import console, progress, user_errors
from medai.image import ScalarImage
from medai.io import find_series, read_image, write_image
from medai.io.deid import generate_key
from medai.io.deid_files import deidentify_path


@contextmanager
def _step(title: str) -> Iterator[None]:
    console.rule(f"[bold cyan]{title}")
    start = time.perf_counter()
    yield
    console.print(f"[dim]{title}: {time.perf_counter() - start:.1f} s[/]")


def _pydicom_data_folder() -> Path:
    import data_store  # the pydicom-data package

    return Path(data_store.__file__).parent / "data"


def _dicom_step(out: Path) -> None:
    """Read every series of pydicom-data, convert the largest MR volume, de-identify."""
    folder = _pydicom_data_folder()
    series = find_series(folder)
    readable = [s for s in series if s.problem is None and s.size is not None]
    table = Table(title=f"pydicom-data: {len(series)} series, {len(readable)} regular volumes")
    for column in ("modality", "description", "size", "spacing (mm)", "files"):
        table.add_column(column, overflow="fold")
    for s in series:
        size = "×".join(map(str, s.size)) if s.size else f"— ({s.problem})"
        spacing = "×".join(f"{v:.3g}" for v in s.spacing) if s.spacing else "—"
        table.add_row(s.modality, s.description[:30], size, spacing, str(s.num_files))
    console.print(table)
    volumes = [s for s in readable if s.modality == "MR" and s.size is not None]
    chosen = max(volumes, key=lambda s: s.size[2] if s.size else 0)
    image: ScalarImage = read_image(chosen.files[0].parent, series_uid=chosen.uid)
    nifti = write_image(image, out / "dicom" / "converted_mr.nii.gz")
    console.print(f"converted MR series {chosen.uid} ({image!r}) → {nifti}")

    key = generate_key()
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    (out / "dicom" / "deid.key").write_text(key, encoding="utf-8")
    with progress() as bar:
        task = bar.add_task("de-identifying", total=len(list(folder.glob("*.dcm"))))
        report = deidentify_path(
            folder, out / "dicom" / "deidentified", key=key, on_file=lambda _p: bar.advance(task)
        )
    console.print(
        f"de-identified {len(report.written)} files ({len(report.changes)} attribute changes, "
        f"audit: {report.audit_csv}); {len(report.failed)} refused as broken"
    )
    for path, reason in report.failed:
        console.print(f"  [yellow]{path.name}[/]: {reason}")


def _cohort_step(out: Path, *, cases: int, spacing: float, seed: int) -> Path:
    """Generate the synthetic cohort, import it, check it and split it."""
    from medai.data import check_dataset, import_msd, split_dataset
    from medai.data.synth import generate_cohort

    root = out / "cohort"
    with progress() as bar:
        task = bar.add_task("generating cases", total=cases)
        info = generate_cohort(
            root,
            cases=cases,
            spacing=spacing,
            seed=seed,
            dicom=False,
            progress=lambda done, _n: bar.update(task, completed=done),
        )
    if info.dataset_json is None:
        raise RuntimeError("the cohort generator wrote no MSD dataset.json")
    msd = info.dataset_json.parent
    dataset = import_msd(msd)
    with progress() as bar:
        task = bar.add_task("checking", total=len(dataset.cases))
        report = check_dataset(dataset, progress=lambda done, _n: bar.update(task, completed=done))
    verdict = "clean" if report.ok else f"{len(report.anomalies)} anomalies"
    console.print(f"data check: {report.cases_checked} cases, {verdict}")
    dataset = split_dataset(dataset, test=0.25, validation=0.1, stratify="grade", seed=seed)
    manifest = msd / "dataset.yaml"
    dataset.save(manifest)
    sizes = {name: len(getattr(dataset.splits, name)) for name in ("train", "validation", "test")}
    console.print(f"split by patient, stratified by grade: {sizes} → {manifest}")
    return manifest


def demo(
    out: Path = typer.Argument(Path("demo_out"), help="Folder for everything the demo writes."),
    cases: int = typer.Option(40, help="Synthetic cohort size."),
    spacing: float = typer.Option(2.0, help="Cohort voxel size (mm)."),
    seed: int = typer.Option(0, help="Seed of the whole demo."),
) -> None:
    """Run the main job end to end on the embedded default data."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with user_errors():
        with _step("1 · Real DICOM: read, convert, de-identify"):
            _dicom_step(out)
        with _step("2 · Synthetic glioma cohort: generate, check, split"):
            _cohort_step(out, cases=cases, spacing=spacing, seed=seed)
    console.rule(f"[bold green]demo done in {(time.perf_counter() - start) / 60:.1f} min")
